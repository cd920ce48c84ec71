// C++ tests of the ops through the dispatcher, as Python reaches them; `ctest` runs this.
// Each check compares with an answer worked out independently (by hand, or by brute force).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <vector>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::printf("%s: %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) ++failures;
}

std::vector<int64_t> as_vector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kLong).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

// O(N^2) greedy NMS straight from the definition, in double.
std::vector<int64_t> brute_force_nms(const at::Tensor& boxes, const at::Tensor& scores,
                                     const at::Tensor& groups, double threshold) {
  const int64_t n = boxes.size(0);
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  const auto s = scores.accessor<float, 1>();
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[a] > s[b]; });
  const auto b = boxes.accessor<float, 2>();
  const auto g = groups.accessor<int64_t, 1>();
  auto iou = [&](int64_t i, int64_t j) {
    const double w = std::max(0.0, double(std::min(b[i][2], b[j][2])) - std::max(b[i][0], b[j][0]));
    const double h = std::max(0.0, double(std::min(b[i][3], b[j][3])) - std::max(b[i][1], b[j][1]));
    const double area_i = double(b[i][2] - b[i][0]) * (b[i][3] - b[i][1]);
    const double area_j = double(b[j][2] - b[j][0]) * (b[j][3] - b[j][1]);
    return w * h / (area_i + area_j - w * h);
  };
  std::vector<int64_t> keep;
  for (int64_t i : order) {
    bool suppressed = false;
    for (int64_t k : keep) suppressed |= g[k] == g[i] && iou(k, i) > threshold;
    if (!suppressed) keep.push_back(i);
  }
  return keep;
}

}  // namespace

int main() {
  auto nms = c10::Dispatcher::singleton()
                 .findSchemaOrThrow("fna_ext::nms", "")
                 .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double)>();
  auto batched_nms = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("fna_ext::batched_nms", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();

  // By hand: box 3 (score .95) covers box 0 exactly (IoU 1) and box 1 with IoU 81/119 = 0.68;
  // box 2 overlaps nothing.
  const at::Tensor boxes = at::tensor({0.f, 0.f, 10.f, 10.f, 1.f, 1.f, 11.f, 11.f, 20.f, 20.f, 30.f, 30.f,
                                       0.f, 0.f, 10.f, 10.f}).view({4, 4});
  const at::Tensor scores = at::tensor({0.9f, 0.8f, 0.7f, 0.95f});
  expect(as_vector(nms.call(boxes, scores, 0.5)) == std::vector<int64_t>{3, 2}, "nms by hand, t=0.5");
  expect(as_vector(nms.call(boxes, scores, 0.7)) == std::vector<int64_t>{3, 1, 2}, "nms by hand, t=0.7");
  const at::Tensor classes = at::tensor({0, 1, 0, 0}, at::kLong);
  expect(as_vector(batched_nms.call(boxes, scores, classes, 0.5)) == std::vector<int64_t>{3, 1, 2},
         "batched_nms keeps the other class's box");
  expect(nms.call(boxes.narrow(0, 0, 0), scores.narrow(0, 0, 0), 0.5).numel() == 0, "nms of no boxes");

  at::manual_seed(0);
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t n = 50 + 30 * trial;
    const at::Tensor xy = at::rand({n, 2}) * 100;
    const at::Tensor wh = at::rand({n, 2}) * 30 + 1;
    const at::Tensor random_boxes = at::cat({xy, xy + wh}, 1);
    const at::Tensor random_scores = at::rand({n});
    const at::Tensor groups = at::randint(0, 3, {n}, at::kLong);
    const at::Tensor one_group = at::zeros({n}, at::kLong);
    const double t = 0.3 + 0.02 * trial;
    if (as_vector(nms.call(random_boxes, random_scores, t)) !=
        brute_force_nms(random_boxes, random_scores, one_group, t)) {
      expect(false, "nms matches brute force on random boxes");
    }
    if (as_vector(batched_nms.call(random_boxes, random_scores, groups, t)) !=
        brute_force_nms(random_boxes, random_scores, groups, t)) {
      expect(false, "batched_nms matches brute force on random boxes");
    }
  }
  expect(failures == 0, "random trials");
  std::printf("%d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
