// See cpu_isa.h.
#include "cpu_isa.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace fna_ext {
namespace cpu_isa {

const char* name(Level level) {
  switch (level) {
    case Level::avx512: return "avx512";
    case Level::avx2: return "avx2";
    case Level::baseline: return "baseline";
    default: return "native";
  }
}

Level supported() {
#if FNA_MULTI_ISA
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return Level::avx512;
  if (__builtin_cpu_supports("x86-64-v3")) return Level::avx2;
  return Level::baseline;
#else
  return Level::native;
#endif
}

namespace {

Level requested_or(Level best) {
  const char* env = std::getenv("FNA_EXT_CPU_ISA");
  if (env == nullptr || *env == '\0') return best;
#if FNA_MULTI_ISA
  for (Level level : {Level::baseline, Level::avx2, Level::avx512}) {
    if (std::strcmp(env, name(level)) == 0) {
      if (static_cast<int>(level) <= static_cast<int>(best)) return level;
      TORCH_WARN("FNA_EXT_CPU_ISA=", env, ": this CPU runs at most ", name(best), "; using ", name(best));
      return best;
    }
  }
  TORCH_WARN("FNA_EXT_CPU_ISA=", env, " is not one of avx512, avx2, baseline; using ", name(best));
#else
  TORCH_WARN("FNA_EXT_CPU_ISA=", env, ": this build has one copy of the CPU kernels (", name(best), ")");
#endif
  return best;
}

}  // namespace

Level selected() {
  static const Level level = requested_or(supported());
  return level;
}

std::string selected_name() { return name(selected()); }

}  // namespace cpu_isa
}  // namespace fna_ext
