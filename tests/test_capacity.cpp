#include "check.hpp"
#include "einmoe/routers/capacity.hpp"

using namespace einmoe;

TEST_CASE("capacity rules of Mesh TF, lingvo, DeepSpeed/Tutel and moe_v0", "[capacity]") {
  // Mesh TF: max(min(S, int(S*cf/E)), 4)
  CHECK(mtf_capacity(1024, 16, 1.25) == 80);
  CHECK(mtf_capacity(16, 16, 1.0) == 4);  // floor of the minimum
  CHECK(mtf_capacity(2, 1, 4.0) == 4);    // min(S=2, 8)=2, then max(., 4)
  CHECK(mtf_capacity(100, 8, 1.0, 1) == 12);
  // lingvo: int(S*cf/E) rounded up to a multiple of 4, unless the given capacity is larger
  CHECK(lingvo_capacity(1024, 16, 1.25) == 80);
  CHECK(lingvo_capacity(100, 8, 1.0) == 12);      // int(12.5) = 12
  CHECK(lingvo_capacity(100, 7, 1.0) == 16);      // int(14.28) = 14 -> 16
  CHECK(lingvo_capacity(100, 7, 1.0, 20) == 20);  // the given capacity is already big enough
  // DeepSpeed / Tutel: ceil(k*cf*S/E)
  CHECK(topk_capacity(1024, 16, 2, 1.25) == 160);
  CHECK(topk_capacity(100, 7, 1, 1.0) == 15);
  CHECK(topk_capacity(10, 16, 1, 1.0, 4) == 4);
  // moe_v0: min(L, int(2 * L * overhead / E))
  CHECK(moe_v0_capacity(256, 16) == 32);
  CHECK(moe_v0_capacity(4, 1) == 4);
}

TEST_CASE("capacity rules reject bad arguments", "[capacity][errors]") {
  CHECK_THROWS_NAMING(mtf_capacity(10, 0, 1.0), value_error, "experts");
  CHECK_THROWS_NAMING(lingvo_capacity(10, 2, -1.0), value_error, "capacity factor");
  CHECK_THROWS_NAMING(topk_capacity(10, 2, 0, 1.0), value_error, "k = 0");
  CHECK_THROWS_AS(topk_capacity(10, 2, 1, std::nan("")), value_error);
  CHECK_THROWS_AS(mtf_capacity(-1, 2, 1.0), value_error);
}

TEST_CASE("split_into_groups follows Mesh TF", "[capacity]") {
  auto s = split_into_groups(4096, 1024);
  CHECK(s.num_groups == 4);
  CHECK(s.group_size == 1024);
  s = split_into_groups(1000, 300);  // 3 groups do not divide 1000 -> 4 of 250
  CHECK(s.num_groups == 4);
  CHECK(s.group_size == 250);
  s = split_into_groups(10, 100);
  CHECK(s.num_groups == 1);
  CHECK(s.group_size == 10);
  s = split_into_groups(24, 8, 4);  // 3 groups is not a multiple of 4 -> 4 groups of 6
  CHECK(s.num_groups == 4);
  CHECK(s.group_size == 6);
  // As in Mesh TF's code (not its docstring), the group size may exceed the
  // maximum: it starts from floor(n / max_group_size) groups.
  s = split_into_groups(30, 8);
  CHECK(s.num_groups == 3);
  CHECK(s.group_size == 10);
  s = split_into_groups(7, 1);
  CHECK(s.num_groups == 7);
  CHECK_THROWS_NAMING(split_into_groups(10, 4, 3), value_error, "mesh_dim_size");
  CHECK_THROWS_AS(split_into_groups(0, 4), value_error);
}

TEST_CASE("capacity from a factor follows each system's rule", "[routers][capacity]") {
  CHECK(flaxformer_capacity(1024, 16, 1.25) == 80);
  CHECK(flaxformer_capacity(20, 8, 1.0) == 4);     // round(2.5) = 2 (half to even), then min 4
  CHECK(flaxformer_capacity(28, 8, 1.0, 1) == 4);  // round(3.5) = 4
  CHECK(flaxformer_capacity(20, 8, 1.0, 1) == 2);
  CHECK(capacity_from_factor(CapacityRule::mtf, 1024, 16, 2, 1.25) == mtf_capacity(1024, 16, 1.25));
  CHECK(capacity_from_factor(CapacityRule::lingvo, 1000, 16, 2, 1.0) == 64);  // int(62.5) -> 64
  CHECK(capacity_from_factor(CapacityRule::deepspeed, 1024, 16, 2, 1.25) == 160);
  CHECK(capacity_from_factor(CapacityRule::deepspeed, 10, 16, 1, 1.0, 4) == 4);
  CHECK(capacity_from_factor(CapacityRule::flaxformer, 1024, 16, 2, 1.25) == 80);
  CHECK_THROWS_AS(capacity_from_factor(CapacityRule::flaxformer, 1024, 16, 2, -1.0), value_error);
}
