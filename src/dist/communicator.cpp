#include "xmoe/dist/communicator.h"

#include <ATen/ATen.h>

#ifdef XMOE_WITH_GLOO
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <numeric>
#include <sstream>
#include <type_traits>
#include <utility>

namespace xmoe {
namespace dist {
namespace {

std::mutex registry_mutex;
std::map<int64_t, std::weak_ptr<Communicator>>& registry() {
  static std::map<int64_t, std::weak_ptr<Communicator>> groups;
  return groups;
}
std::atomic<int64_t> next_id{1};

std::shared_ptr<Communicator> registered(std::shared_ptr<Communicator> group) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  auto& groups = registry();
  for (auto it = groups.begin(); it != groups.end();) {
    it = it->second.expired() ? groups.erase(it) : std::next(it);
  }
  groups[group->id()] = group;
  return group;
}

/// One rank: every collective is the identity.
class SingleRank final : public Communicator {
 public:
  SingleRank() : Communicator(0, 1) {}

 protected:
  at::Tensor all_to_all_cpu(const at::Tensor& input, std::vector<int64_t>,
                            std::vector<int64_t>) override {
    return input.clone();
  }
  void all_reduce_sum_cpu(std::vector<at::Tensor>&) override {}
  void barrier_impl() override {}
};

#ifdef XMOE_WITH_GLOO
/// In-process stores by name, so ranks that are threads of one process can meet.
c10::intrusive_ptr<c10d::Store> in_process_store(const std::string& name) {
  static std::mutex mutex;
  static std::map<std::string, c10::intrusive_ptr<c10d::Store>> stores;
  std::lock_guard<std::mutex> lock(mutex);
  auto& store = stores[name];
  if (!store) store = c10::make_intrusive<c10d::HashStore>();
  return store;
}

// LibTorch 2.4+ serves TCPStore through libuv by default, and builds without libuv (Debian's
// 2.6) refuse to form a store at all. The classic backend exists in every version and the store
// carries only the rendezvous, so it is used wherever there is a choice.
template <typename Options, typename = void>
struct HasLibUvChoice : std::false_type {};
template <typename Options>
struct HasLibUvChoice<Options, std::void_t<decltype(std::declval<Options&>().useLibUV)>>
    : std::true_type {};

template <typename Options>
void use_classic_store_backend(Options& options) {
  if constexpr (HasLibUvChoice<Options>::value) options.useLibUV = false;
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

/// The network interface this rank talks through: GLOO_SOCKET_IFNAME when set (as in PyTorch),
/// loopback when every rank is on this host, else the interface of this host's name.
std::shared_ptr<::gloo::transport::Device> transport_device(const Rendezvous& where) {
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname != nullptr && *ifname)
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  if (where.kind != Rendezvous::Kind::kTcp || is_loopback(where.address))
    return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

class GlooGroup final : public Communicator {
 public:
  GlooGroup(int rank, int size, const Rendezvous& where, std::chrono::milliseconds timeout)
      : Communicator(rank, size) {
    c10::intrusive_ptr<c10d::Store> store;
    switch (where.kind) {
      case Rendezvous::Kind::kTcp: {
        c10d::TCPStoreOptions options;
        options.port = static_cast<std::uint16_t>(where.port);
        options.isServer = rank == 0;
        options.numWorkers = size;
        options.waitWorkers = true;
        options.timeout = timeout;
        use_classic_store_backend(options);
        store = c10::make_intrusive<c10d::TCPStore>(where.address, options);
        break;
      }
      case Rendezvous::Kind::kFile:
        store = c10::make_intrusive<c10d::FileStore>(where.path, size);
        break;
      case Rendezvous::Kind::kInProcess:
        store = in_process_store(where.name);
        break;
    }
    store->setTimeout(timeout);
    auto options = c10d::ProcessGroupGloo::Options::create();
    options->timeout = timeout;
    options->devices.push_back(transport_device(where));
    group_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
  }

 protected:
  at::Tensor all_to_all_cpu(const at::Tensor& input, std::vector<int64_t> send_rows,
                            std::vector<int64_t> recv_rows) override {
    std::vector<int64_t> shape = input.sizes().vec();
    shape[0] = std::accumulate(recv_rows.begin(), recv_rows.end(), int64_t{0});
    at::Tensor in = input.contiguous();
    at::Tensor out = at::empty(shape, in.options());
    group_->alltoall_base(out, in, recv_rows, send_rows)->wait();
    return out;
  }
  void all_reduce_sum_cpu(std::vector<at::Tensor>& tensors) override {
    group_->allreduce(tensors)->wait();
  }
  void barrier_impl() override { group_->barrier()->wait(); }

 private:
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group_;
};
#endif

int environment_int(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0')
    throw std::invalid_argument(std::string("xmoe::dist: environment variable ") + name +
                                " is not set (torchrun convention: RANK, WORLD_SIZE, "
                                "MASTER_ADDR, MASTER_PORT)");
  char* end = nullptr;
  const long parsed = std::strtol(value, &end, 10);
  if (*end != '\0' || parsed < 0 || parsed > 65535)
    throw std::invalid_argument(std::string("xmoe::dist: environment variable ") + name + " = '" +
                                value + "' is not a number in [0, 65535]");
  return static_cast<int>(parsed);
}

}  // namespace

Communicator::Communicator(int rank, int size) : rank_(rank), size_(size), id_(next_id++) {}

void Communicator::guarded(const char* operation, const std::function<void()>& run) const {
  // Gloo reports a peer that vanished or a timeout as c10::Error or as a std::runtime_error.
  try {
    run();
  } catch (const c10::Error& e) {
    throw CommunicatorError(std::string("xmoe::dist::") + operation + " (" + where() + "): " +
                            e.what_without_backtrace());
  } catch (const CommunicatorError&) {
    throw;
  } catch (const std::runtime_error& e) {
    throw CommunicatorError(std::string("xmoe::dist::") + operation + " (" + where() + "): " +
                            e.what());
  }
}

std::string Communicator::where() const {
  return "rank " + std::to_string(rank_) + " of " + std::to_string(size_);
}

int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("xmoe::dist: cannot open a socket to find a free port");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;  // the kernel picks a free one
  socklen_t length = sizeof(address);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  ::close(fd);
  if (!ok) throw std::runtime_error("xmoe::dist: cannot find a free port on 127.0.0.1");
  return ntohs(address.sin_port);
}

bool Communicator::available() {
#ifdef XMOE_WITH_GLOO
  return true;
#else
  return false;
#endif
}

std::shared_ptr<Communicator> Communicator::create(int rank, int world_size,
                                                   const Rendezvous& where,
                                                   std::chrono::milliseconds timeout) {
  if (world_size < 1 || rank < 0 || rank >= world_size)
    throw std::invalid_argument("xmoe::dist: rank " + std::to_string(rank) +
                                " is not in [0, world size " + std::to_string(world_size) + ")");
  if (world_size == 1) return registered(std::make_shared<SingleRank>());
  if (where.kind == Rendezvous::Kind::kFile && where.path.empty())
    throw std::invalid_argument("xmoe::dist: a file rendezvous needs a path");
#ifdef XMOE_WITH_GLOO
  try {
    return registered(std::make_shared<GlooGroup>(rank, world_size, where, timeout));
  } catch (const c10::Error& e) {
    throw CommunicatorError("xmoe::dist: rank " + std::to_string(rank) + " of " +
                            std::to_string(world_size) + " could not join the group: " +
                            e.what_without_backtrace());
  } catch (const std::runtime_error& e) {  // the stores' timeouts and socket errors
    throw CommunicatorError("xmoe::dist: rank " + std::to_string(rank) + " of " +
                            std::to_string(world_size) + " could not join the group: " + e.what());
  }
#else
  (void)timeout;
  throw CommunicatorError(
      "xmoe::dist: this build has no c10d Gloo, so groups of more than one rank are "
      "unavailable (install libgloo-dev and rebuild; scripts/setup.sh does)");
#endif
}

std::shared_ptr<Communicator> Communicator::from_environment(std::chrono::milliseconds timeout) {
  Rendezvous where;
  const int rank = environment_int("RANK");
  const int world_size = environment_int("WORLD_SIZE");
  if (world_size > 1) {
    const char* address = std::getenv("MASTER_ADDR");
    if (address == nullptr || *address == '\0')
      throw std::invalid_argument("xmoe::dist: environment variable MASTER_ADDR is not set");
    where.address = address;
    where.port = environment_int("MASTER_PORT");
  }
  return create(rank, world_size, where, timeout);
}

std::shared_ptr<Communicator> Communicator::by_id(int64_t id) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  auto it = registry().find(id);
  std::shared_ptr<Communicator> group = it == registry().end() ? nullptr : it->second.lock();
  if (!group)
    throw CommunicatorError("xmoe::dist: process group " + std::to_string(id) +
                            " no longer exists (used by a backward pass after it was destroyed)");
  return group;
}

at::Tensor Communicator::all_to_all(const at::Tensor& input, const std::vector<int64_t>& send_rows,
                                    const std::vector<int64_t>& recv_rows) {
  auto fail = [&](const std::string& m) {
    throw std::invalid_argument("xmoe::dist::all_to_all (" + where() + "): " + m);
  };
  if (static_cast<int>(send_rows.size()) != size_ || static_cast<int>(recv_rows.size()) != size_)
    fail("send_rows and recv_rows need one entry per rank (" + std::to_string(size_) + "), got " +
         std::to_string(send_rows.size()) + " and " + std::to_string(recv_rows.size()));
  if (input.dim() < 1) fail("input must have a row dimension");
  for (int r = 0; r < size_; ++r)
    if (send_rows[r] < 0 || recv_rows[r] < 0) fail("row counts must be >= 0");
  const int64_t sent = std::accumulate(send_rows.begin(), send_rows.end(), int64_t{0});
  if (sent != input.size(0))
    fail("send_rows add up to " + std::to_string(sent) + " but input has " +
         std::to_string(input.size(0)) + " rows");
  const at::Tensor host = input.device().is_cpu() ? input : input.cpu();
  at::Tensor out;
  guarded("all_to_all", [&] { out = all_to_all_cpu(host, send_rows, recv_rows); });
  return input.device().is_cpu() ? out : out.to(input.device());
}

std::vector<at::Tensor> Communicator::gather(const at::Tensor& tensor, int root) {
  if (root < 0 || root >= size_)
    throw std::invalid_argument("xmoe::dist::gather (" + where() + "): root " +
                                std::to_string(root) + " is not a rank");
  if (size_ == 1) return {tensor.clone()};
  // A header first (dtype, rank count, sizes), so that shapes may differ between ranks.
  constexpr int64_t kMaxDims = 8, kHeader = 2 + kMaxDims;
  if (tensor.dim() > kMaxDims)
    throw std::invalid_argument("xmoe::dist::gather (" + where() + "): more than 8 dimensions");
  at::Tensor header = at::zeros({kHeader}, at::kLong);
  header[0] = static_cast<int64_t>(tensor.scalar_type());
  header[1] = tensor.dim();
  for (int64_t i = 0; i < tensor.dim(); ++i) header[2 + i] = tensor.size(i);
  std::vector<int64_t> send(size_, 0), recv(size_, 0);
  send[root] = kHeader;
  if (rank_ == root) std::fill(recv.begin(), recv.end(), kHeader);
  const at::Tensor headers = all_to_all(header, send, recv);

  std::vector<std::vector<int64_t>> shapes(size_);
  if (rank_ == root) {
    for (int r = 0; r < size_; ++r) {
      const int64_t* h = headers.data_ptr<int64_t>() + r * kHeader;
      if (h[0] != header[0].item<int64_t>())
        throw std::invalid_argument("xmoe::dist::gather (" + where() + "): rank " +
                                    std::to_string(r) + " sent another dtype");
      shapes[r].assign(h + 2, h + 2 + h[1]);
      recv[r] = 1;
      for (int64_t n : shapes[r]) recv[r] *= n;
    }
  }
  send[root] = tensor.numel();
  const at::Tensor flat = all_to_all(tensor.reshape({-1}), send, recv);
  std::vector<at::Tensor> out;
  if (rank_ != root) return out;
  int64_t offset = 0;
  for (int r = 0; r < size_; ++r) {
    out.push_back(flat.narrow(0, offset, recv[r]).reshape(shapes[r]));
    offset += recv[r];
  }
  return out;
}

void Communicator::all_reduce_sum(std::vector<at::Tensor>& tensors) {
  if (size_ == 1 || tensors.empty()) return;
  // Gloo reduces contiguous host tensors; others are staged and copied back in place.
  auto direct = [](const at::Tensor& t) { return t.device().is_cpu() && t.is_contiguous(); };
  std::vector<at::Tensor> host;
  host.reserve(tensors.size());
  for (const auto& t : tensors) host.push_back(direct(t) ? t : t.contiguous().cpu());
  guarded("all_reduce_sum", [&] {
    for (auto& t : host) {
      std::vector<at::Tensor> one{t};
      all_reduce_sum_cpu(one);
    }
  });
  for (size_t i = 0; i < tensors.size(); ++i)
    if (!direct(tensors[i])) tensors[i].copy_(host[i]);
}

void Communicator::barrier() {
  if (size_ == 1) return;
  guarded("barrier", [&] { barrier_impl(); });
}

}  // namespace dist
}  // namespace xmoe
