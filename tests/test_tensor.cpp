#include "check.hpp"
#include "einmoe/core/tensor.hpp"

using namespace einmoe;

TEST_CASE("Tensor construction, fill and element access", "[tensor]") {
  Tensor<float> z(Shape::parse("a:2,b:3"));
  CHECK(z.size() == 6);
  for (float v : z) CHECK(v == 0.f);
  Tensor<double> f(Shape::parse("a:2"), 1.5);
  CHECK(f[0] == 1.5);
  CHECK(f[1] == 1.5);
  Tensor<int> t(Shape::parse("a:2,b:3"), {0, 1, 2, 3, 4, 5});
  CHECK(t.at({1, 2}) == 5);
  CHECK(t.at({0, 1}) == 1);
  t.at({1, 0}) = 42;
  CHECK(t[3] == 42);
  CHECK(t.size_of("b") == 3);
  CHECK(t.dim("a") == Dim("a", 2));
  CHECK(Tensor<float>::scalar(3.f).item() == 3.f);
  CHECK(Tensor<float>().rank() == 0);
  CHECK(Tensor<float>().size() == 1);
  Tensor<bool> m(Shape::parse("a:3"), true);
  CHECK(m[2]);
  CHECK(t.to_vector() == std::vector<int>{0, 1, 2, 42, 4, 5});
}

TEST_CASE("Tensor checks indices and value counts", "[tensor]") {
  Tensor<int> t(Shape::parse("a:2,b:3"));
  CHECK_THROWS_NAMING(t.at({2, 0}), shape_error, "\"a\"");
  CHECK_THROWS_NAMING(t.at({0, -1}), shape_error, "\"b\"");
  CHECK_THROWS_AS(t.at({0}), shape_error);
  CHECK_THROWS_AS((Tensor<int>(Shape::parse("a:2"), {1, 2, 3})), shape_error);
  CHECK_THROWS_AS(t.item(), shape_error);
  CHECK_THROWS_NAMING(t.size_of("c"), shape_error, "\"c\"");
  CHECK_THROWS_AS(t.set_shape(Shape::parse("c:5")), shape_error);
}

TEST_CASE("Tensor has value semantics, borrow is zero-copy", "[tensor]") {
  Tensor<float> a(Shape::parse("a:3"), {1, 2, 3});
  Tensor<float> b = a;  // deep copy
  b[0] = 9;
  CHECK(a[0] == 1);
  CHECK(b.data() != a.data());
  Tensor<float> c = std::move(b);
  CHECK(c[0] == 9);

  float buf[4] = {1, 2, 3, 4};
  auto v = Tensor<float>::borrow(buf, Shape::parse("x:2,y:2"));
  CHECK(v.borrowed());
  CHECK(v.data() == buf);
  v.at({1, 1}) = 7;
  CHECK(buf[3] == 7);
  Tensor<float> owned = v;  // copying a borrowed tensor owns
  CHECK_FALSE(owned.borrowed());
  owned[0] = -1;
  CHECK(buf[0] == 1);
  CHECK_THROWS_AS(Tensor<float>::borrow(nullptr, Shape::parse("x:2")), value_error);
  CHECK_NOTHROW(Tensor<float>::borrow(nullptr, Shape::parse("x:0")));
}

TEST_CASE("Tensor storage is 64-byte aligned and empty tensors allocate nothing", "[tensor]") {
  Tensor<double> t(Shape::parse("a:17"));
  CHECK(reinterpret_cast<std::uintptr_t>(t.data()) % 64 == 0);
  Tensor<float> e(Shape::parse("a:0,b:5"));
  CHECK(e.size() == 0);
  CHECK(e.data() == nullptr);
  Tensor<float> e2 = e;
  CHECK(e2.size() == 0);
}

TEST_CASE("Read-only views: borrow of const memory and view() read without copying and refuse writes", "[tensor]") {
  const float buf[6] = {1, 2, 3, 4, 5, 6};
  Tensor<float> v = Tensor<float>::borrow(buf, Shape::parse("a:2,b:3"));
  CHECK_FALSE(v.writable());
  CHECK(v.borrowed());
  const Tensor<float>& cv = v;
  CHECK(cv.data() == buf);
  CHECK(cv.at({1, 2}) == 6);
  CHECK_THROWS_NAMING(v.data(), value_error, "read-only");
  CHECK_THROWS_NAMING(v.at({0, 0}) = 1, value_error, "read-only");
  CHECK_THROWS_NAMING(v[0] = 1, value_error, "read-only");
  CHECK_THROWS_NAMING(v.fill(0.f), value_error, "read-only");
  CHECK_THROWS_NAMING(v.begin(), value_error, "read-only");
  // a copy owns and is writable; the view moved keeps being read-only
  Tensor<float> copy = v;
  CHECK(copy.writable());
  copy[0] = 9;
  CHECK(buf[0] == 1);
  Tensor<float> moved = std::move(v);
  CHECK_FALSE(moved.writable());
  moved.set_shape(Shape::parse("c:6"));  // relabelling is not a write
  CHECK(static_cast<const Tensor<float>&>(moved)[5] == 6);

  Tensor<int> owner(Shape::parse("a:3"), {7, 8, 9});
  Tensor<int> alias = owner.view();
  CHECK(static_cast<const Tensor<int>&>(alias).data() == static_cast<const Tensor<int>&>(owner).data());
  CHECK_FALSE(alias.writable());
  owner[1] = 80;  // the owner stays writable; the view sees the change
  CHECK(static_cast<const Tensor<int>&>(alias)[1] == 80);
}

TEST_CASE("borrow wraps std::vector, const or not, and checks its size", "[tensor]") {
  std::vector<double> v{1, 2, 3, 4};
  auto t = borrow(v, Shape::parse("a:2,b:2"));
  CHECK(t.writable());
  t.at({1, 0}) = 30;
  CHECK(v[2] == 30);
  const std::vector<double>& cv = v;
  auto r = borrow(cv, Shape::parse("n:4"));
  CHECK_FALSE(r.writable());
  CHECK(static_cast<const Tensor<double>&>(r).data() == v.data());
  CHECK_THROWS_NAMING(borrow(cv, Shape::parse("n:5")), shape_error, "4 elements");
}

TEST_CASE("Sizes are overflow-checked, huge tensors are refused before allocating", "[tensor]") {
  // 2^31 * 2^31 * 2^2 = 2^64 elements: the shape itself is an error naming the dims.
  CHECK_THROWS_NAMING(Shape::parse("a:2147483648,b:2147483648,c:4"), shape_error, "a:2147483648");
  // A zero-size dim does not hide an overflowing stride.
  CHECK_THROWS_AS((Shape{Dim("z", 0), Dim("a", index_t{1} << 40), Dim("b", index_t{1} << 40)}), shape_error);
  // 2^62 floats: the byte count itself overflows.
  CHECK_THROWS_NAMING(Tensor<float>(Shape{{"a", index_t{1} << 62}}), shape_error, "Tensor [a:");
  // Representable, but 2^60 floats are far more than any machine's memory.
  CHECK_THROWS_NAMING(Tensor<float>(Shape{{"a", index_t{1} << 60}}), resource_error, "more than this machine");
  CHECK_THROWS_AS(Tensor<double>(Shape{{"a", index_t{1} << 61}, {"b", 2}}), error);
  // element access on a large but valid shape still checks its indices
  const Shape big{{"a", index_t{1} << 31}, {"b", index_t{1} << 31}};
  CHECK(big.num_elements() == index_t{1} << 62);
  CHECK(big.strides()[0] == index_t{1} << 31);
}
