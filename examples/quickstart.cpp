// A first look at einmoe: named dims, broadcasting by name, einsum.
#include <einmoe/einmoe.hpp>
#include <iostream>

int main() {
  using namespace einmoe;
  const Dim batch{"batch", 2}, model{"model", 3}, hidden{"hidden", 4};

  Tensor<float> x(Shape{batch, model}, {1, 2, 3, 4, 5, 6});
  Tensor<float> w(Shape{model, hidden}, 0.5f);
  Tensor<float> b(Shape{hidden}, {0, 1, 2, 3});

  // Contract over "model" by name; the output shape says what is kept.
  Tensor<float> h = einsum({x, w}, Shape{batch, hidden});
  // [batch, hidden] + [hidden] broadcasts by name.
  Tensor<float> y = relu(h + b);
  // Softmax along a named dim.
  Tensor<float> p = softmax(y, "hidden");

  std::cout << "y " << y.shape() << ": ";
  for (float v : y) std::cout << v << ' ';
  std::cout << "\nrow sums of p: " << sum(p, "hidden")[0] << ' ' << sum(p, "hidden")[1] << '\n';

  try {
    Tensor<float> bad(Shape{{"hidden", 5}});
    (void)(h + bad);
  } catch (const shape_error& e) {
    std::cout << "caught: " << e.what() << '\n';
  }
}
