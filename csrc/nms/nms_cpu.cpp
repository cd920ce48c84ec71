// Greedy NMS on the CPU. Boxes are visited by descending score (a stable sort, so ties keep
// their input order); each kept box suppresses the later boxes of its group whose IoU with it is
// above the threshold. Geometry is computed in float (double for double input).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "nms_common.h"

namespace fna_ext {
namespace {

template <typename acc_t>
std::vector<int64_t> greedy_nms(const acc_t* b, const int64_t* group, int64_t n, acc_t threshold) {
  std::vector<acc_t> area(n);
  for (int64_t i = 0; i < n; ++i) {
    area[i] = (b[4 * i + 2] - b[4 * i]) * (b[4 * i + 3] - b[4 * i + 1]);
  }
  std::vector<uint8_t> suppressed(n, 0);
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < n; ++i) {
    if (suppressed[i]) continue;
    keep.push_back(i);
    const acc_t* bi = b + 4 * i;
    for (int64_t j = i + 1; j < n; ++j) {
      if (suppressed[j] || (group != nullptr && group[j] != group[i])) continue;
      const acc_t* bj = b + 4 * j;
      const acc_t w = std::max<acc_t>(std::min(bi[2], bj[2]) - std::max(bi[0], bj[0]), 0);
      const acc_t h = std::max<acc_t>(std::min(bi[3], bj[3]) - std::max(bi[1], bj[1]), 0);
      const acc_t inter = w * h;
      // inter / union > t without the division: 0/0 for empty boxes counts as "not above".
      if (inter > threshold * (area[i] + area[j] - inter)) suppressed[j] = 1;
    }
  }
  return keep;
}

at::Tensor nms_impl(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                    double iou_threshold) {
  check_nms_args(boxes, scores, idxs);
  const int64_t n = boxes.size(0);
  const at::Tensor order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  at::Tensor groups;
  if (idxs != nullptr) groups = idxs->index_select(0, order).to(at::kLong).contiguous();
  const int64_t* group = groups.defined() ? groups.data_ptr<int64_t>() : nullptr;
  std::vector<int64_t> keep;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "fna_ext_nms_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor sorted =
        boxes.index_select(0, order).to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    keep = greedy_nms<acc_t>(sorted.data_ptr<acc_t>(), group, n, static_cast<acc_t>(iou_threshold));
  });
  const at::Tensor kept = at::tensor(keep, at::TensorOptions().dtype(at::kLong));
  return order.index_select(0, kept);
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_impl(boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                           const at::Tensor& idxs, double iou_threshold) {
  return nms_impl(boxes, scores, &idxs, iou_threshold);
}

}  // namespace

TORCH_LIBRARY_IMPL(fna_ext, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
}

}  // namespace fna_ext
