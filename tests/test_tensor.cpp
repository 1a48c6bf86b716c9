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

TEST_CASE("Tensor has value semantics; borrow is zero-copy", "[tensor]") {
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
