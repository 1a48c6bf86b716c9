#include "check.hpp"
#include "moe_fixtures.hpp"
#include "naive.hpp"

using namespace einmoe;

TEST_CASE("moe_v0 matches the numpy transcription of Mesh TF, sparse and dense", "[moe_v0][fixtures]") {
  const auto cases = fixtures::cases("moe_v0");
  REQUIRE(cases.size() == 2);
  for (const auto& c : cases) {
    INFO(c.name);
    MoEV0Weights<double> w;
    w.wg = shared_view(c.load<double>("wg", {"model", "experts"}));
    w.bg = shared_view(c.load<double>("bg", {"experts"}));
    w.experts.wi = shared_view(c.load<double>("wi", {"experts", "model", "hidden"}));
    w.experts.bi = shared_view(c.load<double>("bi", {"experts", "hidden"}));
    w.experts.wo = shared_view(c.load<double>("wo", {"experts", "hidden", "model"}));
    w.experts.bo = shared_view(c.load<double>("bo", {"experts", "model"}));
    const auto x = c.load<double>("inputs", {"batch", "length", "model"});
    MoEV0Options o;
    for (bool dense : {false, true}) {
      o.dense = dense;
      const auto r = moe_v0_forward(x, w, o);
      CHECK(
          naive::all_close(r.outputs, c.load<double>("expected_outputs", {"batch", "length", "model"}), 1e-12, 1e-12));
      CHECK(r.aux_loss == Approx(c.load<double>("expected_loss", {}).item()).epsilon(1e-10));
    }
  }
}

TEST_CASE("moe_v0: too little capacity is a clear error", "[moe_v0][errors]") {
  MoEV0Weights<double> w;
  w.wg = shared_view(naive::random_tensor<double>(Shape::parse("model:2,experts:8")));
  w.experts.wi = shared_view(naive::random_tensor<double>(Shape::parse("experts:8,model:2,hidden:3")));
  w.experts.wo = shared_view(naive::random_tensor<double>(Shape::parse("experts:8,hidden:3,model:2")));
  CHECK_THROWS_NAMING(
      moe_v0_forward(naive::random_tensor<double>(Shape::parse("batch:1,length:2,model:2")), w, MoEV0Options{}),
      value_error, "capacity");
}
