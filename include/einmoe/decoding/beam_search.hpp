// einmoe/decoding/beam_search.hpp - Mesh TF's beam search with length
// penalties and its exact termination rule.
//
// Example:
//   auto logits_fn = [&](index_t step, const TensorView<const std::int64_t>& ids,   // [batch, beam, length]
//                        std::vector<Tensor<float>>& states) {            // each [batch, beam, ...]
//     return model(step, ids, states);                                   // [batch, beam, vocab]
//   };
//   auto r = beam_search<float>(logits_fn, initial_ids, /*alpha=*/0.6f);  // initial_ids [batch, beam, length]
//   Tensor<std::int64_t> best = r.ids;   // [batch, beam, length], best first
//   Tensor<float> scores = r.scores;     // [batch, beam]
//
// Each step i (Mesh TF's grow_topk / grow_alive / grow_finished):
//   log_probs = log_softmax(logits) + alive log-probs, lp = ((5 + (i + 1)) / 6)^alpha,
//   scores = log_probs / lp; the top 2*beam over beam x vocab (ties -> lower
//   flat index) give beam = id / vocab, token = id mod vocab, written at
//   position i; finished = (token == eos).
//   Alive: finished candidates get -1e7 added; the best `beam` are kept with
//   their log-probs (top score * lp). Finished: unfinished candidates get -1e7
//   added; with the current finished set, the best `beam` are kept with their
//   penalized scores. The states are reordered with the chosen alive beams.
// The loop runs while is_finished(...) says so; rows that never finish fall
// back to their alive sequences and log-probs. Positions are 0-based: the
// token of step i goes to position i.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <vector>

#include "einmoe/core/tensor.hpp"
#include "einmoe/ops/softmax.hpp"

namespace einmoe {

/// Mesh TF's INF for beam scores.
inline constexpr double kBeamInf = 1e7;

template <class T>
using BeamLogitsFn =
    std::function<Tensor<T>(index_t step, const TensorView<const std::int64_t>& ids, std::vector<Tensor<T>>& states)>;

struct BeamSearchOptions {
  std::int64_t eos_id = 1;
  bool stop_early = true;      ///< stop once the best sequences are provably found
  index_t decode_length = -1;  ///< maximum steps; -1 or more than the length dim: the length dim
};

template <class T>
struct BeamSearchResult {
  Tensor<std::int64_t> ids;  ///< [batch, beam, length]
  Tensor<T> scores;          ///< [batch, beam]: penalized scores (or alive log-probs for rows that never finished)
  index_t steps = 0;         ///< loop iterations run
};

/// Mesh TF's termination rule: true while decoding should go on.
/// alive_log_probs, finished_scores [batch, beam]; finished_flags [batch, beam].
/// Continue while i < decode_length and, with stop_early, not every batch row
/// has (lowest finished score) > (alive log-prob of beam 0) / ((5 +
/// decode_length) / 6)^alpha; a row with nothing finished counts as -1e7.
/// Throws shape_error if the two tensors are not [batch, beam] of one batch.
template <class T>
bool is_finished(index_t i, index_t decode_length, const TensorView<const T>& alive_log_probs,
                 const TensorView<const T>& finished_scores, const TensorView<const bool>& finished_flags, T alpha,
                 bool stop_early = true) {
  if (alive_log_probs.rank() != 2 || finished_scores.shape() != alive_log_probs.shape() ||
      finished_flags.shape() != alive_log_probs.shape())
    detail::raise<shape_error>("is_finished: alive log-probs ", alive_log_probs.shape(), ", finished scores ",
                               finished_scores.shape(), " and flags ", finished_flags.shape(),
                               " must all be [batch, beam]");
  if (!stop_early) return i < decode_length;
  const index_t B = alive_log_probs.shape()[0].size, K = alive_log_probs.shape()[1].size;
  const T max_length_penalty = std::pow((T(5) + static_cast<T>(decode_length)) / T(6), alpha);
  const T inf = static_cast<T>(kBeamInf);
  bool bound_is_met = true;
  for (index_t b = 0; b < B && K > 0; ++b) {
    const T lower_bound_alive = alive_log_probs[b * K] / max_length_penalty;
    T lowest = std::numeric_limits<T>::infinity();
    bool any = false;
    for (index_t k = 0; k < K; ++k) {
      const bool f = finished_flags[b * K + k];
      lowest = std::min(lowest, finished_scores[b * K + k] * (f ? T(1) : T(0)));
      any = any || f;
    }
    lowest += (any ? T(0) : T(1)) * -inf;
    bound_is_met = bound_is_met && lowest > lower_bound_alive;
  }
  return i < decode_length && !bound_is_met;
}

namespace detail {
/// Indices of the k largest of n values (ties -> lower index), best first.
template <class T>
void top_indices(const T* v, index_t n, index_t k, std::vector<index_t>& out, std::vector<index_t>& scratch) {
  scratch.resize(uz(n));
  std::iota(scratch.begin(), scratch.end(), index_t{0});
  auto before = [v](index_t a, index_t b) {
    if (ranks_before(v[a], v[b])) return true;
    if (ranks_before(v[b], v[a])) return false;
    return a < b;
  };
  std::partial_sort(scratch.begin(), scratch.begin() + k, scratch.end(), before);
  out.assign(scratch.begin(), scratch.begin() + k);
}

/// new[b, k, ...] = old[b, src[b * K + k], ...] for a [batch, beam, ...] tensor.
template <class T>
Tensor<T> reorder_beams(const TensorView<const T>& x, const std::vector<index_t>& src, index_t B, index_t K,
                        const char* what) {
  if (x.rank() < 2 || x.shape()[0].size != B || x.shape()[1].size != K)
    raise<shape_error>("beam_search: ", what, " ", x.shape(), " does not start with [batch=", B, ", beam=", K, "]");
  Tensor<T> out(x.shape(), uninitialized);
  const index_t row = B * K > 0 ? x.size() / (B * K) : 0;
  for (index_t b = 0; b < B; ++b)
    for (index_t k = 0; k < K; ++k)
      std::copy_n(x.data() + (b * K + src[uz(b * K + k)]) * row, row, out.data() + (b * K + k) * row);
  return out;
}
}  // namespace detail

/// Beam search; see the file comment. initial_ids [batch, beam, length];
/// states: tensors [batch, beam, ...] the logits function may update; they
/// are reordered with the surviving beams after every step.
/// Throws shape_error for ids, logits or states of the wrong shape, value_error for no
/// beam, a non-finite alpha or one whose length penalty overflows; and what logits_fn throws.
template <class T>
BeamSearchResult<T> beam_search(const BeamLogitsFn<T>& logits_fn, const TensorView<const std::int64_t>& initial_ids,
                                T alpha, const BeamSearchOptions& opt = {}, std::vector<Tensor<T>> states = {}) {
  static_assert(std::is_floating_point<T>::value, "beam_search: T must be float or double");
  const char* op = "beam_search";
  if (initial_ids.rank() != 3)
    detail::raise<shape_error>(op, ": initial ids ", initial_ids.shape(), " must be [batch, beam, length]");
  const Dim batch = initial_ids.shape()[0], beam = initial_ids.shape()[1], length = initial_ids.shape()[2];
  const index_t B = batch.size, K = beam.size, L = length.size;
  if (K < 1) detail::raise<value_error>(op, ": dim \"", beam.name, "\" must have at least one beam");
  if (!std::isfinite(alpha)) detail::raise<value_error>(op, ": alpha ", alpha, " is not finite");
  const index_t decode_length = opt.decode_length < 0 ? L : std::min(opt.decode_length, L);
  // Scores are divided by ((5 + i) / 6)^alpha for i = 1 .. decode_length;
  // an alpha that makes one of them overflow or vanish would give NaN or
  // infinite scores. The extremes are at i = 1 and i = decode_length.
  for (const index_t len : {index_t{1}, std::max<index_t>(decode_length, 1)}) {
    const T lp = std::pow((T(5) + static_cast<T>(len)) / T(6), alpha);
    if (!std::isfinite(lp) || !(lp >= std::numeric_limits<T>::min()))
      detail::raise<value_error>(op, ": alpha ", alpha, " makes the length penalty ((5 + ", len, ") / 6)^alpha = ", lp,
                                 ", which scores cannot be divided by");
  }
  const T inf = static_cast<T>(kBeamInf);

  Tensor<std::int64_t> alive_seq(initial_ids), finished_seq(initial_ids);
  Tensor<T> alive_log_probs(Shape{batch, beam}, -inf);
  for (index_t b = 0; b < B; ++b) alive_log_probs[b * K] = T(0);
  Tensor<T> finished_scores(Shape{batch, beam}, -inf);
  Tensor<bool> finished_flags(Shape{batch, beam}, false);

  std::vector<index_t> top, scratch, alive_pick, fin_pick, src(detail::uz(B * K));
  std::vector<T> cand_scores, cand_log_probs, merged;
  std::vector<std::int64_t> cand_token;
  std::vector<index_t> cand_beam;
  std::vector<char> cand_finished;
  index_t i = 0;
  while (is_finished(i, decode_length, alive_log_probs, finished_scores, finished_flags, alpha, opt.stop_early)) {
    const Tensor<T> logits = logits_fn(i, alive_seq, states);
    if (logits.rank() != 3 || logits.shape()[0] != batch || logits.shape()[1] != beam)
      detail::raise<shape_error>(op, ": logits ", logits.shape(), " must be [", batch, ", ", beam, ", vocab]");
    const index_t V = logits.shape()[2].size;
    if (V < 2)
      detail::raise<shape_error>(op, ": vocab dim \"", logits.shape()[2].name, "\" of size ", V, " is smaller than 2");
    const Tensor<T> lsm = log_softmax(logits, logits.shape()[2].name);
    const T lp = std::pow((T(5) + static_cast<T>(i + 1)) / T(6), alpha);
    Tensor<std::int64_t> new_alive(alive_seq.shape(), uninitialized), new_finished(finished_seq.shape(), uninitialized);
    Tensor<T> new_alive_lp(alive_log_probs.shape(), uninitialized),
        new_fin_scores(finished_scores.shape(), uninitialized);
    Tensor<bool> new_fin_flags(finished_flags.shape(), uninitialized);
    std::vector<T> curr(detail::uz(K * V));
    for (index_t b = 0; b < B; ++b) {
      // grow_topk: the best 2*beam extensions of the alive beams
      for (index_t k = 0; k < K; ++k)
        for (index_t v = 0; v < V; ++v)
          curr[detail::uz(k * V + v)] = (lsm[(b * K + k) * V + v] + alive_log_probs[b * K + k]) / lp;
      detail::top_indices(curr.data(), K * V, 2 * K, top, scratch);
      cand_scores.resize(detail::uz(2 * K));
      cand_log_probs.resize(detail::uz(2 * K));
      cand_token.resize(detail::uz(2 * K));
      cand_beam.resize(detail::uz(2 * K));
      cand_finished.resize(detail::uz(2 * K));
      for (index_t j = 0; j < 2 * K; ++j) {
        const index_t id = top[detail::uz(j)];
        cand_scores[detail::uz(j)] = curr[detail::uz(id)];
        cand_log_probs[detail::uz(j)] = curr[detail::uz(id)] * lp;
        cand_beam[detail::uz(j)] = id / V;
        cand_token[detail::uz(j)] = id % V;
        cand_finished[detail::uz(j)] = cand_token[detail::uz(j)] == opt.eos_id;
      }
      auto cand_seq = [&](index_t j, std::int64_t* dst) {
        std::copy_n(alive_seq.data() + (b * K + cand_beam[detail::uz(j)]) * L, L, dst);
        if (i < L) dst[i] = cand_token[detail::uz(j)];
      };
      // grow_alive
      merged.resize(detail::uz(2 * K));
      for (index_t j = 0; j < 2 * K; ++j)
        merged[detail::uz(j)] = cand_scores[detail::uz(j)] + (cand_finished[detail::uz(j)] ? -inf : T(0));
      detail::top_indices(merged.data(), 2 * K, K, alive_pick, scratch);
      for (index_t k = 0; k < K; ++k) {
        const index_t j = alive_pick[detail::uz(k)];
        cand_seq(j, new_alive.data() + (b * K + k) * L);
        new_alive_lp[b * K + k] = cand_log_probs[detail::uz(j)];
        src[detail::uz(b * K + k)] = cand_beam[detail::uz(j)];
      }
      // grow_finished: [current finished (K), candidates (2K)]
      merged.resize(detail::uz(3 * K));
      for (index_t k = 0; k < K; ++k) merged[detail::uz(k)] = finished_scores[b * K + k];
      for (index_t j = 0; j < 2 * K; ++j)
        merged[detail::uz(K + j)] = cand_scores[detail::uz(j)] + (cand_finished[detail::uz(j)] ? T(0) : -inf);
      detail::top_indices(merged.data(), 3 * K, K, fin_pick, scratch);
      for (index_t k = 0; k < K; ++k) {
        const index_t j = fin_pick[detail::uz(k)];
        std::int64_t* dst = new_finished.data() + (b * K + k) * L;
        if (j < K) {
          std::copy_n(finished_seq.data() + (b * K + j) * L, L, dst);
          new_fin_flags[b * K + k] = finished_flags[b * K + j];
        } else {
          cand_seq(j - K, dst);
          new_fin_flags[b * K + k] = cand_finished[detail::uz(j - K)] != 0;
        }
        new_fin_scores[b * K + k] = merged[detail::uz(j)];
      }
    }
    alive_seq = std::move(new_alive);
    alive_log_probs = std::move(new_alive_lp);
    finished_seq = std::move(new_finished);
    finished_scores = std::move(new_fin_scores);
    finished_flags = std::move(new_fin_flags);
    for (std::size_t s = 0; s < states.size(); ++s) states[s] = detail::reorder_beams(states[s], src, B, K, "state");
    ++i;
  }

  BeamSearchResult<T> r;
  r.ids = std::move(finished_seq);
  r.scores = std::move(finished_scores);
  r.steps = i;
  for (index_t b = 0; b < B; ++b) {
    bool any = false;
    for (index_t k = 0; k < K; ++k) any = any || finished_flags[b * K + k];
    if (any) continue;
    std::copy_n(alive_seq.data() + b * K * L, K * L, r.ids.data() + b * K * L);
    std::copy_n(alive_log_probs.data() + b * K, K, r.scores.data() + b * K);
  }
  return r;
}

}  // namespace einmoe
