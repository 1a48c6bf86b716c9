// einmoe/parallel/exchange.hpp - how an expert-parallel layer moves routed rows
// to the ranks that own their experts and the results back.
//
// Example:
//   ExpertParallelOptions ep;
//   ep.exchange = Exchange::hierarchical;     // rows | padded | hierarchical
//   ExpertParallelMoE<float> layer(comm, weights, opt, ep);
//
// rows          MPI_Alltoallv of the routed rows only, P - 1 messages per
//               rank each way (the default).
// padded        MPI_Alltoall of equal blocks [local experts, B, model] per
//               rank pair, as GShard and DeepSpeed send them. B is the
//               router's capacity (groups x C slots per expert on a rank;
//               the largest over the ranks) or, for a dropless router, the
//               largest rows per (rank, expert) over all ranks (one
//               MPI_Allreduce, DeepSpeed's drop_tokens=False). Empty slots
//               travel as zeros; the experts run on the filled rows only.
// hierarchical  Tutel's two-level exchange (2DH): the ranks form N nodes of
//               m ranks. Rows from rank (n, i) to (n', i') go first to
//               (n, i') inside node n, then together with the rows of
//               node n's other ranks for (n', i') in one message to
//               (n', i'). A rank sends m - 1 + N - 1 messages instead of
//               N m - 1, and inter-node messages are m times larger; every
//               row is copied twice more on the way. Nodes are the ranks
//               sharing memory (MPI_Comm_split_type) or blocks of
//               `ranks_per_node` consecutive ranks; every node must hold the
//               same number of ranks.
//
// All three give bitwise the same layer outputs: rows arrive at an expert in
// source-rank order either way.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "einmoe/detail/ffn_scratch.hpp"
#include "einmoe/detail/mpi.hpp"

namespace einmoe {

/// How an ExpertParallelMoE moves rows (see the file comment).
enum class Exchange { rows, padded, hierarchical };

inline const char* to_string(Exchange e) {
  switch (e) {
    case Exchange::rows: return "rows";
    case Exchange::padded: return "padded";
    case Exchange::hierarchical: return "hierarchical";
  }
  return "?";
}

/// "rows" | "padded" | "hierarchical"; anything else is a value_error.
inline Exchange parse_exchange(const std::string& s) {
  if (s == "rows") return Exchange::rows;
  if (s == "padded") return Exchange::padded;
  if (s == "hierarchical") return Exchange::hierarchical;
  detail::raise<value_error>("exchange \"", s, "\": expected rows, padded or hierarchical");
}

/// Options of the expert-parallel layer beyond MoEOptions.
struct ExpertParallelOptions {
  Exchange exchange = Exchange::rows;
  /// hierarchical only: 0 = a node is the ranks that share memory
  /// (MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)); m > 0 = ranks [0, m),
  /// [m, 2m), ... are the nodes (m must divide the number of ranks).
  int ranks_per_node = 0;
};

namespace detail {

/// Rows moved by one two-level exchange, and the message counts derived
/// from them (so the results can go back the same way).
struct TwoLevelPlan {
  std::vector<std::int64_t> to;    ///< [P] rows to each rank (rank order); set by the caller
  std::vector<std::int64_t> via;   ///< [m, N] rows node-local rank i sends through me to node n
  std::vector<std::int64_t> from;  ///< [N, m] rows rank (n, i) sent me
  std::vector<int> sc1, sd1, rc1, rd1, sc2, sd2, rc2, rd2;  ///< inside the node / across nodes
};

/// The two-level all-to-all (see the file comment, `hierarchical`).
class TwoLevelExchange {
 public:
  TwoLevelExchange() = default;

  /// node[q]: a label of rank q's node (every rank passes the same vector).
  /// Collective over comm. value_error when the nodes differ in size.
  TwoLevelExchange(MPI_Comm comm, const std::vector<int>& node) {
    const int P = static_cast<int>(node.size());
    std::vector<int> first_of;  // node index -> its label, in order of first rank
    std::vector<int> n_of(uz(P)), i_of(uz(P));
    std::vector<int> size_of;
    for (int q = 0; q < P; ++q) {
      const auto it = std::find(first_of.begin(), first_of.end(), node[uz(q)]);
      const int n = static_cast<int>(it - first_of.begin());
      if (it == first_of.end()) first_of.push_back(node[uz(q)]), size_of.push_back(0);
      n_of[uz(q)] = n, i_of[uz(q)] = size_of[uz(n)]++;
    }
    N_ = static_cast<int>(first_of.size());
    m_ = N_ > 0 ? size_of[0] : 0;
    for (int n = 0; n < N_; ++n)
      if (size_of[uz(n)] != m_)
        raise<value_error>("hierarchical exchange: node ", n, " has ", size_of[uz(n)], " ranks but node 0 has ", m_,
                           " (every node must hold the same number)");
    rank_at_.assign(uz(P), 0);
    pos_.assign(uz(P), 0);
    identity_ = true;
    for (int q = 0; q < P; ++q) {
      const int k = n_of[uz(q)] * m_ + i_of[uz(q)];
      rank_at_[uz(k)] = q, pos_[uz(q)] = k;
      identity_ = identity_ && k == q;
    }
    int me = 0;
    MPI_Comm_rank(comm, &me);
    n_ = n_of[uz(me)], i_ = i_of[uz(me)];
    mpi_check(MPI_Comm_split(comm, n_, i_, &node_), "MPI_Comm_split (node)");
    mpi_check(MPI_Comm_split(comm, i_, n_, &cross_), "MPI_Comm_split (across nodes)");
  }
  TwoLevelExchange(const TwoLevelExchange&) = delete;
  TwoLevelExchange& operator=(const TwoLevelExchange&) = delete;
  TwoLevelExchange(TwoLevelExchange&& o) noexcept { *this = std::move(o); }
  TwoLevelExchange& operator=(TwoLevelExchange&& o) noexcept {
    if (this != &o) {
      release();
      N_ = o.N_, m_ = o.m_, n_ = o.n_, i_ = o.i_, identity_ = o.identity_;
      rank_at_ = std::move(o.rank_at_), pos_ = std::move(o.pos_);
      node_ = o.node_, cross_ = o.cross_;
      o.node_ = o.cross_ = MPI_COMM_NULL;
    }
    return *this;
  }
  ~TwoLevelExchange() { release(); }

  int nodes() const { return N_; }
  int per_node() const { return m_; }
  /// Rows rank q sent me in the last forward() with plan p.
  std::int64_t from(const TwoLevelPlan& p, int q) const { return p.from[uz(pos_[uz(q)])]; }

  /// send: p.to[q] rows of `width` values for each rank q, in rank order ->
  /// recv: the rows every rank sent me, in rank order (as MPI_Alltoallv
  /// gives them). s1, s2: scratch. Collective.
  template <class T>
  void forward(const T* send, index_t width, MPI_Datatype row, TwoLevelPlan& p, AlignedVector<T>& recv,
               AlignedVector<T>& s1, AlignedVector<T>& s2) const {
    const int N = N_, m = m_;
    // 1. pack by (node-local peer i', node n'): the rows for rank (n', i')
    const std::vector<index_t> soff = offsets(p.to);  // in rank order
    s1.resize(uz(mul_size(soff.back(), width, "rows sent")));
    std::vector<std::int64_t> cs(uz(m * N));
    index_t at = 0;
    for (int i = 0; i < m; ++i)
      for (int n = 0; n < N; ++n) {
        const int q = rank_at_[uz(n * m + i)];
        cs[uz(i * N + n)] = p.to[uz(q)];
        copy_rows(send + soff[uz(q)] * width, p.to[uz(q)], width, s1.data() + at * width);
        at += p.to[uz(q)];
      }
    // 2. inside the node: counts, then rows
    p.via.assign(uz(m * N), 0);
    mpi_check(MPI_Alltoall(cs.data(), N, MPI_INT64_T, p.via.data(), N, MPI_INT64_T, node_),
              "MPI_Alltoall (node counts)");
    p.sc1 = sums(cs, m, N), p.rc1 = sums(p.via, m, N);
    p.sd1 = displs(p.sc1), p.rd1 = displs(p.rc1);
    s2.resize(uz(mul_size(total(p.rc1), width, "rows relayed")));
    mpi_check(
        MPI_Alltoallv(s1.data(), p.sc1.data(), p.sd1.data(), row, s2.data(), p.rc1.data(), p.rd1.data(), row, node_),
        "MPI_Alltoallv (inside the node)");
    // 3. repack what arrived ([i][n']) by destination node ([n'][i])
    relay(p, s2.data(), s1, width, false);
    std::vector<std::int64_t> cs2(uz(N * m));
    for (int n = 0; n < N; ++n)
      for (int i = 0; i < m; ++i) cs2[uz(n * m + i)] = p.via[uz(i * N + n)];
    // 4. across nodes: counts, then rows
    p.from.assign(uz(N * m), 0);
    mpi_check(MPI_Alltoall(cs2.data(), m, MPI_INT64_T, p.from.data(), m, MPI_INT64_T, cross_),
              "MPI_Alltoall (node counts)");
    p.sc2 = sums(cs2, N, m), p.rc2 = sums(p.from, N, m);
    p.sd2 = displs(p.sc2), p.rd2 = displs(p.rc2);
    AlignedVector<T>& r2 = identity_ ? recv : s2;
    r2.resize(uz(mul_size(total(p.rc2), width, "rows received")));
    mpi_check(
        MPI_Alltoallv(s1.data(), p.sc2.data(), p.sd2.data(), row, r2.data(), p.rc2.data(), p.rd2.data(), row, cross_),
        "MPI_Alltoallv (across nodes)");
    // 5. [n][i] -> rank order (nothing to do when ranks fill nodes in order)
    if (!identity_) {
      recv.resize(r2.size());
      permute(p.from, r2.data(), recv.data(), width, true);
    }
  }

  /// The way back: rows laid out as forward()'s recv (rank order, p.from) ->
  /// out laid out as forward()'s send (rank order, p.to). Collective.
  template <class T>
  void backward(const T* back, index_t width, MPI_Datatype row, const TwoLevelPlan& p, T* out, AlignedVector<T>& s1,
                AlignedVector<T>& s2) const {
    const T* src = back;
    if (!identity_) {
      s2.resize(uz(mul_size(total(p.rc2), width, "rows returned")));
      permute(p.from, back, s2.data(), width, false);
      src = s2.data();
    }
    s1.resize(uz(mul_size(total(p.sc2), width, "rows returned")));
    mpi_check(MPI_Alltoallv(src, p.rc2.data(), p.rd2.data(), row, s1.data(), p.sc2.data(), p.sd2.data(), row, cross_),
              "MPI_Alltoallv (across nodes)");
    s2.resize(uz(mul_size(total(p.rc1), width, "rows returned")));
    relay(p, s1.data(), s2, width, true);
    s1.resize(uz(mul_size(total(p.sc1), width, "rows returned")));
    mpi_check(
        MPI_Alltoallv(s2.data(), p.rc1.data(), p.rd1.data(), row, s1.data(), p.sc1.data(), p.sd1.data(), row, node_),
        "MPI_Alltoallv (inside the node)");
    // unpack (i', n') -> rank order
    const std::vector<index_t> soff = offsets(p.to);
    index_t at = 0;
    for (int i = 0; i < m_; ++i)
      for (int n = 0; n < N_; ++n) {
        const int q = rank_at_[uz(n * m_ + i)];
        copy_rows(s1.data() + at * width, p.to[uz(q)], width, out + soff[uz(q)] * width);
        at += p.to[uz(q)];
      }
  }

 private:
  /// [n + 1] running sums of n row counts.
  static std::vector<index_t> offsets(const std::vector<std::int64_t>& rows) {
    std::vector<index_t> o(rows.size() + 1, 0);
    for (std::size_t q = 0; q < rows.size(); ++q) o[q + 1] = o[q] + rows[q];
    return o;
  }
  template <class T>
  static void copy_rows(const T* src, index_t rows, index_t width, T* dst) {
    if (rows > 0 && width > 0) std::memcpy(dst, src, uz(rows * width) * sizeof(T));
  }
  static std::vector<int> sums(const std::vector<std::int64_t>& c, int a, int b) {
    std::vector<int> s(uz(a));
    for (int x = 0; x < a; ++x) {
      index_t n = 0;
      for (int y = 0; y < b; ++y) n += c[uz(x * b + y)];
      s[uz(x)] = mpi_count(n, "rows");
    }
    return s;
  }
  static std::vector<int> displs(const std::vector<int>& c) {
    std::vector<int> d(c.size());
    index_t at = 0;
    for (std::size_t x = 0; x < c.size(); ++x) d[x] = mpi_count(at, "rows"), at += c[x];
    mpi_count(at, "rows");
    return d;
  }
  static index_t total(const std::vector<int>& c) {
    index_t n = 0;
    for (int v : c) n += v;
    return n;
  }
  /// Rows relayed through this rank: [i][n] (as they arrived inside the node)
  /// <-> [n][i] (as they leave across nodes). back = the reverse direction.
  template <class T>
  void relay(const TwoLevelPlan& p, const T* src, AlignedVector<T>& dst, index_t width, bool back) const {
    const auto& via = p.via;
    const int N = N_, m = m_;
    std::vector<index_t> a(uz(m * N) + 1, 0), b(uz(N * m) + 1, 0);  // offsets in [i][n] and [n][i] order
    for (int i = 0; i < m; ++i)
      for (int n = 0; n < N; ++n) a[uz(i * N + n) + 1] = a[uz(i * N + n)] + via[uz(i * N + n)];
    for (int n = 0; n < N; ++n)
      for (int i = 0; i < m; ++i) b[uz(n * m + i) + 1] = b[uz(n * m + i)] + via[uz(i * N + n)];
    dst.resize(uz(mul_size(a.back(), width, "rows relayed")));
    for (int i = 0; i < m; ++i)
      for (int n = 0; n < N; ++n) {
        const index_t rows = via[uz(i * N + n)], x = a[uz(i * N + n)], y = b[uz(n * m + i)];
        if (back) copy_rows(src + y * width, rows, width, dst.data() + x * width);
        else copy_rows(src + x * width, rows, width, dst.data() + y * width);
      }
  }
  /// Rows from each rank: [n][i] order <-> rank order (to_rank_order or back).
  template <class T>
  void permute(const std::vector<std::int64_t>& from, const T* src, T* dst, index_t width, bool to_rank_order) const {
    const std::size_t P = rank_at_.size();
    std::vector<std::int64_t> by_rank(P);
    for (std::size_t q = 0; q < P; ++q) by_rank[q] = from[uz(pos_[q])];
    const std::vector<index_t> a = offsets(from), b = offsets(by_rank);  // in [n][i] and rank order
    for (std::size_t k = 0; k < P; ++k) {
      const index_t x = a[k], y = b[uz(rank_at_[k])];
      if (to_rank_order) copy_rows(src + x * width, from[k], width, dst + y * width);
      else copy_rows(src + y * width, from[k], width, dst + x * width);
    }
  }
  void release() {
    if (node_ != MPI_COMM_NULL) MPI_Comm_free(&node_);
    if (cross_ != MPI_COMM_NULL) MPI_Comm_free(&cross_);
  }

  int N_ = 0, m_ = 0, n_ = 0, i_ = 0;
  bool identity_ = true;
  std::vector<int> rank_at_, pos_;  // [n m + i] -> rank, rank -> n m + i
  MPI_Comm node_ = MPI_COMM_NULL, cross_ = MPI_COMM_NULL;
};

/// Node labels for the two-level exchange: rank / ranks_per_node, or (0)
/// the lowest rank among those sharing memory with each rank. Collective.
inline std::vector<int> node_labels(MPI_Comm comm, int ranks_per_node) {
  int me = 0, P = 1;
  MPI_Comm_rank(comm, &me);
  MPI_Comm_size(comm, &P);
  std::vector<int> label(uz(P));
  if (ranks_per_node < 0)
    raise<value_error>("ranks_per_node is ", ranks_per_node, "; must be 0 (ranks sharing memory) or positive");
  if (ranks_per_node > 0) {
    if (P % ranks_per_node != 0)
      raise<value_error>("ranks_per_node ", ranks_per_node, " does not divide the ", P, " ranks");
    for (int q = 0; q < P; ++q) label[uz(q)] = q / ranks_per_node;
    return label;
  }
  MPI_Comm shm = MPI_COMM_NULL;
  mpi_check(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, me, MPI_INFO_NULL, &shm), "MPI_Comm_split_type");
  int lowest = me;
  const int rc = MPI_Allreduce(&me, &lowest, 1, MPI_INT, MPI_MIN, shm);
  MPI_Comm_free(&shm);
  mpi_check(rc, "MPI_Allreduce");
  mpi_check(MPI_Allgather(&lowest, 1, MPI_INT, label.data(), 1, MPI_INT, comm), "MPI_Allgather");
  return label;
}

}  // namespace detail
}  // namespace einmoe
