#include "check.hpp"
#include "naive.hpp"

using namespace einmoe;

TEST_CASE("transpose reorders dims", "[manip]") {
  Tensor<int> x(Shape::parse("a:2,b:3"), {0, 1, 2, 3, 4, 5});
  const auto t = transpose(x, {"b", "a"});
  CHECK(t.shape() == Shape::parse("b:3,a:2"));
  CHECK(t.to_vector() == std::vector<int>{0, 3, 1, 4, 2, 5});
  CHECK(transpose(x, Shape::parse("b:3,a:2")).to_vector() == t.to_vector());
  CHECK_THROWS_NAMING(transpose(x, {"b", "c"}), shape_error, "\"c\"");
  CHECK_THROWS_AS(transpose(x, {"b"}), shape_error);
  CHECK_THROWS_AS(transpose(x, Shape::parse("b:4,a:2")), shape_error);
}

TEST_CASE("transpose equals a naive loop on random shapes", "[manip][property]") {
  for (int trial = 0; trial < 200; ++trial) {
    const Shape s = naive::random_shape(0, 5);
    auto dims = s.dims();
    std::shuffle(dims.begin(), dims.end(), naive::rng());
    const Shape p(dims);
    const auto x = naive::random_tensor<double>(s);
    const auto t = transpose(x, p);
    naive::for_each(s, [&](const naive::Index& idx) { REQUIRE(t[naive::offset(p, idx)] == naive::get(x, idx)); });
  }
}

TEST_CASE("rename and reshape relabel without moving data", "[manip]") {
  Tensor<int> x(Shape::parse("length:2,model:3"), {0, 1, 2, 3, 4, 5});
  const auto r = rename(x, "length", "memory_length");
  CHECK(r.shape() == Shape::parse("memory_length:2,model:3"));
  CHECK(r.to_vector() == x.to_vector());
  CHECK(r.data() == static_cast<const Tensor<int>&>(x).data());  // a view: O(1), no copy
  static_assert(std::is_same<std::decay_t<decltype(r)>, TensorView<const int>>::value);
  CHECK_THROWS_NAMING(rename(x, "length", "model"), shape_error, "\"model\"");
  CHECK_THROWS_NAMING(rename(x, "batch", "b"), shape_error, "\"batch\"");
  const auto f = reshape(x, Shape::parse("flat:6"));
  CHECK(f.to_vector() == x.to_vector());
  CHECK(f.data() == static_cast<const Tensor<int>&>(x).data());
  // a mutable view stays mutable; an rvalue tensor is relabelled in place
  TensorView<int> m = reshape(x.view(), Shape::parse("flat:6"));
  m[5] = 50;
  CHECK(x.at({1, 2}) == 50);
  const int* p = x.data();
  Tensor<int> moved = rename(std::move(x), "model", "hidden");
  CHECK(moved.data() == p);
  CHECK(moved.shape() == Shape::parse("length:2,hidden:3"));
  CHECK_THROWS_AS(reshape(x, Shape::parse("flat:5")), shape_error);
}

TEST_CASE("slice, concat, shift, stack, unstack (hand-worked)", "[manip]") {
  Tensor<int> x(Shape::parse("a:2,b:3"), {0, 1, 2, 3, 4, 5});
  const auto s = slice(x, "b", 1, 2);
  CHECK(s.shape() == Shape::parse("a:2,b:2"));
  CHECK(s.to_vector() == std::vector<int>{1, 2, 4, 5});
  CHECK(slice(x, "a", 1, 0).size() == 0);
  CHECK_THROWS_NAMING(slice(x, "b", 2, 2), shape_error, "\"b\"");
  CHECK_THROWS_NAMING(slice(x, "c", 0, 1), shape_error, "\"c\"");

  const auto c = concat<int>({x, s}, "b");
  CHECK(c.shape() == Shape::parse("a:2,b:5"));
  CHECK(c.to_vector() == std::vector<int>{0, 1, 2, 1, 2, 3, 4, 5, 4, 5});
  // the other inputs may have another dim order
  const auto c2 = concat<int>({x, transpose(x, {"b", "a"})}, "a");
  CHECK(c2.shape() == Shape::parse("a:4,b:3"));
  CHECK(c2.to_vector() == std::vector<int>{0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5});
  CHECK_THROWS_NAMING(concat<int>({x, Tensor<int>(Shape::parse("a:3,b:3"))}, "b"), shape_error, "\"a\"");
  CHECK_THROWS_NAMING(concat<int>({x, x}, "z"), shape_error, "\"z\"");

  CHECK(shift(x, 1, "b", false).to_vector() == std::vector<int>{0, 0, 1, 0, 3, 4});
  CHECK(shift(x, -1, "b", false).to_vector() == std::vector<int>{1, 2, 0, 4, 5, 0});
  CHECK(shift(x, 1, "b", true).to_vector() == std::vector<int>{2, 0, 1, 5, 3, 4});
  CHECK(shift(x, 4, "b", true).to_vector() == std::vector<int>{2, 0, 1, 5, 3, 4});
  CHECK(shift(x, 1, "a", false).to_vector() == std::vector<int>{0, 0, 0, 0, 1, 2});
  CHECK(shift(Tensor<int>(Shape::parse("a:2,b:0")), 1, "a", true).size() == 0);

  const auto st = stack<int>({x, x}, "copy", 1);
  CHECK(st.shape() == Shape::parse("a:2,copy:2,b:3"));
  CHECK(st.to_vector() == std::vector<int>{0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5});
  CHECK_THROWS_NAMING(stack<int>({x}, "a", 0), shape_error, "\"a\"");
  CHECK_THROWS_AS(stack<int>({x}, "z", 3), value_error);
  const auto us = unstack(st, "copy");
  REQUIRE(us.size() == 2);
  CHECK(us[1].shape() == x.shape());
  CHECK(us[1].to_vector() == x.to_vector());
}

TEST_CASE("in_order is zero-copy when the order already matches", "[manip]") {
  Tensor<int> x(Shape::parse("a:2,b:3"), {0, 1, 2, 3, 4, 5});
  Tensor<int> hold;
  CHECK(detail::in_order(x, x.shape(), hold).data() == static_cast<const Tensor<int>&>(x).data());
  const auto t = detail::in_order(x, Shape::parse("b:3,a:2"), hold);
  CHECK(t.data() == static_cast<const Tensor<int>&>(hold).data());
  CHECK(t.to_vector() == std::vector<int>{0, 3, 1, 4, 2, 5});
}

TEST_CASE("slice, shift, concat, stack and unstack equal naive loops on random shapes", "[manip][property]") {
  for (int trial = 0; trial < 150; ++trial) {
    const Shape s = naive::random_shape(1, 4, {"a", "b", "c", "d"}, 4);
    const std::string dim = s[std::uniform_int_distribution<index_t>(0, s.rank() - 1)(naive::rng())].name;
    const index_t n = s.size_of(dim);
    const auto x = naive::random_ints<std::int64_t>(s, -9, 9);
    // slice
    const index_t begin = std::uniform_int_distribution<index_t>(0, n)(naive::rng());
    const index_t len = std::uniform_int_distribution<index_t>(0, n - begin)(naive::rng());
    const auto sl = slice(x, dim, begin, len);
    naive::for_each(sl.shape(), [&](const naive::Index& at) {
      naive::Index src = at;
      src[dim] += begin;
      REQUIRE(sl[naive::offset(sl.shape(), at)] == naive::get(x, src));
    });
    // shift, with and without wrap
    const index_t off = std::uniform_int_distribution<index_t>(-5, 5)(naive::rng());
    for (bool wrap : {false, true}) {
      const auto sh = shift(x, off, dim, wrap);
      naive::for_each(s, [&](const naive::Index& at) {
        index_t from = at.at(dim) - off;
        if (wrap && n > 0) from = ((from % n) + n) % n;
        naive::Index src = at;
        src[dim] = from;
        const std::int64_t expect = (from >= 0 && from < n) ? naive::get(x, src) : 0;
        REQUIRE(sh[naive::offset(s, at)] == expect);
      });
    }
    // concat of the two halves around `begin`, the second transposed, is x again
    const auto head = slice(x, dim, 0, begin), tail = slice(x, dim, begin, n - begin);
    auto dims = tail.shape().dims();
    std::shuffle(dims.begin(), dims.end(), naive::rng());
    REQUIRE(concat<std::int64_t>({head, transpose(tail, Shape(dims))}, dim).to_vector() == x.to_vector());
    // stack at a random axis, then unstack
    const index_t axis = std::uniform_int_distribution<index_t>(0, s.rank())(naive::rng());
    const auto st = stack<std::int64_t>({x, x}, "copies", axis);
    REQUIRE(st.size_of("copies") == 2);
    for (const auto& part : unstack(st, "copies")) REQUIRE(part.to_vector() == x.to_vector());
  }
}

TEST_CASE("transpose moves no data when only size-1 dims move", "[manip]") {
  Tensor<float> x(Shape::parse("batch:1,length:3,model:2"), {1, 2, 3, 4, 5, 6});
  const float* p = x.data();
  // an rvalue is relabelled in place
  Tensor<float> y = transpose(std::move(x), Names({"length", "batch", "model"}));
  CHECK(y.shape() == Shape::parse("length:3,batch:1,model:2"));
  CHECK(y.data() == p);
  CHECK(y.at({2, 0, 1}) == 6);
  // a real permutation still permutes
  Tensor<float> z = transpose(std::move(y), Names({"model", "batch", "length"}));
  CHECK(z.data() != p);
  CHECK(z.at({1, 0, 2}) == 6);
  // in_order gives a zero-copy view for a relabel
  Tensor<float> w(Shape::parse("a:1,b:4"), {1, 2, 3, 4});
  Tensor<float> hold;
  const TensorView<const float> r = detail::in_order(w, Shape::parse("b:4,a:1"), hold);
  CHECK(r.shape() == Shape::parse("b:4,a:1"));
  CHECK(r.data() == static_cast<const Tensor<float>&>(w).data());
  CHECK(detail::is_relabel(Shape::parse("a:0,b:3"), Shape::parse("b:3,a:0")));
  CHECK_FALSE(detail::is_relabel(Shape::parse("a:2,b:3"), Shape::parse("b:3,a:2")));
}

TEST_CASE("relabel reorders size-1 dims of a view in O(1) and refuses to move elements", "[manip]") {
  Tensor<float> x(Shape::parse("batch:1,group:3,model:2"), {1, 2, 3, 4, 5, 6});
  const TensorView<const float> v = x;
  const TensorView<const float> r = relabel(v, {"group", "batch", "model"});
  CHECK(r.shape() == Shape::parse("group:3,batch:1,model:2"));
  CHECK(r.data() == v.data());
  CHECK(r.at({2, 0, 1}) == 6);
  // a mutable view stays mutable
  TensorView<float> m = relabel(x.view(), {"group", "model", "batch"});
  m.at({0, 1, 0}) = 9;
  CHECK(x.at({0, 0, 1}) == 9);
  // an empty tensor relabels in any order
  const Tensor<float> e(Shape::parse("a:0,b:3"));
  CHECK(relabel(e, {"b", "a"}).shape() == Shape::parse("b:3,a:0"));
  // a tensor given up is relabelled in place
  const float* p = static_cast<const Tensor<float>&>(x).data();
  Tensor<float> owned = relabel(std::move(x), {"group", "batch", "model"});
  CHECK(static_cast<const Tensor<float>&>(owned).data() == p);
  // moving elements is transpose's job, and a non-permutation is a shape_error
  CHECK_THROWS_AS(relabel(owned, {"model", "batch", "group"}), shape_error);
  CHECK_THROWS_WITH(relabel(owned, {"model", "batch", "group"}), Catch::Matchers::Contains("moves elements"));
  CHECK_THROWS_AS(relabel(owned, {"group", "batch"}), shape_error);
  CHECK_THROWS_AS(relabel(owned, {"group", "batch", "hidden"}), shape_error);
}
