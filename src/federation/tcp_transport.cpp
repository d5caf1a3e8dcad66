#include "federation/transport.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <fmt/format.h>

namespace keyfed {

// The libuv handles of one connection. They outlive the TcpTransport when it
// is destroyed while closing: memory may only go in the last close callback.
struct TcpTransport::Handles {
  uv_tcp_t tcp{};
  uv_timer_t linger{};
  uv_connect_t connect_req{};
  uv_shutdown_t shutdown_req{};
  TcpTransport* owner = nullptr;
  int open = 2;
  bool closing = false;
};

namespace {

struct WriteRequest {
  uv_write_t req;
  std::vector<std::uint8_t> data;
  TcpTransport::Handles* handles;
};

std::string address_text(const sockaddr* address, bool with_port) {
  char ip[INET6_ADDRSTRLEN] = {};
  if (address->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(address);
    uv_ip4_name(in, ip, sizeof ip);
    return with_port ? fmt::format("{}:{}", ip, ntohs(in->sin_port)) : std::string(ip);
  }
  const auto* in6 = reinterpret_cast<const sockaddr_in6*>(address);
  uv_ip6_name(in6, ip, sizeof ip);
  return with_port ? fmt::format("[{}]:{}", ip, ntohs(in6->sin6_port)) : std::string(ip);
}

Result<sockaddr_storage> parse_address(const std::string& address, int port) {
  sockaddr_storage addr{};
  if (uv_ip4_addr(address.c_str(), port, reinterpret_cast<sockaddr_in*>(&addr)) != 0 &&
      uv_ip6_addr(address.c_str(), port, reinterpret_cast<sockaddr_in6*>(&addr)) != 0) {
    return make_error("'{}' is not an IP address", address);
  }
  return addr;
}

}  // namespace

std::string source_of(const sockaddr* address) {
  if (address->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(address);
    const std::uint8_t* b = in6->sin6_addr.s6_addr;
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) return fmt::format("{}.{}.{}.{}", b[12], b[13], b[14], b[15]);
    // One IPv6 host usually has a whole /64: it pays as one source.
    return fmt::format("{:02x}{:02x}:{:02x}{:02x}:{:02x}{:02x}:{:02x}{:02x}::/64", b[0], b[1], b[2], b[3], b[4], b[5],
                       b[6], b[7]);
  }
  return address_text(address, false);
}

TcpTransport::TcpTransport(uv_loop_t* loop) : handles_(new Handles) {
  handles_->owner = this;
  uv_tcp_init(loop, &handles_->tcp);
  uv_timer_init(loop, &handles_->linger);
  handles_->tcp.data = handles_;
  handles_->linger.data = handles_;
}

TcpTransport::~TcpTransport() {
  if (handles_ == nullptr) return;
  handles_->owner = nullptr;
  close_handles(handles_);
}

Result<std::unique_ptr<TcpTransport>> TcpTransport::accept(uv_loop_t* loop, uv_stream_t* server) {
  std::unique_ptr<TcpTransport> t(new TcpTransport(loop));
  if (int err = uv_accept(server, reinterpret_cast<uv_stream_t*>(&t->handles_->tcp)); err != 0) {
    return make_error("accept: {}", uv_strerror(err));
  }
  sockaddr_storage addr{};
  int len = sizeof addr;
  if (uv_tcp_getpeername(&t->handles_->tcp, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    t->peer_address_ = address_text(reinterpret_cast<sockaddr*>(&addr), true);
    t->source_ = source_of(reinterpret_cast<sockaddr*>(&addr));
  } else {
    t->peer_address_ = t->source_ = "?";
  }
  // Small frames: Nagle plus delayed ACKs would add ~40 ms per round trip.
  uv_tcp_nodelay(&t->handles_->tcp, 1);
  t->connected_ = true;
  return t;
}

Result<std::unique_ptr<TcpTransport>> TcpTransport::connect(uv_loop_t* loop, const std::string& address, int port) {
  Result<sockaddr_storage> addr = parse_address(address, port);
  if (!addr) return addr.error();
  std::unique_ptr<TcpTransport> t(new TcpTransport(loop));
  t->peer_address_ = address_text(reinterpret_cast<const sockaddr*>(&*addr), true);
  t->source_ = source_of(reinterpret_cast<const sockaddr*>(&*addr));
  Handles* h = t->handles_;
  h->connect_req.data = h;
  int err = uv_tcp_connect(&h->connect_req, &h->tcp, reinterpret_cast<const sockaddr*>(&*addr),
                           [](uv_connect_t* req, int status) {
                             auto* handles = static_cast<Handles*>(req->data);
                             TcpTransport* self = handles->owner;
                             if (self == nullptr || status == UV_ECANCELED || self->closing_) return;
                             self->connect_pending_ = false;
                             self->connect_done_ = true;
                             if (status == 0) {
                               self->connected_ = true;
                               uv_tcp_nodelay(&handles->tcp, 1);
                               self->connect_result_ = ok_status();
                             } else {
                               self->connect_result_ = make_error("connect to {}: {}", self->peer_address_,
                                                                  uv_strerror(status));
                             }
                             if (self->user_ == nullptr) return;
                             if (self->connected_) self->start_reading();
                             self->user_->on_transport_connected(self->connect_result_);
                           });
  if (err != 0) return make_error("connect to {}: {}", t->peer_address_, uv_strerror(err));
  t->connect_pending_ = true;
  return t;
}

void TcpTransport::attach(TransportUser* user) {
  user_ = user;
  if (connected_) start_reading();
  if (connect_done_) user_->on_transport_connected(connect_result_);
}

void TcpTransport::start_reading() {
  if (!reading_ || closing_) return;
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(&handles_->tcp),
      [](uv_handle_t*, std::size_t, uv_buf_t* buf) {
        // One buffer for every connection of a loop: a loop is single-threaded
        // and the session consumes what arrived before the callback returns.
        // Per thread, so that nodes on loops of other threads in the same
        // process (bench_store's two daemons) do not read into it too.
        static thread_local char buffer[64 * 1024];
        *buf = uv_buf_init(buffer, sizeof buffer);
      },
      [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
        auto* handles = static_cast<Handles*>(stream->data);
        TcpTransport* self = handles->owner;
        if (self == nullptr || self->closing_ || self->user_ == nullptr || nread == 0) return;
        if (nread < 0) {
          uv_read_stop(stream);
          self->user_->on_transport_end(nread == UV_EOF ? "connection closed by the peer"
                                                        : fmt::format("read: {}", uv_strerror(static_cast<int>(nread))));
          return;
        }
        self->user_->on_transport_bytes({reinterpret_cast<const std::uint8_t*>(buf->base), static_cast<std::size_t>(nread)});
      });
}

void TcpTransport::set_reading(bool reading) {
  if (reading == reading_) return;
  reading_ = reading;
  if (!connected_ || closing_) return;
  if (reading) {
    start_reading();
  } else {
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&handles_->tcp));
  }
}

void TcpTransport::write(std::vector<std::uint8_t> bytes) {
  if (!connected_ || closing_ || bytes.empty()) return;
  auto* request = new WriteRequest{{}, std::move(bytes), handles_};
  request->req.data = request;
  uv_buf_t buf = uv_buf_init(reinterpret_cast<char*>(request->data.data()), static_cast<unsigned>(request->data.size()));
  int err = uv_write(&request->req, reinterpret_cast<uv_stream_t*>(&handles_->tcp), &buf, 1, [](uv_write_t* req, int) {
    auto* done = static_cast<WriteRequest*>(req->data);
    TcpTransport* self = done->handles->owner;
    delete done;
    if (self != nullptr && !self->closing_ && self->user_ != nullptr) self->user_->on_transport_written();
  });
  if (err != 0) delete request;
}

std::size_t TcpTransport::queued_bytes() const {
  if (handles_ == nullptr) return 0;
  return uv_stream_get_write_queue_size(reinterpret_cast<const uv_stream_t*>(&handles_->tcp));
}

void TcpTransport::close(std::chrono::milliseconds linger) {
  if (closing_ || handles_ == nullptr) return;
  closing_ = true;
  Handles* h = handles_;
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&h->tcp));
  // Let queued writes (ERROR, close_notify) go out before closing the socket,
  // but only on a connected socket (a pending connect never drains) and only
  // for so long: a peer that stops reading must not keep the connection.
  h->shutdown_req.data = h;
  if (connected_ && linger.count() > 0 &&
      uv_shutdown(&h->shutdown_req, reinterpret_cast<uv_stream_t*>(&h->tcp),
                  [](uv_shutdown_t* req, int) { close_handles(static_cast<Handles*>(req->data)); }) == 0) {
    uv_timer_start(&h->linger, [](uv_timer_t* t) { close_handles(static_cast<Handles*>(t->data)); },
                   static_cast<std::uint64_t>(linger.count()), 0);
  } else {
    close_handles(h);
  }
}

void TcpTransport::close_handles(Handles* h) {
  if (h->closing) return;
  h->closing = true;
  if (h->owner != nullptr) h->owner->closing_ = true;
  auto on_closed = [](uv_handle_t* handle) {
    auto* handles = static_cast<Handles*>(handle->data);
    if (--handles->open > 0) return;
    TcpTransport* owner = handles->owner;
    delete handles;
    if (owner != nullptr) {
      owner->handles_ = nullptr;
      if (owner->user_ != nullptr) owner->user_->on_transport_closed();  // may destroy the owner
    }
  };
  uv_close(reinterpret_cast<uv_handle_t*>(&h->tcp), on_closed);
  uv_close(reinterpret_cast<uv_handle_t*>(&h->linger), on_closed);
}

}  // namespace keyfed
