// einmoe/ops/einsum.hpp - Mesh TF's einsum, lowered to batched GEMM.
//
// Example:
//   // x: [group, length, model], w: [model, hidden]
//   auto h = einsum({x, w}, Shape::parse("group:4,length:128,hidden:256"));
//   auto y = einsum({x, w}, {"model"});     // reduced_dims form: [group, length, hidden]
//   auto z = einsum({x, w});                // dims in exactly one input: [group, length, hidden]
//
// Rules (Mesh TF's): dims missing from the output are summed; with only
// reduced_dims the output is every input dim in order of first appearance
// minus those; with neither, the output is the dims that occur in exactly one
// input, in order of first appearance. Every output dim must occur in some
// input, and a name with two sizes is a shape_error naming both inputs.
//
// Lowering: a dim that only one operand has and nobody needs is summed out of
// that operand first; then each pair of operands becomes one batched GEMM,
// with its dims sorted into batch (both, kept), left-free, right-free and
// summed (both, not kept). Of the dim orders that make the operands GEMM-ready
// the one that copies the least is used; a transposed operand is read through
// a column-major Map, so only operands whose dims interleave are transposed.
// Longer chains contract the pair with the smallest result first.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <list>
#include <string>
#include <vector>

#include "einmoe/core/tensor.hpp"
#include "einmoe/detail/gemm.hpp"
#include "einmoe/ops/manip.hpp"
#include "einmoe/ops/reduce.hpp"

namespace einmoe {

namespace detail {

using NameList = std::vector<std::string>;

inline bool contains(const NameList& v, const std::string& n) { return std::find(v.begin(), v.end(), n) != v.end(); }

/// The names of `s` that satisfy `pred`, in s's order.
template <class P>
NameList names_where(const Shape& s, P&& pred) {
  NameList out;
  for (const auto& d : s)
    if (pred(d.name)) out.push_back(d.name);
  return out;
}

inline NameList join(std::initializer_list<const NameList*> parts) {
  NameList out;
  for (const auto* p : parts) out.insert(out.end(), p->begin(), p->end());
  return out;
}

inline index_t product(const Shape& s, const NameList& names) {
  index_t p = 1;
  for (const auto& n : names) p *= s.size_of(n);
  return p;
}

inline Shape shape_of(const Shape& a, const Shape& b, const NameList& names) {
  std::vector<Dim> dims;
  for (const auto& n : names) dims.push_back(a.has(n) ? a.get(n) : b.get(n));
  return Shape(std::move(dims));
}

/// Contracts a pair. `keep`: the names needed later (final output or other
/// operands). `final_out`: when not null, the result must have this shape.
template <class T>
Tensor<T> contract_pair(const TensorView<const T>& a_in, const TensorView<const T>& b_in, const NameList& keep,
                        const Shape* final_out) {
  // Sum out dims that only one operand has and nobody needs.
  auto lonely = [&](const Shape& s, const Shape& other) {
    return names_where(s, [&](const std::string& n) { return !other.has(n) && !contains(keep, n); });
  };
  const NameList drop_a = lonely(a_in.shape(), b_in.shape());
  const NameList drop_b = lonely(b_in.shape(), a_in.shape());
  Tensor<T> a_red, b_red;
  if (!drop_a.empty()) a_red = sum(a_in, Names(drop_a));
  if (!drop_b.empty()) b_red = sum(b_in, Names(drop_b));
  const TensorView<const T>& a = drop_a.empty() ? a_in : a_red;
  const TensorView<const T>& b = drop_b.empty() ? b_in : b_red;
  const Shape& sa = a.shape();
  const Shape& sb = b.shape();

  auto in_a = [&](const std::string& n) { return sa.has(n); };
  auto in_b = [&](const std::string& n) { return sb.has(n); };
  auto kept = [&](const std::string& n) { return contains(keep, n); };
  // Candidate orders for each class of dims.
  std::vector<NameList> batch_c, m_c, n_c, s_c;
  auto add = [](std::vector<NameList>& c, NameList v) {
    if (std::find(c.begin(), c.end(), v) == c.end()) c.push_back(std::move(v));
  };
  add(batch_c, names_where(sa, [&](const std::string& n) { return in_b(n) && kept(n); }));
  add(batch_c, names_where(sb, [&](const std::string& n) { return in_a(n) && kept(n); }));
  add(m_c, names_where(sa, [&](const std::string& n) { return !in_b(n); }));
  add(n_c, names_where(sb, [&](const std::string& n) { return !in_a(n); }));
  add(s_c, names_where(sa, [&](const std::string& n) { return in_b(n) && !kept(n); }));
  add(s_c, names_where(sb, [&](const std::string& n) { return in_a(n) && !kept(n); }));
  if (final_out) {
    add(batch_c, names_where(*final_out, [&](const std::string& n) { return in_a(n) && in_b(n); }));
    add(m_c, names_where(*final_out, [&](const std::string& n) { return in_a(n) && !in_b(n); }));
    add(n_c, names_where(*final_out, [&](const std::string& n) { return in_b(n) && !in_a(n); }));
  }

  struct Plan {
    NameList batch, m, n, s;
    int a_mode = 0, b_mode = 0;  // 1 row-major, 2 column-major (transposed), 0 copy
    bool c_row = true;           // C buffer is [batch, m, n] (else [batch, n, m])
    bool c_transpose = false;    // final transpose to final_out needed
    index_t cost = 0;
  };
  const NameList out_names = final_out ? final_out->names() : NameList{};
  Plan best;
  best.cost = -1;
  for (const auto& bt : batch_c)
    for (const auto& mm : m_c)
      for (const auto& nn : n_c)
        for (const auto& ss : s_c) {
          Plan p{bt, mm, nn, ss};
          const NameList an = sa.names(), bn = sb.names();
          p.a_mode = an == join({&bt, &mm, &ss}) ? 1 : an == join({&bt, &ss, &mm}) ? 2 : 0;
          p.b_mode = bn == join({&bt, &ss, &nn}) ? 1 : bn == join({&bt, &nn, &ss}) ? 2 : 0;
          if (p.a_mode == 0) p.cost += a.size();
          if (p.b_mode == 0) p.cost += b.size();
          if (final_out) {
            if (out_names == join({&bt, &mm, &nn})) {
              p.c_row = true;
            } else if (out_names == join({&bt, &nn, &mm})) {
              p.c_row = false;
            } else {
              p.c_transpose = true;
              p.cost += final_out->num_elements();
            }
          }
          if (best.cost < 0 || p.cost < best.cost) best = p;
        }

  const index_t nb = product(sa, best.batch), m = product(sa, best.m), n = product(sb, best.n), k = product(sa, best.s);
  Tensor<T> a_copy, b_copy;
  if (best.a_mode == 0) a_copy = transpose(a, Names(join({&best.batch, &best.m, &best.s})));
  if (best.b_mode == 0) b_copy = transpose(b, Names(join({&best.batch, &best.s, &best.n})));
  const T* pa = best.a_mode == 0 ? a_copy.data() : a.data();
  const T* pb = best.b_mode == 0 ? b_copy.data() : b.data();
  const Shape cs =
      shape_of(sa, sb, best.c_row ? join({&best.batch, &best.m, &best.n}) : join({&best.batch, &best.n, &best.m}));
  Tensor<T> c(cs, uninitialized);
  gemm_batched(nb, m, n, k, pa, MatLayout{best.a_mode != 2}, pb, MatLayout{best.b_mode != 2}, c.data(),
               MatLayout{best.c_row});
  if (best.c_transpose) return transpose(c, *final_out);
  return c;
}

template <class T>
Tensor<T> einsum_impl(const std::vector<const TensorView<const T>*>& xs, const Shape* output_shape,
                      const Names* reduced) {
  if (xs.empty()) raise<value_error>("einsum: no inputs");
  DimRegistry reg("einsum");
  for (std::size_t i = 0; i < xs.size(); ++i) reg.add(xs[i]->shape(), "input " + std::to_string(i));
  Shape out;
  if (output_shape) {
    for (const auto& d : *output_shape)
      if (!reg.has(d.name)) raise<shape_error>("einsum: output dim \"", d.name, "\" is in no input");
    reg.add(*output_shape, "the output shape");
    out = *output_shape;
  } else if (reduced) {
    for (const auto& n : reduced->list)
      if (!reg.has(n)) raise<shape_error>("einsum: reduced dim \"", n, "\" is in no input");
    std::vector<Dim> dims;
    for (const auto& d : reg.dims())
      if (!contains(reduced->list, d.name)) dims.push_back(d);
    out = Shape(std::move(dims));
  } else {
    std::vector<Dim> dims;
    for (const auto& d : reg.dims()) {
      int count = 0;
      for (const auto* x : xs) count += x->shape().has(d.name) ? 1 : 0;
      if (count == 1) dims.push_back(d);
    }
    out = Shape(std::move(dims));
  }
  if (xs.size() == 1) return sum_to(*xs[0], out);

  std::list<Tensor<T>> temps;  // intermediate results (stable addresses)
  std::vector<const TensorView<const T>*> ops = xs;
  const NameList out_names = out.names();
  auto needed = [&](std::size_t i, std::size_t j) {  // names needed outside pair (i, j)
    NameList keep = out_names;
    for (std::size_t t = 0; t < ops.size(); ++t)
      if (t != i && t != j)
        for (const auto& d : ops[t]->shape())
          if (!contains(keep, d.name)) keep.push_back(d.name);
    return keep;
  };
  while (ops.size() > 2) {
    std::size_t bi = 0, bj = 1;
    index_t best = -1;
    for (std::size_t i = 0; i < ops.size(); ++i)
      for (std::size_t j = i + 1; j < ops.size(); ++j) {
        const NameList keep = needed(i, j);
        index_t size = 1;
        for (const auto& d : reg.dims())
          if (contains(keep, d.name) && (ops[i]->shape().has(d.name) || ops[j]->shape().has(d.name))) size *= d.size;
        if (best < 0 || size < best) best = size, bi = i, bj = j;
      }
    temps.push_back(contract_pair(*ops[bi], *ops[bj], needed(bi, bj), nullptr));
    ops.erase(ops.begin() + static_cast<std::ptrdiff_t>(bj));
    ops.erase(ops.begin() + static_cast<std::ptrdiff_t>(bi));
    ops.push_back(&temps.back());
  }
  return contract_pair(*ops[0], *ops[1], out_names, &out);
}

template <class T>
std::vector<const TensorView<const T>*> pointers(const std::vector<TensorRef<T>>& xs) {
  std::vector<const TensorView<const T>*> p;
  for (const auto& r : xs) p.push_back(&r.get());
  return p;
}

}  // namespace detail

/// einsum(xs, output_shape): [inputs...] -> [output_shape]; dims not in the
/// output are summed.
/// Throws value_error for no inputs, shape_error if a dim has two sizes or an output dim is
/// in no input.
template <class T>
Tensor<T> einsum(const std::vector<TensorRef<T>>& xs, const Shape& output_shape) {
  return detail::einsum_impl(detail::pointers(xs), &output_shape, static_cast<const Names*>(nullptr));
}
/// einsum(xs, reduced_dims): the output is every input dim (first-appearance
/// order) except `reduced_dims`, which are summed.
/// Throws value_error for no inputs, shape_error if a dim has two sizes or a reduced dim is
/// in no input.
template <class T>
Tensor<T> einsum(const std::vector<TensorRef<T>>& xs, const Names& reduced_dims) {
  return detail::einsum_impl(detail::pointers(xs), static_cast<const Shape*>(nullptr), &reduced_dims);
}
/// einsum(xs): the output is the dims that occur in exactly one input
/// (first-appearance order); the others are summed.
/// Throws value_error for no inputs, shape_error if a dim has two sizes.
template <class T>
Tensor<T> einsum(const std::vector<TensorRef<T>>& xs) {
  return detail::einsum_impl(detail::pointers(xs), static_cast<const Shape*>(nullptr),
                             static_cast<const Names*>(nullptr));
}

// Braced-list forms, `einsum({x, w}, shape)`, with the shapes of the forms
// above, for each element type (a braced list cannot deduce a template's T).
// They are templates on a dummy parameter only so that a translation unit
// instantiates the GEMM kernels of the types it actually uses.
#define EINMOE_EINSUM_LIST(T)                                                           \
  template <int = 0>                                                                    \
  Tensor<T> einsum(std::initializer_list<TensorRef<T>> xs, const Shape& output_shape) { \
    return einsum(std::vector<TensorRef<T>>(xs), output_shape);                         \
  }                                                                                     \
  template <int = 0>                                                                    \
  Tensor<T> einsum(std::initializer_list<TensorRef<T>> xs, const Names& reduced_dims) { \
    return einsum(std::vector<TensorRef<T>>(xs), reduced_dims);                         \
  }                                                                                     \
  template <int = 0>                                                                    \
  Tensor<T> einsum(std::initializer_list<TensorRef<T>> xs) {                            \
    return einsum(std::vector<TensorRef<T>>(xs));                                       \
  }
EINMOE_EINSUM_LIST(float)
EINMOE_EINSUM_LIST(double)
EINMOE_EINSUM_LIST(std::int32_t)
EINMOE_EINSUM_LIST(std::int64_t)
#undef EINMOE_EINSUM_LIST

}  // namespace einmoe
