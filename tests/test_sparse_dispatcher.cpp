#include "check.hpp"
#include "naive.hpp"

using namespace einmoe;

TEST_CASE("SparseDispatcher: dispatch, combine and expert_to_gates (hand-worked)", "[dispatcher]") {
  // 3 rows, 3 experts
  Tensor<double> gates(Shape::parse("batch:3,experts:3"), {0.7, 0, 0.3, /**/ 0, 0, 0, /**/ 0.4, 0.6, 0});
  Tensor<double> x(Shape::parse("batch:3,model:2"), {1, 2, 3, 4, 5, 6});
  SparseDispatcher<double> d(gates);
  CHECK(d.part_sizes() == std::vector<index_t>{2, 1, 1});
  const auto parts = d.dispatch(x);
  REQUIRE(parts.size() == 3);
  CHECK(parts[0].shape() == Shape::parse("batch:2,model:2"));
  CHECK(parts[0].to_vector() == std::vector<double>{1, 2, 5, 6});  // rows 0 and 2, in batch order
  CHECK(parts[1].to_vector() == std::vector<double>{5, 6});
  CHECK(parts[2].to_vector() == std::vector<double>{1, 2});
  const auto g = d.expert_to_gates();
  CHECK(g[0].to_vector() == std::vector<double>{0.7, 0.4});
  // experts are the identity: combine = sum of gates * row
  const auto y = d.combine(parts);
  CHECK(y.shape() == x.shape());
  CHECK(naive::all_close(y, Tensor<double>(x.shape(), {1, 2, 0, 0, 5, 6}), 1e-12));
  const auto z = d.combine(parts, false);
  CHECK(z.to_vector() == std::vector<double>{2, 4, 0, 0, 10, 12});
  CHECK_THROWS_NAMING(d.combine({parts[0]}), shape_error, "3 experts");
  CHECK_THROWS_NAMING(d.dispatch(Tensor<double>(Shape::parse("batch:4,model:2"))), shape_error, "\"batch\"");
  CHECK_THROWS_NAMING(SparseDispatcher<double>(Tensor<double>(Shape::parse("batch:3"))), shape_error, "batch");
}

TEST_CASE("plan_from_gates routes like SparseDispatcher, for experts_sparse", "[dispatcher]") {
  const auto gates = noisy_topk_gating(naive::random_tensor<double>(Shape::parse("batch:20,model:4")),
                                       naive::random_tensor<double>(Shape::parse("model:4,experts:5")), std::nullopt,
                                       NoisyTopKOptions{})
                         .gates;
  const auto plan = plan_from_gates(gates, 2);
  SparseDispatcher<double> d(gates);
  for (index_t e = 0; e < 5; ++e) CHECK(plan.taken[detail::uz(e)] == d.part_sizes()[detail::uz(e)]);
  // experts as FFNs: the plan path equals dispatch -> per-expert FFN -> combine
  ExpertWeights<double> w;
  w.wi = shared_view(naive::random_tensor<double>(Shape::parse("experts:5,model:4,hidden:6")));
  w.wo = shared_view(naive::random_tensor<double>(Shape::parse("experts:5,hidden:6,model:4")));
  const auto x = naive::random_tensor<double>(Shape::parse("batch:20,model:4"));
  const auto y = experts_sparse(reshape(x, Shape::parse("group:20,model:4")), plan, w, ExpertOptions{});
  CHECK(naive::all_close(reshape(y, x.shape()), naive::dispatcher_ffn(gates, x, w), 1e-12));
  CHECK_THROWS_NAMING(plan_from_gates(gates, 1), value_error, "k = 1");
}
