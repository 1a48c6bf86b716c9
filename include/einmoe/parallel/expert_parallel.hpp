// einmoe/parallel/expert_parallel.hpp - an MoE layer whose experts are spread
// over the ranks of an MPI communicator (expert parallelism).
//
// Example:
//   // after MPI_Init; every rank passes the same weights and options
//   ExpertParallelMoE<float> layer(MPI_COMM_WORLD, weights, opt);
//   MoEResult<float> out = layer.forward(my_groups);   // [<batch>, group, model]: this rank's groups
//   Tensor<float> y = out.outputs;                     // this rank's outputs
//   double aux = out.aux_loss;                         // global: over every rank's groups (z_loss, stats too)
//
// Rank r of P owns the experts [E r / P, E (r + 1) / P) (contiguous blocks;
// when P does not divide E the first blocks are one expert smaller) and lays
// out only their weights. The router and the shared expert are replicated;
// every rank routes its own groups (routing is per group, so it is exactly
// the single-process routing). Then:
//   1. the kept rows are sorted by expert (so by owner rank), in (group,
//      slot) order within each expert, as the single-process layer sorts them;
//   2. per-expert row counts go to the owners, then the rows themselves, by
//      the chosen exchange (exchange.hpp: MPI_Alltoallv of the rows, padded
//      capacity blocks by MPI_Alltoall, or two-level through the node). Row
//      messages use a one-row datatype, so counts are rows, not elements:
//      2^31 rows per message before an error, never an overflow;
//   3. the owner runs each expert on its rows from rank 0, then rank 1, ...:
//      with groups split contiguously over the ranks this is the
//      single-process row order, so the kernels see the same row blocks;
//   4. the results travel back along the reversed plan and are combined with
//      the gate weights, which never left their rank; the shared expert runs
//      locally.
// With the default exchange only routed rows travel (k M sizeof(T) bytes per
// token per layer, each way, for top-k), never [E, C, M] padded buffers. Losses and statistics are
// gathered over the communicator and finished in group order, so every rank
// sees the global aux loss, z-loss and per-expert load.
//
// Equality: when rank r holds the r-th contiguous share of the groups, the
// outputs, losses and statistics are bitwise those of the single-process
// MoELayer on all groups (any P, any thread count); with another split the
// routing is identical and outputs agree to rounding.
//
// Errors never hang: every check that can fail on one rank (weights, options,
// inputs) is agreed on with the others before any data moves, and all ranks
// throw the failing rank's error, as its type, with its message prefixed by
// its rank; ranks that disagree (layers, group sizes) are an mpi_error on
// every rank. Not supported: an inter-communicator, dropout, the dense
// oracle, top-2 gating extras (importance, uniform, gumbel draws).
//
// forward_into runs in stages, each a member function: route (MoELayer's
// own router stage), global losses and statistics, the count exchange, the
// row exchange, this rank's experts, the return, the combine.
#pragma once

#include <mpi.h>

#include <chrono>
#include <climits>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "einmoe/detail/mpi.hpp"
#include "einmoe/moe/moe_layer.hpp"
#include "einmoe/ops/manip.hpp"
#include "einmoe/parallel/exchange.hpp"

namespace einmoe {

/// Bytes and rows one forward pass moved, and where its time went (this rank).
struct ExpertParallelStats {
  index_t rows_sent = 0,
          rows_received = 0;  ///< rows to the experts' owners / for this rank's experts (own rank included)
  std::size_t bytes_sent = 0, bytes_received = 0;  ///< of those rows; the results travel the same amounts back
  double route_ms = 0, exchange_ms = 0, experts_ms = 0, combine_ms = 0;
};

namespace detail {
/// Rank r's share of E experts over P ranks: [E r / P, E (r + 1) / P).
inline std::vector<index_t> expert_blocks(index_t E, int P) {
  std::vector<index_t> first(uz(P + 1));
  for (int r = 0; r <= P; ++r) first[uz(r)] = E * r / P;
  return first;
}

/// The slice [e0, e1) of every expert weight along the experts dim.
template <class S>
struct ExpertSlice {
  std::vector<Tensor<S>> held;
  ExpertWeights<S> w;
  ExpertSlice(const ExpertWeights<S>& all, const std::string& ed, index_t e0, index_t e1) {
    held.reserve(6);
    auto cut = [&](const TensorView<const S>& t) {
      held.push_back(slice(t, ed, e0, e1 - e0));
      return TensorView<const S>(held.back());
    };
    auto cut_opt = [&](const std::optional<TensorView<const S>>& t) {
      return t ? std::optional<TensorView<const S>>(cut(*t)) : std::nullopt;
    };
    w = {cut(all.wi), cut(all.wo), cut_opt(all.wi_gate), cut_opt(all.bi), cut_opt(all.bi_gate), cut_opt(all.bo)};
  }
};
}  // namespace detail

/// The expert-parallel MoE layer (see the file comment). T is float or
/// double. Movable, not copyable.
template <class T>
class ExpertParallelMoE {
 public:
  /// Every rank passes the same (full) weights and options; each lays out
  /// only its own experts. `ep` chooses how rows travel (exchange.hpp).
  /// Collective: all ranks throw the same error if any rank's weights or
  /// options are bad (shape_error / value_error) or disagree with the
  /// others' (mpi_error).
  template <class S>
  ExpertParallelMoE(MPI_Comm comm, const MoEWeights<S>& w, MoEOptions options, ExpertParallelOptions ep = {})
      : comm_(comm), opt_(std::move(options)), ep_(ep), work_(std::make_unique<Work>()) {
    int inter = 0;
    detail::mpi_check(MPI_Comm_test_inter(comm, &inter), "MPI_Comm_test_inter");
    if (inter) detail::raise<value_error>("expert parallel: an inter-communicator is not supported");
    MPI_Comm_rank(comm, &rank_);
    MPI_Comm_size(comm, &size_);
    detail::agreed(comm_, [&] { lay_out(w); });
    check_ranks_agree();
    if (ep_.exchange == Exchange::hierarchical) {
      std::string failure;
      try {
        two_level_ = detail::TwoLevelExchange(comm_, detail::node_labels(comm_, ep_.ranks_per_node));
      } catch (const error& e) {  // the same on every rank: the labels are
        failure = e.what();       // all-gathered before anything can fail
      }
      detail::agree(comm_, failure, detail::ErrorKind::value);
    }
  }

  /// How rows travel; for the hierarchical exchange, the nodes it found.
  /// Never throws.
  const ExpertParallelOptions& exchange() const { return ep_; }
  int nodes() const { return ep_.exchange == Exchange::hierarchical ? two_level_.nodes() : 0; }

  /// inputs [<batch>, group, model] (this rank's groups; ungrouped inputs
  /// are grouped as MoELayer groups them) -> this rank's outputs, global
  /// losses and statistics. Collective; throws as forward_into.
  MoEResult<T> forward(const TensorView<const T>& inputs) const {
    MoEResult<T> out;
    forward_into(out, inputs);
    return out;
  }

  /// Random draws are fresh per call as in MoELayer::forward_into (call n
  /// draws from Rng::call_seed(seed, n)), so call n equals call n of an
  /// MoELayer with the same options. Collective: an error on one rank
  /// (inputs whose dims disagree with the weights, bad logits) is the same
  /// error on every rank; group sizes that differ between ranks are an
  /// mpi_error.
  void forward_into(MoEResult<T>& out, const TensorView<const T>& inputs) const;

  /// Forward calls made so far (the same on every rank).
  /// Never throws.
  std::uint64_t calls() const { return work_->calls; }
  /// Makes the next forward call number n; call on every rank.
  /// Never throws.
  void set_calls(std::uint64_t n) { work_->calls = n; }

  /// logits [<batch>, group, experts] = x [<batch>, group, model] . wg, as
  /// MoELayer::router_logits computes them (local: no communication).
  /// Throws shape_error for inputs without the group or model dim.
  Tensor<T> router_logits(const TensorView<const T>& x) const {
    detail::RouteStage<T> st;
    x.shape().require(opt_.dims.group, "router_logits");
    router_.logits_of(st, x, opt_);
    return std::move(st.logits);
  }

  /// This rank's experts: [first_expert(), first_expert() + local_experts()).
  /// Never throws.
  index_t first_expert() const { return first_[detail::uz(rank_)]; }
  index_t local_experts() const { return first_[detail::uz(rank_ + 1)] - first_[detail::uz(rank_)]; }
  int rank() const { return rank_; }
  int ranks() const { return size_; }
  const PackedExperts<T>& experts() const { return experts_; }
  /// What the last forward pass moved, and its time split.
  /// Never throws.
  const ExpertParallelStats& last() const { return work_->last; }

 private:
  /// The scratch and the state of one forward pass (reused across calls).
  struct Work {
    detail::RouteStage<T> route;
    detail::ExpertBuffers<T> mine;   // this rank's routed rows (single-process layout)
    detail::ExpertBuffers<T> local;  // the rows that arrived for this rank's experts
    SharedExpertWorkspace<T> shared;
    detail::AlignedVector<T> send, recv, back, ret, s1, s2;
    detail::AlignedVector<std::int64_t> counts, got, count_s1, count_s2;
    std::vector<index_t> pos, at;
    std::vector<int> sc, sd, rc, rd;
    detail::TwoLevelPlan count_plan, row_plan;
    LossParts<T> parts;
    std::vector<std::int64_t> stat_sums, stat_all;
    index_t G = 0, S = 0, g_first = 0, g_total = 0, R = 0, recv_rows = 0, B = 0, Lmax = 0;
    index_t send_rows = 0, recv_slots = 0;
    ExpertParallelStats last;
    std::uint64_t calls = 0;  // collective calls: every rank counts the same
  };

  template <class S>
  void lay_out(const MoEWeights<S>& w) {
    const char* op = "ExpertParallelMoE";
    if (opt_.dense) detail::raise<value_error>(op, ": the dense oracle runs on one process (dense = false)");
    if (opt_.dropout != 0.0) detail::raise<value_error>(op, ": no dropout in the expert-parallel layer");
    router_ = detail::RouterBank<T>(w.wg, opt_, op);
    const index_t E = router_.experts.size;
    first_ = detail::expert_blocks(E, size_);
    const std::string& ed = opt_.dims.experts;
    if (w.experts.wi.size_of(ed) != E)
      detail::raise<shape_error>(op, ": dim \"", ed, "\" has size ", E, " in wg but ", w.experts.wi.size_of(ed),
                                 " in wi");
    const detail::ExpertSlice<S> mine(w.experts, ed, first_[detail::uz(rank_)], first_[detail::uz(rank_ + 1)]);
    experts_ = PackedExperts<T>(mine.w, detail::expert_options(opt_));
    if (experts_.model() != router_.model)
      detail::raise<shape_error>(op, ": dim \"", opt_.dims.model, "\" has size ", router_.model.size, " in wg but ",
                                 experts_.model().size, " in wi");
    hidden_ = experts_.hidden().size;
    if (w.shared) shared_ = SharedExpert<T>(*w.shared, router_.model, detail::expert_options(opt_));
    check_router_options(opt_.router, E, op);
  }

  /// Every rank must hold the same layer: mpi_error naming what differs.
  void check_ranks_agree() const {
    const std::vector<std::int64_t> sig{router_.experts.size,
                                        router_.model.size,
                                        hidden_,
                                        static_cast<std::int64_t>(opt_.router.index()),
                                        static_cast<std::int64_t>(opt_.precision),
                                        static_cast<std::int64_t>(shared_.empty()),
                                        static_cast<std::int64_t>(experts_.gated()),
                                        static_cast<std::int64_t>(ep_.exchange),
                                        ep_.ranks_per_node};
    const char* names[] = {"experts",       "model",         "hidden",   "router",        "precision",
                           "shared expert", "gated experts", "exchange", "ranks_per_node"};
    std::vector<std::int64_t> all;
    detail::allgather_v(comm_, sig, all, MPI_INT64_T);
    std::string diff;
    for (int r = 0; r < size_ && diff.empty(); ++r)
      for (std::size_t i = 0; i < sig.size() && diff.empty(); ++i)
        if (all[detail::uz(r) * sig.size() + i] != all[i])
          diff = detail::cat("ExpertParallelMoE: the ranks' layers differ in ", names[i], " (rank 0: ", all[i],
                             ", rank ", r, ": ", all[detail::uz(r) * sig.size() + i], ")");
    detail::agree(comm_, rank_ == 0 ? diff : std::string(), detail::ErrorKind::mpi);
  }

  void route(Work& ws, const TensorView<const T>& inputs, std::uint64_t call) const;
  void global_losses_and_stats(Work& ws, MoEResult<T>& out) const;
  void exchange_counts(Work& ws) const;
  void place_rows(Work& ws) const;
  void exchange_rows(Work& ws, MPI_Datatype row) const;
  void run_experts(Work& ws) const;
  void return_rows(Work& ws, MPI_Datatype row) const;
  void combine(Work& ws, MoEResult<T>& out, const Shape& inputs) const;

  index_t rows_for(index_t q) const {  // this rank's routed rows for rank q's experts
    const auto& off = work_->mine.offset;
    return off[detail::uz(first_[detail::uz(q + 1)])] - off[detail::uz(first_[detail::uz(q)])];
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  MoEOptions opt_;
  ExpertParallelOptions ep_;
  detail::TwoLevelExchange two_level_;
  detail::RouterBank<T> router_;
  PackedExperts<T> experts_;
  SharedExpert<T> shared_;
  index_t hidden_ = 0;
  std::vector<index_t> first_;  // [P + 1] expert blocks
  std::unique_ptr<Work> work_;
};

template <class T>
void ExpertParallelMoE<T>::forward_into(MoEResult<T>& out, const TensorView<const T>& inputs) const {
  using clock = std::chrono::steady_clock;
  auto ms = [](clock::time_point a, clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  };
  Work& ws = *work_;
  const auto t0 = clock::now();
  route(ws, inputs, ws.calls++);
  global_losses_and_stats(ws, out);
  const auto t1 = clock::now();
  exchange_counts(ws);
  place_rows(ws);
  MPI_Datatype row;
  const index_t M = router_.model.size;
  detail::mpi_check(
      MPI_Type_contiguous(detail::mpi_count(std::max<index_t>(M, 1), "values per row"), detail::mpi_type<T>(), &row),
      "MPI_Type_contiguous");
  MPI_Type_commit(&row);
  struct TypeGuard {
    MPI_Datatype* t;
    ~TypeGuard() { MPI_Type_free(t); }
  } guard{&row};
  exchange_rows(ws, row);
  const auto t2 = clock::now();
  run_experts(ws);
  const auto t3 = clock::now();
  return_rows(ws, row);
  const auto t4 = clock::now();
  combine(ws, out, inputs.shape());
  const auto t5 = clock::now();
  ExpertParallelStats& l = ws.last;
  l.rows_sent = ws.R, l.rows_received = ws.recv_rows;
  l.bytes_sent = static_cast<std::size_t>(ws.send_rows * M) * sizeof(T);
  l.bytes_received = static_cast<std::size_t>(ws.recv_slots * M) * sizeof(T);
  l.route_ms = ms(t0, t1), l.exchange_ms = ms(t1, t2) + ms(t3, t4), l.experts_ms = ms(t2, t3),
  l.combine_ms = ms(t4, t5);
}

/// Stage 1: this rank's groups through MoELayer's router stage; the draws
/// of random policies continue after the earlier ranks' groups. Group sizes
/// must agree (one layer over all groups).
template <class T>
void ExpertParallelMoE<T>::route(Work& ws, const TensorView<const T>& inputs, std::uint64_t call) const {
  detail::RouteStage<T>& st = ws.route;
  detail::agreed(comm_, [&] {
    router_.logits_of(st, inputs, opt_);
    const Shape& xs = st.in.x.shape();  // [<batch>, group, model]
    ws.S = xs[xs.rank() - 2].size;
    ws.G = xs.without_dim(opt_.dims.group).without_dim(opt_.dims.model).num_elements();
  });
  std::int64_t g_local = ws.G, g_first = 0, g_total = 0;
  detail::mpi_check(MPI_Exscan(&g_local, &g_first, 1, MPI_INT64_T, MPI_SUM, comm_), "MPI_Exscan");
  detail::mpi_check(MPI_Allreduce(&g_local, &g_total, 1, MPI_INT64_T, MPI_SUM, comm_), "MPI_Allreduce");
  ws.g_first = rank_ == 0 ? 0 : g_first, ws.g_total = g_total;
  detail::agreed(comm_, [&] {
    route_into(st.routed, st.logits, opt_.router, GatingInputs<T>{}, opt_.dims, RouteCall{call, ws.g_first}, st.router);
    detail::expert_rows(st.routed.plan, hidden_, ws.mine);
  });
  std::vector<std::int64_t> s{ws.S}, all;
  detail::allgather_v(comm_, s, all, MPI_INT64_T);
  std::string bad;
  for (int q = 0; q < size_ && bad.empty(); ++q)
    if (all[detail::uz(q)] != all[0])
      bad = detail::cat("moe_forward: group size ", all[detail::uz(q)], " on rank ", q, " but ", all[0], " on rank 0");
  detail::agree(comm_, rank_ == 0 ? bad : std::string(), detail::ErrorKind::mpi);
}

/// Stage 2: the losses and statistics over every rank's groups, finished in
/// group (= rank) order, as one process finishes them.
template <class T>
void ExpertParallelMoE<T>::global_losses_and_stats(Work& ws, MoEResult<T>& out) const {
  const index_t E = router_.experts.size;
  const RouterResult<T>& r = ws.route.routed;
  detail::allgather_v(comm_, r.parts.aux, ws.parts.aux, detail::mpi_type<T>());
  detail::allgather_v(comm_, r.parts.aux2, ws.parts.aux2, detail::mpi_type<T>());
  detail::allgather_v(comm_, r.parts.z, ws.parts.z, detail::mpi_type<T>());
  finish_losses(opt_.router, ws.parts, ws.g_total, ws.S, E, out.aux_loss, out.z_loss);
  const RoutingStats& st = r.stats;
  auto& v = ws.stat_sums;
  v.assign(st.tokens_per_expert.begin(), st.tokens_per_expert.end());
  v.insert(v.end(), st.first_choices.begin(), st.first_choices.end());
  for (index_t c : {st.first_wanted, st.first_kept, st.second_wanted, st.second_kept, st.slots}) v.push_back(c);
  ws.stat_all.resize(v.size());
  detail::mpi_check(
      MPI_Allreduce(v.data(), ws.stat_all.data(), detail::mpi_count(static_cast<index_t>(v.size()), "statistics"),
                    MPI_INT64_T, MPI_SUM, comm_),
      "MPI_Allreduce");
  const auto& sum = ws.stat_all;
  RoutingStats& o = out.stats;
  o.tokens_per_expert.assign(sum.begin(), sum.begin() + E);
  o.first_choices.assign(sum.begin() + E, sum.begin() + 2 * E);
  o.first_wanted = sum[detail::uz(2 * E)], o.first_kept = sum[detail::uz(2 * E + 1)];
  o.second_wanted = sum[detail::uz(2 * E + 2)], o.second_kept = sum[detail::uz(2 * E + 3)];
  o.slots = sum[detail::uz(2 * E + 4)];
  detail::finish_density(o, ws.g_total * ws.S);
}

/// Stage 3: rows per expert to its owner ([source rank, local expert] on
/// the owner).
template <class T>
void ExpertParallelMoE<T>::exchange_counts(Work& ws) const {
  const index_t E = router_.experts.size, P = size_, L = local_experts();
  const auto& off = ws.mine.offset;  // [E + 1], rows sorted by expert
  ws.R = off[detail::uz(E)];
  ws.counts.resize(detail::uz(E));
  for (index_t e = 0; e < E; ++e) ws.counts[detail::uz(e)] = off[detail::uz(e + 1)] - off[detail::uz(e)];
  for (auto* v : {&ws.sc, &ws.sd, &ws.rc, &ws.rd}) v->resize(detail::uz(P));
  for (index_t q = 0; q < P; ++q)
    ws.sc[detail::uz(q)] = static_cast<int>(first_[detail::uz(q + 1)] - first_[detail::uz(q)]),
    ws.sd[detail::uz(q)] = static_cast<int>(first_[detail::uz(q)]), ws.rc[detail::uz(q)] = static_cast<int>(L),
    ws.rd[detail::uz(q)] = static_cast<int>(q * L);
  if (ep_.exchange == Exchange::hierarchical) {
    ws.count_plan.to.assign(ws.sc.begin(), ws.sc.end());
    two_level_.forward(ws.counts.data(), 1, MPI_INT64_T, ws.count_plan, ws.got, ws.count_s1, ws.count_s2);
  } else {
    ws.got.resize(detail::uz(P * L));
    detail::mpi_check(MPI_Alltoallv(ws.counts.data(), ws.sc.data(), ws.sd.data(), MPI_INT64_T, ws.got.data(),
                                    ws.rc.data(), ws.rd.data(), MPI_INT64_T, comm_),
                      "MPI_Alltoallv (counts)");
  }
  ws.recv_rows = 0;
  for (auto n : ws.got) ws.recv_rows += static_cast<index_t>(n);
}

/// Stage 4a: where each row sits in the send and receive buffers (packed in
/// expert order, or, padded, at slot j of block [rank, local expert] of B
/// rows), and the rows gathered from the inputs; empty padded slots travel
/// as zeros.
template <class T>
void ExpertParallelMoE<T>::place_rows(Work& ws) const {
  const index_t P = size_, M = router_.model.size, R = ws.R;
  const bool padded = ep_.exchange == Exchange::padded;
  const auto& off = ws.mine.offset;
  ws.B = ws.Lmax = 0;
  if (padded) {
    for (index_t q = 0; q < P; ++q) ws.Lmax = std::max(ws.Lmax, first_[detail::uz(q + 1)] - first_[detail::uz(q)]);
    std::int64_t b = 0;
    if (!router_capacity(opt_.router).is_dropless())
      b = detail::mul_size(ws.route.routed.plan.groups(), ws.route.routed.plan.stride,
                           "padded block");  // (slots past S never fill)
    else
      for (auto n : ws.counts) b = std::max<std::int64_t>(b, n);
    std::int64_t bmax = 0;
    detail::mpi_check(MPI_Allreduce(&b, &bmax, 1, MPI_INT64_T, MPI_MAX, comm_), "MPI_Allreduce (block)");
    ws.B = static_cast<index_t>(bmax);
    detail::mpi_count(detail::mul_size(ws.Lmax, ws.B, "padded block"), "rows");
  }
  ws.send_rows = padded ? detail::mul_size(detail::mul_size(P, ws.Lmax, "padded block"), ws.B, "padded block") : R;
  ws.recv_slots = padded ? ws.send_rows : ws.recv_rows;
  ws.send.resize(detail::uz(detail::mul_size(ws.send_rows, M, "rows sent")));
  ws.recv.resize(detail::uz(detail::mul_size(ws.recv_slots, M, "rows received")));
  ws.pos.resize(detail::uz(R));
  for (index_t q = 0; q < P; ++q)
    for (index_t e = first_[detail::uz(q)]; e < first_[detail::uz(q + 1)]; ++e)
      for (index_t i = off[detail::uz(e)]; i < off[detail::uz(e + 1)]; ++i)
        ws.pos[detail::uz(i)] = padded ? (q * ws.Lmax + e - first_[detail::uz(q)]) * ws.B + i - off[detail::uz(e)] : i;
  const T* px = ws.route.in.x.data();
  for (index_t i = 0; i < R; ++i) {
    const T* src = px + ws.mine.row_token[detail::uz(i)] * M;
    std::copy(src, src + M, ws.send.data() + ws.pos[detail::uz(i)] * M);
  }
  if (padded)
    for (index_t q = 0; q < P; ++q)
      for (index_t l = 0; l < ws.Lmax; ++l) {
        const index_t e = first_[detail::uz(q)] + l;
        const index_t n = e < first_[detail::uz(q + 1)] ? ws.counts[detail::uz(e)] : 0;
        T* block = ws.send.data() + (q * ws.Lmax + l) * ws.B * M;
        std::fill(block + n * M, block + ws.B * M, T(0));
      }
}

/// Stage 4b: the rows to the experts' owners, by the chosen exchange.
template <class T>
void ExpertParallelMoE<T>::exchange_rows(Work& ws, MPI_Datatype row) const {
  const index_t P = size_, L = local_experts(), M = router_.model.size;
  for (index_t q = 0, at = 0; q < P; ++q) {
    const index_t n = rows_for(q);
    ws.sc[detail::uz(q)] = detail::mpi_count(n, "rows"), ws.sd[detail::uz(q)] = detail::mpi_count(at, "rows"), at += n;
  }
  for (index_t q = 0, at = 0; q < P; ++q) {
    index_t n = 0;
    for (index_t l = 0; l < L; ++l) n += static_cast<index_t>(ws.got[detail::uz(q * L + l)]);
    ws.rc[detail::uz(q)] = detail::mpi_count(n, "rows"), ws.rd[detail::uz(q)] = detail::mpi_count(at, "rows"), at += n;
  }
  if (M == 0) return;  // nothing to move; the counts still went
  if (ep_.exchange == Exchange::padded) {
    const int n = static_cast<int>(ws.Lmax * ws.B);
    detail::mpi_check(MPI_Alltoall(ws.send.data(), n, row, ws.recv.data(), n, row, comm_), "MPI_Alltoall (rows)");
  } else if (ep_.exchange == Exchange::hierarchical) {
    ws.row_plan.to.assign(ws.sc.begin(), ws.sc.end());
    two_level_.forward(ws.send.data(), M, row, ws.row_plan, ws.recv, ws.s1, ws.s2);
  } else {
    detail::mpi_check(MPI_Alltoallv(ws.send.data(), ws.sc.data(), ws.sd.data(), row, ws.recv.data(), ws.rc.data(),
                                    ws.rd.data(), row, comm_),
                      "MPI_Alltoallv (rows)");
  }
}

/// Stage 5: this rank's experts over what arrived, per expert in
/// source-rank order (= the single-process row order when groups are split
/// contiguously).
template <class T>
void ExpertParallelMoE<T>::run_experts(Work& ws) const {
  const index_t P = size_, L = local_experts(), M = router_.model.size;
  const bool padded = ep_.exchange == Exchange::padded;
  auto& lw = ws.local;
  lw.offset.assign(detail::uz(L + 1), 0);
  for (index_t l = 0; l < L; ++l) {
    index_t n = 0;
    for (index_t q = 0; q < P; ++q) n += static_cast<index_t>(ws.got[detail::uz(q * L + l)]);
    lw.offset[detail::uz(l + 1)] = lw.offset[detail::uz(l)] + n;
  }
  lw.row_token.resize(detail::uz(ws.recv_rows));
  lw.row_first_hidden.assign(detail::uz(ws.recv_rows), 0);
  ws.at.assign(lw.offset.begin(), lw.offset.end() - 1);
  for (index_t q = 0, src = 0; q < P; ++q)
    for (index_t l = 0; l < L; ++l)
      for (std::int64_t j = 0; j < ws.got[detail::uz(q * L + l)]; ++j)
        lw.row_token[detail::uz(ws.at[detail::uz(l)]++)] = padded ? (q * ws.Lmax + l) * ws.B + j : src++;
  const T* prc = ws.recv.data();
  if (L > 0) detail::run_expert_rows(experts_.kernel(), experts_.options(), lw, [&](index_t i) { return prc + i * M; });
}

/// Stage 6: the results back to where the rows came from, the reverse way.
template <class T>
void ExpertParallelMoE<T>::return_rows(Work& ws, MPI_Datatype row) const {
  const index_t P = size_, L = local_experts(), M = router_.model.size, R = ws.R;
  const auto& lw = ws.local;
  ws.back.resize(ws.recv.size());
  for (index_t l = 0; l < L; ++l)
    for (index_t i = lw.offset[detail::uz(l)]; i < lw.offset[detail::uz(l + 1)]; ++i) {
      const index_t dst = lw.row_token[detail::uz(i)];
      std::copy(lw.y.data() + i * M, lw.y.data() + (i + 1) * M, ws.back.data() + dst * M);
    }
  ws.mine.y.resize(detail::uz(detail::mul_size(R, M, "expert outputs")));
  if (M == 0) return;
  if (ep_.exchange == Exchange::padded) {
    for (index_t q = 0; q < P; ++q)
      for (index_t l = 0; l < ws.Lmax; ++l) {
        const index_t n = l < L ? static_cast<index_t>(ws.got[detail::uz(q * L + l)]) : 0;
        T* block = ws.back.data() + (q * ws.Lmax + l) * ws.B * M;
        std::fill(block + n * M, block + ws.B * M, T(0));
      }
    ws.ret.resize(ws.send.size());
    const int n = static_cast<int>(ws.Lmax * ws.B);
    detail::mpi_check(MPI_Alltoall(ws.back.data(), n, row, ws.ret.data(), n, row, comm_), "MPI_Alltoall (results)");
    for (index_t i = 0; i < R; ++i) {
      const T* src = ws.ret.data() + ws.pos[detail::uz(i)] * M;
      std::copy(src, src + M, ws.mine.y.data() + i * M);
    }
  } else if (ep_.exchange == Exchange::hierarchical) {
    two_level_.backward(ws.back.data(), M, row, ws.row_plan, ws.mine.y.data(), ws.s1, ws.s2);
  } else {
    detail::mpi_check(MPI_Alltoallv(ws.back.data(), ws.rc.data(), ws.rd.data(), row, ws.mine.y.data(), ws.sc.data(),
                                    ws.sd.data(), row, comm_),
                      "MPI_Alltoallv (results)");
  }
}

/// Stage 7: combine with the gate weights (which never left this rank), add
/// the shared expert (local), back to the inputs' layout.
template <class T>
void ExpertParallelMoE<T>::combine(Work& ws, MoEResult<T>& out, const Shape& inputs) const {
  const RoutingPlan<T>& plan = ws.route.routed.plan;
  const TensorView<const T>& x = ws.route.in.x;
  const index_t M = router_.model.size;
  out.outputs.resize(plan.batch.with(plan.group).with(router_.model));
  detail::combine_rows(plan, ws.mine, M, out.outputs.data());
  shared_.add_to(x.data(), x.size() / std::max<index_t>(1, M), out.outputs.data(), ws.shared);
  detail::ungroup_outputs(out.outputs, ws.route.in, inputs);
}

}  // namespace einmoe
