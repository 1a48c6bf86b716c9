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
  TensorView<float> v = borrow(buf, Shape::parse("x:2,y:2"));
  CHECK(v.data() == buf);
  v.at({1, 1}) = 7;
  CHECK(buf[3] == 7);
  Tensor<float> owned(v);  // copying a view owns (explicitly)
  CHECK(owned.data() != buf);
  owned[0] = -1;
  CHECK(buf[0] == 1);
  CHECK(v.copy().to_vector() == std::vector<float>{1, 2, 3, 7});
  CHECK_THROWS_AS(borrow(static_cast<float*>(nullptr), Shape::parse("x:2")), value_error);
  CHECK_NOTHROW(borrow(static_cast<float*>(nullptr), Shape::parse("x:0")));
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

TEST_CASE("Read-only views: borrow of const memory and view() read without copying, and write nothing", "[tensor]") {
  const float buf[6] = {1, 2, 3, 4, 5, 6};
  TensorView<const float> v = borrow(buf, Shape::parse("a:2,b:3"));
  static_assert(!TensorView<const float>::writable() && TensorView<float>::writable() && Tensor<float>::writable());
  // writes through v do not compile (tests/compile_fail/); reads never throw
  static_assert(std::is_same<decltype(v.data()), const float*>::value);
  static_assert(std::is_same<decltype(v[0]), const float&>::value);
  static_assert(std::is_same<decltype(*v.begin()), const float&>::value);
  CHECK(v.data() == buf);
  CHECK(v.at({1, 2}) == 6);
  CHECK(v[0] == 1);
  float total = 0;
  for (float e : v) total += e;
  CHECK(total == 21);
  // a copy owns and is writable; copying the view copies no element
  Tensor<float> copy = v.copy();
  copy[0] = 9;
  CHECK(buf[0] == 1);
  TensorView<const float> moved = std::move(v);
  moved.set_shape(Shape::parse("c:6"));  // relabelling is not a write
  CHECK(moved[5] == 6);
  CHECK(moved.data() == buf);

  Tensor<int> owner(Shape::parse("a:3"), {7, 8, 9});
  const Tensor<int>& cowner = owner;
  TensorView<const int> alias = cowner.view();
  CHECK(alias.data() == cowner.data());
  owner[1] = 80;  // the owner stays writable; the view sees the change
  CHECK(alias[1] == 80);
  TensorView<int> w = owner.view();  // a mutable view writes through
  w[2] = 90;
  CHECK(owner[2] == 90);
  TensorView<const int> r = w;  // mutable -> read-only: O(1)
  CHECK(r.data() == owner.data());
}

TEST_CASE("Tensors and views convert in O(1) one way, and copy only explicitly", "[tensor]") {
  static_assert(std::is_convertible<const Tensor<float>&, TensorView<const float>>::value);
  static_assert(std::is_convertible<Tensor<float>&, TensorView<float>>::value);
  static_assert(std::is_convertible<TensorView<float>, TensorView<const float>>::value);
  static_assert(!std::is_convertible<const Tensor<float>&, TensorView<float>>::value);
  static_assert(!std::is_convertible<TensorView<const float>, TensorView<float>>::value);
  static_assert(!std::is_convertible<TensorView<const float>, Tensor<float>>::value);
  static_assert(!std::is_convertible<TensorView<float>, Tensor<float>>::value);
  static_assert(std::is_constructible<Tensor<float>, TensorView<const float>>::value);
  // a view of a temporary would dangle
  static_assert(!std::is_constructible<TensorView<const float>, Tensor<float>&&>::value);
  static_assert(!std::is_constructible<TensorView<float>, Tensor<float>&&>::value);
  Tensor<float> x(Shape::parse("a:2,b:3"), 1.f);
  TensorView<const float> v = x;
  CHECK(v.data() == x.data());
  CHECK(v.shape() == x.shape());
  // a default view is the rank-0 tensor 0
  TensorView<const double> d;
  CHECK(d.rank() == 0);
  CHECK(d.item() == 0.0);
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
