// The expert-parallel layer under mpirun -np P (CTest runs P = 1..4): with
// groups split contiguously over the ranks, outputs, losses and statistics
// are bitwise those of the single-process MoELayer on all groups, for every
// router, expert kind and precision; with another split, routing is the same
// and outputs agree to 1e-6; bad setups throw on every rank, never hang.
//
// Not Catch2: every rank runs every check and the program exits non-zero on
// any rank's failure (mpirun then fails).
#include <mpi.h>

#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>

#include "einmoe/parallel/expert_parallel.hpp"

using namespace einmoe;

namespace {

int rank = 0, ranks = 1, failures = 0, checks = 0;

void check(bool ok, const std::string& what) {
  ++checks;
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "rank %d: FAILED: %s\n", rank, what.c_str());
  }
}

template <class T>
MoEWeights<T> layer_weights(index_t M, index_t H, index_t E, bool gated, bool shared, std::uint64_t seed) {
  Rng g(seed);
  MoEWeights<T> w;
  auto scaled = [&](const Shape& s, double k) {
    Tensor<T> t = g.normal<T>(s);
    for (auto& v : t) v = static_cast<T>(static_cast<double>(v) * k);
    return t;
  };
  w.wg = shared_view(scaled(Shape{{"model", M}, {"experts", E}}, 1.0));
  w.experts.wi = shared_view(scaled(Shape{{"experts", E}, {"model", M}, {"hidden", H}}, 0.3));
  w.experts.wo = shared_view(scaled(Shape{{"experts", E}, {"hidden", H}, {"model", M}}, 0.3));
  if (gated) w.experts.wi_gate = shared_view(scaled(Shape{{"experts", E}, {"model", M}, {"hidden", H}}, 0.3));
  if (shared) {
    SharedExpertWeights<T> s;
    s.wi = shared_view(scaled(Shape{{"model", M}, {"hidden", 24}}, 0.3));
    s.wo = shared_view(scaled(Shape{{"hidden", 24}, {"model", M}}, 0.3));
    s.gate = shared_view(scaled(Shape{{"model", M}}, 0.3));
    w.shared = std::move(s);
  }
  return w;
}

/// Groups [g0, g0 + n) of x [batch, group, model].
template <class T>
Tensor<T> groups_of(const Tensor<T>& x, index_t g0, index_t n) {
  return slice(x, "batch", g0, n);
}

template <class T>
bool bitwise(const Tensor<T>& a, const Tensor<T>& b) {
  if (a.shape() != b.shape()) return false;
  return a.size() == 0 || std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(T)) == 0;
}

/// Every exchange: flat rows, padded blocks, two-level with the machine's
/// nodes and with 1, 2 and P ranks per node.
std::vector<std::pair<std::string, ExpertParallelOptions>> exchanges() {
  std::vector<std::pair<std::string, ExpertParallelOptions>> v;
  v.push_back({"rows", {Exchange::rows, 0}});
  v.push_back({"padded", {Exchange::padded, 0}});
  v.push_back({"hierarchical (shared memory)", {Exchange::hierarchical, 0}});
  for (int m : {1, 2, ranks})
    if (ranks % m == 0 && (m != ranks || m > 2))
      v.push_back({"hierarchical (" + std::to_string(m) + " per node)", {Exchange::hierarchical, m}});
  return v;
}

template <class T>
void equal_case(const std::string& name0, const MoEWeights<T>& w, const MoEOptions& o, index_t G, index_t S,
                index_t M) {
  const Tensor<T> x = Rng(99).normal<T>(Shape{{"batch", G}, {"group", S}, {"model", M}});
  const MoELayer<T> ref_layer(w, o);
  const auto ref = ref_layer.forward(x);
  const auto ref2 = ref_layer.forward(x);  // call 1: fresh draws for policies random and sampling
  for (const auto& [how, epo] : exchanges()) {
    const std::string name = name0 + ", " + how;
    const ExpertParallelMoE<T> ep(MPI_COMM_WORLD, w, o, epo);
    // contiguous, uneven shares: rank r gets groups [G r / P, G (r + 1) / P)
    const index_t g0 = G * rank / ranks, g1 = G * (rank + 1) / ranks;
    const auto out = ep.forward(groups_of(x, g0, g1 - g0));
    const auto want = groups_of(ref.outputs, g0, g1 - g0);
    check(bitwise(out.outputs, want), name + ": outputs bitwise equal to one process");
    check(std::memcmp(&out.aux_loss, &ref.aux_loss, sizeof(T)) == 0, name + ": aux_loss bitwise");
    check(std::memcmp(&out.z_loss, &ref.z_loss, sizeof(T)) == 0, name + ": z_loss bitwise");
    check(out.stats.tokens_per_expert == ref.stats.tokens_per_expert, name + ": tokens per expert");
    check(out.stats.density_1 == ref.stats.density_1, name + ": density_1 bitwise");
    check(out.stats.first_kept == ref.stats.first_kept && out.stats.second_kept == ref.stats.second_kept &&
              out.stats.first_wanted == ref.stats.first_wanted && out.stats.slots == ref.stats.slots,
          name + ": kept / wanted / slots");
    // twice: the workspace is reused, and call 1 draws what the layer's call 1 draws
    check(bitwise(ep.forward(groups_of(x, g0, g1 - g0)).outputs, groups_of(ref2.outputs, g0, g1 - g0)),
          name + ": second call bitwise equal");
    check(ep.calls() == 2, name + ": two calls counted");
    index_t mine = 0;
    for (index_t e = ep.first_expert(); e < ep.first_expert() + ep.local_experts(); ++e)
      mine += ref2.stats.tokens_per_expert[detail::uz(e)];
    check(ep.last().rows_received == mine, name + ": rows received = this rank's experts' load");
    if (epo.exchange == Exchange::padded)
      check(ep.last().bytes_sent == ep.last().bytes_received &&
                ep.last().bytes_sent >= static_cast<std::size_t>(ep.last().rows_sent * M) * sizeof(T),
            name + ": padded blocks are equal and hold every row");
  }
}

/// The documented examples of parallel/ and docs/expert-parallel.md's block
/// (extracted into doc_examples.inc; tests/test_doc_examples.cpp has the
/// rest): they compile, run, and give the single-process layer's outputs.
void doc_examples() {
  const index_t M = 16, G = 2 * ranks;
  const MoEWeights<float> weights = layer_weights<float>(M, 24, 4, false, false, 21);
  MoEOptions opt;
  std::get<Top2Options>(opt.router).capacity = CapacitySpec::fixed(8);
  const Tensor<float> x = Rng(5).normal<float>(Shape{{"batch", G}, {"group", 12}, {"model", M}});
  const Tensor<float> my_groups = groups_of(x, 2 * rank, 2);
  const auto want = groups_of(MoELayer<float>(weights, opt).forward(x).outputs, 2 * rank, 2);
  {
#define EINMOE_EXAMPLE_parallel_expert_parallel_1
#include "doc_examples.inc"
    check(bitwise(y, want), "parallel/expert_parallel.hpp example: outputs of one process");
    check(aux > 0, "parallel/expert_parallel.hpp example: aux loss");
  }
  {
    MPI_Comm comm = MPI_COMM_WORLD;
#define EINMOE_EXAMPLE_parallel_exchange_1
#include "doc_examples.inc"
    check(bitwise(layer.forward(my_groups).outputs, want), "parallel/exchange.hpp example: outputs of one process");
  }
  {
#define EINMOE_EXAMPLE_docs_expert_parallel_1
#include "doc_examples.inc"
    check(bitwise(out.outputs, want), "docs/expert-parallel.md example: outputs of one process");
    check(bitwise(two_level.forward(my_groups).outputs, want), "docs/expert-parallel.md example: two-level exchange");
  }
}

/// ExpertParallelMoE is movable (its workspace sits behind a pointer), not
/// copyable, and a moved layer gives the same outputs and keeps its count.
void movable() {
  static_assert(std::is_move_constructible<ExpertParallelMoE<float>>::value &&
                std::is_move_assignable<ExpertParallelMoE<float>>::value);
  static_assert(!std::is_copy_constructible<ExpertParallelMoE<float>>::value);
  const index_t M = 16, G = 2 * ranks;
  const MoEWeights<float> weights = layer_weights<float>(M, 24, 4, false, false, 33);
  MoEOptions opt;
  opt.router = TopKOptions{};
  const Tensor<float> x = Rng(9).normal<float>(Shape{{"batch", G}, {"group", 6}, {"model", M}});
  const Tensor<float> mine = groups_of(x, 2 * rank, 2);
  ExpertParallelMoE<float> a(MPI_COMM_WORLD, weights, opt);
  const Tensor<float> want = a.forward(mine).outputs;
  ExpertParallelMoE<float> b(std::move(a));
  check(bitwise(b.forward(mine).outputs, want), "moved expert-parallel layer: same outputs");
  std::vector<ExpertParallelMoE<float>> layers;
  layers.push_back(std::move(b));
  check(bitwise(layers[0].forward(mine).outputs, want), "expert-parallel layer in a vector: same outputs");
  check(layers[0].calls() == 3, "moved expert-parallel layer: the call count moved with it");
}

/// The two-level transport alone, with nodes given by labels (round-robin
/// placement makes node order differ from rank order): it delivers what
/// MPI_Alltoallv delivers, in the same order, and brings rows back.
void two_level_case(const std::vector<int>& labels) {
  const std::string name = "two-level transport, " + std::to_string(labels.size()) +
                           " ranks, nodes of rank 1: " + std::to_string(labels[labels.size() > 1 ? 1 : 0]);
  const detail::TwoLevelExchange t(MPI_COMM_WORLD, labels);
  const index_t W = 3;
  detail::TwoLevelPlan plan;
  plan.to.resize(static_cast<std::size_t>(ranks));
  std::vector<int> sc(static_cast<std::size_t>(ranks)), sd(sc.size()), rc(sc.size()), rd(sc.size());
  index_t n = 0;
  for (int q = 0; q < ranks; ++q)
    sc[static_cast<std::size_t>(q)] = static_cast<int>((rank * 7 + q * 3) % 5),
    plan.to[static_cast<std::size_t>(q)] = sc[static_cast<std::size_t>(q)],
    sd[static_cast<std::size_t>(q)] = static_cast<int>(n), n += sc[static_cast<std::size_t>(q)];
  detail::AlignedVector<double> send(static_cast<std::size_t>(n * W));
  for (std::size_t i = 0; i < send.size(); ++i) send[i] = rank * 1000.0 + static_cast<double>(i);
  MPI_Datatype row;
  MPI_Type_contiguous(static_cast<int>(W), MPI_DOUBLE, &row);
  MPI_Type_commit(&row);
  MPI_Alltoall(sc.data(), 1, MPI_INT, rc.data(), 1, MPI_INT, MPI_COMM_WORLD);
  index_t m = 0;
  for (int q = 0; q < ranks; ++q)
    rd[static_cast<std::size_t>(q)] = static_cast<int>(m), m += rc[static_cast<std::size_t>(q)];
  detail::AlignedVector<double> want(static_cast<std::size_t>(m * W)), got, s1, s2, back(send.size());
  MPI_Alltoallv(send.data(), sc.data(), sd.data(), row, want.data(), rc.data(), rd.data(), row, MPI_COMM_WORLD);
  t.forward(send.data(), W, row, plan, got, s1, s2);
  check(got == want, name + ": rows as MPI_Alltoallv delivers them");
  bool counts = true;
  for (int q = 0; q < ranks; ++q) counts = counts && t.from(plan, q) == rc[static_cast<std::size_t>(q)];
  check(counts, name + ": rows from each rank");
  for (auto& v : got) v = -v;
  t.backward(got.data(), W, row, plan, back.data(), s1, s2);
  bool same = true;
  for (std::size_t i = 0; i < send.size(); ++i) same = same && back[i] == -send[i];
  check(same, name + ": the way back restores the senders' layout");
  MPI_Type_free(&row);
}

template <class F>
void expect_throw_everywhere(const std::string& name, const std::string& text, F&& f) {
  bool threw = false;
  std::string msg;
  try {
    f();
  } catch (const error& e) {
    threw = true, msg = e.what();
  }
  check(threw, name + ": throws on every rank");
  check(msg.find(text) != std::string::npos, name + ": message names \"" + text + "\" (got \"" + msg + "\")");
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  try {
    doc_examples();
    movable();
    const index_t M = 32, H = 40, G = 7, S = 60;
    for (index_t E : {8, 6}) {  // P = 4 splits 6 experts unevenly
      const std::string e = " E=" + std::to_string(E);
      MoEOptions top2;
      std::get<Top2Options>(top2.router).capacity = CapacitySpec::fixed(12);
      std::get<Top2Options>(top2.router).policy = SecondPolicy::random;
      std::get<Top2Options>(top2.router).second_place_loss = true;
      equal_case("top2 random" + e, layer_weights<float>(M, H, E, false, false, 1), top2, G, S, M);
      std::get<Top2Options>(top2.router).policy = SecondPolicy::sampling;
      std::get<Top2Options>(top2.router).normalize = Normalize::after;
      equal_case("top2 sampling, normalize after" + e, layer_weights<float>(M, H, E, false, true, 11), top2, G, S, M);
      MoEOptions topk;
      topk.router = TopKOptions{};
      std::get<TopKOptions>(topk.router).k = 2;
      std::get<TopKOptions>(topk.router).normalize = TopKNormalize::topk;
      topk.activation = Activation::silu;
      equal_case("topk dropless, gated + shared" + e, layer_weights<float>(M, H, E, true, true, 2), topk, G, S, M);
      MoEOptions ds = topk;
      std::get<TopKOptions>(ds.router).score = Score::sigmoid;
      std::get<TopKOptions>(ds.router).expert_groups = 2, std::get<TopKOptions>(ds.router).topk_expert_groups = 1;
      std::get<TopKOptions>(ds.router).bias.assign(static_cast<std::size_t>(E), 0.0);
      std::get<TopKOptions>(ds.router).bias[1] = 0.3;
      std::get<TopKOptions>(ds.router).scale = 2.5;
      std::get<TopKOptions>(ds.router).capacity = CapacitySpec::fixed(9);
      std::get<TopKOptions>(ds.router).priority = Priority::bpr;
      equal_case("topk sigmoid groups bias capacity bpr" + e, layer_weights<float>(M, H, E, true, false, 3), ds, G, S,
                 M);
      MoEOptions ec;
      ec.router = ExpertChoiceOptions{};
      std::get<ExpertChoiceOptions>(ec.router).capacity = CapacitySpec::fixed(10);
      equal_case("expert choice + shared" + e, layer_weights<float>(M, H, E, false, true, 4), ec, G, S, M);
      for (Precision p : {Precision::bf16, Precision::int8}) {
        if (!backend_supports(Backend::automatic, p)) continue;
        MoEOptions q = topk;
        q.precision = p;
        equal_case(std::string("topk ") + to_string(p) + e, layer_weights<float>(M, H, E, true, true, 5), q, G, S, M);
      }
      equal_case("topk double" + e, layer_weights<double>(M, H, E, true, true, 6), topk, G, S, M);
    }
    // Message counts past 2^31 - 1 rows are an error, never a wrapped int.
    check(detail::mpi_count(INT_MAX, "rows") == INT_MAX, "2^31 - 1 rows fit one message");
    expect_throw_everywhere("2^31 rows in one message", "2^31 - 1",
                            [] { detail::mpi_count(index_t{INT_MAX} + 1, "rows"); });
    // The two-level transport with nodes in rank order and round-robin.
    {
      std::vector<int> block(static_cast<std::size_t>(ranks)), rr(block.size()), one(block.size(), 7);
      for (int q = 0; q < ranks; ++q)
        block[static_cast<std::size_t>(q)] = q / 2, rr[static_cast<std::size_t>(q)] = q % 2;
      if (ranks % 2 == 0) two_level_case(block), two_level_case(rr);
      two_level_case(one);
      std::vector<int> each(block.size());
      for (int q = 0; q < ranks; ++q) each[static_cast<std::size_t>(q)] = 10 - q;
      two_level_case(each);
      if (ranks == 3) {
        std::vector<int> uneven{0, 0, 1};
        expect_throw_everywhere("nodes of different sizes", "every node",
                                [&] { detail::TwoLevelExchange(MPI_COMM_WORLD, uneven); });
      }
    }
    // Fewer groups than ranks: some ranks bring none.
    {
      MoEOptions topk;
      topk.router = TopKOptions{};
      equal_case("topk, 2 groups", layer_weights<float>(16, 8, 4, false, true, 7), topk, 2, 30, 16);
    }
    // Another split (ranks take groups in reverse order): same routing,
    // outputs to rounding.
    {
      const index_t E = 8;
      const auto w = layer_weights<float>(M, H, E, true, true, 8);
      MoEOptions o;
      o.router = TopKOptions{};
      std::get<TopKOptions>(o.router).capacity = CapacitySpec::fixed(20);
      const Tensor<float> x = Rng(5).normal<float>(Shape{{"batch", G}, {"group", S}, {"model", M}});
      const auto ref = MoELayer<float>(w, o).forward(x);
      const ExpertParallelMoE<float> ep(MPI_COMM_WORLD, w, o);
      const int rr = ranks - 1 - rank;
      const index_t g0 = G * rr / ranks, g1 = G * (rr + 1) / ranks;
      const auto out = ep.forward(groups_of(x, g0, g1 - g0));
      const auto want = groups_of(ref.outputs, g0, g1 - g0);
      float err = 0, ymax = 0;
      for (index_t i = 0; i < want.size(); ++i)
        err = std::max(err, std::fabs(out.outputs[i] - want[i])), ymax = std::max(ymax, std::fabs(want[i]));
      check(err <= 1e-6f * std::max(1.f, ymax), "reversed split: outputs within 1e-6");
      check(out.stats.tokens_per_expert == ref.stats.tokens_per_expert, "reversed split: same routing");
      check(std::fabs(out.aux_loss - ref.aux_loss) <= 1e-6f * std::fabs(ref.aux_loss), "reversed split: aux_loss");
    }
    // Bad setups: every rank throws, nobody hangs.
    {
      const auto w = layer_weights<float>(M, H, 8, false, false, 9);
      MoEOptions o;
      o.router = TopKOptions{};
      const ExpertParallelMoE<float> ep(MPI_COMM_WORLD, w, o);
      const index_t bad_m = rank == ranks - 1 ? M + 1 : M;
      const Tensor<float> x = Rng(1).normal<float>(Shape{{"batch", 1}, {"group", 8}, {"model", bad_m}});
      expect_throw_everywhere("inputs with the wrong model dim on the last rank", "rank " + std::to_string(ranks - 1),
                              [&] { ep.forward(x); });
      const Tensor<float> y =
          Rng(1).normal<float>(Shape{{"batch", 1}, {"group", 8 + (rank == ranks - 1 ? 1 : 0)}, {"model", M}});
      if (ranks > 1) expect_throw_everywhere("group sizes that differ", "group size", [&] { ep.forward(y); });
      // still usable after the errors
      const Tensor<float> z = Rng(2).normal<float>(Shape{{"batch", 1}, {"group", 8}, {"model", M}});
      check(ep.forward(z).outputs.size() == 8 * M, "usable after errors");
      const auto wh = layer_weights<float>(M, rank == 0 ? H : H + 1, 8, false, false, 9);
      if (ranks > 1)
        expect_throw_everywhere("weights that differ across ranks", "hidden",
                                [&] { ExpertParallelMoE<float>(MPI_COMM_WORLD, wh, o); });
      MoEOptions bad = o;
      std::get<TopKOptions>(bad.router).k = rank == 0 ? 9 : 2;
      expect_throw_everywhere("k > E on rank 0", "rank 0", [&] { ExpertParallelMoE<float>(MPI_COMM_WORLD, w, bad); });
      ExpertParallelOptions h{Exchange::hierarchical, ranks + 1};
      if (ranks > 1)
        expect_throw_everywhere("ranks_per_node that does not divide", "does not divide",
                                [&] { ExpertParallelMoE<float>(MPI_COMM_WORLD, w, o, h); });
      h.ranks_per_node = -1;
      expect_throw_everywhere("negative ranks_per_node", "ranks_per_node",
                              [&] { ExpertParallelMoE<float>(MPI_COMM_WORLD, w, o, h); });
      h.ranks_per_node = rank == 0 ? 1 : 0;
      if (ranks > 1)
        expect_throw_everywhere("ranks_per_node that differs", "ranks_per_node",
                                [&] { ExpertParallelMoE<float>(MPI_COMM_WORLD, w, o, h); });
      h.exchange = rank == 0 ? Exchange::padded : Exchange::rows, h.ranks_per_node = 0;
      if (ranks > 1)
        expect_throw_everywhere("exchanges that differ", "exchange",
                                [&] { ExpertParallelMoE<float>(MPI_COMM_WORLD, w, o, h); });
      if (ranks > 1) {  // an inter-communicator between the two halves
        MPI_Comm half = MPI_COMM_NULL, inter = MPI_COMM_NULL;
        const int side = rank < ranks / 2 ? 0 : 1;
        MPI_Comm_split(MPI_COMM_WORLD, side, rank, &half);
        MPI_Intercomm_create(half, 0, MPI_COMM_WORLD, side == 0 ? ranks / 2 : 0, 17, &inter);
        expect_throw_everywhere("an inter-communicator", "inter-communicator",
                                [&] { ExpertParallelMoE<float>(inter, w, o); });
        MPI_Comm_free(&inter);
        MPI_Comm_free(&half);
      }
      MoEOptions drop = o;
      drop.dropout = 0.1;
      expect_throw_everywhere("dropout", "dropout", [&] { ExpertParallelMoE<float>(MPI_COMM_WORLD, w, drop); });
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: unexpected exception: %s\n", rank, e.what());
    ++failures;
  }
  int total = 0;
  MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) std::printf("expert parallel, %d ranks: %d checks per rank, %d failures\n", ranks, checks, total);
  MPI_Finalize();
  return total == 0 ? 0 : 1;
}
