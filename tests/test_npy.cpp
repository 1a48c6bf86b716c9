#include <cstdio>
#include <fstream>
#include <sstream>

#include "check.hpp"
#include "naive.hpp"

using namespace einmoe;

namespace {
std::string tmp_path(const std::string& name) { return "einmoe_test_" + name; }

std::string npy_bytes(const std::string& header, const std::string& data) {
  std::string h = header;
  while ((10 + h.size() + 1) % 16) h += ' ';
  h += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(h.size() & 0xff);
  out += static_cast<char>(h.size() >> 8);
  return out + h + data;
}
void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f << bytes;
}
}  // namespace

TEMPLATE_TEST_CASE("npy round trip keeps values, sizes and attaches names", "[npy]", float, double, std::int32_t,
                   std::int64_t) {
  for (const Shape& s : {Shape(), Shape::parse("a:3"), Shape::parse("a:2,b:3,c:4"), Shape::parse("a:2,b:0")}) {
    const auto x = naive::random_ints<TestType>(s, -100, 100);
    const std::string p = tmp_path("rt.npy");
    save_npy(p, x);
    std::vector<std::string> names;
    for (const auto& d : s) names.push_back(d.name + "_loaded");
    const auto y = load_npy<TestType>(p, names);
    REQUIRE(y.rank() == s.rank());
    for (index_t i = 0; i < s.rank(); ++i) CHECK(y.shape()[i] == Dim(s[i].name + "_loaded", s[i].size));
    CHECK(y.to_vector() == x.to_vector());
    const NpyInfo info = read_npy_info(p);
    CHECK(info.dtype == dtype_of<TestType>());
    std::remove(p.c_str());
  }
}

TEST_CASE("npy bool round trip", "[npy]") {
  Tensor<bool> m(Shape::parse("a:5"), {true, false, true, true, false});
  save_npy(tmp_path("b.npy"), m);
  CHECK(load_npy<bool>(tmp_path("b.npy"), {"a"}).to_vector() == m.to_vector());
  std::remove(tmp_path("b.npy").c_str());
}

TEST_CASE("npy reads what numpy writes (hand-made headers)", "[npy]") {
  float vals[2] = {1.5f, -2.f};
  const std::string data(reinterpret_cast<const char*>(vals), 8);
  std::istringstream in(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", data));
  CHECK(read_npy<float>(in, {"x"}, "mem").to_vector() == std::vector<float>{1.5f, -2.f});
  // key order and spacing vary between numpy versions
  std::istringstream in2(npy_bytes("{'shape': (1, 2), 'fortran_order': False, 'descr': '<f4'}", data));
  CHECK(read_npy<float>(in2, {"a", "b"}, "mem").shape() == Shape::parse("a:1,b:2"));
  std::istringstream in3(npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", data));
  CHECK(read_npy<float>(in3, {"x"}, "mem").size() == 2);  // 1-D Fortran order is C order
}

TEST_CASE("npy errors name the file and say what is wrong", "[npy]") {
  const std::string p = tmp_path("bad.npy");
  const std::string f4(8, '\0');
  CHECK_THROWS_NAMING(load_npy<float>("no/such/file.npy", {"a"}), io_error, "no/such/file.npy");
  write_file(p, "hello world, not npy");
  CHECK_THROWS_NAMING(load_npy<float>(p, {"a"}), io_error, p);
  write_file(p, npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", f4));
  CHECK_THROWS_NAMING(load_npy<double>(p, {"a"}), io_error, "float32");
  CHECK_THROWS_NAMING(load_npy<float>(p, {"a", "b"}), io_error, "rank");
  write_file(p, npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", f4));
  CHECK_THROWS_NAMING(load_npy<float>(p, {"a"}), io_error, "truncated");
  write_file(p, npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000,), }", f4));
  CHECK_THROWS_NAMING(load_npy<float>(p, {"a"}), io_error, "truncated");
  write_file(p, npy_bytes("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", f4));
  CHECK_THROWS_NAMING(load_npy<float>(p, {"a"}), io_error, "big-endian");
  write_file(p, npy_bytes("{'descr': '<u2', 'fortran_order': False, 'shape': (4,), }", f4));
  CHECK_THROWS_NAMING(load_npy<float>(p, {"a"}), io_error, "'<u2'");
  write_file(p, npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (1, 2), }", f4));
  CHECK_THROWS_NAMING(load_npy<float>(p, {"a", "b"}), io_error, "Fortran");
  write_file(p, npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (a,), }", f4));
  CHECK_THROWS_NAMING(load_npy<float>(p, {"a"}), io_error, "shape");
  write_file(p, npy_bytes("{'descr': '<f4', 'shape': (2,), }", f4));
  CHECK_THROWS_NAMING(load_npy<float>(p, {"a"}), io_error, "fortran_order");
  std::remove(p.c_str());
}

TEST_CASE("save_npy to an unwritable path leaves nothing behind", "[npy]") {
  Tensor<float> x(Shape::parse("a:2"));
  CHECK_THROWS_NAMING(save_npy("no/such/dir/x.npy", x), io_error, "no/such/dir/x.npy");
  std::ifstream f("no/such/dir/x.npy.einmoe-tmp");
  CHECK_FALSE(f.good());
}
