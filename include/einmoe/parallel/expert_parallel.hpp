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
// throw (value_error / shape_error with the failing rank's message). Not
// supported: an inter-communicator, dropout, the dense oracle, top-2 gating
// extras (importance, uniform, gumbel draws).
#pragma once

#include <mpi.h>

#include <chrono>
#include <climits>
#include <cstdint>
#include <string>
#include <vector>

#include "einmoe/detail/mpi.hpp"
#include "einmoe/parallel/exchange.hpp"
#include "einmoe/moe/moe_layer.hpp"
#include "einmoe/ops/manip.hpp"

namespace einmoe {


/// Bytes and rows one forward pass moved, and where its time went (this rank).
struct ExpertParallelStats {
  index_t rows_sent = 0, rows_received = 0;  ///< rows to the experts' owners / for this rank's experts (own rank included)
  std::size_t bytes_sent = 0, bytes_received = 0;  ///< of those rows; the results travel the same amounts back
  double route_ms = 0, exchange_ms = 0, experts_ms = 0, combine_ms = 0;
};

/// The expert-parallel MoE layer (see the file comment). T is float or double.
template <class T>
class ExpertParallelMoE {
 public:
  /// Every rank passes the same (full) weights and options; each lays out
  /// only its own experts. `ep` chooses how rows travel (exchange.hpp).
  /// Collective: all ranks throw the same error if any rank's weights or
  /// options are bad or disagree with the others'.
  template <class S>
  ExpertParallelMoE(MPI_Comm comm, const MoEWeights<S>& w, MoEOptions options, ExpertParallelOptions ep = {})
      : comm_(comm), opt_(std::move(options)), ep_(ep) {
    int inter = 0;
    detail::mpi_check(MPI_Comm_test_inter(comm, &inter), "MPI_Comm_test_inter");
    if (inter) detail::raise<value_error>("expert parallel: an inter-communicator is not supported");
    MPI_Comm_rank(comm, &rank_);
    MPI_Comm_size(comm, &size_);
    detail::agreed(comm_, [&] {
      const char* op = "ExpertParallelMoE";
      if (opt_.dense) detail::raise<value_error>(op, ": the dense oracle runs on one process (dense = false)");
      if (opt_.dropout != 0.0) detail::raise<value_error>(op, ": no dropout in the expert-parallel layer");
      // The single-process layer validates everything (then is dropped).
      const auto& g = opt_.gating;
      experts_dim_ = w.wg.shape().get(g.experts_dim, op);
      model_ = w.wg.shape().get(opt_.model_dim, op);
      router_ = MatrixBank<T>(w.wg, "", opt_.model_dim, g.experts_dim, Precision::fp32, opt_.backend, "wg");
      const index_t E = experts_dim_.size;
      first_.resize(detail::uz(size_ + 1));
      for (int r = 0; r <= size_; ++r) first_[detail::uz(r)] = E * r / size_;
      const index_t e0 = first_[detail::uz(rank_)], e1 = first_[detail::uz(rank_ + 1)];
      ExpertWeights<S> mine;
      const std::string& ed = g.experts_dim;
      mine.wi = slice(w.experts.wi, ed, e0, e1 - e0);
      mine.wo = slice(w.experts.wo, ed, e0, e1 - e0);
      if (w.experts.wi_gate) mine.wi_gate = slice(*w.experts.wi_gate, ed, e0, e1 - e0);
      if (w.experts.bi) mine.bi = slice(*w.experts.bi, ed, e0, e1 - e0);
      if (w.experts.bi_gate) mine.bi_gate = slice(*w.experts.bi_gate, ed, e0, e1 - e0);
      if (w.experts.bo) mine.bo = slice(*w.experts.bo, ed, e0, e1 - e0);
      if (w.experts.wi.size_of(ed) != E)
        detail::raise<shape_error>(op, ": dim \"", ed, "\" has size ", E, " in wg but ", w.experts.wi.size_of(ed), " in wi");
      experts_ = PackedExperts<T>(mine, detail::expert_options(opt_));
      if (experts_.model() != model_)
        detail::raise<shape_error>(op, ": dim \"", opt_.model_dim, "\" has size ", model_.size, " in wg but ",
                                   experts_.model().size, " in wi");
      hidden_ = experts_.hidden().size;
      if (w.shared) {
        ExpertOptions so = detail::expert_options(opt_);
        shared_ = SharedExpert<T>(*w.shared, model_, so);
      }
      check_router();
    });
    // Every rank must hold the same layer.
    std::vector<std::int64_t> sig{experts_dim_.size, model_.size, hidden_, static_cast<std::int64_t>(opt_.router),
                                  static_cast<std::int64_t>(opt_.precision), static_cast<std::int64_t>(shared_.empty()),
                                  static_cast<std::int64_t>(experts_.gated()), static_cast<std::int64_t>(ep_.exchange),
                                  ep_.ranks_per_node};
    std::vector<std::int64_t> all;
    detail::allgather_v(comm_, sig, all, MPI_INT64_T);
    std::string diff;
    const char* names[] = {"experts", "model", "hidden", "router", "precision", "shared expert", "gated experts", "exchange",
                           "ranks_per_node"};
    for (int r = 0; r < size_ && diff.empty(); ++r)
      for (std::size_t i = 0; i < sig.size(); ++i)
        if (all[detail::uz(r) * sig.size() + i] != all[i]) {
          diff = std::string("ExpertParallelMoE: the ranks' layers differ in ") + names[i] + " (rank 0: " +
                 std::to_string(all[i]) + ", rank " + std::to_string(r) + ": " + std::to_string(all[detail::uz(r) * sig.size() + i]) + ")";
          break;
        }
    detail::agree(comm_, rank_ == 0 ? diff : std::string(), true);
    if (ep_.exchange == Exchange::hierarchical) {
      std::string failure;
      try {
        two_level_ = detail::TwoLevelExchange(comm_, detail::node_labels(comm_, ep_.ranks_per_node));
      } catch (const error& e) {  // the same on every rank: the labels are
        failure = e.what();       // all-gathered before anything can fail
      }
      detail::agree(comm_, failure, false);
    }
  }

  /// How rows travel; for the hierarchical exchange, the nodes it found.
  const ExpertParallelOptions& exchange() const { return ep_; }
  int nodes() const { return ep_.exchange == Exchange::hierarchical ? two_level_.nodes() : 0; }

  /// inputs [<batch>, group, model] (this rank's groups; ungrouped inputs
  /// are grouped as MoELayer groups them) -> this rank's outputs, global
  /// losses and statistics. Collective.
  MoEResult<T> forward(const Tensor<T>& inputs) const {
    MoEResult<T> out;
    forward_into(out, inputs);
    return out;
  }

  /// Random draws are fresh per call as in MoELayer::forward_into (call n
  /// draws from Rng::call_seed(seed, n)), so call n equals call n of an
  /// MoELayer with the same options.
  void forward_into(MoEResult<T>& out, const Tensor<T>& inputs) const;

  /// Forward calls made so far (the same on every rank).
  std::uint64_t calls() const { return calls_; }
  /// Makes the next forward call number n; call on every rank.
  void set_calls(std::uint64_t n) { calls_ = n; }

  /// logits [<batch>, group, experts] = x [<batch>, group, model] . wg, as
  /// MoELayer::router_logits computes them (local: no communication).
  Tensor<T> router_logits(const Tensor<T>& x_any) const {
    const std::string& gd = opt_.gating.group_dim;
    const Shape& xs = x_any.shape();
    Tensor<T> hold, logits;
    const Tensor<T>& x = in_order(x_any, xs.without({gd, opt_.model_dim}).with(xs.get(gd, "router_logits")).with(xs.get(opt_.model_dim, "router_logits")), hold);
    std::vector<FfnScratch<T>> scratch;
    detail::router_logits_into(router_, x, opt_, model_, experts_dim_, logits, scratch);
    return logits;
  }

  /// This rank's experts: [first_expert(), first_expert() + local_experts()).
  index_t first_expert() const { return first_[detail::uz(rank_)]; }
  index_t local_experts() const { return first_[detail::uz(rank_ + 1)] - first_[detail::uz(rank_)]; }
  int rank() const { return rank_; }
  int ranks() const { return size_; }
  const PackedExperts<T>& experts() const { return experts_; }
  /// What the last forward pass moved, and its time split.
  const ExpertParallelStats& last() const { return last_; }

 private:
  void check_router() const {
    const auto& g = opt_.gating;
    if (opt_.router == RouterKind::topk) {
      if (opt_.topk.group_dim != g.group_dim || opt_.topk.experts_dim != g.experts_dim)
        detail::raise<value_error>("ExpertParallelMoE: topk's dim names differ from gating's");
      detail::check_topk_options(opt_.topk, experts_dim_.size, "ExpertParallelMoE");
    }
  }

  struct Work {
    ExpertWorkspace<T> mine;   // this rank's routed rows (single-process layout)
    ExpertWorkspace<T> local;  // the rows that arrived for this rank's experts
    SharedExpertWorkspace<T> shared;
    detail::GroupedInputs<T> in;
    Tensor<T> canonical, logits;
    std::vector<FfnScratch<T>> router;
    AlignedVector<T> send, recv, back, ret, s1, s2;
    AlignedVector<std::int64_t> counts, got, count_s1, count_s2;
    std::vector<index_t> pos;
    detail::TwoLevelPlan count_plan, row_plan;
  };

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  MoEOptions opt_;
  ExpertParallelOptions ep_;
  detail::TwoLevelExchange two_level_;
  MatrixBank<T> router_;
  PackedExperts<T> experts_;
  SharedExpert<T> shared_;
  Dim experts_dim_, model_;
  index_t hidden_ = 0;
  std::vector<index_t> first_;  // [P + 1] expert blocks
  mutable Work ws_;
  mutable ExpertParallelStats last_;
  mutable std::uint64_t calls_ = 0;  // collective calls: every rank counts the same
};

template <class T>
void ExpertParallelMoE<T>::forward_into(MoEResult<T>& out, const Tensor<T>& inputs) const {
  using clock = std::chrono::steady_clock;
  auto ms = [](clock::time_point a, clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  const auto t0 = clock::now();
  const std::uint64_t call = calls_++;
  Work& ws = ws_;
  const index_t M = model_.size, E = experts_dim_.size, P = size_;
  const Tensor<T>* xp = nullptr;
  RouterResult<T> r;
  index_t G = 0, S = 0;
  detail::agreed(comm_, [&] {
    detail::group_inputs(ws.in, inputs, opt_);
    const Shape& xs = ws.in.x->shape();
    const std::string& gd = opt_.gating.group_dim;
    const Shape canon = xs.without({gd, opt_.model_dim}).with(xs.get(gd, "moe_forward")).with(xs.get(opt_.model_dim, "moe_forward"));
    xp = &in_order(*ws.in.x, canon, ws.canonical);
    detail::router_logits_into(router_, *xp, opt_, model_, experts_dim_, ws.logits, ws.router);
    S = xp->size_of(gd);
    G = S > 0 ? xp->size() / std::max<index_t>(1, S * M) : canon.without({gd, opt_.model_dim}).num_elements();
  });
  // This rank's first global group: top-2's random draws continue the one
  // stream from o.seed where the previous ranks' groups left it.
  std::int64_t g_local = G, g_first = 0;
  detail::mpi_check(MPI_Exscan(&g_local, &g_first, 1, MPI_INT64_T, MPI_SUM, comm_), "MPI_Exscan");
  if (rank_ == 0) g_first = 0;
  detail::agreed(comm_, [&] {
    GatingInputs<T> draws;
    const auto& g = opt_.gating;
    if (opt_.router == RouterKind::top2 && (g.policy == SecondPolicy::random || g.policy == SecondPolicy::sampling)) {
      const Shape tok = ws.logits.shape().without({g.experts_dim});
      Rng rng(Rng::call_seed(g.seed, call));  // fresh draws per call, as MoELayer
      if (g.policy == SecondPolicy::random) {
        rng.skip(static_cast<std::uint64_t>(g_first * S));
        draws.uniform = rng.uniform<T>(tok);
      } else {
        rng.skip(static_cast<std::uint64_t>(g_first * S * E));
        draws.gumbel = rng.gumbel<T>(ws.logits.shape());
      }
    }
    r = detail::route_tokens(ws.logits, opt_, draws, call);
    detail::expert_rows(r.plan, hidden_, ws.mine);
  });
  const Tensor<T>& x = *xp;
  // Group sizes must agree (one layer over all groups).
  {
    std::vector<std::int64_t> s{S}, all;
    detail::allgather_v(comm_, s, all, MPI_INT64_T);
    std::string bad;
    for (int q = 0; q < size_; ++q)
      if (all[detail::uz(q)] != all[0] && bad.empty())
        bad = "moe_forward: group size " + std::to_string(all[detail::uz(q)]) + " on rank " + std::to_string(q) +
              " but " + std::to_string(all[0]) + " on rank 0";
    detail::agree(comm_, rank_ == 0 ? bad : std::string(), true);
  }

  // Global losses and statistics, finished in group (= rank) order.
  {
    LossParts<T> all;
    detail::allgather_v(comm_, r.parts.aux, all.aux, detail::mpi_type<T>());
    detail::allgather_v(comm_, r.parts.aux2, all.aux2, detail::mpi_type<T>());
    detail::allgather_v(comm_, r.parts.z, all.z, detail::mpi_type<T>());
    std::int64_t g_total = 0;
    detail::mpi_check(MPI_Allreduce(&g_local, &g_total, 1, MPI_INT64_T, MPI_SUM, comm_), "MPI_Allreduce");
    detail::finish_losses(opt_, all, static_cast<index_t>(g_total), S, E, out.aux_loss, out.z_loss);
    RoutingStats& st = r.stats;
    std::vector<std::int64_t> v(st.tokens_per_expert.begin(), st.tokens_per_expert.end());
    v.insert(v.end(), st.first_choices.begin(), st.first_choices.end());
    for (index_t c : {st.first_wanted, st.first_kept, st.second_wanted, st.second_kept, st.slots}) v.push_back(c);
    std::vector<std::int64_t> sum(v.size());
    detail::mpi_check(MPI_Allreduce(v.data(), sum.data(), detail::mpi_count(static_cast<index_t>(v.size()), "statistics"),
                                    MPI_INT64_T, MPI_SUM, comm_),
                      "MPI_Allreduce");
    out.stats = RoutingStats();
    out.stats.tokens_per_expert.assign(sum.begin(), sum.begin() + E);
    out.stats.first_choices.assign(sum.begin() + E, sum.begin() + 2 * E);
    out.stats.first_wanted = sum[detail::uz(2 * E)], out.stats.first_kept = sum[detail::uz(2 * E + 1)];
    out.stats.second_wanted = sum[detail::uz(2 * E + 2)], out.stats.second_kept = sum[detail::uz(2 * E + 3)];
    out.stats.slots = sum[detail::uz(2 * E + 4)];
    detail::finish_density(out.stats, static_cast<index_t>(g_total) * S);
  }
  const auto t1 = clock::now();

  // Rows per expert to its owner: counts first ([source rank, local expert]
  // on the owner), then the rows in expert order.
  const auto& off = ws.mine.offset;  // [E + 1], rows sorted by expert
  const index_t R = off[detail::uz(E)];
  const index_t L = local_experts();
  ws.counts.resize(detail::uz(E));
  for (index_t e = 0; e < E; ++e) ws.counts[detail::uz(e)] = off[detail::uz(e + 1)] - off[detail::uz(e)];
  std::vector<int> sc(detail::uz(P)), sd(detail::uz(P)), rc(detail::uz(P)), rd(detail::uz(P));
  for (index_t q = 0; q < P; ++q)
    sc[detail::uz(q)] = static_cast<int>(first_[detail::uz(q + 1)] - first_[detail::uz(q)]),
    sd[detail::uz(q)] = static_cast<int>(first_[detail::uz(q)]), rc[detail::uz(q)] = static_cast<int>(L),
    rd[detail::uz(q)] = static_cast<int>(q * L);
  if (ep_.exchange == Exchange::hierarchical) {
    ws.count_plan.to.assign(sc.begin(), sc.end());
    two_level_.forward(ws.counts.data(), 1, MPI_INT64_T, ws.count_plan, ws.got, ws.count_s1, ws.count_s2);
  } else {
    ws.got.resize(detail::uz(P * L));
    detail::mpi_check(MPI_Alltoallv(ws.counts.data(), sc.data(), sd.data(), MPI_INT64_T, ws.got.data(), rc.data(), rd.data(),
                                    MPI_INT64_T, comm_),
                      "MPI_Alltoallv (counts)");
  }
  const auto& got = ws.got;  // [source, local expert]
  index_t recv_rows = 0;
  for (auto n : got) recv_rows += static_cast<index_t>(n);

  // Where each row sits in the send and receive buffers: packed in expert
  // order, or (padded) at slot j of block [rank, local expert] of B rows.
  const bool padded = ep_.exchange == Exchange::padded;
  index_t B = 0, Lmax = 0;
  if (padded) {
    for (index_t q = 0; q < P; ++q) Lmax = std::max(Lmax, first_[detail::uz(q + 1)] - first_[detail::uz(q)]);
    std::int64_t b = 0;
    const bool capacity = opt_.router != RouterKind::topk || opt_.topk.capacity.has_value();
    if (capacity) b = detail::mul_size(r.plan.groups(), r.plan.stride, "padded block");  // (slots past S never fill)
    else
      for (auto n : ws.counts) b = std::max<std::int64_t>(b, n);
    std::int64_t bmax = 0;
    detail::mpi_check(MPI_Allreduce(&b, &bmax, 1, MPI_INT64_T, MPI_MAX, comm_), "MPI_Allreduce (block)");
    B = static_cast<index_t>(bmax);
    detail::mpi_count(detail::mul_size(Lmax, B, "padded block"), "rows");
  }
  const index_t send_rows = padded ? detail::mul_size(detail::mul_size(P, Lmax, "padded block"), B, "padded block") : R;
  const index_t recv_slots = padded ? send_rows : recv_rows;
  ws.send.resize(detail::uz(detail::mul_size(send_rows, M, "rows sent")));
  ws.recv.resize(detail::uz(detail::mul_size(recv_slots, M, "rows received")));
  ws.pos.resize(detail::uz(R));
  for (index_t q = 0; q < P; ++q)
    for (index_t e = first_[detail::uz(q)]; e < first_[detail::uz(q + 1)]; ++e)
      for (index_t i = off[detail::uz(e)]; i < off[detail::uz(e + 1)]; ++i)
        ws.pos[detail::uz(i)] = padded ? (q * Lmax + e - first_[detail::uz(q)]) * B + i - off[detail::uz(e)] : i;
  // The rows, gathered from the inputs; empty padded slots travel as zeros.
  const T* px = x.data();
  for (index_t i = 0; i < R; ++i) {
    const T* src = px + ws.mine.row_token[detail::uz(i)] * M;
    std::copy(src, src + M, ws.send.data() + ws.pos[detail::uz(i)] * M);
  }
  auto zero_pads = [&](AlignedVector<T>& buf, auto&& rows_in) {
    for (index_t q = 0; q < P; ++q)
      for (index_t l = 0; l < Lmax; ++l) {
        T* block = buf.data() + (q * Lmax + l) * B * M;
        std::fill(block + rows_in(q, l) * M, block + B * M, T(0));
      }
  };
  if (padded)
    zero_pads(ws.send, [&](index_t q, index_t l) {
      const index_t e = first_[detail::uz(q)] + l;
      return e < first_[detail::uz(q + 1)] ? ws.counts[detail::uz(e)] : 0;
    });
  MPI_Datatype row;
  detail::mpi_check(MPI_Type_contiguous(detail::mpi_count(std::max<index_t>(M, 1), "values per row"), detail::mpi_type<T>(), &row),
                    "MPI_Type_contiguous");
  MPI_Type_commit(&row);
  struct TypeGuard {
    MPI_Datatype* t;
    ~TypeGuard() { MPI_Type_free(t); }
  } guard{&row};
  for (index_t q = 0, at = 0; q < P; ++q) {
    const index_t n = off[detail::uz(first_[detail::uz(q + 1)])] - off[detail::uz(first_[detail::uz(q)])];
    sc[detail::uz(q)] = detail::mpi_count(n, "rows"), sd[detail::uz(q)] = detail::mpi_count(at, "rows"), at += n;
  }
  for (index_t q = 0, at = 0; q < P; ++q) {
    index_t n = 0;
    for (index_t l = 0; l < L; ++l) n += static_cast<index_t>(got[detail::uz(q * L + l)]);
    rc[detail::uz(q)] = detail::mpi_count(n, "rows"), rd[detail::uz(q)] = detail::mpi_count(at, "rows"), at += n;
  }
  // (M == 0: nothing to move; the counts still went.)
  if (M > 0) {
    if (padded) {
      detail::mpi_check(MPI_Alltoall(ws.send.data(), static_cast<int>(Lmax * B), row, ws.recv.data(), static_cast<int>(Lmax * B),
                                     row, comm_),
                        "MPI_Alltoall (rows)");
    } else if (ep_.exchange == Exchange::hierarchical) {
      ws.row_plan.to.assign(sc.begin(), sc.end());
      two_level_.forward(ws.send.data(), M, row, ws.row_plan, ws.recv, ws.s1, ws.s2);
    } else {
      detail::mpi_check(MPI_Alltoallv(ws.send.data(), sc.data(), sd.data(), row, ws.recv.data(), rc.data(), rd.data(), row, comm_),
                        "MPI_Alltoallv (rows)");
    }
  }
  const auto t2 = clock::now();

  // This rank's experts over what arrived, per expert in source-rank order
  // (= the single-process row order when groups are split contiguously).
  auto& lw = ws.local;
  lw.offset.assign(detail::uz(L + 1), 0);
  for (index_t l = 0; l < L; ++l) {
    index_t n = 0;
    for (index_t q = 0; q < P; ++q) n += static_cast<index_t>(got[detail::uz(q * L + l)]);
    lw.offset[detail::uz(l + 1)] = lw.offset[detail::uz(l)] + n;
  }
  lw.row_token.resize(detail::uz(recv_rows));
  lw.row_first_hidden.assign(detail::uz(recv_rows), 0);
  std::vector<index_t> at(detail::uz(L));
  for (index_t l = 0; l < L; ++l) at[detail::uz(l)] = lw.offset[detail::uz(l)];
  for (index_t q = 0, src = 0; q < P; ++q)
    for (index_t l = 0; l < L; ++l)
      for (std::int64_t j = 0; j < got[detail::uz(q * L + l)]; ++j)
        lw.row_token[detail::uz(at[detail::uz(l)]++)] = padded ? (q * Lmax + l) * B + j : src++;
  const T* prc = ws.recv.data();
  if (L > 0) detail::run_expert_rows(experts_.kernel(), experts_.options(), lw, [&](index_t i) { return prc + i * M; });
  const auto t3 = clock::now();

  // Results back to where the rows came from, the reverse way.
  ws.back.resize(ws.recv.size());
  for (index_t l = 0; l < L; ++l)
    for (index_t i = lw.offset[detail::uz(l)]; i < lw.offset[detail::uz(l + 1)]; ++i) {
      const index_t dst = lw.row_token[detail::uz(i)];
      std::copy(lw.y.data() + i * M, lw.y.data() + (i + 1) * M, ws.back.data() + dst * M);
    }
  ws.mine.y.resize(detail::uz(detail::mul_size(R, M, "expert outputs")));
  if (M > 0) {
    if (padded) {
      zero_pads(ws.back, [&](index_t q, index_t l) { return l < L ? static_cast<index_t>(got[detail::uz(q * L + l)]) : 0; });
      ws.ret.resize(ws.send.size());
      detail::mpi_check(MPI_Alltoall(ws.back.data(), static_cast<int>(Lmax * B), row, ws.ret.data(), static_cast<int>(Lmax * B),
                                     row, comm_),
                        "MPI_Alltoall (results)");
      for (index_t i = 0; i < R; ++i) {
        const T* src = ws.ret.data() + ws.pos[detail::uz(i)] * M;
        std::copy(src, src + M, ws.mine.y.data() + i * M);
      }
    } else if (ep_.exchange == Exchange::hierarchical) {
      two_level_.backward(ws.back.data(), M, row, ws.row_plan, ws.mine.y.data(), ws.s1, ws.s2);
    } else {
      detail::mpi_check(MPI_Alltoallv(ws.back.data(), rc.data(), rd.data(), row, ws.mine.y.data(), sc.data(), sd.data(), row, comm_),
                        "MPI_Alltoallv (results)");
    }
  }
  const auto t4 = clock::now();

  // Combine with the gate weights, then the shared expert (local).
  const Shape xs = r.plan.batch.with(r.plan.group).with(model_);
  if (out.outputs.size() != xs.num_elements() || !out.outputs.writable()) out.outputs = Tensor<T>(xs, uninitialized);
  out.outputs.set_shape(xs);
  detail::combine_rows(r.plan, ws.mine, M, out.outputs.data());
  shared_.add_to(x.data(), x.size() / std::max<index_t>(1, M), out.outputs.data(), ws.shared);
  if (ws.in.regrouped) {
    out.outputs.set_shape(ws.in.flat);
    if (out.outputs.shape() != inputs.shape()) out.outputs = transpose(std::move(out.outputs), inputs.shape());
  } else if (out.outputs.shape() != inputs.shape()) {
    out.outputs = transpose(std::move(out.outputs), inputs.shape());
  }
  const auto t5 = clock::now();
  last_.rows_sent = R, last_.rows_received = recv_rows;
  last_.bytes_sent = static_cast<std::size_t>(send_rows * M) * sizeof(T);
  last_.bytes_received = static_cast<std::size_t>(recv_slots * M) * sizeof(T);
  last_.route_ms = ms(t0, t1), last_.exchange_ms = ms(t1, t2) + ms(t3, t4), last_.experts_ms = ms(t2, t3), last_.combine_ms = ms(t4, t5);
}

}  // namespace einmoe
