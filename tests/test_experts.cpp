#include <atomic>

#include "check.hpp"
#include "moe_fixtures.hpp"
#include "naive.hpp"

using namespace einmoe;

namespace {
template <class T>
ExpertWeights<T> random_experts(index_t E, index_t M, index_t H, bool biases) {
  ExpertWeights<T> w;
  w.wi = shared_view(naive::random_tensor<T>(Shape{{"experts", E}, {"model", M}, {"hidden", H}}, -1, 1));
  w.wo = shared_view(naive::random_tensor<T>(Shape{{"experts", E}, {"hidden", H}, {"model", M}}, -1, 1));
  if (biases) {
    w.bi = shared_view(naive::random_tensor<T>(Shape{{"experts", E}, {"hidden", H}}, -1, 1));
    w.bo = shared_view(naive::random_tensor<T>(Shape{{"experts", E}, {"model", M}}, -1, 1));
  }
  return w;
}
}  // namespace

TEST_CASE("experts: hand-worked single expert, relu, biases", "[experts]") {
  // 1 group, 2 tokens, 1 expert with capacity 2; identity-ish weights.
  Tensor<double> x(Shape::parse("batch:1,group:2,model:2"), {1, -2, 3, 4});
  ExpertWeights<double> w;
  w.wi = shared_view(Tensor<double>(Shape::parse("experts:1,model:2,hidden:2"), {1, 0, 0, 1}));
  w.wo = shared_view(Tensor<double>(Shape::parse("experts:1,hidden:2,model:2"), {2, 0, 0, 2}));
  w.bi = shared_view(Tensor<double>(Shape::parse("experts:1,hidden:2"), {0, 1}));
  w.bo = shared_view(Tensor<double>(Shape::parse("experts:1,model:2"), {10, 20}));
  // combine: token 0 -> slot 0 with 0.5, token 1 -> slot 1 with 1.0
  Tensor<double> combine(Shape::parse("batch:1,group:2,experts:1,expert_capacity:2"), {0.5, 0, 0, 1.0});
  const Tensor<double> dispatch = cast<double>(not_equal(combine, 0.0));
  ExpertOptions cfg;
  // token 0: h = relu([1, -2] + [0, 1]) = [1, 0]; y = [2, 0] + [10, 20] = [12, 20]; * 0.5 = [6, 10]
  // token 1: h = relu([3, 4] + [0, 1]) = [3, 5]; y = [6, 10] + [10, 20] = [16, 30]
  const auto d = experts_dense(x, dispatch, combine, w, cfg);
  CHECK(d.to_vector() == std::vector<double>{6, 10, 16, 30});
  RoutingPlan<double> plan;
  plan.reset(Shape::parse("batch:1"), Dim("group", 2), Dim("experts", 1), Dim("expert_capacity", 2), 2);
  plan.expert[0] = 0, plan.slot[0] = 0, plan.weight[0] = 0.5;
  plan.expert[2] = 0, plan.slot[2] = 1, plan.weight[2] = 1.0;
  plan.taken[0] = 2, plan.slot_entry[0] = 0, plan.slot_entry[1] = 2;
  CHECK(experts_sparse(x, plan, w, cfg).to_vector() == std::vector<double>{6, 10, 16, 30});
}

TEMPLATE_TEST_CASE("experts: sparse equals dense for every activation, biases and dropout", "[experts][property]",
                   float, double) {
  const double tol = std::is_same<TestType, float>::value ? 1e-5 : 1e-12;
  for (int trial = 0; trial < 40; ++trial) {
    auto& g = naive::rng();
    const index_t B = std::uniform_int_distribution<index_t>(1, 3)(g),
                  S = std::uniform_int_distribution<index_t>(1, 12)(g);
    const index_t E = std::uniform_int_distribution<index_t>(1, 5)(g),
                  M = std::uniform_int_distribution<index_t>(1, 7)(g);
    const index_t H = std::uniform_int_distribution<index_t>(1, 9)(g);
    const auto w = random_experts<TestType>(E, M, H, trial % 2 == 0);
    const auto x = naive::random_tensor<TestType>(Shape{{"batch", B}, {"group", S}, {"model", M}});
    const auto logits = naive::random_tensor<TestType>(Shape{{"batch", B}, {"group", S}, {"experts", E}});
    Top2Options o;
    o.capacity = CapacitySpec::fixed(std::uniform_int_distribution<index_t>(1, S + 1)(g));
    const auto r = top2_gating(logits, o);
    const auto d = top2_gating_dense(logits, o);
    ExpertOptions cfg;
    cfg.activation = static_cast<Activation>(trial % 4);
    cfg.dropout = trial % 3 == 0 ? 0.4 : 0.0;
    cfg.dropout_seed = static_cast<std::uint64_t>(trial);
    const auto ys = experts_sparse(x, r.plan, w, cfg);
    const auto yd = experts_dense(x, d.dispatch, d.combine, w, cfg);
    INFO("trial " << trial);
    REQUIRE(ys.shape() == x.shape());
    double scale = 0;
    for (auto v : yd) scale = std::max(scale, static_cast<double>(std::abs(v)));
    for (index_t i = 0; i < ys.size(); ++i)
      REQUIRE(std::abs(double(ys[i]) - double(yd[i])) <= tol * std::max(1.0, scale));
  }
}

TEST_CASE("experts: dropout zeroes about the given fraction and is seeded", "[experts]") {
  const auto w = random_experts<double>(2, 4, 64, false);
  const auto x = naive::random_tensor<double>(Shape{{"batch", 1}, {"group", 8}, {"model", 4}});
  const auto l = naive::random_tensor<double>(Shape{{"batch", 1}, {"group", 8}, {"experts", 2}});
  Top2Options o;
  o.capacity = CapacitySpec::fixed(8);
  const auto r = top2_gating(l, o);
  ExpertOptions cfg;
  const auto base = experts_sparse(x, r.plan, w, cfg);
  cfg.dropout = 0.5;
  cfg.dropout_seed = 1;
  const auto a = experts_sparse(x, r.plan, w, cfg), b = experts_sparse(x, r.plan, w, cfg);
  CHECK(a.to_vector() == b.to_vector());
  CHECK(a.to_vector() != base.to_vector());
  cfg.dropout_seed = 2;
  CHECK(experts_sparse(x, r.plan, w, cfg).to_vector() != a.to_vector());
  cfg.dropout = 1.0;
  CHECK_THROWS_NAMING(experts_sparse(x, r.plan, w, cfg), value_error, "dropout");
}

TEST_CASE("experts: bad weights name the dim", "[experts][errors]") {
  auto w = random_experts<double>(2, 3, 4, false);
  const auto x = naive::random_tensor<double>(Shape{{"batch", 1}, {"group", 2}, {"model", 3}});
  const auto l = naive::random_tensor<double>(Shape{{"batch", 1}, {"group", 2}, {"experts", 2}});
  Top2Options o;
  o.capacity = CapacitySpec::fixed(2);
  const auto r = top2_gating(l, o);
  ExpertOptions cfg;
  auto bad = w;
  bad.wo = shared_view(naive::random_tensor<double>(Shape{{"experts", 2}, {"hidden", 5}, {"model", 3}}));
  CHECK_THROWS_NAMING(experts_sparse(x, r.plan, bad, cfg), shape_error, "\"hidden\"");
  bad = w;
  bad.bi = shared_view(naive::random_tensor<double>(Shape{{"experts", 2}, {"model", 3}}));
  CHECK_THROWS_NAMING(experts_sparse(x, r.plan, bad, cfg), shape_error, "bi");
  const auto w3 = random_experts<double>(3, 3, 4, false);
  CHECK_THROWS_NAMING(experts_sparse(x, r.plan, w3, cfg), shape_error, "\"experts\"");
  CHECK_THROWS_NAMING(
      experts_sparse(naive::random_tensor<double>(Shape{{"batch", 1}, {"group", 2}, {"model", 5}}), r.plan, w, cfg),
      shape_error, "model");
  CHECK_THROWS_NAMING(parse_activation("tanh"), value_error, "tanh");
}

TEST_CASE("experts: work items are (expert, fixed row block), the same on any thread count, each run on one thread",
          "[experts][threads]") {
  // the threading decision: every expert's rows cut into blocks of
  // kernel.row_block() rows; threads take whole items; each item's kernels
  // run single-threaded
  const index_t E = 3, M = 8, H = 16, S = 700;
  const auto w = random_experts<float>(E, M, H, false);
  Tensor<float> logits(Shape{{"batch", 1}, {"group", S}, {"experts", E}}, 0.f);
  for (index_t s = 0; s < S; ++s) logits[s * E + (s < 600 ? 0 : 1 + s % 2)] = 5.f;  // expert 0 gets 600 first choices
  Top2Options o;
  o.capacity = CapacitySpec::fixed(S);
  const auto plan = top2_gating(logits, o).plan;
  const auto x = naive::random_tensor<float>(Shape{{"batch", 1}, {"group", S}, {"model", M}});
  for (Backend b : {Backend::eigen, Backend::automatic}) {
    ExpertOptions cfg;
    cfg.backend = b;
    const PackedExperts<float> pe(w, cfg);
    const index_t block = pe.kernel().row_block();
    std::vector<std::vector<index_t>> seen;
    for (int threads : {1, 2, 3}) {
      set_num_threads(threads);
      detail::ExpertBuffers<float> ws;
      detail::expert_rows(plan, H, ws);
      std::atomic<int> inner{0};
      detail::run_expert_rows(pe.kernel(), pe.options(), ws, [&](index_t t) {
        inner = std::max(inner.load(), num_threads());  // what a kernel inside an item sees
        return x.data() + t * M;
      });
      CHECK(inner == 1);
      std::vector<index_t> items;
      for (const auto& it : ws.items) {
        CHECK(it.rows >= 1);
        CHECK(it.rows <= block);
        CHECK(it.row >= ws.offset[detail::uz(it.expert)]);
        CHECK(it.row + it.rows <= ws.offset[detail::uz(it.expert + 1)]);
        items.insert(items.end(), {it.expert, it.row, it.rows});
      }
      // every row in exactly one item, blocks full except each expert's last
      index_t covered = 0;
      for (const auto& it : ws.items) covered += it.rows;
      CHECK(covered == ws.offset.back());
      seen.push_back(items);
    }
    set_num_threads(1);
    CHECK(seen[0] == seen[1]);
    CHECK(seen[0] == seen[2]);
    // expert 0's 600+ rows need more than one item whenever the block is smaller
    index_t items0 = 0;
    for (std::size_t i = 0; i < seen[0].size(); i += 3) items0 += seen[0][i] == 0 ? 1 : 0;
    CHECK(items0 >= (600 + block - 1) / block);
  }
}
