// einmoe/decoding/greedy.hpp - Mesh TF's greedy decoding (argmax, or
// sampling with a temperature), with forced ids.
//
// Example:
//   auto logits_fn = [&](index_t step, const TensorView<const std::int64_t>& ids,  // [..., length]
//                        std::vector<Tensor<float>>& states) {
//     return model(step, ids, states);                                    // [..., vocab]
//   };
//   GreedyOptions o;  o.temperature = 0;                                   // argmax
//   auto r = greedy_decode<float>(logits_fn, initial_ids, o);              // r.ids [..., length]
//
// Step i picks argmax(logits + temperature * Gumbel) (temperature 0: plain
// argmax, ties -> lower id); where forced_ids[..., i] is nonzero it is used
// instead; the id is written at position i. Decoding stops when every row
// holds eos_id somewhere or the length is reached.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "einmoe/core/random.hpp"
#include "einmoe/ops/index.hpp"

namespace einmoe {

template <class T>
using GreedyLogitsFn =
    std::function<Tensor<T>(index_t step, const TensorView<const std::int64_t>& ids, std::vector<Tensor<T>>& states)>;

struct GreedyOptions {
  double temperature = 0.0;  ///< 0: argmax; > 0: sample from softmax(logits / temperature)
  std::int64_t eos_id = 1;
  std::uint64_t seed = 0;  ///< for sampling
};

struct GreedyResult {
  Tensor<std::int64_t> ids;  ///< [..., length]
  index_t steps = 0;         ///< loop iterations run
};

/// Greedy decoding; see the file comment. forced_ids: optional [..., length].
/// Throws shape_error for ids, forced ids or logits of the wrong shape, value_error for a
/// negative temperature; and what logits_fn throws.
template <class T>
GreedyResult greedy_decode(const GreedyLogitsFn<T>& logits_fn, const TensorView<const std::int64_t>& initial_ids,
                           const GreedyOptions& opt = {}, const OptionalView<std::int64_t>& forced_ids = std::nullopt,
                           std::vector<Tensor<T>> states = {}) {
  const char* op = "greedy_decode";
  if (initial_ids.rank() < 1) detail::raise<shape_error>(op, ": initial ids must be [..., length]");
  if (!(opt.temperature >= 0)) detail::raise<value_error>(op, ": temperature ", opt.temperature, " must be >= 0");
  if (forced_ids && forced_ids->shape() != initial_ids.shape())
    detail::raise<shape_error>(op, ": forced ids ", forced_ids->shape(), " do not match the ids ", initial_ids.shape());
  const Dim length = initial_ids.shape()[initial_ids.rank() - 1];
  const index_t L = length.size, R = L ? initial_ids.size() / L : 0;
  GreedyResult r;
  r.ids = initial_ids.copy();
  Rng rng(opt.seed);
  auto all_have_eos = [&] {
    for (index_t row = 0; row < R; ++row) {
      bool has = false;
      for (index_t p = 0; p < L && !has; ++p) has = r.ids[row * L + p] == opt.eos_id;
      if (!has) return false;
    }
    return true;
  };
  index_t step = 0;
  while (step < L && !all_have_eos()) {
    const Tensor<T> logits = logits_fn(step, r.ids, states);
    if (logits.rank() != initial_ids.rank() || logits.size() == 0 ||
        logits.size() / logits.shape()[logits.rank() - 1].size != R)
      detail::raise<shape_error>(op, ": logits ", logits.shape(), " must be [..., vocab] for ids ",
                                 initial_ids.shape());
    const index_t V = logits.shape()[logits.rank() - 1].size;
    for (index_t row = 0; row < R; ++row) {
      const T* l = logits.data() + row * V;
      index_t best = 0;
      T best_v = T(0);
      for (index_t v = 0; v < V; ++v) {
        T x = l[v];
        if (opt.temperature > 0) x += static_cast<T>(opt.temperature * rng.gumbel());
        if (v == 0 || detail::ranks_before(x, best_v)) best = v, best_v = x;
      }
      std::int64_t id = best;
      if (forced_ids && (*forced_ids)[row * L + step] != 0) id = (*forced_ids)[row * L + step];
      r.ids[row * L + step] = id;
    }
    ++step;
  }
  r.steps = step;
  return r;
}

}  // namespace einmoe
