// The super network's whole mixture for one layer with shared weights, as one op: the
// softmax(alpha)-weighted sum of every MBConv candidate (k, e) from the depthwise conv on, over a
// shared expansion `hidden`:
//   out = sum_i w_i * (BN3_i(P_i) (+ x)),   P_i = relu6(BN2(dw_k(hidden)))[:, :e] Wp[:, :e]^T.
// The candidates share more than their input. Every step up to the projection is per channel and
// BN2 normalises each channel with its own batch statistics, so (k, e3) is the first e3 channels
// of (k, e6): the depthwise conv, BN2 and ReLU6 run once per kernel size over the widest
// expansion. The projections nest too: P_(k,e6) = P_(k,e3) + a[:, e3:e6] Wp[:, e3:e6]^T, so one
// kernel size costs one widest GEMM. Backward mirrors it: the candidates' projection gradients are
// summed per column block before one GEMM per block, and each kernel size runs one depthwise
// backward. Per candidate remain only the C_out-wide BN3 and its statistics.
//
// Two ops, as for the single path: mixture_mbconv starts from x and runs the shared expansion
// too (its BN1 and ReLU6 applied as the depthwise convs load it, as in sampled_mbconv);
// mixture_depthwise_project starts from an activated hidden tensor (a detector that taps the
// expansion output needs it materialised). They serve architecture steps, where the weights are
// frozen: backward returns the gradients of x, hidden and the mixture weights only
// (fna_ext.ops.mbconv_mixture falls back to one op per candidate when a weight needs one).
#pragma once

#include <algorithm>
#include <limits>
#include <map>
#include <vector>

#include "mbconv_driver.h"

namespace fna_ext {
namespace mbconv {

// Every backend runs a mixture's kernel sizes in one pass: depthwise_forward_nested always, and
// depthwise_backward_nested where nested_depthwise_backward_fits(widest geometry, dtype) says it
// takes the shape; elsewhere the driver runs one input gradient per kernel size.

// The candidates grouped by kernel size, each group's expansions ascending: the column blocks
// [e_(j-1), e_j) of the nested projections.
struct MixturePlan {
  struct Candidate {
    int64_t index, e;  // position in the op's candidate list; expansion channels
  };
  std::vector<int64_t> kernels;                   // distinct kernel sizes, ascending
  std::vector<std::vector<Candidate>> by_kernel;  // per kernel size, by ascending e
  int64_t width = 0;                              // the widest expansion: the depthwise width
  int64_t candidates = 0;
  bool expand = false;                            // the op runs the expansion too
};

inline MixturePlan make_plan(const char* op, at::IntArrayRef kernel_sizes, at::IntArrayRef expansions,
                             int64_t max_channels, bool expand) {
  TORCH_CHECK(!kernel_sizes.empty() && kernel_sizes.size() == expansions.size(), op,
              ": kernel_sizes and expansions must be equally long and not empty, got ", kernel_sizes.size(), " and ",
              expansions.size());
  MixturePlan plan;
  plan.expand = expand;
  plan.candidates = static_cast<int64_t>(kernel_sizes.size());
  std::map<int64_t, std::vector<MixturePlan::Candidate>> groups;
  for (int64_t i = 0; i < plan.candidates; ++i) {
    TORCH_CHECK(expansions[i] >= 1 && expansions[i] <= max_channels, op, ": candidate ", i, "'s expansion ",
                expansions[i], " is outside 1..", max_channels);
    groups[kernel_sizes[i]].push_back({i, expansions[i]});
    plan.width = std::max(plan.width, expansions[i]);
  }
  for (auto& [k, group] : groups) {
    std::stable_sort(group.begin(), group.end(), [](const auto& a, const auto& b) { return a.e < b.e; });
    plan.kernels.push_back(k);
    plan.by_kernel.push_back(group);
  }
  return plan;
}

// Stats layout (double): with the expansion [mean1, invstd1] (width each); per kernel size
// [mean2, invstd2] (width each); then every candidate's mean3 (C_out each) and every candidate's
// invstd3, so that one per-channel step (a kernel on a GPU) serves BN3 of all candidates. size()
// is also the fna_ext::mixture_stats_size op, which the fake kernels ask (registration.cpp).
struct MixtureStats {
  at::Tensor all;
  int64_t width, c_out, kernels, candidates, base2;
  MixtureStats(at::Tensor stats, const MixturePlan& plan, int64_t c_out_)
      : all(std::move(stats)), width(plan.width), c_out(c_out_), kernels(static_cast<int64_t>(plan.kernels.size())),
        candidates(plan.candidates), base2(plan.expand ? 2 * plan.width : 0) {}
  static int64_t size(const MixturePlan& plan, int64_t c_out) {
    return (plan.expand ? 2 : 0) * plan.width + 2 * static_cast<int64_t>(plan.kernels.size()) * plan.width +
           2 * plan.candidates * c_out;
  }
  at::Tensor mean1() const { return narrowed(all, 0, 0, width); }
  at::Tensor invstd1() const { return narrowed(all, 0, width, width); }
  at::Tensor mean2(int64_t k) const { return narrowed(all, 0, base2 + 2 * k * width, width); }
  at::Tensor invstd2(int64_t k) const { return narrowed(all, 0, base2 + (2 * k + 1) * width, width); }
  int64_t base3() const { return base2 + 2 * kernels * width; }
  // every candidate's BN3 (candidates * C_out)
  at::Tensor mean3() const { return narrowed(all, 0, base3(), candidates * c_out); }
  at::Tensor invstd3() const { return narrowed(all, 0, base3() + candidates * c_out, candidates * c_out); }
};

// A BN parameter repeated once per candidate; undefined stays undefined (gamma 1, beta 0).
inline at::Tensor per_candidate(const at::Tensor& p, int64_t candidates) {
  return p.defined() ? p.repeat({candidates}) : p;
}

// The (candidates * C) sums of every candidate, first all sums then all sums of squares (or of
// g * h); the part of candidate i.
inline at::Tensor candidate_part(const at::Tensor& all, int64_t i, int64_t c) { return narrowed(all, 0, i * c, c); }

// What both ops take, checked once.
struct MixtureArgs {
  MixturePlan plan;
  Geometry g0;  // the first kernel size's; the output size is the same for every odd kernel (and dilation)
  at::Tensor dw, wp, we;  // contiguous depthwise weight; (C_out, E_max) and (E_max, C_in) views
  at::Tensor gamma1, beta1, gamma2, beta2;
  at::Tensor gamma3, beta3;  // once per candidate (candidates * C_out), as MixtureStats::mean3()
  at::ScalarType opmath;
  Geometry geometry(const at::Tensor& x, const at::Tensor& dw_weight, const at::Tensor& project_weight,
                    int64_t ki) const {
    return make_geometry(x, dw_weight, project_weight, plan.width, plan.kernels[ki], g0.stride, g0.dilation);
  }
};

inline MixtureArgs mixture_args(const char* op, const at::Tensor& x, const at::Tensor& expand_weight,
                                const at::Tensor& hidden, const at::Tensor& weights, const at::Tensor& dw_weight,
                                const at::Tensor& project_weight, const c10::optional<at::Tensor>& bn1_w,
                                const c10::optional<at::Tensor>& bn1_b, const c10::optional<at::Tensor>& bn2_w,
                                const c10::optional<at::Tensor>& bn2_b, const c10::optional<at::Tensor>& bn3_w,
                                const c10::optional<at::Tensor>& bn3_b, at::IntArrayRef kernel_sizes,
                                at::IntArrayRef expansions, int64_t stride, int64_t dilation) {
  const bool expand = expand_weight.defined();
  if (expand) {
    TORCH_CHECK(expand_weight.dim() == 4 && expand_weight.size(0) == dw_weight.size(0) &&
                    expand_weight.size(1) == x.size(1) && expand_weight.numel() == expand_weight.size(0) * x.size(1),
                op, ": expand_weight must be (E_max, C_in, 1, 1), got ", expand_weight.sizes());
  } else {
    TORCH_CHECK(hidden.dim() == 4 && hidden.size(0) == x.size(0) && hidden.size(2) == x.size(2) &&
                    hidden.size(3) == x.size(3) && hidden.scalar_type() == x.scalar_type(),
                op, ": hidden must be (N, e, H, W) like x, got ", hidden.sizes(), " and ", x.sizes());
  }
  MixtureArgs a;
  a.plan = make_plan(op, kernel_sizes, expansions, expand ? dw_weight.size(0) : hidden.size(1), expand);
  TORCH_CHECK(weights.dim() == 1 && weights.numel() == a.plan.candidates, op,
              ": weights must hold one value per candidate (", a.plan.candidates, "), got ", weights.sizes());
  for (int64_t k : a.plan.kernels) check_inputs(op, x, dw_weight, project_weight, k, a.plan.width, stride, dilation);
  a.g0 = make_geometry(x, dw_weight, project_weight, a.plan.width, a.plan.kernels[0], stride, dilation);
  a.dw = dw_weight.contiguous();
  a.wp = project_weight.reshape({a.g0.c_out, a.g0.e_max});
  if (expand) a.we = expand_weight.reshape({a.g0.e_max, a.g0.c_in});
  const int64_t width = a.plan.width, c_out = a.g0.c_out;
  a.gamma1 = slice_or_undefined(bn1_w, width), a.beta1 = slice_or_undefined(bn1_b, width);
  a.gamma2 = slice_or_undefined(bn2_w, width), a.beta2 = slice_or_undefined(bn2_b, width);
  a.gamma3 = per_candidate(slice_or_undefined(bn3_w, c_out), a.plan.candidates);
  a.beta3 = per_candidate(slice_or_undefined(bn3_b, c_out), a.plan.candidates);
  a.opmath = opmath_type(x.scalar_type());
  return a;
}

// Every kernel size's depthwise conv of `in` into h2 (kernels, rows_out, width), in one pass where
// the backend can; returns each kernel's (2, width) sums and sums of squares for BN2.
template <class Backend>
std::vector<at::Tensor> mixture_depthwise(const MixtureArgs& a, const at::Tensor& x, const at::Tensor& dw_weight,
                                          const at::Tensor& project_weight, const at::Tensor& in,
                                          const at::Tensor& scale1, const at::Tensor& shift1, at::Tensor& h2) {
  const int64_t nk = static_cast<int64_t>(a.plan.kernels.size());
  const at::Tensor zeroed = at::zeros({nk, 2, a.plan.width}, x.options().dtype(at::kDouble));  // one fill
  std::vector<at::Tensor> sums;
  for (int64_t ki = 0; ki < nk; ++ki) sums.push_back(zeroed[ki]);
  std::vector<at::Tensor> outs;
  for (int64_t ki = 0; ki < nk; ++ki) outs.push_back(h2[ki]);
  Backend::depthwise_forward_nested(a.geometry(x, dw_weight, project_weight, nk - 1), in, scale1, shift1, a.dw,
                                    a.plan.kernels, outs, sums);
  return sums;
}

// -> (out, h1 (rows_in, width; empty without the expansion), h2 (kernels, rows_out, width),
//     h3 (candidates, rows_out, C_out), stats)
template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mixture_forward(
    const MixtureArgs& a, const at::Tensor& x, const at::Tensor& hidden, const at::Tensor& weights,
    const at::Tensor& dw_weight, const at::Tensor& project_weight, double eps, bool recompute) {
  const MixturePlan& plan = a.plan;
  const Geometry& g0 = a.g0;
  const int64_t nk = static_cast<int64_t>(plan.kernels.size());
  const MixtureStats s(at::empty({MixtureStats::size(plan, g0.c_out)}, x.options().dtype(at::kDouble)), plan,
                       g0.c_out);
  const at::Tensor x_rows = as_rows(x.contiguous(at::MemoryFormat::ChannelsLast));
  // the depthwise input: the shared expansion's pre-BN1 rows (BN1 + ReLU6 applied on load), or hidden
  at::Tensor h1, in, scale1, shift1;
  if (plan.expand) {
    h1 = Backend::empty({g0.rows_in(), plan.width}, x.options());
    const std::vector<at::Tensor> sums1 = zeroed_sums({plan.width, plan.width}, s.all);
    product_stats<Backend>(h1, x_rows, narrowed(a.we, 0, 0, plan.width).t(), sums1[0], sums1[1]);
    std::tie(scale1, shift1) = bn_forward_coefficients<Backend>(sums1[0], sums1[1], g0.rows_in(), eps, s.mean1(),
                                                                s.invstd1(), a.gamma1, a.beta1, a.opmath);
    in = h1.view({g0.n, g0.h, g0.w, plan.width});
  } else {
    in = as_nhwc_view(narrowed(hidden, 1, 0, plan.width));
  }
  at::Tensor h2 = Backend::empty({nk, g0.rows_out(), plan.width}, x.options());
  at::Tensor h3 = Backend::empty({plan.candidates, g0.rows_out(), g0.c_out}, x.options());
  at::Tensor a2 = Backend::empty({g0.rows_out(), plan.width}, x.options());
  std::vector<at::Tensor> sums = mixture_depthwise<Backend>(a, x, dw_weight, project_weight, in, scale1, shift1, h2);
  for (int64_t ki = 0; ki < nk; ++ki) {
    at::Tensor h2k = h2[ki];
    auto [scale2, shift2] = bn_forward_coefficients<Backend>(sums[ki][0], sums[ki][1], g0.rows_out(), eps,
                                                             s.mean2(ki), s.invstd2(ki), a.gamma2, a.beta2, a.opmath);
    Backend::affine_act(h2k, scale2, shift2, kRelu6, at::Tensor(), a2);
    // the nested projections: each candidate adds its column block to the narrower one's result
    int64_t done = 0;
    at::Tensor previous;
    for (const auto& c : plan.by_kernel[ki]) {
      at::Tensor p = h3[c.index];
      if (!previous.defined()) {
        Backend::matmul(p, narrowed(a2, 1, 0, c.e), narrowed(a.wp, 1, 0, c.e).t());
      } else if (c.e == done) {
        p.copy_(previous);
      } else {
        at::addmm_out(p, previous, narrowed(a2, 1, done, c.e - done), narrowed(a.wp, 1, done, c.e - done).t());
      }
      previous = p;
      done = c.e;
    }
  }
  // out = sum_i h3_i * (w_i scale_i) + sum_i w_i shift_i (+ sum_i w_i x): BN3 and the weights
  // folded into one per-channel scale per candidate. BN3's statistics and coefficients are one
  // step for all candidates: on a GPU, where the alpha step waits on the host, a loop of small
  // ops per candidate was most of the launches.
  const int64_t c3 = g0.c_out, all3 = plan.candidates * c3;
  const at::Tensor w = weights.to(at::kDouble).unsqueeze(1);  // (candidates, 1)
  const at::Tensor sums3 = at::zeros({2 * all3}, s.all.options());  // one fill
  for (int64_t i = 0; i < plan.candidates; ++i) {
    Backend::row_stats(h3[i], candidate_part(sums3, i, c3), candidate_part(sums3, plan.candidates + i, c3));
  }
  auto [scale3, shift3] = bn_forward_coefficients<Backend>(narrowed(sums3, 0, 0, all3), narrowed(sums3, 0, all3, all3),
                                                           g0.rows_out(), eps, s.mean3(), s.invstd3(), a.gamma3,
                                                           a.beta3, at::kDouble);
  const at::Tensor coefficients = (scale3.view({plan.candidates, c3}) * w).to(a.opmath);
  at::Tensor out;
  for (int64_t i = 0; i < plan.candidates; ++i) {
    out = i == 0 ? h3[i] * coefficients[i] : out.addcmul_(h3[i], coefficients[i]);
  }
  out.add_((shift3.view({plan.candidates, c3}) * w).sum(0).to(a.opmath));
  if (has_residual(g0)) out.addcmul_(x_rows, w.sum().to(a.opmath));
  if (out.scalar_type() != x.scalar_type()) out = out.to(x.scalar_type());
  return {from_rows(out, g0.n, g0.ho, g0.wo),
          h1.defined() && !recompute ? from_rows(h1, g0.n, g0.h, g0.w) : at::empty({0}, x.options()),
          recompute ? at::empty({0}, x.options()) : h2, h3, s.all};
}

// -> (grad x (full: always; tail: empty without a residual), grad hidden (tail only), grad weights)
template <class Backend>
std::vector<at::Tensor> mixture_backward(const MixtureArgs& a, const at::Tensor& grad_out, const at::Tensor& x,
                                         const at::Tensor& hidden, const at::Tensor& weights,
                                         const at::Tensor& dw_weight, const at::Tensor& project_weight,
                                         const at::Tensor& saved_h1, const at::Tensor& saved_h2, const at::Tensor& h3,
                                         const at::Tensor& stats) {
  const MixturePlan& plan = a.plan;
  const Geometry& g0 = a.g0;
  const int64_t nk = static_cast<int64_t>(plan.kernels.size());
  const MixtureStats s(stats, plan, g0.c_out);
  // a forward with recompute kept neither the expansion nor the depthwise outputs: they come back
  // bit for bit (the same GEMM and kernels on the same inputs), and the saved statistics stand
  at::Tensor h1 = saved_h1;
  if (plan.expand && h1.numel() == 0) {
    at::Tensor h1_rows = Backend::empty({g0.rows_in(), plan.width}, x.options());
    // the forward's step, statistics and all (here unused), so that its kernel gives the bits
    const std::vector<at::Tensor> unused = zeroed_sums({plan.width, plan.width}, stats);
    product_stats<Backend>(h1_rows, as_rows(x.contiguous(at::MemoryFormat::ChannelsLast)),
                           narrowed(a.we, 0, 0, plan.width).t(), unused[0], unused[1]);
    h1 = from_rows(h1_rows, g0.n, g0.h, g0.w);
  }
  at::Tensor h2 = saved_h2;
  if (h2.numel() == 0) {
    h2 = Backend::empty({nk, g0.rows_out(), plan.width}, x.options());
    at::Tensor scale1, shift1, in;
    if (plan.expand) {
      std::tie(scale1, shift1) = affine_coefficients<Backend>(s.mean1(), s.invstd1(), a.gamma1, a.beta1, a.opmath);
      in = as_rows(h1).view({g0.n, g0.h, g0.w, plan.width});
    } else {
      in = as_nhwc_view(narrowed(hidden, 1, 0, plan.width));
    }
    mixture_depthwise<Backend>(a, x, dw_weight, project_weight, in, scale1, shift1, h2);
  }
  const at::Tensor grad_rows = as_rows(grad_out.contiguous(at::MemoryFormat::ChannelsLast));
  const at::Tensor w = weights.to(at::kDouble).unsqueeze(1);  // (candidates, 1)
  const bool residual = has_residual(g0);

  // d out / d w_i = <grad, BN3_i(h3_i) (+ x)>, from per-channel sums of grad and grad * h3_i
  at::Tensor grad_weights = at::zeros({plan.candidates}, stats.options());
  if (residual) {
    const std::vector<at::Tensor> sums = zeroed_sums({g0.c_out, g0.c_out}, stats);
    Backend::grad_sums(grad_rows, as_rows(x.contiguous(at::MemoryFormat::ChannelsLast)), at::Tensor(), at::Tensor(),
                       kIdentity, sums[0], sums[1], at::Tensor());
    grad_weights.add_(sums[1].sum());
  }
  // BN3's backward, with the upstream gradient w_i * grad: gh3_i = a_i grad + b_i h3_i + c_i; the
  // sums per candidate, the coefficients in one step for all (see mixture_forward)
  const int64_t c3 = g0.c_out, all3 = plan.candidates * c3;
  const at::Tensor sums3 = at::zeros({2 * all3}, stats.options());  // one fill
  for (int64_t i = 0; i < plan.candidates; ++i) {
    Backend::grad_sums(grad_rows, h3[i], at::Tensor(), at::Tensor(), kIdentity, candidate_part(sums3, i, c3),
                       candidate_part(sums3, plan.candidates + i, c3), at::Tensor());
  }
  const at::Tensor sg = narrowed(sums3, 0, 0, all3).view({plan.candidates, c3});
  const at::Tensor sgh = narrowed(sums3, 0, all3, all3).view({plan.candidates, c3});
  auto [scale3, shift3] = affine_coefficients<Backend>(s.mean3(), s.invstd3(), a.gamma3, a.beta3, at::kDouble);
  grad_weights.add_((scale3.view({plan.candidates, c3}) * sgh + shift3.view({plan.candidates, c3}) * sg).sum(1));
  BnGrad all = bn_grad<Backend>((sg * w).view({all3}), (sgh * w).view({all3}), s.mean3(), s.invstd3(), a.gamma3,
                                g0.rows_out(), a.opmath);
  all.a = (all.a.view({plan.candidates, c3}) * w.to(a.opmath)).view({all3});
  std::vector<BnGrad> bn3(plan.candidates);
  for (int64_t i = 0; i < plan.candidates; ++i) {
    bn3[i].a = candidate_part(all.a, i, c3), bn3[i].b = candidate_part(all.b, i, c3);
    bn3[i].c = candidate_part(all.c, i, c3);
  }

  // the gradient at each depthwise output (BN2's backward is applied on load, from these)
  at::Tensor ga2 = Backend::empty({nk, g0.rows_out(), plan.width}, x.options());
  at::Tensor suffix = Backend::empty({g0.rows_out(), g0.c_out}, x.options());
  at::Tensor term = Backend::empty({g0.rows_out(), g0.c_out}, x.options());
  std::vector<at::Tensor> ga2s, h2s, scale2s, shift2s, as, bs, cs;
  const at::Tensor sums2 = at::zeros({nk, 2, plan.width}, stats.options());  // one fill
  for (int64_t ki = 0; ki < nk; ++ki) {
    // column block [e_(j-1), e_j) of the projection's input gradient takes the gradients of every
    // candidate at least e_j wide: walk the candidates from the widest, summing as we go
    at::Tensor gak = ga2[ki];
    const auto& group = plan.by_kernel[ki];
    const int64_t last = static_cast<int64_t>(group.size()) - 1;
    if (group.back().e < plan.width) narrowed(gak, 1, group.back().e, plan.width - group.back().e).zero_();
    for (int64_t j = last; j >= 0; --j) {
      const auto& c = group[j];
      const BnGrad& b = bn3[c.index];
      Backend::grad_apply(grad_rows, h3[c.index], at::Tensor(), at::Tensor(), kIdentity, b.a, b.b, b.c,
                          j == last ? suffix : term);
      if (j < last) suffix.add_(term);
      const int64_t start = j == 0 ? 0 : group[j - 1].e;
      if (c.e > start) {
        at::Tensor block = narrowed(gak, 1, start, c.e - start);
        Backend::matmul(block, suffix, narrowed(a.wp, 1, start, c.e - start));
      }
    }
    const at::Tensor h2k = h2[ki];
    auto [scale2, shift2] = affine_coefficients<Backend>(s.mean2(ki), s.invstd2(ki), a.gamma2, a.beta2, a.opmath);
    const at::Tensor sg2 = sums2[ki][0], sgh2 = sums2[ki][1];
    Backend::grad_sums(gak, h2k, scale2, shift2, kRelu6, sg2, sgh2, at::Tensor());
    const BnGrad bn2 = bn_grad<Backend>(sg2, sgh2, s.mean2(ki), s.invstd2(ki), a.gamma2, g0.rows_out(), a.opmath);
    ga2s.push_back(gak), h2s.push_back(h2k), scale2s.push_back(scale2), shift2s.push_back(shift2);
    as.push_back(bn2.a), bs.push_back(bn2.b), cs.push_back(bn2.c);
  }
  // the gradient at the depthwise input, summed over the kernel sizes
  at::Tensor grad_in = Backend::empty({g0.rows_in(), plan.width}, x.options());
  const Geometry widest = a.geometry(x, dw_weight, project_weight, nk - 1);
  if (Backend::nested_depthwise_backward_fits(widest, x.scalar_type())) {  // reads only the output gradients
    Backend::depthwise_backward_nested(widest, plan.kernels, ga2s, h2s, scale2s, shift2s, as, bs, cs, a.dw, grad_in);
  } else {
    // the input is an argument of depthwise_backward, unread without weight gradients or BN1 on load
    const at::Tensor in = plan.expand ? as_nhwc_view(h1) : as_nhwc_view(narrowed(hidden, 1, 0, plan.width));
    at::Tensor grad_k = nk > 1 ? Backend::empty({g0.rows_in(), plan.width}, x.options()) : at::Tensor();
    const std::vector<at::Tensor> unused = zeroed_sums({plan.width, plan.width}, stats);
    for (int64_t ki = 0; ki < nk; ++ki) {
      Backend::depthwise_backward(a.geometry(x, dw_weight, project_weight, ki), ga2s[ki], h2s[ki], scale2s[ki],
                                  shift2s[ki], as[ki], bs[ki], cs[ki], in, at::Tensor(), at::Tensor(), a.dw,
                                  ki == 0 ? grad_in : grad_k, at::Tensor(), unused[0], unused[1]);
      if (ki > 0) grad_in.add_(grad_k);
    }
  }
  const at::Tensor w_sum = w.sum().to(x.scalar_type());
  if (!plan.expand) {
    at::Tensor grad_hidden = grad_in;
    if (plan.width < hidden.size(1)) {
      grad_hidden = at::zeros({g0.rows_in(), hidden.size(1)}, x.options());
      narrowed(grad_hidden, 1, 0, plan.width).copy_(grad_in);
    }
    at::Tensor grad_x = residual ? from_rows(grad_rows * w_sum, g0.n, g0.h, g0.w) : at::empty({0}, x.options());
    return {grad_x, from_rows(grad_hidden, g0.n, g0.h, g0.w), grad_weights.to(weights.scalar_type())};
  }
  // the expansion: ReLU6's mask and BN1's backward, then the GEMM back to x
  const at::Tensor h1_rows = as_rows(h1);
  auto [scale1, shift1] = affine_coefficients<Backend>(s.mean1(), s.invstd1(), a.gamma1, a.beta1, a.opmath);
  const std::vector<at::Tensor> sums1 = zeroed_sums({plan.width, plan.width}, stats);
  Backend::grad_sums(grad_in, h1_rows, scale1, shift1, kRelu6, sums1[0], sums1[1], at::Tensor());
  const BnGrad bn1 = bn_grad<Backend>(sums1[0], sums1[1], s.mean1(), s.invstd1(), a.gamma1, g0.rows_in(), a.opmath);
  Backend::grad_apply(grad_in, h1_rows, scale1, shift1, kRelu6, bn1.a, bn1.b, bn1.c, grad_in);
  at::Tensor grad_x = Backend::empty({g0.rows_in(), g0.c_in}, x.options());
  Backend::matmul(grad_x, grad_in, narrowed(a.we, 0, 0, plan.width));
  if (residual) grad_x.addcmul_(grad_rows, w_sum);
  return {from_rows(grad_x, g0.n, g0.h, g0.w), grad_weights.to(weights.scalar_type())};
}

// mixture_mbconv_forward -> (out, h1, h2, h3, stats)
template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mixture_mbconv_forward(
    const at::Tensor& x, const at::Tensor& expand_weight, const at::Tensor& weights, const at::Tensor& dw_weight,
    const at::Tensor& project_weight, const c10::optional<at::Tensor>& bn1_w, const c10::optional<at::Tensor>& bn1_b,
    const c10::optional<at::Tensor>& bn2_w, const c10::optional<at::Tensor>& bn2_b,
    const c10::optional<at::Tensor>& bn3_w, const c10::optional<at::Tensor>& bn3_b, at::IntArrayRef kernel_sizes,
    at::IntArrayRef expansions, int64_t stride, double eps, int64_t dilation, bool recompute) {
  const MixtureArgs a = mixture_args("fna_ext::mixture_mbconv_forward", x, expand_weight, at::Tensor(), weights,
                                     dw_weight, project_weight, bn1_w, bn1_b, bn2_w, bn2_b, bn3_w, bn3_b, kernel_sizes,
                                     expansions, stride, dilation);
  return mixture_forward<Backend>(a, x, at::Tensor(), weights, dw_weight, project_weight, eps, recompute);
}

// mixture_mbconv_backward -> [grad x, grad weights]
template <class Backend>
std::vector<at::Tensor> mixture_mbconv_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& expand_weight, const at::Tensor& weights,
    const at::Tensor& dw_weight, const at::Tensor& project_weight, const c10::optional<at::Tensor>& bn1_w,
    const c10::optional<at::Tensor>& bn1_b, const c10::optional<at::Tensor>& bn2_w,
    const c10::optional<at::Tensor>& bn2_b, const c10::optional<at::Tensor>& bn3_w,
    const c10::optional<at::Tensor>& bn3_b, const at::Tensor& h1, const at::Tensor& h2, const at::Tensor& h3,
    const at::Tensor& stats, at::IntArrayRef kernel_sizes, at::IntArrayRef expansions, int64_t stride,
    int64_t dilation) {
  const MixtureArgs a = mixture_args("fna_ext::mixture_mbconv_backward", x, expand_weight, at::Tensor(), weights,
                                     dw_weight, project_weight, bn1_w, bn1_b, bn2_w, bn2_b, bn3_w, bn3_b, kernel_sizes,
                                     expansions, stride, dilation);
  return mixture_backward<Backend>(a, grad_out, x, at::Tensor(), weights, dw_weight, project_weight, h1, h2, h3, stats);
}

// mixture_depthwise_project_forward -> (out, h2, h3, stats)
template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mixture_depthwise_project_forward(
    const at::Tensor& x, const at::Tensor& hidden, const at::Tensor& weights, const at::Tensor& dw_weight,
    const at::Tensor& project_weight, const c10::optional<at::Tensor>& bn2_w, const c10::optional<at::Tensor>& bn2_b,
    const c10::optional<at::Tensor>& bn3_w, const c10::optional<at::Tensor>& bn3_b, at::IntArrayRef kernel_sizes,
    at::IntArrayRef expansions, int64_t stride, double eps, int64_t dilation, bool recompute) {
  const MixtureArgs a = mixture_args("fna_ext::mixture_depthwise_project_forward", x, at::Tensor(), hidden, weights,
                                     dw_weight, project_weight, {}, {}, bn2_w, bn2_b, bn3_w, bn3_b, kernel_sizes,
                                     expansions, stride, dilation);
  auto [out, h1, h2, h3, stats] =
      mixture_forward<Backend>(a, x, hidden, weights, dw_weight, project_weight, eps, recompute);
  return {out, h2, h3, stats};
}

// mixture_depthwise_project_backward -> [grad x (empty without a residual), grad hidden, grad weights]
template <class Backend>
std::vector<at::Tensor> mixture_depthwise_project_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& hidden, const at::Tensor& weights,
    const at::Tensor& dw_weight, const at::Tensor& project_weight, const c10::optional<at::Tensor>& bn2_w,
    const c10::optional<at::Tensor>& bn2_b, const c10::optional<at::Tensor>& bn3_w,
    const c10::optional<at::Tensor>& bn3_b, const at::Tensor& h2, const at::Tensor& h3, const at::Tensor& stats,
    at::IntArrayRef kernel_sizes, at::IntArrayRef expansions, int64_t stride, int64_t dilation) {
  const MixtureArgs a = mixture_args("fna_ext::mixture_depthwise_project_backward", x, at::Tensor(), hidden, weights,
                                     dw_weight, project_weight, {}, {}, bn2_w, bn2_b, bn3_w, bn3_b, kernel_sizes,
                                     expansions, stride, dilation);
  return mixture_backward<Backend>(a, grad_out, x, hidden, weights, dw_weight, project_weight, at::Tensor(), h2, h3,
                                   stats);
}

// fna_ext::mixture_stats_size: the stats tensor's length for these candidates, from the plan and
// MixtureStats the kernels allocate with.
inline int64_t mixture_stats_size(at::IntArrayRef kernel_sizes, at::IntArrayRef expansions, int64_t out_channels,
                                  bool expand) {
  const MixturePlan plan = make_plan("fna_ext::mixture_stats_size", kernel_sizes, expansions,
                                     std::numeric_limits<int64_t>::max(), expand);
  return MixtureStats::size(plan, out_channels);
}

template <class Backend>
void register_mixture_kernels(torch::Library& m) {
  m.impl("mixture_mbconv_forward", &mixture_mbconv_forward<Backend>);
  m.impl("mixture_mbconv_backward", &mixture_mbconv_backward<Backend>);
  m.impl("mixture_depthwise_project_forward", &mixture_depthwise_project_forward<Backend>);
  m.impl("mixture_depthwise_project_backward", &mixture_depthwise_project_backward<Backend>);
}

}  // namespace mbconv
}  // namespace fna_ext
