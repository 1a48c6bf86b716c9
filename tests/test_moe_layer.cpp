#include "check.hpp"
#include "moe_fixtures.hpp"
#include "naive.hpp"

using namespace einmoe;

namespace {
template <class T>
MoEWeights<T> random_layer(index_t M, index_t H, index_t E) {
  MoEWeights<T> w;
  w.wg = naive::random_tensor<T>(Shape{{"model", M}, {"experts", E}});
  w.experts.wi = naive::random_tensor<T>(Shape{{"experts", E}, {"model", M}, {"hidden", H}}, -0.5, 0.5);
  w.experts.wo = naive::random_tensor<T>(Shape{{"experts", E}, {"hidden", H}, {"model", M}}, -0.5, 0.5);
  return w;
}
}  // namespace

TEST_CASE("MoE layer matches the numpy reference (GShard einsums)", "[moe][fixtures]") {
  const auto cases = fixtures::cases("moe");
  REQUIRE(cases.size() == 8);
  for (const auto& c : cases) {
    INFO(c.name);
    auto run = [&](auto zero) {
      using T = decltype(zero);
      MoEWeights<T> w;
      w.wg = c.load<T>("wg", {"model", "experts"});
      w.experts.wi = c.load<T>("wi", {"experts", "model", "hidden"});
      w.experts.wo = c.load<T>("wo", {"experts", "hidden", "model"});
      if (c.has("bi")) w.experts.bi = c.load<T>("bi", {"experts", "hidden"});
      if (c.has("bo")) w.experts.bo = c.load<T>("bo", {"experts", "model"});
      MoEOptions o;
      o.gating.capacity = Dim("expert_capacity", c.integer("capacity"));
      o.activation = parse_activation(c.config.at("activation"));
      const auto x = c.load<T>("inputs", {"batch", "group", "model"});
      const auto want = c.load<T>("expected_outputs", {"batch", "group", "model"});
      const T loss = c.load<T>("expected_aux_loss", {}).item();
      const double tol = c.f64 ? 1e-12 : 1e-5;
      for (bool dense : {false, true}) {
        o.dense = dense;
        const auto r = moe_forward(x, w, o);
        REQUIRE(naive::all_close(r.outputs, want, tol, tol));
        REQUIRE(naive::close(r.aux_loss, loss, tol, tol));
      }
    };
    if (c.f64) run(0.0);
    else run(0.0f);
  }
}

TEST_CASE("MoE layer: ungrouped [batch, length, model] inputs are grouped and restored", "[moe]") {
  const auto w = random_layer<double>(6, 8, 4);
  const auto x = naive::random_tensor<double>(Shape::parse("batch:3,length:10,model:6"));
  MoEOptions o;
  o.gating.capacity = Dim("expert_capacity", 4);
  o.max_group_size = 8;  // 30 tokens -> 3 groups of 10 (Mesh TF starts from floor(30 / 8) groups)
  MoELayer<double> layer(w, o);
  const auto r = layer.forward(x);
  CHECK(r.outputs.shape() == x.shape());
  // same as grouping by hand
  const auto grouped = reshape(x, Shape::parse("moe_groups:3,group:10,model:6"));
  const auto g = moe_forward(grouped, w, o);
  CHECK(reshape(g.outputs, x.shape()).to_vector() == r.outputs.to_vector());
  // model dim not last: outputs keep the input's dim order
  const auto xt = transpose(x, {"model", "batch", "length"});
  const auto rt = moe_forward(xt, w, o);
  CHECK(rt.outputs.shape() == xt.shape());
  CHECK(naive::all_close(transpose(rt.outputs, x.shape()), r.outputs, 1e-12));
  o.dense = true;
  CHECK(naive::all_close(moe_forward(x, w, o).outputs, r.outputs, 1e-12));
}

TEMPLATE_TEST_CASE("MoE layer: sparse equals dense on random layers and options", "[moe][property]", float, double) {
  const double tol = std::is_same<TestType, float>::value ? 1e-5 : 1e-12;
  for (int trial = 0; trial < 30; ++trial) {
    auto& g = naive::rng();
    const index_t G = std::uniform_int_distribution<index_t>(1, 3)(g), S = std::uniform_int_distribution<index_t>(1, 16)(g);
    const index_t E = std::uniform_int_distribution<index_t>(1, 6)(g);
    const auto w = random_layer<TestType>(5, 7, E);
    const auto x = naive::random_tensor<TestType>(Shape{{"batch", G}, {"group", S}, {"model", 5}});
    MoEOptions o;
    o.gating.capacity = Dim("expert_capacity", std::uniform_int_distribution<index_t>(1, S + 1)(g));
    o.gating.policy = static_cast<SecondPolicy>(trial % 5);
    o.gating.normalize = trial % 2 ? Normalize::after : Normalize::before;
    o.gating.seed = static_cast<std::uint64_t>(trial);
    o.activation = static_cast<Activation>(trial % 4);
    const auto a = moe_forward(x, w, o);
    o.dense = true;
    const auto b = moe_forward(x, w, o);
    INFO("trial " << trial);
    REQUIRE(naive::all_close(a.outputs, b.outputs, tol, tol));
    REQUIRE(naive::close(a.aux_loss, b.aux_loss, tol, tol));
    REQUIRE(a.stats.tokens_per_expert == b.stats.tokens_per_expert);
  }
}

TEST_CASE("MoE layer: all-padding groups give zero outputs", "[moe][edge]") {
  const auto w = random_layer<double>(4, 6, 3);
  const auto x = naive::random_tensor<double>(Shape::parse("batch:2,group:5,model:4"));
  MoEOptions o;
  o.gating.capacity = Dim("expert_capacity", 2);
  GatingInputs<double> in;
  in.importance = Tensor<double>(Shape::parse("batch:2,group:5"), 0.0);
  for (bool dense : {false, true}) {
    o.dense = dense;
    const auto r = moe_forward(x, w, o, in);
    for (auto v : r.outputs) CHECK(v == 0.0);
    CHECK(r.aux_loss == 0.0);
  }
}

TEST_CASE("MoE layer: bad inputs name the dim", "[moe][errors]") {
  const auto w = random_layer<double>(4, 6, 3);
  MoEOptions o;
  o.gating.capacity = Dim("expert_capacity", 2);
  CHECK_THROWS_NAMING(moe_forward(naive::random_tensor<double>(Shape::parse("batch:2,group:5,hidden:4")), w, o), shape_error,
                      "\"model\"");
  CHECK_THROWS_NAMING(moe_forward(naive::random_tensor<double>(Shape::parse("batch:2,group:5,model:7")), w, o), shape_error,
                      "\"model\"");
  CHECK_THROWS_NAMING(moe_forward(naive::random_tensor<double>(Shape::parse("batch:0,length:5,model:4")), w, o), shape_error,
                      "no tokens");
}

TEST_CASE("MoE layer: forward_into reuses the output buffer and gives the same result", "[moe]") {
  const auto w = random_layer<float>(8, 16, 4);
  const auto x = naive::random_tensor<float>(Shape::parse("batch:2,group:12,model:8"));
  MoEOptions o;
  o.gating.capacity = Dim("expert_capacity", 6);
  MoELayer<float> layer(w, o);
  MoEResult<float> out;
  layer.forward_into(out, x);
  const float* buffer = out.outputs.data();
  const auto first = out.outputs.to_vector();
  layer.forward_into(out, x);
  CHECK(out.outputs.data() == buffer);
  CHECK(out.outputs.to_vector() == first);
  CHECK(layer.forward(x).outputs.to_vector() == first);
  // another shape through the same layer and workspace
  const auto y = naive::random_tensor<float>(Shape::parse("batch:3,group:5,model:8"));
  layer.forward_into(out, y);
  CHECK(out.outputs.shape() == y.shape());
  CHECK(naive::all_close(out.outputs, moe_forward(y, w, o).outputs, 1e-6));
}
