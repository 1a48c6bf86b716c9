// End-to-end tests of the einmoe command on small files.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include "check.hpp"
#include "moe_fixtures.hpp"
#include "naive.hpp"

#ifndef EINMOE_CLI
#error "EINMOE_CLI must name the einmoe binary"
#endif

using namespace einmoe;
namespace fs = std::filesystem;

namespace {

/// A directory this process made (under $TMPDIR, else /tmp), removed at
/// exit: every file a test writes lives in it (ctest runs test cases in
/// parallel processes; tests never write where they did not make room).
const std::string& scratch_dir() {
  static const TempDir d("einmoe_cli");
  return d.path;
}
std::string scratch(const std::string& name) { return scratch_dir() + "/" + name; }

struct Result {
  int status = -1;
  std::string out, err;
};

Result run(const std::string& args) {
  const std::string o = scratch("stdout.txt"), e = scratch("stderr.txt");
  const std::string cmd = std::string(EINMOE_CLI) + " " + args + " > " + o + " 2> " + e;
  const int raw = std::system(cmd.c_str());
  Result r;
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  std::ifstream fo(o), fe(e);
  std::stringstream so, se;
  so << fo.rdbuf();
  se << fe.rdbuf();
  r.out = so.str();
  r.err = se.str();
  return r;
}

std::string fresh_dir(const std::string& name) {
  const std::string d = scratch("out_" + name);
  fs::remove_all(d);
  return d;
}

/// Bad input: exit status 2, one line on stderr naming `what`, no output.
void expect_rejected(const std::string& args, const std::string& what, const std::string& out_dir) {
  INFO(args);
  const Result r = run(args);
  CHECK(r.status == 2);
  CHECK(r.err.find(what) != std::string::npos);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  CHECK_FALSE(fs::exists(out_dir));
}

}  // namespace

TEST_CASE("einmoe gate reproduces the numpy reference, fast and dense", "[cli]") {
  for (const auto& c : fixtures::cases("gate")) {
    if (c.name.size() < 4 || c.name.compare(c.name.size() - 4, 4, "_imp") != 0) continue;  // cases with importance
    INFO(c.name);
    for (const char* mode : {"", " --dense"}) {
      const std::string out = fresh_dir("gate");
      std::string args = "gate --logits " + c.path("logits") + " --capacity " + c.config.at("capacity") + " --policy " +
                         c.config.at("policy") + " --threshold " + c.config.at("threshold") + " --normalize " +
                         c.config.at("normalize") + " --importance " + c.path("importance") + " --out " + out + mode;
      if (c.integer("second_place_loss")) args += " --second-place-loss";
      if (c.has("uniform")) args += " --uniform " + c.path("uniform");
      if (c.has("gumbel")) args += " --gumbel " + c.path("gumbel");
      const Result r = run(args);
      REQUIRE(r.status == 0);
      CHECK(r.out.find("aux_loss") != std::string::npos);
      const std::vector<std::string> gsec{"g", "s", "e", "c"};
      const double tol = c.f64 ? 1e-12 : 1e-5;
      if (c.f64) {
        CHECK(naive::all_close(load_npy<double>(out + "/combine.npy", gsec), c.load<double>("expected_combine", gsec),
                               tol, tol));
        CHECK(load_npy<double>(out + "/dispatch.npy", gsec).to_vector() ==
              c.load<double>("expected_dispatch", gsec).to_vector());
        CHECK(naive::close(load_npy<double>(out + "/aux_loss.npy", {}).item(),
                           c.load<double>("expected_aux_loss", {}).item(), tol, tol));
      } else {
        // outputs keep the input's type
        CHECK(read_npy_info(out + "/combine.npy").dtype == DType::float32);
        CHECK(naive::all_close(load_npy<float>(out + "/combine.npy", gsec), c.load<float>("expected_combine", gsec),
                               tol, tol));
      }
    }
  }
}

TEST_CASE("einmoe --version names the library's version", "[cli]") {
  const Result r = run("--version");
  CHECK(r.status == 0);
  CHECK(r.out.rfind(std::string("einmoe ") + einmoe::version + " (", 0) == 0);
  CHECK(run("--version extra").status == 2);
}

TEST_CASE("einmoe gate: -inf logits mask an expert, NaN, +inf and all -inf are rejected", "[cli][edge]") {
  const double ninf = -std::numeric_limits<double>::infinity();
  Tensor<double> l = Rng(4).normal<double>(Shape::parse("batch:1,group:5,experts:3"));
  for (index_t t = 0; t < 5; ++t) l[t * 3 + 1] = ninf;
  const std::string lp = scratch("ninf_logits.npy");
  save_npy(lp, l);
  for (const char* mode : {"", " --dense"}) {
    const std::string out = fresh_dir("gate_ninf");
    const Result r = run("gate --logits " + lp + " --capacity 5 --out " + out + mode);
    REQUIRE(r.status == 0);
    const auto combine = load_npy<double>(out + "/combine.npy", {"g", "s", "e", "c"});
    for (index_t t = 0; t < 5; ++t)
      for (index_t c = 0; c < 5; ++c) CHECK(combine.at({0, t, 1, c}) == 0.0);  // expert 1 never gets weight
    CHECK(std::isfinite(load_npy<double>(out + "/aux_loss.npy", {}).item()));
  }
  const std::string bad = fresh_dir("gate_bad_inf");
  for (double v : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    Tensor<double> m = l;
    m[4] = v;
    save_npy(scratch("bad_logits.npy"), m);
    expect_rejected("gate --logits " + scratch("bad_logits.npy") + " --capacity 2 --out " + bad, "--logits", bad);
  }
  Tensor<double> all = l;
  all[0] = all[2] = ninf;
  save_npy(scratch("bad_logits.npy"), all);
  expect_rejected("gate --logits " + scratch("bad_logits.npy") + " --capacity 2 --out " + bad, "only -inf", bad);
}

TEST_CASE("einmoe gate and truncated-gate --ties", "[cli][ties]") {
  for (const auto& c : fixtures::cases("ties")) {
    if (!c.f64) continue;
    INFO(c.name);
    const std::string out = fresh_dir("ties");
    const bool gate = c.config.at("variant") == "gate";
    const std::string args = gate ? "gate --logits " + c.path("logits") : "truncated-gate --gates " + c.path("gates");
    REQUIRE(run(args + " --capacity " + c.config.at("capacity") + " --ties " + c.config.at("ties") + " --out " + out)
                .status == 0);
    const std::vector<std::string> gsec{"g", "s", "e", "c"};
    CHECK(naive::all_close(load_npy<double>(out + "/combine.npy", gsec), c.load<double>("expected_combine", gsec),
                           1e-12, 1e-12));
  }
  const auto c = fixtures::cases("ties").front();
  const std::string out = fresh_dir("ties_bad");
  expect_rejected("gate --logits " + c.path("logits") + " --capacity 2 --ties middle --out " + out, "--ties", out);
  expect_rejected("route --logits " + c.path("logits") + " --router topk --ties highest --out " + out, "--ties", out);
}

TEST_CASE("einmoe gate writes the sparse plan and stats.json", "[cli][plan]") {
  for (const auto& c : fixtures::cases("gate")) {
    if (!c.f64 || c.config.at("policy") != "threshold" || c.has("importance")) continue;
    INFO(c.name);
    const std::string out = fresh_dir("plan");
    REQUIRE(run("gate --logits " + c.path("logits") + " --capacity " + c.config.at("capacity") +
                " --policy threshold --threshold " + c.config.at("threshold") + " --normalize " +
                c.config.at("normalize") + " --ties highest --out " + out)
                .status == 0);
    const std::vector<std::string> gsk{"g", "s", "k"}, gsec{"g", "s", "e", "c"};
    const auto expert = load_npy<std::int64_t>(out + "/expert.npy", gsk);
    const auto slot = load_npy<std::int64_t>(out + "/slot.npy", gsk);
    const auto weight = load_npy<double>(out + "/weight.npy", gsk);
    const auto combine = c.load<double>("expected_combine", gsec);
    const index_t G = combine.shape()[0].size, S = combine.shape()[1].size, E = combine.shape()[2].size;
    const index_t C = combine.shape()[3].size;
    REQUIRE(expert.shape() == Shape{{"g", G}, {"s", S}, {"k", 2}});
    // Every kept choice is the combine tensor's entry; the rest of it is 0.
    Tensor<double> rebuilt(combine.shape(), 0.0);
    index_t kept[2] = {0, 0};
    for (index_t g = 0; g < G; ++g)
      for (index_t s = 0; s < S; ++s)
        for (index_t j = 0; j < 2; ++j) {
          const index_t i = (g * S + s) * 2 + j;
          CHECK((expert[i] < 0) == (slot[i] < 0));
          if (expert[i] < 0) continue;
          REQUIRE(expert[i] < E);
          REQUIRE(slot[i] < C);
          rebuilt.at({g, s, expert[i], slot[i]}) += weight[i];
          ++kept[j];
        }
    CHECK(naive::all_close(rebuilt, combine, 1e-12, 1e-12));
    std::ifstream f(out + "/stats.json");
    const std::string json((std::istreambuf_iterator<char>(f)), {});
    CHECK(json.find("\"first_kept\": " + std::to_string(kept[0]) + ",") != std::string::npos);
    CHECK(json.find("\"second_kept\": " + std::to_string(kept[1]) + ",") != std::string::npos);
    CHECK(json.find("\"capacity\": " + c.config.at("capacity") + ",") != std::string::npos);
    CHECK(json.find("\"policy\": \"threshold\"") != std::string::npos);
    CHECK(json.find("\"ties\": \"highest\"") != std::string::npos);
    CHECK(json.find("\"tokens_per_expert\": [") != std::string::npos);
  }
}

TEST_CASE("einmoe gate --mtf-v1 reproduces the numpy transcription", "[cli][mtf_v1]") {
  for (const auto& c : fixtures::cases("mtf_v1")) {
    if (!c.f64) continue;
    INFO(c.name);
    for (const char* mode : {"", " --dense"}) {
      const std::string out = fresh_dir("mtfv1");
      std::string args = "gate --mtf-v1 --logits " + c.path("logits") + " --capacity " + c.config.at("capacity") +
                         " --policy " + c.config.at("policy") + " --threshold " + c.config.at("threshold") +
                         " --ties " + c.config.at("ties") + " --out " + out + mode;
      if (c.integer("second_place_loss")) args += " --second-place-loss";
      if (c.has("max_experts")) args += " --max-experts " + c.path("max_experts");
      if (c.has("uniform")) args += " --uniform " + c.path("uniform");
      REQUIRE(run(args).status == 0);
      const std::vector<std::string> gsec{"g", "s", "e", "c"};
      CHECK(naive::all_close(load_npy<double>(out + "/combine.npy", gsec), c.load<double>("expected_combine", gsec),
                             1e-12, 1e-12));
      CHECK(naive::close(load_npy<double>(out + "/aux_loss.npy", {}).item(),
                         c.load<double>("expected_aux_loss", {}).item(), 1e-12, 1e-12));
    }
  }
  const auto c = fixtures::cases("mtf_v1").front();
  const std::string L = c.path("logits"), out = fresh_dir("mtfv1_bad");
  expect_rejected("gate --mtf-v1 --logits " + L + " --capacity 2 --policy sampling --out " + out, "sampling", out);
  expect_rejected("gate --mtf-v1 --logits " + L + " --capacity 2 --normalize after --out " + out, "--normalize", out);
  expect_rejected("gate --logits " + L + " --capacity 2 --max-experts " + L + " --out " + out, "--max-experts", out);
  expect_rejected("gate --mtf-v1 --logits " + L + " --capacity 2 --max-experts " + L + " --out " + out, "--max-experts",
                  out);
}

TEST_CASE("einmoe gate --capacity-factor sizes the capacity by Mesh TF's rule", "[cli][capacity]") {
  const auto c = fixtures::cases("gate").front();  // [2, 16, 4] logits
  const std::string a = fresh_dir("cf_a"), b = fresh_dir("cf_b");
  REQUIRE(run("gate --logits " + c.path("logits") + " --capacity-factor 2.5 --out " + a).status == 0);
  const std::string want = std::to_string(mtf_capacity(16, 4, 2.5));  // 10
  REQUIRE(run("gate --logits " + c.path("logits") + " --capacity " + want + " --out " + b).status == 0);
  const std::vector<std::string> gsec{"g", "s", "e", "c"};
  const bool f64 = c.f64;
  if (f64)
    CHECK(load_npy<double>(a + "/combine.npy", gsec).to_vector() ==
          load_npy<double>(b + "/combine.npy", gsec).to_vector());
  else
    CHECK(load_npy<float>(a + "/combine.npy", gsec).to_vector() ==
          load_npy<float>(b + "/combine.npy", gsec).to_vector());
  const std::string out = fresh_dir("cf_bad");
  expect_rejected("gate --logits " + c.path("logits") + " --out " + out, "--capacity", out);
  expect_rejected("gate --logits " + c.path("logits") + " --capacity 2 --capacity-factor 1 --out " + out,
                  "--capacity-factor", out);
  expect_rejected("gate --logits " + c.path("logits") + " --capacity-factor 0 --out " + out, "--capacity-factor", out);
}

TEST_CASE("einmoe truncated-gate and moe reproduce the numpy reference", "[cli]") {
  for (const auto& c : fixtures::cases("truncated")) {
    if (!c.f64) continue;
    const std::string out = fresh_dir("trunc");
    REQUIRE(
        run("truncated-gate --gates " + c.path("gates") + " --capacity " + c.config.at("capacity") + " --out " + out)
            .status == 0);
    const std::vector<std::string> gsec{"g", "s", "e", "c"};
    CHECK(naive::all_close(load_npy<double>(out + "/combine.npy", gsec), c.load<double>("expected_combine", gsec),
                           1e-12));
  }
  for (const auto& c : fixtures::cases("moe")) {
    INFO(c.name);
    const std::string out = fresh_dir("moe");
    std::string args = "moe --inputs " + c.path("inputs") + " --wg " + c.path("wg") + " --wi " + c.path("wi") +
                       " --wo " + c.path("wo") + " --capacity " + c.config.at("capacity") + " --activation " +
                       c.config.at("activation") + " --threads 1";
    if (c.has("bi")) args += " --bi " + c.path("bi") + " --bo " + c.path("bo");
    REQUIRE(run(args + " --out " + out).status == 0);
    const double tol = c.f64 ? 1e-12 : 1e-5;
    if (c.f64)
      CHECK(naive::all_close(load_npy<double>(out + "/outputs.npy", {"g", "s", "m"}),
                             c.load<double>("expected_outputs", {"g", "s", "m"}), tol, tol));
    else
      CHECK(naive::all_close(load_npy<float>(out + "/outputs.npy", {"g", "s", "m"}),
                             c.load<float>("expected_outputs", {"g", "s", "m"}), tol, tol));
    if (c.f64) continue;
    // --precision: bf16 and int8 expert weights stay within their documented
    // error of the reference (relative to the largest output)
    const auto ref = c.load<float>("expected_outputs", {"g", "s", "m"});
    float ymax = 0;
    for (index_t i = 0; i < ref.size(); ++i) ymax = std::max(ymax, std::abs(ref[i]));
    for (const auto& [prec, bound] : {std::pair<std::string, float>{"bf16", 1e-2f}, {"int8", 3e-2f}}) {
      INFO(prec);
      const std::string pout = fresh_dir("moe_" + prec);
      const Result r = run(args + " --precision " + prec + " --out " + pout);
      REQUIRE(r.status == 0);
      const auto y = load_npy<float>(pout + "/outputs.npy", {"g", "s", "m"});
      REQUIRE(y.shape() == ref.shape());
      float err = 0;
      for (index_t i = 0; i < y.size(); ++i) err = std::max(err, std::abs(y[i] - ref[i]));
      CHECK(err <= bound * ymax);
      CHECK(err > 0);  // the weights really were rounded
    }
  }
}

TEST_CASE("einmoe rejects bad input with exit status 2, one line, and no output", "[cli][errors]") {
  const auto cases = fixtures::cases("gate");
  const fixtures::Case& c = cases.back();  // a float64 case
  REQUIRE(c.f64);
  const std::string L = c.path("logits");
  const std::string out = fresh_dir("bad");
  // helper files
  save_npy(scratch("int.npy"), Tensor<std::int64_t>(Shape::parse("a:2,b:3,c:4")));
  save_npy(scratch("rank2.npy"), Tensor<double>(Shape::parse("a:2,b:3")));
  Tensor<double> nan_logits = load_npy<double>(L, {"a", "b", "c"});
  nan_logits[3] = std::numeric_limits<double>::quiet_NaN();
  save_npy(scratch("nan.npy"), nan_logits);
  save_npy(scratch("imp_bad.npy"), Tensor<double>(Shape::parse("a:2,b:5")));
  std::ofstream(scratch("garbage.npy")) << "not an npy file";

  expect_rejected("gate --logits no_such_file.npy --capacity 2 --out " + out, "no_such_file.npy", out);
  expect_rejected("gate --logits " + scratch("garbage.npy") + " --capacity 2 --out " + out, scratch("garbage.npy"),
                  out);
  expect_rejected("gate --logits " + scratch("int.npy") + " --capacity 2 --out " + out, "int64", out);
  expect_rejected("gate --logits " + scratch("rank2.npy") + " --capacity 2 --out " + out, "rank", out);
  expect_rejected("gate --logits " + scratch("nan.npy") + " --capacity 2 --out " + out, "--logits", out);
  expect_rejected("gate --logits " + L + " --capacity 0 --out " + out, "--capacity", out);
  expect_rejected("gate --logits " + L + " --capacity -3 --out " + out, "--capacity", out);
  expect_rejected("gate --logits " + L + " --capacity two --out " + out, "--capacity", out);
  expect_rejected("gate --logits " + L + " --out " + out, "--capacity", out);
  expect_rejected("gate --logits " + L + " --capacity 2", "--out", out);
  expect_rejected("gate --logits " + L + " --capacity 2 --policy best --out " + out, "--policy", out);
  expect_rejected("gate --logits " + L + " --capacity 2 --normalize never --out " + out, "--normalize", out);
  expect_rejected("gate --logits " + L + " --capacity 2 --threshold nan --out " + out, "--threshold", out);
  expect_rejected("gate --logits " + L + " --capacity 2 --importance " + scratch("imp_bad.npy") + " --out " + out,
                  "--importance", out);
  expect_rejected("gate --logits " + L + " --capacity 2 --bogus --out " + out, "--bogus", out);
  expect_rejected("gate --logits " + L + " --capacity 2 --capacity 3 --out " + out, "--capacity", out);
  expect_rejected("gate --logits " + L + " --capacity 2 --threads 0 --out " + out, "--threads", out);
  // A value with a newline or control bytes still gives one line (escaped).
  expect_rejected("gate --logits " + L + " --capacity '1\n\x01' --out " + out, "\\x0a\\x01", out);
  // Beyond max_threads, and past int's range (which once wrapped to 1).
  for (const char* t : {"1025", "100000", "4294967297", "99999999999999999999"})
    expect_rejected("gate --logits " + L + " --capacity 2 --threads " + t + " --out " + out, "--threads", out);
  expect_rejected("gate --logits " + L + " --capacity", "--capacity", out);
  expect_rejected("frobnicate --out " + out, "frobnicate", out);
  expect_rejected("moe --inputs " + L + " --wg " + scratch("rank2.npy") + " --wi " + L + " --wo " + L +
                      " --capacity 2 --out " + out,
                  "--wg", out);
  expect_rejected("moe --inputs " + L + " --wg " + scratch("rank2.npy") + " --wi " + L + " --wo " + L +
                      " --capacity 2 --activation tanh --out " + out,
                  "--wg", out);
  {
    const auto mc = fixtures::cases("moe").front();
    const std::string margs = "moe --inputs " + mc.path("inputs") + " --wg " + mc.path("wg") + " --wi " +
                              mc.path("wi") + " --wo " + mc.path("wo") + " --capacity 2";
    expect_rejected(margs + " --precision fp16 --out " + out, "--precision", out);
    expect_rejected(margs + " --precision bf16 --dense --out " + out, "--precision", out);
  }
  expect_rejected("truncated-gate --gates " + scratch("int.npy") + " --capacity 2 --out " + out, "--gates", out);
  // an unwritable output directory
  std::ofstream(scratch("a_file")) << "x";
  const Result r = run("gate --logits " + L + " --capacity 2 --out " + scratch("a_file") + "/sub");
  CHECK(r.status == 2);
  CHECK(r.err.find("--out") != std::string::npos);
}

TEST_CASE("einmoe mask writes Mesh TF's biases", "[cli][masks]") {
  const std::string f = scratch("mask.npy");
  REQUIRE(run("mask local-block --block 3 --out " + f).status == 0);
  const auto lb = load_npy<float>(f, {"block_length", "memory_length"});
  CHECK(lb.to_vector() == to_bias<float>(local_block_mask(Dim("block_length", 3))).to_vector());
  REQUIRE(run("mask causal --length 4 --out " + f).status == 0);
  CHECK(load_npy<float>(f, {"l", "m"}).to_vector() == to_bias<float>(causal_mask(Dim("length", 4))).to_vector());
  const std::string ids = scratch("ids.npy");
  const Tensor<std::int32_t> ids_t(Shape::parse("batch:2,length:3"), {4, 0, 2, 0, 0, 9});
  save_npy(ids, ids_t);
  REQUIRE(run("mask padding --ids " + ids + " --out " + f).status == 0);
  CHECK(load_npy<float>(f, {"b", "m"}).to_vector() == to_bias<float>(padding_mask(ids_t)).to_vector());
  const std::string seg = scratch("seg.npy"), mem = scratch("mem.npy");
  const Tensor<std::int64_t> q(Shape::parse("batch:2,length:3"), {1, 1, 2, 3, 3, 3});
  const Tensor<std::int64_t> m(Shape::parse("batch:2,memory_length:2"), {2, 1, 3, 0});
  save_npy(seg, q);
  save_npy(mem, m);
  REQUIRE(run("mask segment --query " + seg + " --out " + f).status == 0);
  CHECK(load_npy<float>(f, {"b", "l", "m"}).to_vector() == to_bias<float>(same_segment_mask(q)).to_vector());
  REQUIRE(run("mask segment --query " + seg + " --memory " + mem + " --out " + f).status == 0);
  CHECK(load_npy<float>(f, {"b", "l", "m"}).to_vector() == to_bias<float>(same_segment_mask(q, m)).to_vector());
  // bad input: exit 2, one line, no file
  const std::string none = scratch("never.npy");
  expect_rejected("mask causal --length 0 --out " + none, "--length", none);
  expect_rejected("mask causal --length x --out " + none, "--length", none);
  expect_rejected("mask diagonal --out " + none, "diagonal", none);
  expect_rejected("mask padding --ids " + f + " --out " + none, "--ids", none);  // float32, not int
  expect_rejected("mask padding --ids " + seg + " --length 3 --out " + none, "--length", none);
  // sizes whose products overflow: one line, exit 2, nothing written
  expect_rejected("mask causal --length 4294967296 --out " + none, "length", none);
  expect_rejected("mask local-block --block 4611686018427387904 --out " + none, "block_length", none);
  save_npy(scratch("mem3.npy"), Tensor<std::int64_t>(Shape::parse("batch:3,memory_length:2")));
  expect_rejected("mask segment --query " + seg + " --memory " + scratch("mem3.npy") + " --out " + none, "--memory",
                  none);
}

TEST_CASE("einmoe beam reproduces the numpy transcription of Mesh TF", "[cli][beam]") {
  for (const auto& c : fixtures::cases("beam", "decoding")) {
    INFO(c.name);
    const std::string out = fresh_dir("beam");
    std::string args = "beam --transitions " + c.path("transitions") + " --start " + c.path("start") + " --batch " +
                       c.config.at("batch") + " --beam " + c.config.at("beam") + " --length " + c.config.at("length") +
                       " --alpha " + c.config.at("alpha") + " --out " + out;
    if (c.integer("stop_early") == 0) args += " --no-stop-early";
    if (c.integer("decode_length") >= 0) args += " --decode-length " + c.config.at("decode_length");
    const Result r = run(args);
    REQUIRE(r.status == 0);
    const std::vector<std::string> bkl{"b", "k", "l"};
    CHECK(load_npy<std::int64_t>(out + "/ids.npy", bkl).to_vector() ==
          c.load<std::int64_t>("expected_ids", bkl).to_vector());
    CHECK(naive::all_close(load_npy<double>(out + "/scores.npy", {"b", "k"}),
                           c.load<double>("expected_scores", {"b", "k"}), 1e-12, 1e-12));
    CHECK(load_npy<std::int64_t>(out + "/steps.npy", {}).item() == c.load<std::int64_t>("expected_steps", {}).item());
  }
  const auto c = fixtures::cases("beam", "decoding").front();
  const std::string T = c.path("transitions"), out = fresh_dir("beam_bad");
  const std::string base = "beam --transitions " + T + " --batch 2 --beam 2 --length 4 --alpha 0.5";
  expect_rejected(base, "--out", out);
  expect_rejected(base + " --beam 0 --out " + out, "--beam", out);
  expect_rejected("beam --transitions " + T + " --batch 2 --beam 2 --length 4 --out " + out, "--alpha", out);
  expect_rejected(base + " --alpha 1 --out " + out, "--alpha", out);  // given twice
  expect_rejected(base + " --eos 99 --out " + out, "--eos", out);
  expect_rejected(base + " --start " + T + " --out " + out, "--start", out);
  save_npy(scratch("rect.npy"), Tensor<double>(Shape::parse("a:2,b:3")));
  expect_rejected("beam --transitions " + scratch("rect.npy") + " --batch 1 --beam 1 --length 2 --alpha 0 --out " + out,
                  "--transitions", out);
  Tensor<double> nan_t(Shape::parse("a:2,b:2"));
  nan_t[1] = std::numeric_limits<double>::quiet_NaN();
  save_npy(scratch("nan_t.npy"), nan_t);
  expect_rejected(
      "beam --transitions " + scratch("nan_t.npy") + " --batch 1 --beam 1 --length 2 --alpha 0 --out " + out,
      "--transitions", out);
  // An alpha whose length penalty overflows would give NaN scores.
  expect_rejected("beam --transitions " + T + " --batch 2 --beam 2 --length 4 --alpha 1e99 --out " + out, "--alpha",
                  out);
  expect_rejected("beam --transitions " + T + " --batch 2 --beam 2 --length 4 --alpha -1e99 --out " + out, "--alpha",
                  out);
}

TEST_CASE("einmoe beam keeps float32 transitions in float32", "[cli][beam]") {
  const auto c = fixtures::cases("beam", "decoding").front();
  const auto t64 = c.load<double>("transitions", {"prev", "vocab"});
  Tensor<float> t32(t64.shape());
  for (index_t i = 0; i < t64.size(); ++i) t32[i] = static_cast<float>(t64[i]);
  save_npy(scratch("t32.npy"), t32);
  const std::string out32 = fresh_dir("beam32"), out64 = fresh_dir("beam64");
  const std::string args = " --batch 2 --beam 2 --length 4 --alpha 0.6 --out ";
  REQUIRE(run("beam --transitions " + scratch("t32.npy") + args + out32).status == 0);
  REQUIRE(run("beam --transitions " + c.path("transitions") + args + out64).status == 0);
  CHECK(read_npy_info(out32 + "/scores.npy").dtype == DType::float32);
  const auto s32 = load_npy<float>(out32 + "/scores.npy", {"b", "k"});
  const auto s64 = load_npy<double>(out64 + "/scores.npy", {"b", "k"});
  for (index_t i = 0; i < s32.size(); ++i) CHECK(s32[i] == Approx(s64[i]).epsilon(1e-5));
}

TEST_CASE("einmoe --help works for every command", "[cli]") {
  for (const char* cmd : {"--help", "gate --help", "route --help", "truncated-gate --help", "moe --help",
                          "block --help", "mask --help", "beam --help"}) {
    INFO(cmd);
    const Result r = run(cmd);
    CHECK(r.status == 0);
    CHECK(r.out.find("usage: einmoe") != std::string::npos);
  }
  const Result none = run("");
  CHECK(none.status == 2);
}

TEST_CASE("docs/cli.md quotes every command's --help exactly", "[cli][docs]") {
  std::ifstream f(EINMOE_FIXTURES_DIR "/../../docs/cli.md");
  REQUIRE(f);
  const std::string manual((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  for (const char* cmd : {"--help", "gate --help", "route --help", "truncated-gate --help", "moe --help",
                          "block --help", "mask --help", "beam --help"}) {
    INFO(cmd << ": paste its output into docs/cli.md's Reference");
    const Result r = run(cmd);
    REQUIRE(r.status == 0);
    CHECK(manual.find("```text\n" + r.out + "```") != std::string::npos);
  }
}

namespace {
template <class T>
void check_route_cli(const fixtures::Case& c, bool dense) {
  const double tol = c.f64 ? 1e-12 : 1e-5;
  const std::string out = fresh_dir("route");
  std::string args = "route --logits " + c.path("logits") + " --router " + c.config.at("router") + " --out " + out;
  for (const char* k :
       {"k", "score", "normalize", "capacity", "priority", "scale", "groups", "topk_groups", "group_fill"})
    if (c.config.count(k)) {
      std::string flag = std::string(" --") + k;
      std::replace(flag.begin(), flag.end(), '_', '-');
      args += flag + " " + c.config.at(k);
    }
  if (c.has("bias")) args += " --bias " + c.path("bias");
  if (dense) args += " --dense";
  const Result r = run(args);
  INFO(args << "\n" << r.err);
  REQUIRE(r.status == 0);
  const std::vector<std::string> gse{"g", "s", "e"};
  CHECK(naive::all_close(load_npy<T>(out + "/combine.npy", gse), c.load<T>("combine", gse), tol, tol));
  const auto slot = load_npy<std::int64_t>(out + "/slot.npy", gse);
  if (c.has("slot")) CHECK(slot.to_vector() == load_npy<std::int64_t>(c.path("slot"), gse).to_vector());
  for (const char* loss : {"aux_loss", "z_loss"})
    if (c.has(loss))
      CHECK(naive::close(load_npy<double>(out + "/" + loss + ".npy", {}).item(),
                         load_npy<double>(c.path(loss), {}).item(), tol, tol));
  CHECK(load_npy<double>(out + "/aux_loss.npy", {}).rank() == 0);
}
}  // namespace

TEST_CASE("einmoe route reproduces flaxformer, DeepSpeed and Hugging Face routers, fast and dense", "[cli][routers]") {
  int i = 0;
  for (const auto& c : fixtures::cases("route", "routers")) {
    INFO(c.name);
    const bool dense = i++ % 2 == 1;
    if (c.f64) check_route_cli<double>(c, dense);
    else check_route_cli<float>(c, dense);
  }
  CHECK(i >= 30);
}

TEST_CASE("einmoe moe --router topk with gated and shared experts reproduces the HF blocks", "[cli][routers][shared]") {
  for (const auto& c : fixtures::cases("block", "routers")) {
    if (!c.f64 || !c.has("shared_up_proj")) continue;
    INFO(c.name);
    // the HF [out, in] weights as einmoe's [E, M, H] / [M, Hs] files
    auto save = [&](const std::string& name, const Tensor<double>& t, const Shape& order) {
      const std::string p = scratch(name + ".npy");
      save_npy(p, transpose(t, order));
      return p;
    };
    const auto x = c.load<double>("x", {"s", "m"});
    const index_t T = x.size_of("s"), M = x.size_of("m");
    Tensor<double> x3 = x;
    x3.set_shape(Shape{{"g", 1}, {"s", T}, {"m", M}});
    const auto gate = c.load<double>("gate", {"e", "m"});
    const index_t E = gate.size_of("e");
    std::string args =
        "moe --inputs " + save("x3", x3, x3.shape()) + " --wg " + save("wg", gate, Shape{{"m", M}, {"e", E}});
    const auto w3 = c.load<double>("w3", {"e", "h", "m"});
    const index_t H = w3.size_of("h");
    const Shape emh{{"e", E}, {"m", M}, {"h", H}};
    args += " --wi " + save("wi", w3, emh) + " --wi-gate " + save("wig", c.load<double>("w1", {"e", "h", "m"}), emh);
    args += " --wo " + save("wo", c.load<double>("w2", {"e", "m", "h"}), Shape{{"e", E}, {"h", H}, {"m", M}});
    const auto su = c.load<double>("shared_up_proj", {"h", "m"});
    const Shape mh{{"m", M}, su.dim("h")};
    args += " --shared-wi " + save("swi", su, mh) + " --shared-wi-gate " +
            save("swig", c.load<double>("shared_gate_proj", {"h", "m"}), mh);
    args += " --shared-wo " + save("swo", c.load<double>("shared_down_proj", {"m", "h"}), Shape{su.dim("h"), {"m", M}});
    if (c.has("shared_expert_gate")) {
      Tensor<double> g = c.load<double>("shared_expert_gate", {"one", "m"});
      g.set_shape(Shape{{"m", M}});
      args += " --shared-gate " + save("sg", g, g.shape());
    }
    if (c.has("bias")) args += " --bias " + c.path("bias");
    args += " --router topk --k " + c.config.at("k") + " --score " + c.config.at("score") + " --normalize " +
            c.config.at("normalize") + " --activation " + c.config.at("act");
    if (c.config.count("groups"))
      args += " --groups " + c.config.at("groups") + " --topk-groups " + c.config.at("topk_groups");
    if (c.config.count("scale")) args += " --scale " + c.config.at("scale");
    for (const char* mode : {"", " --dense"}) {
      const std::string out = fresh_dir("moe_router");
      const Result r = run(args + " --out " + out + mode);
      INFO(args << mode << "\n" << r.err);
      REQUIRE(r.status == 0);
      auto y = load_npy<double>(out + "/outputs.npy", {"g", "s", "m"});
      y.set_shape(Shape{{"s", T}, {"m", M}});
      CHECK(naive::all_close(y, c.load<double>("outputs", {"s", "m"}), 1e-12, 1e-12));
      CHECK(load_npy<double>(out + "/z_loss.npy", {}).rank() == 0);
    }
  }
}

TEST_CASE("einmoe route and moe --router reject bad flags with exit status 2 and no output", "[cli][routers][errors]") {
  const auto cs = fixtures::cases("route", "routers");
  const auto it =
      std::find_if(cs.begin(), cs.end(), [](const fixtures::Case& k) { return k.name == "deepspeed_position_k1_f64"; });
  REQUIRE(it != cs.end());
  const fixtures::Case& c = *it;  // E = 6
  const std::string L = c.path("logits"), out = fresh_dir("route_bad");
  const std::string base = "route --logits " + L + " --out " + out;
  expect_rejected(base, "--router", out);
  expect_rejected(base + " --router top3", "--router", out);
  expect_rejected(base + " --router expert-choice", "--capacity", out);
  expect_rejected(base + " --router expert-choice --capacity 2 --k 2", "--k", out);
  expect_rejected(base + " --router topk --k 0", "--k", out);
  expect_rejected(base + " --router topk --k 99", "--k", out);
  expect_rejected(base + " --router topk --score tanh", "--score", out);
  expect_rejected(base + " --router topk --normalize after", "--normalize", out);
  expect_rejected(base + " --router topk --priority random", "--priority", out);
  expect_rejected(base + " --router topk --groups 2", "--topk-groups", out);
  expect_rejected(base + " --router topk --groups 4 --topk-groups 1", "--groups", out);  // E = 6
  expect_rejected(base + " --router topk --scale nan", "--scale", out);
  expect_rejected(base + " --router topk --policy all", "--policy", out);
  const std::string bias = scratch("bias_bad.npy");
  save_npy(bias, Tensor<double>(Shape{{"e", 3}}));
  expect_rejected(base + " --router topk --bias " + bias, "--bias", out);
  const std::string nan = scratch("logits_nan.npy");
  Tensor<double> l = c.load<double>("logits", {"g", "s", "e"});
  l[3] = std::nan("");
  save_npy(nan, l);
  expect_rejected("route --logits " + nan + " --router topk --out " + out, "--logits", out);
  Tensor<double> allneg(Shape{{"g", 1}, {"s", 2}, {"e", 3}}, -INFINITY);
  allneg[0] = 1.0;
  save_npy(nan, allneg);
  expect_rejected("route --logits " + nan + " --router topk --k 1 --out " + out, "token 1", out);
  // -inf alone is fine (a masked expert)
  allneg[3] = 0.5;
  save_npy(nan, allneg);
  CHECK(run("route --logits " + nan + " --router topk --k 1 --out " + out).status == 0);
  fs::remove_all(out);
  // moe: router flags need --router; shared weights come in pairs
  const std::string x = scratch("x_moe.npy"), wg = scratch("wg_moe.npy"), wi = scratch("wi_moe.npy"),
                    wo = scratch("wo_moe.npy");
  save_npy(x, Tensor<float>(Shape{{"g", 1}, {"s", 4}, {"m", 3}}, 0.5f));
  save_npy(wg, Tensor<float>(Shape{{"m", 3}, {"e", 2}}, 0.1f));
  save_npy(wi, Tensor<float>(Shape{{"e", 2}, {"m", 3}, {"h", 5}}, 0.1f));
  save_npy(wo, Tensor<float>(Shape{{"e", 2}, {"h", 5}, {"m", 3}}, 0.1f));
  const std::string moe = "moe --inputs " + x + " --wg " + wg + " --wi " + wi + " --wo " + wo + " --out " + out;
  expect_rejected(moe + " --capacity 2 --k 1", "--k", out);
  expect_rejected(moe + " --router topk --shared-wi " + wi, "--shared-wo", out);
  expect_rejected(moe + " --router topk --wi-gate " + wo, "--wi-gate", out);
  expect_rejected(moe + " --router expert-choice --capacity 5", "--capacity", out);
  CHECK(run(moe + " --router expert-choice --capacity 2").status == 0);
  CHECK(run(moe + " --router topk --k 1").status == 0);
}

TEST_CASE("einmoe moe --grad-outputs writes the library's gradients of every weight given", "[cli][backward]") {
  const index_t G = 2, S = 6, M = 4, H = 5, E = 4;
  Rng rng(31);
  auto file = [&](const std::string& name, const Shape& s) {
    const Tensor<double> t = rng.normal<double>(s);
    save_npy(scratch(name + ".npy"), t);
    return t;
  };
  const Tensor<double> x = file("gx", Shape{{"batch", G}, {"group", S}, {"model", M}});
  const Tensor<double> dy = file("gdy", x.shape());
  const Tensor<double> wg = file("gwg", Shape{{"model", M}, {"experts", E}});
  const Tensor<double> wi = file("gwi", Shape{{"experts", E}, {"model", M}, {"hidden", H}});
  const Tensor<double> wo = file("gwo", Shape{{"experts", E}, {"hidden", H}, {"model", M}});
  const Tensor<double> wig = file("gwig", wi.shape());
  const Tensor<double> bi = file("gbi", Shape{{"experts", E}, {"hidden", H}});
  const Tensor<double> swi = file("gswi", Shape{{"model", M}, {"hidden", 3}});
  const Tensor<double> swo = file("gswo", Shape{{"hidden", 3}, {"model", M}});
  const Tensor<double> sg = file("gsg", Shape{{"model", M}});
  MoEWeights<double> w;
  w.wg = wg, w.experts.wi = wi, w.experts.wo = wo, w.experts.wi_gate = wig, w.experts.bi = bi;
  w.shared = SharedExpertWeights<double>{swi, swo, std::nullopt, sg};
  const std::string base = "moe --inputs " + scratch("gx.npy") + " --wg " + scratch("gwg.npy") + " --wi " +
                           scratch("gwi.npy") + " --wo " + scratch("gwo.npy") + " --wi-gate " + scratch("gwig.npy") +
                           " --bi " + scratch("gbi.npy") + " --shared-wi " + scratch("gswi.npy") + " --shared-wo " +
                           scratch("gswo.npy") + " --shared-gate " + scratch("gsg.npy") + " --activation silu";
  for (int r = 0; r < 2; ++r) {
    MoEOptions o;
    o.activation = Activation::silu;
    o.trainable = true;
    std::string args = base + " --grad-outputs " + scratch("gdy.npy") + " --aux-loss-coef 0.3";
    if (r == 0) {
      Top2Options t;
      t.capacity = CapacitySpec::fixed(3);
      o.router = t;
      args += " --capacity 3";
    } else {
      o.router = TopKOptions{};
      args += " --router topk --z-loss-coef 0.05 --threads 2";
    }
    const MoELayer<double> layer(w, o);
    MoETape<double> tape;
    const auto fwd = layer.forward_train(x, tape);
    const auto g = layer.backward(tape, dy, {0.3, r == 0 ? 0.0 : 0.05});
    const std::string out = fresh_dir("moe_grad");
    const Result res = run(args + " --out " + out);
    INFO(args << "\n" << res.err);
    REQUIRE(res.status == 0);
    auto same = [&](const std::string& f, const Tensor<double>& want) {
      INFO(f);
      const auto got = load_npy<double>(out + "/" + f, want.shape().names());
      CHECK(check::bitwise_equal(got, want));
    };
    same("outputs.npy", fwd.outputs);
    same("grad_inputs.npy", g.inputs);
    same("grad_wg.npy", g.wg);
    same("grad_wi.npy", g.experts.wi);
    same("grad_wo.npy", g.experts.wo);
    same("grad_wi_gate.npy", *g.experts.wi_gate);
    same("grad_bi.npy", *g.experts.bi);
    same("grad_shared_wi.npy", g.shared->wi);
    same("grad_shared_wo.npy", g.shared->wo);
    same("grad_shared_gate.npy", *g.shared->gate);
    CHECK_FALSE(fs::exists(out + "/grad_bo.npy"));
    CHECK_FALSE(fs::exists(out + "/grad_shared_wi_gate.npy"));
  }
  // rejected: nothing written
  const std::string out = fresh_dir("moe_grad_bad");
  const std::string ok = base + " --capacity 3 --out " + out;
  expect_rejected(ok + " --aux-loss-coef 0.1", "--grad-outputs", out);
  expect_rejected(ok + " --grad-outputs " + scratch("gdy.npy") + " --precision int8", "--grad-outputs", out);
  expect_rejected(ok + " --grad-outputs " + scratch("gdy.npy") + " --dense", "--grad-outputs", out);
  expect_rejected(ok + " --grad-outputs " + scratch("gdy.npy") + " --z-loss-coef inf", "--z-loss-coef", out);
  expect_rejected(ok + " --grad-outputs " + scratch("gwg.npy"), "--grad-outputs", out);  // wrong rank
  save_npy(scratch("gdy_short.npy"), Tensor<double>(Shape{{"batch", G}, {"group", S - 1}, {"model", M}}));
  expect_rejected(ok + " --grad-outputs " + scratch("gdy_short.npy"), "--grad-outputs", out);
  save_npy(scratch("gdy_f32.npy"), Tensor<float>(x.shape()));
  expect_rejected(ok + " --grad-outputs " + scratch("gdy_f32.npy"), "--grad-outputs", out);
  Tensor<double> bad = dy.copy();
  bad[5] = std::nan("");
  save_npy(scratch("gdy_nan.npy"), bad);
  expect_rejected(ok + " --grad-outputs " + scratch("gdy_nan.npy"), "--grad-outputs", out);
}

#if defined(EINMOE_HAS_JSON)
namespace {
/// The checkpoint fixtures: each directory and its case.txt (key value per line).
std::vector<std::pair<fs::path, std::map<std::string, std::string>>> checkpoint_cases() {
  std::vector<std::pair<fs::path, std::map<std::string, std::string>>> out;
  for (const auto& e : fs::directory_iterator(fs::path(EINMOE_FIXTURES_DIR) / "checkpoints")) {
    std::map<std::string, std::string> c;
    std::ifstream f(e.path() / "case.txt");
    std::string k, v;
    while (f >> k >> v) c[k] = v;
    out.emplace_back(e.path(), std::move(c));
  }
  return out;
}
}  // namespace

TEST_CASE("einmoe block runs a Hugging Face checkpoint's MoE block", "[cli][checkpoints]") {
  int n = 0;
  for (const auto& [d, c] : checkpoint_cases()) {
    INFO(d.filename().string());
    const std::string out = fresh_dir("block");
    const Result r = run("block --model " + d.string() + " --layer " + c.at("layer") + " --inputs " +
                         (d / "x.npy").string() + " --out " + out);
    INFO(r.err);
    REQUIRE(r.status == 0);
    CHECK(r.out.find("tokens per expert") != std::string::npos);
    const auto y = load_npy<float>(out + "/outputs.npy", {"t", "m"});
    const auto want = load_npy<double>((d / "outputs.npy").string(), {"t", "m"});
    for (index_t i = 0; i < want.size(); ++i)
      CHECK(std::fabs(double(y[i]) - want[i]) <= 1e-5 * std::max(1.0, std::fabs(want[i])));
    const auto l = load_npy<float>(out + "/router_logits.npy", {"t", "e"});
    const auto wl = load_npy<double>((d / "router_logits.npy").string(), {"t", "e"});
    REQUIRE(l.size() == wl.size());
    for (index_t i = 0; i < wl.size(); ++i) CHECK(std::fabs(double(l[i]) - wl[i]) <= 1e-5);
    // --precision bf16 runs and differs from fp32 only a little
    const std::string out2 = fresh_dir("block_bf16");
    CHECK(run("block --model " + d.string() + " --layer " + c.at("layer") + " --inputs " + (d / "x.npy").string() +
              " --precision bf16 --out " + out2)
              .status == 0);
    const std::string x = (d / "x.npy").string(), base = "block --model " + d.string() + " --inputs " + x;
    const std::string bad = fresh_dir("block_bad");
    if (c.at("dense") != "-1")
      expect_rejected(base + " --layer " + c.at("dense") + " --out " + bad, "dense layer", bad);
    expect_rejected(base + " --layer " + c.at("layers") + " --out " + bad, "--layer", bad);
    expect_rejected(base + " --out " + bad, "--layer", bad);
    expect_rejected(base + " --layer " + c.at("layer") + " --precision fp8 --out " + bad, "--precision", bad);
    ++n;
  }
  CHECK(n == 6);
  const std::string bad = fresh_dir("block_bad2");
  const std::string wide = scratch("wide.npy");
  save_npy(wide, Tensor<float>(Shape{{"t", 2}, {"m", 3}}, 1.f));
  const fs::path root = fs::path(EINMOE_FIXTURES_DIR) / "checkpoints", d = root / "mixtral_f32";
  expect_rejected("block --model " + d.string() + " --layer 0 --inputs " + wide + " --out " + bad, "hidden_size", bad);
  expect_rejected("block --model " + scratch("nomodel") + " --layer 0 --inputs " + wide + " --out " + bad, "--model",
                  bad);
  const std::string x1 = (root / "qwen2_moe_bf16" / "x.npy").string(), q = (root / "qwen2_moe_bf16").string();
  expect_rejected("block --model " + q + " --layer 1 --inputs " + x1 + " --exchange padded --out " + bad, "--exchange",
                  bad);
#if defined(EINMOE_HAS_MPI)
  expect_rejected(
      "block --model " + q + " --layer 1 --inputs " + x1 + " --expert-parallel --exchange ring --out " + bad,
      "--exchange", bad);
  expect_rejected(
      "block --model " + q + " --layer 1 --inputs " + x1 + " --expert-parallel --ranks-per-node 2 --out " + bad,
      "--ranks-per-node", bad);
  expect_rejected("block --model " + q + " --layer 1 --inputs " + x1 +
                      " --expert-parallel --exchange hierarchical --ranks-per-node 0 --out " + bad,
                  "--ranks-per-node", bad);
#endif
}
#endif

#if defined(EINMOE_HAS_JSON)
TEST_CASE("einmoe block --grad-outputs writes one gradient per checkpoint tensor of the block",
          "[cli][checkpoints][backward]") {
  int n = 0;
  for (const auto& [d, c] : checkpoint_cases()) {
    INFO(d.filename().string());
    const index_t layer = std::stoll(c.at("layer"));
    const HfCheckpoint ck(d.string());
    const Tensor<float> x = load_npy<float>((d / "x.npy").string(), {"tokens", "model"});
    const Tensor<float> dy = cast<float>(Rng(8).normal<double>(x.shape()));
    const std::string dyp = scratch("block_dy.npy");
    save_npy(dyp, dy);
    const std::string out = fresh_dir("block_grad");
    const Result r =
        run("block --model " + d.string() + " --layer " + c.at("layer") + " --inputs " + (d / "x.npy").string() +
            " --grad-outputs " + dyp + " --aux-loss-coef 0.1 --z-loss-coef 0.01 --out " + out);
    INFO(r.err);
    REQUIRE(r.status == 0);
    // the library's gradients of the same block
    MoEOptions o = ck.moe_options(layer);
    o.trainable = true;
    const MoELayer<float> l = ck.bf16_experts(layer) ? MoELayer<float>(ck.moe_weights<bfloat16>(layer), o)
                                                     : MoELayer<float>(ck.moe_weights<float>(layer), o);
    MoETape<float> tape;
    l.forward_train(x, tape);
    const MoEGradients<float> g = l.backward(tape, dy, {0.1, 0.01});
    CHECK(check::bitwise_equal(load_npy<float>(out + "/grad_inputs.npy", {"tokens", "model"}), g.inputs));
    // exactly the block's checkpoint tensors, under their names and shapes
    const SafetensorsFile grads(out + "/grads.safetensors");
    const std::string prefix = ck.config().prefix(layer);
    std::map<std::string, std::vector<index_t>> want;
    for (const auto& file : fs::directory_iterator(d))
      if (file.path().extension() == ".safetensors") {
        const SafetensorsFile sf(file.path().string());
        for (const auto& name : sf.names())
          if (name.rfind(prefix, 0) == 0) want[name] = sf.entry(name).shape;
      }
    std::map<std::string, std::vector<index_t>> got;
    for (const auto& name : grads.names()) {
      got[name] = grads.entry(name).shape;
      CHECK(grads.entry(name).dtype == "F32");
    }
    CHECK(got == want);
    // expert 1's gate projection [H, M] is slice 1 of the stacked gradient
    const bool mixtral = ck.config().model_type == "mixtral";
    const auto g1 =
        grads.tensor<float>(prefix + "experts.1." + (mixtral ? "w1" : "gate_proj") + ".weight", {"hidden", "model"});
    const index_t H = g1.size_of("hidden"), M = g1.size_of("model");
    for (index_t i = 0; i < H * M; ++i) CHECK(g1[i] == (*g.experts.wi_gate)[H * M + i]);
    if (ck.config().selection_bias) {
      const auto b = grads.tensor<float>(prefix + "gate.e_score_correction_bias", {"experts"});
      for (float z : b) CHECK(z == 0.f);
    }
    const std::string bad = fresh_dir("block_grad_bad");
    const std::string base = "block --model " + d.string() + " --layer " + c.at("layer") + " --inputs " +
                             (d / "x.npy").string() + " --out " + bad;
    expect_rejected(base + " --grad-outputs " + dyp + " --precision int8", "--grad-outputs", bad);
    expect_rejected(base + " --z-loss-coef 0.1", "--grad-outputs", bad);
    expect_rejected(base + " --grad-outputs " + (d / "router_logits.npy").string(), "--grad-outputs", bad);
    ++n;
  }
  CHECK(n == 6);
}

TEST_CASE("einmoe block --group-fill picks DeepSeek-V3's fill of unchosen groups", "[cli][checkpoints]") {
  const fs::path root = fs::path(EINMOE_FIXTURES_DIR) / "checkpoints";
  const std::string d = (root / "deepseek_v3_bf16_sharded").string(),
                    x = (root / "deepseek_v3_bf16_sharded" / "x.npy").string();
  const std::string base = "block --model " + d + " --layer 2 --inputs " + x;
  const std::string def = fresh_dir("fill_default"), zero = fresh_dir("fill_zero"), neg = fresh_dir("fill_neg");
  REQUIRE(run(base + " --out " + def).status == 0);
  REQUIRE(run(base + " --group-fill zero --out " + zero).status == 0);
  REQUIRE(run(base + " --group-fill neg-inf --out " + neg).status == 0);
  // zero is the default (Hugging Face's); neg-inf runs the same layer with DeepSeek's fill
  CHECK(load_npy<float>(def + "/outputs.npy", {"t", "m"}).to_vector() ==
        load_npy<float>(zero + "/outputs.npy", {"t", "m"}).to_vector());
  CHECK(load_npy<float>(neg + "/outputs.npy", {"t", "m"}).shape() ==
        load_npy<float>(def + "/outputs.npy", {"t", "m"}).shape());
  const std::string bad = fresh_dir("fill_bad");
  expect_rejected(base + " --group-fill minus-one --out " + bad, "--group-fill", bad);
  const std::string mixtral = (root / "mixtral_f32").string();
  expect_rejected("block --model " + mixtral + " --layer 0 --inputs " + (root / "mixtral_f32" / "x.npy").string() +
                      " --group-fill neg-inf --out " + bad,
                  "--group-fill", bad);
}
#endif

#if defined(EINMOE_MPIEXEC) && defined(EINMOE_HAS_JSON)
TEST_CASE("einmoe block --expert-parallel under mpirun matches the HF block", "[cli][checkpoints][mpi]") {
  ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  // (under the sanitize preset: no leak check in the MPI processes, whose
  // plugins keep allocations past MPI_Finalize; see tests/CMakeLists.txt)
  ::setenv("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=1", 1);
  const fs::path d = fs::path(EINMOE_FIXTURES_DIR) / "checkpoints" / "qwen2_moe_bf16";
  const std::string out = fresh_dir("block_ep");
  const std::string cmd = std::string(EINMOE_MPIEXEC) + " -n 2 --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 " +
                          EINMOE_CLI + " block --expert-parallel --exchange hierarchical --ranks-per-node 1 --model " +
                          d.string() + " --layer 1 --inputs " + (d / "x.npy").string() + " --out " + out + " > " +
                          scratch("ep_stdout.txt") + " 2>&1";
  REQUIRE(std::system(cmd.c_str()) == 0);
  const auto y = load_npy<float>(out + "/outputs.npy", {"t", "m"});
  const auto want = load_npy<double>((d / "outputs.npy").string(), {"t", "m"});
  REQUIRE(y.size() == want.size());
  for (index_t i = 0; i < want.size(); ++i)
    CHECK(std::fabs(double(y[i]) - want[i]) <= 1e-5 * std::max(1.0, std::fabs(want[i])));
}
#endif

namespace {
std::string file_text(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
}  // namespace

TEST_CASE("einmoe outputs: never through a symlink, onto a FIFO or an input, all or nothing", "[cli][outputs]") {
  const std::string logits = scratch("out_logits.npy");
  save_npy(logits, Rng(1).normal<float>(Shape::parse("batch:1,group:4,experts:3")));
  const std::string gate = "gate --logits " + logits + " --capacity 2 --out ";
  // a planted symlink where an output goes: refused, its target untouched
  {
    const std::string d = fresh_dir("symlinked");
    fs::create_directories(d);
    const std::string victim = scratch("victim.txt");
    std::ofstream(victim) << "keep me";
    fs::create_symlink(victim, d + "/combine.npy");
    const Result r = run(gate + d);
    CHECK(r.status == 2);
    CHECK(r.err.find("symlink") != std::string::npos);
    CHECK(file_text(victim) == "keep me");
    CHECK(fs::is_symlink(d + "/combine.npy"));
    CHECK_FALSE(fs::exists(d + "/dispatch.npy"));  // nothing written
  }
  // --out a symlink to a directory, a FIFO, a directory where a file goes
  {
    const std::string real = fresh_dir("real_dir");
    fs::create_directories(real);
    const std::string link = scratch("out_link");
    fs::remove(link);
    fs::create_symlink(real, link);
    CHECK(run(gate + link).status == 2);
    CHECK(fs::is_empty(real));
    const std::string fifo = scratch("out_fifo.npy");
    fs::remove(fifo);
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    const Result r = run("mask causal --length 3 --out " + fifo);
    CHECK(r.status == 2);
    CHECK(r.err.find("FIFO") != std::string::npos);
    CHECK(fs::is_fifo(fifo));
  }
  // an output that is an input: refused, the input unchanged
  {
    const std::string ids = scratch("out_ids.npy");
    save_npy(ids, Tensor<std::int32_t>(Shape::parse("batch:1,length:3"), 1));
    const std::string before = file_text(ids);
    const Result r = run("mask padding --ids " + ids + " --out " + ids);
    CHECK(r.status == 2);
    CHECK(r.err.find("--ids") != std::string::npos);
    CHECK(file_text(ids) == before);
    const std::string d = fresh_dir("in_is_out");
    fs::create_directories(d);
    save_npy(d + "/combine.npy", Rng(1).normal<float>(Shape::parse("batch:1,group:4,experts:3")));
    const std::string in_before = file_text(d + "/combine.npy");
    CHECK(run("gate --logits " + d + "/combine.npy --capacity 2 --out " + d).status == 2);
    CHECK(file_text(d + "/combine.npy") == in_before);
  }
  // all or nothing: when one output cannot be replaced, the old ones stay
  {
    const std::string d = fresh_dir("all_or_nothing");
    REQUIRE(run(gate + d).status == 0);
    const std::string old_dispatch = file_text(d + "/dispatch.npy");
    fs::remove(d + "/combine.npy");
    fs::create_directories(d + "/combine.npy");  // a directory where a file goes
    save_npy(logits, Rng(2).normal<float>(Shape::parse("batch:1,group:4,experts:3")));
    const Result r = run(gate + d);
    CHECK(r.status == 2);
    CHECK(r.err.find("directory") != std::string::npos);
    CHECK(file_text(d + "/dispatch.npy") == old_dispatch);
    // and a successful run leaves no temporaries behind
    fs::remove(d + "/combine.npy");
    REQUIRE(run(gate + d).status == 0);
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(d)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    CHECK(names == std::vector<std::string>{"aux_loss.npy", "combine.npy", "dispatch.npy", "expert.npy", "slot.npy",
                                            "stats.json", "weight.npy"});
    CHECK(file_text(d + "/dispatch.npy") != old_dispatch);
  }
}
