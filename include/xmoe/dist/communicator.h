// A group of processes (ranks) that exchange tensors: the transport of expert parallelism.
//
// Backed by torch's c10d Gloo process group (CPU tensors; CUDA tensors are staged through host
// memory). Every collective must be called by every rank of the group, in the same order.
//
//   rendezvous: a c10d store every rank reaches — TCP (MASTER_ADDR:MASTER_PORT, the torchrun
//               convention), a shared file, or an in-process store for ranks that are threads
//               of one process (tests, benchmarks).
#pragma once

#include <ATen/Tensor.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace xmoe {
namespace dist {

/// A collective failed or timed out, or the group could not be formed; the message names the
/// operation, this rank and the group size.
struct CommunicatorError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// How the ranks find each other.
struct Rendezvous {
  enum class Kind { kTcp, kFile, kInProcess };
  Kind kind = Kind::kTcp;
  std::string address = "127.0.0.1";  // kTcp: the host of rank 0's store
  int port = 29500;                    // kTcp
  std::string path;                    // kFile: a file every rank can reach (created by rank 0)
  std::string name = "default";        // kInProcess: ranks with the same name meet
};

/// A TCP port on 127.0.0.1 that nothing listens on right now, for a rendezvous of ranks on this
/// machine (another process may still take it before rank 0 does). Throws std::runtime_error.
int free_loopback_port();

class Communicator : public std::enable_shared_from_this<Communicator> {
 public:
  /// Forms a group of `world_size` ranks; blocks until all have joined or `timeout` passes.
  /// The timeout also bounds every later collective, so a rank that died fails the others
  /// with CommunicatorError instead of hanging them.
  static std::shared_ptr<Communicator> create(int rank, int world_size, const Rendezvous& where,
                                              std::chrono::milliseconds timeout =
                                                  std::chrono::minutes(5));

  /// The torchrun environment: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (TCP rendezvous).
  /// Throws std::invalid_argument naming a variable that is missing or not a number.
  static std::shared_ptr<Communicator> from_environment(
      std::chrono::milliseconds timeout = std::chrono::minutes(5));

  /// Whether this build can form groups of more than one rank (built with c10d Gloo).
  static bool available();

  virtual ~Communicator() = default;
  int rank() const { return rank_; }
  int size() const { return size_; }

  /// Exchanges rows: this rank sends rows [Σ send_rows[<r], +send_rows[r]) of `input`
  /// [Σ send_rows, ...] to rank r and returns [Σ recv_rows, ...], the rows of rank r at
  /// [Σ recv_rows[<r], +recv_rows[r]). recv_rows[r] must equal rank r's send_rows[rank()].
  at::Tensor all_to_all(const at::Tensor& input, const std::vector<int64_t>& send_rows,
                        const std::vector<int64_t>& recv_rows);

  /// Every rank's `tensor` (any shape; the same dtype on every rank), collected on `root`:
  /// there one tensor per rank, in rank order; elsewhere an empty vector.
  std::vector<at::Tensor> gather(const at::Tensor& tensor, int root = 0);

  /// In place: each tensor becomes the sum over the ranks of that tensor.
  void all_reduce_sum(std::vector<at::Tensor>& tensors);

  /// Blocks until every rank has reached it.
  void barrier();

  /// Groups are referred to by id from autograd nodes (which outlive no group they use).
  int64_t id() const { return id_; }
  static std::shared_ptr<Communicator> by_id(int64_t id);

 protected:
  Communicator(int rank, int size);

  virtual at::Tensor all_to_all_cpu(const at::Tensor& input, std::vector<int64_t> send_rows,
                                    std::vector<int64_t> recv_rows) = 0;
  virtual void all_reduce_sum_cpu(std::vector<at::Tensor>& tensors) = 0;
  virtual void barrier_impl() = 0;
  std::string where() const;  // "rank r of W"
  /// Runs a collective, turning the transport's failures into CommunicatorError.
  void guarded(const char* operation, const std::function<void()>& run) const;

 private:
  int rank_;
  int size_;
  int64_t id_;
};

}  // namespace dist
}  // namespace xmoe
