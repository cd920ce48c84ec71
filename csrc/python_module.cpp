// Makes the compiled library importable as the Python module fna_ext._C. Importing it runs the
// TORCH_LIBRARY static registrations; the ops are then reached through torch.ops.fna_ext.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "fna_ext's compiled ops (reach them through torch.ops.fna_ext)",
      -1, nullptr};
  return PyModule_Create(&module_def);
}
}
