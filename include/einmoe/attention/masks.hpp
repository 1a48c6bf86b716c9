// einmoe/attention/masks.hpp - attention masks as named tensors.
//
// Two representations, convertible both ways:
//   visibility  Tensor<bool>, true where the query may attend to the memory position.
//   bias        Tensor<T>, added to attention logits: 0 where visible, `masked`
//               (-1e9 by default, as Mesh TF; or -inf) elsewhere.
// Query positions run along `length`, memory positions along `memory_length`
// (Mesh TF's names); every function takes the names as arguments.
//
// Example:
//   auto m = causal_mask(Dim{"length", 4});                 // [length=4, memory_length=4] bool
//   auto b = to_bias<float>(m);                              // 0 / -1e9
//   auto p = masked_softmax(logits, m, "memory_length");     // logits [heads, length, memory_length]
//
// Sources: Mesh TF's attention_mask_autoregressive, attention_mask_ignore_padding,
// attention_mask_same_segment and attention_bias_local_block (both forms).
// Beyond them, what xformers/FlexAttention users expect: sliding windows,
// bottom-right-aligned causal masks for cached decoding, prefix-LM,
// block-diagonal masks for packed sequences, AND/OR combination.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "einmoe/core/checked.hpp"
#include "einmoe/detail/axis.hpp"
#include "einmoe/detail/strided.hpp"
#include "einmoe/ops/elementwise.hpp"
#include "einmoe/ops/index.hpp"
#include "einmoe/ops/manip.hpp"
#include "einmoe/ops/softmax.hpp"

namespace einmoe {

/// Mesh TF's default masked bias.
inline constexpr double kMaskedBias = -1e9;

// ---- conversions ------------------------------------------------------------

/// Visibility -> additive bias: 0 where visible, `masked` elsewhere;
/// [dims] bool -> [dims] T.
/// Throws nothing but std::bad_alloc.
template <class T>
Tensor<T> to_bias(const TensorView<const bool>& visible, T masked = static_cast<T>(kMaskedBias)) {
  return map(visible, [masked](bool v) { return v ? T(0) : masked; });
}

/// Bias -> visibility: visible where bias > masked / 2 (so both -1e9 and -inf
/// biases convert back; small additive biases count as visible);
/// [dims] T -> [dims] bool.
/// Throws nothing but std::bad_alloc.
template <class T>
Tensor<bool> to_visibility(const TensorView<const T>& bias, T masked = static_cast<T>(kMaskedBias)) {
  const T cut = masked / T(2);
  return map(bias, [cut](T v) { return v > cut; });
}

/// Renames the query dim to its memory twin (Mesh TF's
/// rename_length_to_memory_length): [..., length] -> [..., memory_length].
/// Throws shape_error if x lacks `length` or already has `memory_length`.
template <class T>
TensorView<const T> rename_length_to_memory_length(const TensorView<const T>& x, const std::string& length = "length",
                                                   const std::string& memory_length = "memory_length") {
  return rename(x, length, memory_length);
}

/// AND / OR of masks, broadcast by name: [a] & [b] -> broadcast shape.
/// Throws shape_error if a dim has different sizes in a and b.
inline Tensor<bool> mask_and(const TensorView<const bool>& a, const TensorView<const bool>& b) {
  return logical_and(a, b);
}
inline Tensor<bool> mask_or(const TensorView<const bool>& a, const TensorView<const bool>& b) {
  return logical_or(a, b);
}

namespace detail {
/// [length, memory_length] bool from a predicate on (query i, memory j).
template <class F>
Tensor<bool> mask_2d(const Dim& length, const Dim& memory, F&& visible) {
  if (length.name == memory.name)
    raise<shape_error>("attention mask: query and memory dims are both \"", length.name, "\"; rename one");
  Tensor<bool> out(Shape{length, memory}, uninitialized);
  for (index_t i = 0; i < length.size; ++i)
    for (index_t j = 0; j < memory.size; ++j) out[i * memory.size + j] = visible(i, j);
  return out;
}
}  // namespace detail

// ---- Mesh TF's masks --------------------------------------------------------

/// Causal: query i sees memory j <= i. [length, memory_length] with
/// memory_length the same size as length.
/// Throws shape_error if `length` has the memory dim's name.
inline Tensor<bool> causal_mask(const Dim& length, const std::string& memory_length = "memory_length") {
  return detail::mask_2d(length, Dim(memory_length, length.size), [](index_t i, index_t j) { return j <= i; });
}

/// Mesh TF attention_mask_autoregressive on positions: query_pos [..., length]
/// (integers) -> [..., length, memory_length], visible where
/// query_pos >= memory_pos (memory_pos = query_pos renamed).
/// Throws shape_error if query_pos lacks `length` or already has `memory_length`.
template <class I>
Tensor<bool> autoregressive_mask(const TensorView<const I>& query_pos, const std::string& length = "length",
                                 const std::string& memory_length = "memory_length") {
  static_assert(std::is_integral<I>::value, "autoregressive_mask: positions must be integers");
  const TensorView<const I> memory_pos = rename_length_to_memory_length(query_pos, length, memory_length);
  return logical_not(less(query_pos, memory_pos));
}

/// Mesh TF attention_mask_ignore_padding: ids [..., length] -> visibility
/// [..., memory_length], false where the id is 0 (padding).
/// Throws shape_error if ids lack `length` or already have `memory_length`.
template <class I>
Tensor<bool> padding_mask(const TensorView<const I>& ids, const std::string& length = "length",
                          const std::string& memory_length = "memory_length") {
  static_assert(std::is_integral<I>::value, "padding_mask: ids must be integers");
  return not_equal(rename_length_to_memory_length(ids, length, memory_length), I(0));
}

/// Mesh TF attention_mask_same_segment: query segment ids [..., length] and
/// memory segment ids [..., length] as the source takes them (renamed to
/// memory_length, as it does) or [..., memory_length]; default: the query ids
/// -> [..., length, memory_length], visible where the ids are equal.
/// Throws shape_error if the query ids lack `length`, the memory ids have both dims or
/// lack `memory_length`, or a dim has two sizes.
template <class I>
Tensor<bool> same_segment_mask(const TensorView<const I>& query_segment,
                               const OptionalView<I>& memory_segment = std::nullopt,
                               const std::string& length = "length",
                               const std::string& memory_length = "memory_length") {
  static_assert(std::is_integral<I>::value, "same_segment_mask: segment ids must be integers");
  query_segment.shape().require(length, "same_segment_mask");
  const TensorView<const I> m = memory_segment ? *memory_segment : query_segment;
  if (m.shape().has(length) && m.shape().has(memory_length))
    detail::raise<shape_error>("same_segment_mask: memory segment ids ", m.shape(), " have both \"", length,
                               "\" and \"", memory_length, "\"");
  const TensorView<const I> mem = m.shape().has(length) ? rename_length_to_memory_length(m, length, memory_length) : m;
  mem.shape().require(memory_length, "same_segment_mask");
  // [..., length] vs [..., memory_length]: the result is [..., length, memory_length].
  const Shape out = broadcast_shape(query_segment.shape(), mem.shape(), "same_segment_mask");
  return equal(query_segment, mem, out);
}

/// Mesh TF attention_bias_local_block (current form): [block_length,
/// memory_length = 2 * block_length]; the previous block (first half) is fully
/// visible, the current block (second half) causal.
/// Throws shape_error if 2 x block_length overflows or the dims share a name.
inline Tensor<bool> local_block_mask(const Dim& block_length, const std::string& memory_length = "memory_length") {
  const index_t n = block_length.size;
  const index_t m = detail::mul_size(2, n, "local_block_mask: memory_length = 2 x ", block_length);
  return detail::mask_2d(block_length, Dim(memory_length, m),
                         [n](index_t i, index_t j) { return j < n || j - n <= i; });
}

/// The older attention_bias_local_block: [block_length, memory_length] (any
/// memory size), visible where memory position <= query position.
/// Throws shape_error if the two dims share a name.
inline Tensor<bool> local_block_mask_v1(const Dim& block_length, const Dim& memory_length) {
  return detail::mask_2d(block_length, memory_length, [](index_t i, index_t j) { return j <= i; });
}

// ---- beyond the sources ------------------------------------------------------

/// Sliding window: query i sees memory j with i - left <= j <= i + right
/// (positions aligned at the start). [length, memory_length].
/// Throws value_error for a negative radius, shape_error if the dims share a name.
inline Tensor<bool> sliding_window_mask(const Dim& length, const Dim& memory_length, index_t left, index_t right) {
  if (left < 0 || right < 0)
    detail::raise<value_error>("sliding_window_mask: window radii ", left, ", ", right, " must be >= 0");
  return detail::mask_2d(length, memory_length, [=](index_t i, index_t j) { return j >= i - left && j <= i + right; });
}

/// Causal with the query block at an explicit offset into the memory:
/// query i (absolute position offset + i) sees memory j <= offset + i.
/// -> [length, memory_length].
/// Throws shape_error if the dims share a name.
inline Tensor<bool> causal_mask_with_offset(const Dim& length, const Dim& memory_length, index_t offset) {
  return detail::mask_2d(length, memory_length, [=](index_t i, index_t j) { return j <= offset + i; });
}

/// Causal aligned to the bottom right, for cached decoding: the last query
/// is the last memory position (offset = memory - queries). With fewer memory
/// than query positions, early queries see nothing (fully masked rows).
/// -> [length, memory_length].
/// Throws shape_error if the dims share a name.
inline Tensor<bool> causal_mask_bottom_right(const Dim& length, const Dim& memory_length) {
  return causal_mask_with_offset(length, memory_length, memory_length.size - length.size);
}

/// Prefix LM: the first `prefix` positions are visible to every query, the
/// rest causally. [length, memory_length] (same sizes).
/// Throws value_error for a negative prefix, shape_error if the dims share a name.
inline Tensor<bool> prefix_lm_mask(const Dim& length, index_t prefix,
                                   const std::string& memory_length = "memory_length") {
  if (prefix < 0) detail::raise<value_error>("prefix_lm_mask: prefix length ", prefix, " is negative");
  return detail::mask_2d(length, Dim(memory_length, length.size),
                         [=](index_t i, index_t j) { return j < prefix || j <= i; });
}

/// Block-diagonal for packed sequences: lengths of consecutive sequences
/// along `length`; a query sees the memory positions of its own sequence
/// (causally if `causal`). Positions past the sum of lengths are padding and
/// see nothing. [length, memory_length] (same sizes).
/// Throws value_error for a negative length, shape_error if the lengths sum past `length`.
inline Tensor<bool> block_diagonal_mask(const Dim& length, const std::vector<index_t>& sequence_lengths,
                                        bool causal = false, const std::string& memory_length = "memory_length") {
  std::vector<index_t> seq(detail::uz(length.size), -1);
  index_t at = 0, id = 0;
  for (index_t n : sequence_lengths) {
    if (n < 0) detail::raise<value_error>("block_diagonal_mask: sequence length ", n, " is negative");
    if (at + n > length.size)
      detail::raise<shape_error>("block_diagonal_mask: sequence lengths sum past dim \"", length.name, "\" of size ",
                                 length.size);
    for (index_t k = 0; k < n; ++k) seq[detail::uz(at + k)] = id;
    at += n;
    ++id;
  }
  return detail::mask_2d(length, Dim(memory_length, length.size), [&](index_t i, index_t j) {
    return seq[detail::uz(i)] >= 0 && seq[detail::uz(i)] == seq[detail::uz(j)] && (!causal || j <= i);
  });
}

// ---- using masks -------------------------------------------------------------

/// Softmax of logits along `dim` over visible positions only; the mask's
/// dims must all be dims of the logits (it broadcasts over the rest). A fully
/// masked row gives all zeros (not NaN, not uniform): the query attends to
/// nothing and its output is zero. (Adding a -1e9 bias instead gives a
/// uniform row there, as Mesh TF does.)
///   logits [batch, heads, length, memory_length], mask [length, memory_length]
/// Throws shape_error if the mask has a dim the logits lack (or of another size),
/// or the logits lack `dim`.
template <class T>
Tensor<T> masked_softmax(const TensorView<const T>& logits, const TensorView<const bool>& visible,
                         const std::string& dim) {
  static_assert(std::is_floating_point<T>::value, "masked_softmax: needs a floating-point tensor");
  if (!visible.shape().is_subset_of(logits.shape()))
    detail::raise<shape_error>("masked_softmax: mask ", visible.shape(), " has dims not in the logits ",
                               logits.shape());
  const T ninf = -std::numeric_limits<T>::infinity();
  const Shape& s = logits.shape();
  // Masked logits straight into the output (the mask broadcast by strides),
  // then an in-place softmax per row: one allocation, no masked copy.
  Tensor<T> out(s, uninitialized);
  detail::StridedLoop<3> loop{detail::sizes_of(s), {s.strides(), s.strides(), detail::strides_in(visible.shape(), s)}};
  loop.for_each_row([&](index_t n, const std::array<index_t, 3>& base, const std::array<index_t, 3>& step) {
    for (index_t i = 0; i < n; ++i)
      out[base[0] + i * step[0]] = visible[base[2] + i * step[2]] ? logits[base[1] + i * step[1]] : ninf;
  });
  const detail::AxisSplit ax(s, dim, "masked_softmax");
  for (index_t o = 0; o < ax.outer; ++o)
    for (index_t k = 0; k < ax.inner; ++k) {
      T* y = out.data() + ax.at(o, 0, k);
      if (detail::row_max(y, ax.n, ax.inner) == ninf) {
        for (index_t i = 0; i < ax.n; ++i) y[i * ax.inner] = T(0);
      } else {
        detail::softmax_row(y, y, ax.n, ax.inner);  // in place
      }
    }
  return out;
}

}  // namespace einmoe
