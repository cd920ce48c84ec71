// Which instruction set the CPU kernels run with. Where GCC builds for x86-64 Linux, the hot code
// is compiled three times (AVX-512, AVX2 and baseline x86-64) and one copy is registered when the
// library loads: the best this CPU runs, or a lower one named by FNA_EXT_CPU_ISA (avx512, avx2,
// baseline), so one machine can time every variant. Elsewhere there is one copy, built for the
// compiler's target ("native").
#pragma once

#include <string>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FNA_MULTI_ISA 1
#else
#define FNA_MULTI_ISA 0
#endif

namespace fna_ext {
namespace cpu_isa {

enum class Level { baseline = 0, avx2 = 1, avx512 = 2, native = 3 };

Level supported();  // the best level this CPU runs (native where there is one copy)
Level selected();   // FNA_EXT_CPU_ISA capped at supported(); read once
const char* name(Level level);
std::string selected_name();  // the op fna_ext::cpu_isa() returns

}  // namespace cpu_isa
}  // namespace fna_ext
