// Built against the installed package by the consumer_find_package test.
#include <einmoe/einmoe.hpp>

#include <cstdio>

int main() {
  using namespace einmoe;
  Tensor<float> x(Shape::parse("batch:2,model:3"), {1, 2, 3, 4, 5, 6});
  Tensor<float> w(Shape::parse("model:3,hidden:2"), {1, 0, 0, 1, 1, 1});
  const auto y = einsum({x, w}, Shape::parse("batch:2,hidden:2"));
  // [[1+3, 2+3], [4+6, 5+6]]
  const bool ok = y.at({0, 0}) == 4.f && y.at({0, 1}) == 5.f && y.at({1, 0}) == 10.f && y.at({1, 1}) == 11.f;
  std::printf("einmoe %s consumer: %s\n", einmoe::version, ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
