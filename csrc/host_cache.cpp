// See host_cache.h. Blocks are 2 MiB multiples, 2 MiB aligned and advised as huge pages where
// the kernel allows it, so a step's tensors of the same shapes find their blocks again.
#include "host_cache.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace fna_ext {
namespace host_cache {
namespace {

constexpr size_t kBlockAlign = size_t(2) << 20;  // a huge page
constexpr size_t kMinBytes = size_t(1) << 20;    // smaller tensors: the default allocator is fine
constexpr size_t kMaxDefaultBytes = size_t(4096) << 20;
// A request takes the smallest free block that holds it, up to half as large again: the same
// shapes recur every step, and a little slack lets shapes of similar size share blocks.
inline size_t slack_limit(size_t bytes) { return bytes + bytes / 2; }

// The memory this process may use: the machine's, or its cgroup's limit when lower (a container).
size_t usable_memory() {
  size_t bytes = 0;
#if defined(__linux__)
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page > 0) bytes = static_cast<size_t>(pages) * static_cast<size_t>(page);
  for (const char* path : {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream file(path);
    unsigned long long limit = 0;
    if (file >> limit && limit > 0 && (bytes == 0 || limit < bytes)) bytes = static_cast<size_t>(limit);
  }
#endif
  return bytes;
}

// FNA_EXT_HOST_CACHE_MB, else an eighth of the usable memory up to 4 GiB (4 GiB where it is unknown).
size_t default_limit() {
  const char* env = std::getenv("FNA_EXT_HOST_CACHE_MB");
  if (env != nullptr && *env != '\0') return static_cast<size_t>(std::strtoull(env, nullptr, 10)) << 20;
  const size_t memory = usable_memory();
  return memory == 0 ? kMaxDefaultBytes : std::min(kMaxDefaultBytes, memory / 8);
}

struct Cache {
  std::mutex mutex;
  std::map<size_t, std::vector<void*>> free_blocks;  // by size, ordered for the best fit
  std::unordered_map<void*, size_t> sizes;                     // every block handed out or free
  size_t cached = 0;
  size_t limit = 0;

  Cache() : limit(default_limit()) {}

  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      // the smallest free block that holds the request, up to half as large again
      for (auto it = free_blocks.lower_bound(bytes); it != free_blocks.end() && it->first <= slack_limit(bytes); ++it) {
        if (it->second.empty()) continue;
        void* block = it->second.back();
        it->second.pop_back();
        cached -= it->first;
        return block;
      }
      // a miss: free idle blocks that do not fit, the largest first, as many bytes as this one
      // takes, so that memory moves between sizes rather than adding up. An exact-size cache
      // otherwise keeps a block of every size a step ever held, most of them idle at its peak:
      // 250 MiB more than no cache at an architecture step's peak (benchmarks/RESULTS.md).
      size_t freed = 0;
      for (auto it = free_blocks.rbegin(); freed < bytes && it != free_blocks.rend(); ++it) {
        while (!it->second.empty() && freed < bytes) {
          release_block(it->second.back(), it->first);
          it->second.pop_back();
          freed += it->first;
        }
      }
    }
    void* block = std::aligned_alloc(kBlockAlign, bytes);
    TORCH_CHECK(block != nullptr, "fna_ext: out of memory allocating ", bytes, " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(block, bytes, MADV_HUGEPAGE);  // a hint: fewer, larger page faults where enabled
#endif
    std::lock_guard<std::mutex> lock(mutex);
    sizes[block] = bytes;
    return block;
  }

  void give_back(void* block) {
    std::lock_guard<std::mutex> lock(mutex);
    const size_t bytes = sizes.at(block);
    // over the limit: free blocks of other sizes first (shapes a run no longer uses), then this one
    for (auto it = free_blocks.begin(); cached + bytes > limit && it != free_blocks.end(); ++it) {
      if (it->first == bytes) continue;
      while (!it->second.empty() && cached + bytes > limit) {
        release_block(it->second.back(), it->first);
        it->second.pop_back();
      }
    }
    if (cached + bytes > limit) {
      sizes.erase(block);
      std::free(block);
      return;
    }
    free_blocks[bytes].push_back(block);
    cached += bytes;
  }

  // Frees one cached block (the caller removes it from its list); mutex held.
  void release_block(void* block, size_t bytes) {
    sizes.erase(block);
    std::free(block);
    cached -= bytes;
  }

  void release() {
    std::lock_guard<std::mutex> lock(mutex);
    for (auto& entry : free_blocks) {
      for (void* block : entry.second) {
        sizes.erase(block);
        std::free(block);
      }
    }
    free_blocks.clear();
    cached = 0;
  }
};

// Never destroyed: tensors may be freed during interpreter shutdown, after static destructors.
Cache& cache() {
  static Cache* instance = new Cache();
  return *instance;
}

void give_back(void* block) { cache().give_back(block); }

}  // namespace

at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * options.dtype().itemsize();
  if (!options.device().is_cpu() || bytes < kMinBytes || cache().limit == 0) return at::empty(sizes, options);
  const size_t rounded = (bytes + kBlockAlign - 1) / kBlockAlign * kBlockAlign;
  void* block = cache().take(rounded);
  return at::from_blob(block, sizes, &give_back, options);
}

void release_cached_blocks() { cache().release(); }

int64_t limit_bytes() { return static_cast<int64_t>(cache().limit); }

int64_t cached_bytes() {
  std::lock_guard<std::mutex> lock(cache().mutex);
  return static_cast<int64_t>(cache().cached);
}

}  // namespace host_cache
}  // namespace fna_ext
