// Torch glue of the CUDA NMS: sorts on the device, launches the mask kernel (nms_cuda.cu), then
// runs the short greedy pass over the mask on the host. Built only against a CUDA torch.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "nms_common.h"
#include "nms_cuda.h"

namespace fna_ext {
namespace {

std::vector<int64_t> greedy_pass(const unsigned long long* mask, int64_t n) {
  const int64_t words = nms_mask_words(n);
  std::vector<unsigned long long> removed(words, 0);
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t word = i / kNmsBlock;
    if (removed[word] & (1ULL << (i % kNmsBlock))) continue;
    keep.push_back(i);
    const unsigned long long* row = mask + i * words;
    for (int64_t w = word; w < words; ++w) removed[w] |= row[w];
  }
  return keep;
}

at::Tensor nms_impl(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                    double iou_threshold) {
  check_nms_args(boxes, scores, idxs);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const at::Tensor order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const bool as_double = boxes.scalar_type() == at::kDouble;
  const at::Tensor sorted =
      boxes.index_select(0, order).to(as_double ? at::kDouble : at::kFloat).contiguous();
  at::Tensor groups;
  if (idxs != nullptr) groups = idxs->index_select(0, order).to(at::kLong).contiguous();
  const int64_t* group_ptr = groups.defined() ? groups.data_ptr<int64_t>() : nullptr;

  at::Tensor mask = at::empty({n * nms_mask_words(n)}, boxes.options().dtype(at::kLong));
  auto* mask_ptr = reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const cudaError_t err =
      as_double ? nms_mask_launch_f64(sorted.data_ptr<double>(), group_ptr, n, iou_threshold,
                                      mask_ptr, stream)
                : nms_mask_launch_f32(sorted.data_ptr<float>(), group_ptr, n,
                                      static_cast<float>(iou_threshold), mask_ptr, stream);
  TORCH_CHECK(err == cudaSuccess, "fna_ext::nms: CUDA kernel launch failed: ",
              cudaGetErrorString(err));

  const at::Tensor mask_cpu = mask.cpu();
  const std::vector<int64_t> keep = greedy_pass(
      reinterpret_cast<const unsigned long long*>(mask_cpu.data_ptr<int64_t>()), n);
  const at::Tensor kept =
      at::tensor(keep, at::TensorOptions().dtype(at::kLong)).to(boxes.device());
  return order.index_select(0, kept);
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_impl(boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& idxs, double iou_threshold) {
  return nms_impl(boxes, scores, &idxs, iou_threshold);
}

}  // namespace

TORCH_LIBRARY_IMPL(fna_ext, CUDA, m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
}

}  // namespace fna_ext
