// einmoe/routers/sentence_gating.hpp - lingvo's sentence- and task-level top-2
// gating: every token of a segment is routed by its segment's mean embedding
// (SentenceTop2Gating) or by a given task embedding (TaskTop2Gating).
//
// Example:
//   // x [<batch>, group, model], segment_ids [<batch>, group], wg [model, experts]
//   auto emb = sentence_embeddings(x, segment_ids);     // [<batch>, group, model]
//   auto r = sentence_top2_gating(wg, x, segment_ids, opt);
//   auto t = task_top2_gating(wg, task_embeddings, opt);
//
// Segment ids follow lingvo's GetSentenceEmbeddings exactly: id 0 is padding
// (its embedding is zero) and ids are global over all tokens of the call -
// the same id in two groups is one segment, averaged over both. Give each
// group its own ids to keep segments apart. Ids lie in [0, N] for N tokens:
// id N is padding too, as in lingvo (which shifts ids down by one and sends
// id 0 to N - 1, so ids 0 and N share the segment whose mean it zeroes).
//
// local_dispatch = false gates all tokens as one group (capacity is then per
// expert for the whole batch): the plan has no batch dims and one group of
// all tokens, in row-major order.
#pragma once

#include <string>
#include <type_traits>
#include <vector>

#include "einmoe/ops/einsum.hpp"
#include "einmoe/routers/top2_gating.hpp"

namespace einmoe {

/// Mean embedding of each token's segment: inputs [<batch>, group, model],
/// segment_ids (integers in [0, N] for N tokens) [<batch>, group] ->
/// [<batch>, group, model]; rows of segments 0 and N (padding) are zero.
/// Throws shape_error when the ids' dims are not the inputs' token dims,
/// value_error for an id outside [0, N].
template <class T, class I>
Tensor<T> sentence_embeddings(const TensorView<const T>& inputs, const TensorView<const I>& segment_ids,
                              const MoEDims& dims = {}) {
  static_assert(std::is_integral<I>::value, "sentence_embeddings: segment ids must be integers");
  const char* op = "sentence_embeddings";
  const std::string& model_dim = dims.model;
  const Dim model = inputs.shape().get(model_dim, op);
  const Shape tokens = inputs.shape().without({model_dim});
  if (segment_ids.rank() != tokens.rank() || !segment_ids.shape().is_subset_of(tokens))
    detail::raise<shape_error>(op, ": segment ids ", segment_ids.shape(), " do not match the tokens ", tokens);
  Tensor<T> x_hold;
  Tensor<I> id_hold;
  const TensorView<const T> x = detail::in_order(inputs, tokens.with(model), x_hold);
  const TensorView<const I> ids = detail::in_order(segment_ids, tokens, id_hold);
  const index_t N = tokens.num_elements(), M = model.size;
  std::vector<T> sums(detail::uz(N * M), T(0));
  std::vector<index_t> counts(detail::uz(N), 0);
  for (index_t t = 0; t < N; ++t) {
    const auto id = static_cast<index_t>(ids[t]);
    if (id < 0 || id > N)
      detail::raise<value_error>(op, ": segment id ", id, " (token ", t, ") is outside [0, ", N, "]");
    if (id == 0 || id == N) continue;  // padding
    ++counts[detail::uz(id)];
    for (index_t m = 0; m < M; ++m) sums[detail::uz(id * M + m)] += x[t * M + m];
  }
  Tensor<T> out(tokens.with(model));
  for (index_t t = 0; t < N; ++t) {
    const auto id = static_cast<index_t>(ids[t]);
    if (id == 0 || id == N) continue;
    const T n = static_cast<T>(counts[detail::uz(id)]);
    for (index_t m = 0; m < M; ++m) out[t * M + m] = sums[detail::uz(id * M + m)] / n;
  }
  return transpose(std::move(out), inputs.shape());
}

namespace detail {
/// Gating on embeddings e [<batch>, group, model] with w [model, experts].
template <class T>
RouterResult<T> gate_embeddings(const TensorView<const T>& w, const TensorView<const T>& emb, const Top2Options& o,
                                bool local_dispatch, const GatingInputs<T>& extras, const MoEDims& dims) {
  const Dim experts = w.shape().get(dims.experts, "top2 gating on embeddings");
  const Shape logits_shape = emb.shape().without({dims.model}).with(experts);
  Tensor<T> logits = einsum({emb, w}, logits_shape);
  if (local_dispatch) return top2_gating(logits, o, extras, dims);
  // One group of all tokens.
  const Shape tokens = logits_shape.without({dims.experts});
  Tensor<T> hold;
  const TensorView<const T> flat =
      reshape(in_order(logits, tokens.with(experts), hold), Shape{Dim(dims.group, tokens.num_elements()), experts});
  GatingInputs<T> fx;
  Tensor<T> holds[3];
  auto flatten = [&](const std::optional<TensorView<const T>>& t, const Shape& want, const Shape& to,
                     Tensor<T>& h) -> std::optional<TensorView<const T>> {
    if (!t) return std::nullopt;
    h = transpose(*t, want);
    return reshape(TensorView<const T>(h), to);
  };
  const Shape ftok{Dim(dims.group, tokens.num_elements())};
  fx.importance = flatten(extras.importance, tokens, ftok, holds[0]);
  fx.uniform = flatten(extras.uniform, tokens, ftok, holds[1]);
  fx.gumbel = flatten(extras.gumbel, tokens.with(experts), ftok.with(experts), holds[2]);
  return top2_gating(flat, o, fx, dims);
}
}  // namespace detail

/// lingvo SentenceTop2Gating: w [model, experts], inputs [<batch>, group,
/// model], segment_ids [<batch>, group] -> top-2 routing of every token by
/// its segment's mean embedding. Throws as sentence_embeddings and
/// top2_gating.
template <class T, class I>
RouterResult<T> sentence_top2_gating(const TensorView<const T>& w, const TensorView<const T>& inputs,
                                     const TensorView<const I>& segment_ids, const Top2Options& o,
                                     bool local_dispatch = true, const GatingInputs<T>& extras = {},
                                     const MoEDims& dims = {}) {
  return detail::gate_embeddings(w, sentence_embeddings(inputs, segment_ids, dims), o, local_dispatch, extras, dims);
}

/// lingvo TaskTop2Gating: w [model, experts], task_embeddings [<batch>,
/// group, model] -> top-2 routing of every token by its task embedding.
/// Throws as top2_gating.
template <class T>
RouterResult<T> task_top2_gating(const TensorView<const T>& w, const TensorView<const T>& task_embeddings,
                                 const Top2Options& o, bool local_dispatch = true, const GatingInputs<T>& extras = {},
                                 const MoEDims& dims = {}) {
  return detail::gate_embeddings(w, task_embeddings, o, local_dispatch, extras, dims);
}

}  // namespace einmoe
