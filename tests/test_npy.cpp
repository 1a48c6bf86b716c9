#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iterator>

#include <sys/stat.h>
#include <fstream>
#include <sstream>

#include "check.hpp"
#include "naive.hpp"

using namespace einmoe;

namespace {
// Each process writes in its own directory (ctest runs the typed cases in
// parallel processes, which must not share files).
std::string tmp_path(const std::string& name) {
  static const TempDir dir("einmoe_npy");
  return dir.file(name);
}

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
  // a missing file is a not_found_error (an io_error); a directory is not missing
  CHECK_THROWS_NAMING(load_npy<float>("no/such/file.npy", {"a"}), not_found_error, "no such file");
  const std::string dir = tmp_path("a_directory.npy");
  std::filesystem::create_directory(dir);
  CHECK_THROWS_AS(load_npy<float>(dir, {"a"}), io_error);
  try {
    (void)load_npy<float>(dir, {"a"});
  } catch (const not_found_error&) {
    FAIL("a directory is reported as missing");
  } catch (const io_error&) {}
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

namespace {
std::vector<std::string> dir_entries(const std::string& dir) {
  std::vector<std::string> r;
  for (const auto& e : std::filesystem::directory_iterator(dir)) r.push_back(e.path().filename().string());
  std::sort(r.begin(), r.end());
  return r;
}
std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
}  // namespace

TEST_CASE("save_npy never writes through a symlink and replaces only regular files", "[npy]") {
  const TempDir d;
  Tensor<float> x(Shape::parse("a:3"));
  x.fill(2.f);
  // A symlink planted at the old fixed temporary name must not be followed.
  write_file(d.file("victim"), "precious");
  std::filesystem::create_symlink(d.file("victim"), d.file("x.npy.einmoe-tmp"));
  save_npy(d.file("x.npy"), x);
  CHECK(read_all(d.file("victim")) == "precious");
  CHECK(load_npy<float>(d.file("x.npy"), {"a"}).to_vector() == x.to_vector());
  // Replacing an existing regular file works; the mode follows the umask.
  x.fill(3.f);
  save_npy(d.file("x.npy"), x);
  CHECK(load_npy<float>(d.file("x.npy"), {"a"}).to_vector() == x.to_vector());
  struct stat st {};
  REQUIRE(::stat(d.file("x.npy").c_str(), &st) == 0);
  const mode_t mask = ::umask(0);
  ::umask(mask);
  CHECK((st.st_mode & 0777) == (0666 & ~mask));
  // A symlink, a directory and a FIFO at the target are refused, untouched.
  std::filesystem::create_symlink(d.file("victim"), d.file("link.npy"));
  CHECK_THROWS_NAMING(save_npy(d.file("link.npy"), x), io_error, "symlink");
  CHECK(std::filesystem::is_symlink(d.file("link.npy")));
  CHECK(read_all(d.file("victim")) == "precious");
  std::filesystem::create_directory(d.file("dir.npy"));
  CHECK_THROWS_NAMING(save_npy(d.file("dir.npy"), x), io_error, "directory");
  REQUIRE(::mkfifo(d.file("fifo.npy").c_str(), 0600) == 0);
  CHECK_THROWS_NAMING(save_npy(d.file("fifo.npy"), x), io_error, "fifo.npy");
  // No temporaries are left behind.
  CHECK(dir_entries(d.path) ==
        std::vector<std::string>{"dir.npy", "fifo.npy", "link.npy", "victim", "x.npy", "x.npy.einmoe-tmp"});
}

TEST_CASE("npy header parser accepts exactly numpy's dict", "[npy]") {
  const std::string f4("\x00\x00\xc0\x3f\x00\x00\x00\xc0", 8);  // 1.5, -2
  auto load = [&](const std::string& header, const std::string& data) {
    std::istringstream in(npy_bytes(header, data));
    return read_npy<float>(in, {"x"}, "mem");
  };
  // What numpy writes, and what its reader also takes.
  CHECK(load("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", f4).size() == 2);
  CHECK(load("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", f4).size() == 2);
  CHECK(load("{\"descr\":\"<f4\",\"fortran_order\":False,\"shape\":( 2 , )}", f4).size() == 2);
  CHECK(load("{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }", "").size() == 0);
  {
    std::istringstream in(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", f4.substr(0, 4)));
    CHECK(read_npy<float>(in, {}, "mem").to_vector() == std::vector<float>{1.5f});
  }
  // (2) is an int to Python, not a tuple: numpy refuses it, and so do we.
  CHECK_THROWS_NAMING(load("{'descr': '<f4', 'fortran_order': False, 'shape': (2), }", f4), io_error,
                      "bad shape '(2)'");
  CHECK_THROWS_NAMING(load("{'descr': '<f4', 'fortran_order': False, 'shape': (02,), }", f4), io_error, "bad shape");
  CHECK_THROWS_NAMING(load("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", f4), io_error, "bad shape");
  CHECK_THROWS_NAMING(load("{'descr': '<f4', 'fortran_order': False, 'shape': (2,,), }", f4), io_error, "bad shape");
  CHECK_THROWS_NAMING(load("{'descr': '<f4', 'fortran_order': False, 'shape': [2], }", f4), io_error, "bad shape");
  CHECK_THROWS_NAMING(load("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'shape': (1,), }", f4), io_error,
                      "duplicate key 'shape'");
  CHECK_THROWS_NAMING(load("{'descr': '<f4', 'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", f4), io_error,
                      "duplicate key 'descr'");
  CHECK_THROWS_NAMING(load("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}", f4), io_error,
                      "unexpected key 'extra'");
  CHECK_THROWS_NAMING(load("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }", f4), io_error, "True or False");
  CHECK_THROWS_NAMING(load("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } x", f4), io_error,
                      "after the header dict");
  CHECK_THROWS_NAMING(load("{'descr': '<f4' 'fortran_order': False, 'shape': (2,), }", f4), io_error, "expected ','");
  CHECK_THROWS_NAMING(load("'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", f4), io_error, "expected '{'");
  // A 15-digit size per dim whose product overflows is a shape_error.
  CHECK_THROWS_AS(load("{'descr': '<f4', 'fortran_order': False, 'shape': (999999999999999, 999999999999999), }", f4),
                  shape_error);
}

TEST_CASE("npy error messages are one line with the file's bytes escaped", "[npy]") {
  std::istringstream in(npy_bytes(std::string("{'descr': '<f\x01\x9b', 'fortran_order': False, 'shape': (2,), }"), ""));
  try {
    read_npy<float>(in, {"x"}, "mem");
    FAIL("no error");
  } catch (const io_error& e) {
    const std::string m = e.what();
    CHECK(m.find("'<f\\x01\\x9b'") != std::string::npos);
    for (char c : m) CHECK((static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f));
  }
}

namespace {
/// A stream that cannot seek (a pipe, a socket): its size is unknown.
class PipeBuf : public std::streambuf {
 public:
  explicit PipeBuf(std::string bytes) : bytes_(std::move(bytes)) {
    setg(bytes_.data(), bytes_.data(), bytes_.data() + bytes_.size());
  }

 private:
  std::string bytes_;
};
}  // namespace

TEST_CASE("read_npy from a stream never allocates more than follows the header", "[npy]") {
  // A 128-byte stream that claims 10^12 bools (more than the machine's
  // memory): allocating what the header claims would be a resource_error.
  const std::string header = "{'descr': '|b1', 'fortran_order': False, 'shape': (1000000000000,), }";
  {
    std::istringstream seekable(npy_bytes(header, std::string(40, '\1')));
    CHECK_THROWS_NAMING(read_npy<bool>(seekable, {"x"}, "mem"), io_error, "truncated");
  }
  {
    PipeBuf pipe(npy_bytes(header, std::string(40, '\1')));
    std::istream in(&pipe);
    CHECK_THROWS_NAMING(read_npy<bool>(in, {"x"}, "pipe"), io_error, "truncated");
  }
  // The unseekable path still reads complete data right, for every dtype.
  Tensor<float> x(Shape::parse("x:5"));
  for (index_t i = 0; i < 5; ++i) x[i] = static_cast<float>(i) - 1.5f;
  std::ostringstream os;
  write_npy(os, x);
  PipeBuf pipe(os.str());
  std::istream in(&pipe);
  CHECK(read_npy<float>(in, {"x"}, "pipe").to_vector() == x.to_vector());
  Tensor<bool> b(Shape::parse("x:3"));
  b[0] = true, b[1] = false, b[2] = true;
  std::ostringstream ob;
  write_npy(ob, b);
  PipeBuf pb(ob.str());
  std::istream ib(&pb);
  CHECK(read_npy<bool>(ib, {"x"}, "pipe").to_vector() == b.to_vector());
}
