// An MoE layer whose experts are spread over MPI ranks: each rank holds its
// block of experts and its own groups of tokens. Prints, per rank, the rows
// (tokens' expert choices) sent and received, the bytes moved and where the
// time went, and checks rank 0's outputs against the single-process layer.
//
//   mpirun -np 2 moe_expert_parallel [--groups-per-rank 2] [--tokens-per-group 512]
//                                    [--model 512] [--hidden 2048] [--experts 16] [--k 2]
//                                    [--exchange rows|padded|hierarchical]
#include <mpi.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <einmoe/parallel/expert_parallel.hpp>

using namespace einmoe;

namespace {
long long flag(int argc, char** argv, const char* name, long long dflt) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) {
      char* end = nullptr;
      const long long v = std::strtoll(argv[i + 1], &end, 10);
      if (*end != '\0' || v < 1 || v > (1 << 20)) {
        std::fprintf(stderr, "moe_expert_parallel: %s needs a positive integer, got \"%s\"\n", name, argv[i + 1]);
        std::exit(2);
      }
      return v;
    }
  return dflt;
}
}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const index_t Gr = flag(argc, argv, "--groups-per-rank", 2), S = flag(argc, argv, "--tokens-per-group", 512);
  const index_t M = flag(argc, argv, "--model", 512), H = flag(argc, argv, "--hidden", 2048);
  const index_t E = flag(argc, argv, "--experts", 16), K = flag(argc, argv, "--k", 2);
  int status = 0;
  try {
    ExpertParallelOptions ep;
    for (int i = 1; i + 1 < argc; ++i)
      if (std::strcmp(argv[i], "--exchange") == 0) ep.exchange = parse_exchange(argv[i + 1]);
    // The same weights on every rank (same seed); each lays out its experts.
    Rng rng(2024);
    auto scaled = [&](const Shape& s, double k) {
      Tensor<float> t = rng.normal<float>(s);
      for (auto& v : t) v = static_cast<float>(v * k);
      return t;
    };
    const Tensor<float> wg = scaled(Shape{{"model", M}, {"experts", E}}, 1.0 / std::sqrt(double(M)));
    const Tensor<float> wi = scaled(Shape{{"experts", E}, {"model", M}, {"hidden", H}}, 1.0 / std::sqrt(double(M)));
    const Tensor<float> wo = scaled(Shape{{"experts", E}, {"hidden", H}, {"model", M}}, 1.0 / std::sqrt(double(H)));
    MoEWeights<float> w;
    w.wg = wg;
    w.experts.wi = wi;
    w.experts.wo = wo;
    TopKOptions t;
    t.k = K;
    t.normalize = TopKNormalize::topk;
    MoEOptions o;
    o.router = t;
    const ExpertParallelMoE<float> layer(MPI_COMM_WORLD, w, o, ep);
    // This rank's groups: rows [rank * Gr, (rank + 1) * Gr) of one global batch.
    const Tensor<float> all = Rng(7).normal<float>(Shape{{"batch", Gr * ranks}, {"group", S}, {"model", M}});
    const Tensor<float> x = slice(all, "batch", rank * Gr, Gr);
    MoEResult<float> out;
    layer.forward_into(out, x);  // warm up
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = std::chrono::steady_clock::now();
    layer.forward_into(out, x);
    const double total = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const auto& st = layer.last();
    for (int r = 0; r < ranks; ++r) {
      MPI_Barrier(MPI_COMM_WORLD);
      if (r != rank) continue;
      std::printf(
          "rank %d: experts [%lld, %lld), %lld tokens; rows sent %lld, received %lld; %.2f MB each way (%s);"
          " %.2f ms = routing %.2f + exchange %.2f + experts %.2f + combine %.2f\n",
          rank, static_cast<long long>(layer.first_expert()),
          static_cast<long long>(layer.first_expert() + layer.local_experts()), static_cast<long long>(Gr * S),
          static_cast<long long>(st.rows_sent), static_cast<long long>(st.rows_received),
          double(st.bytes_sent + st.bytes_received) / 2e6, to_string(ep.exchange), total, st.route_ms, st.exchange_ms,
          st.experts_ms, st.combine_ms);
      std::fflush(stdout);
    }
    // Rank 0 checks its outputs against the single-process layer on all groups.
    if (rank == 0) {
      const auto ref = MoELayer<float>(w, o).forward(all);
      const Tensor<float> want = slice(ref.outputs, "batch", 0, Gr);
      const bool same =
          std::memcmp(want.data(), out.outputs.data(), static_cast<std::size_t>(want.size()) * sizeof(float)) == 0 &&
          ref.aux_loss == out.aux_loss && ref.stats.tokens_per_expert == out.stats.tokens_per_expert;
      std::printf("aux_loss %.6f, z_loss %.4f; rank 0's outputs and the losses %s the single-process layer's\n",
                  double(out.aux_loss), double(out.z_loss), same ? "are bitwise" : "DIFFER from");
      status = same ? 0 : 1;
    }
  } catch (const einmoe::error& e) {
    if (rank == 0) std::fprintf(stderr, "moe_expert_parallel: %s\n", e.what());
    status = 2;
  }
  MPI_Bcast(&status, 1, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Finalize();
  return status;
}
