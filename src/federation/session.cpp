#include "federation/session.h"

#include <openssl/err.h>

#include "common/log.h"
#include "dnskey/domain_name.h"
#include "federation/identity.h"

namespace keyfed {
namespace {

std::string openssl_error() {
  unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return "TLS failure";
  char text[256];
  ERR_error_string_n(code, text, sizeof text);
  return text;
}

std::string peer_name(const uv_tcp_t* tcp) {
  sockaddr_storage addr{};
  int len = sizeof addr;
  if (uv_tcp_getpeername(tcp, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "?";
  char ip[INET6_ADDRSTRLEN] = {};
  int port = 0;
  if (addr.ss_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&addr);
    uv_ip4_name(in, ip, sizeof ip);
    port = ntohs(in->sin_port);
    return fmt::format("{}:{}", ip, port);
  }
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&addr);
  uv_ip6_name(in6, ip, sizeof ip);
  port = ntohs(in6->sin6_port);
  return fmt::format("[{}]:{}", ip, port);
}

struct WriteRequest {
  uv_write_t req;
  std::vector<std::uint8_t> data;
};

}  // namespace

PeerSession::PeerSession(Node& node, std::uint64_t id, Direction direction)
    : node_(node), reader_(node.settings_.limits.max_frame_size) {
  info.id = id;
  info.direction = direction;
  uv_tcp_init(node.loop_, &tcp_);
  uv_timer_init(node.loop_, &timer_);
  tcp_.data = this;
  timer_.data = this;
  open_handles_ = 2;
  last_received_ms_ = last_sent_ms_ = last_rekey_ms_ = uv_now(node.loop_);
}

PeerSession::~PeerSession() = default;

Status PeerSession::accept_from(uv_stream_t* server) {
  if (int err = uv_accept(server, reinterpret_cast<uv_stream_t*>(&tcp_)); err != 0) {
    return make_error("accept: {}", uv_strerror(err));
  }
  info.peer_address = peer_name(&tcp_);
  uv_tcp_nodelay(&tcp_, 1);  // small frames: Nagle plus delayed ACKs would add ~40 ms per round trip
  arm_timer(node_.settings_.limits.handshake_timeout);
  start_tls(node_.server_ctx_.get());
  SSL_set_accept_state(ssl_.get());
  state_ = State::Handshaking;
  start_reading();
  return ok_status();
}

void PeerSession::connect_to(const std::string& address, int port, DomainKeys peer_keys,
                             Node::ConnectCallback callback) {
  peer_keys_ = std::move(peer_keys);
  connect_callback_ = std::move(callback);
  info.outcome = peer_keys_.outcome;
  sockaddr_storage addr{};
  if (uv_ip4_addr(address.c_str(), port, reinterpret_cast<sockaddr_in*>(&addr)) != 0 &&
      uv_ip6_addr(address.c_str(), port, reinterpret_cast<sockaddr_in6*>(&addr)) != 0) {
    fail_connect(fmt::format("'{}' is not an IP address", address));
    return;
  }
  info.peer_address = addr.ss_family == AF_INET6 ? fmt::format("[{}]:{}", address, port)
                                                 : fmt::format("{}:{}", address, port);
  arm_timer(node_.settings_.limits.connect_timeout);
  connect_req_.data = this;
  int err = uv_tcp_connect(&connect_req_, &tcp_, reinterpret_cast<sockaddr*>(&addr), [](uv_connect_t* req, int status) {
    if (status == UV_ECANCELED) return;  // closed before connecting; the session may be gone
    auto* self = static_cast<PeerSession*>(req->data);
    if (self->closing()) return;
    if (status != 0) {
      self->fail_connect(fmt::format("connect to {}: {}", self->info.peer_address, uv_strerror(status)));
      return;
    }
    self->arm_timer(self->node_.settings_.limits.handshake_timeout);
    uv_tcp_nodelay(&self->tcp_, 1);
    const DomainIdentity* identity = self->node_.identity(self->info.local_domain);
    self->start_tls(self->node_.client_ctx_.get());
    SSL_set_connect_state(self->ssl_.get());
    SSL_set_tlsext_host_name(self->ssl_.get(), self->info.peer_domain.c_str());
    SSL_use_certificate(self->ssl_.get(), identity->certificate.get());
    SSL_use_PrivateKey(self->ssl_.get(), identity->key.get());
    self->state_ = State::Handshaking;
    self->start_reading();
    self->drive();
  });
  if (err != 0) fail_connect(fmt::format("connect to {}: {}", info.peer_address, uv_strerror(err)));
}

void PeerSession::start_tls(SSL_CTX* ctx) {
  ssl_.reset(SSL_new(ctx));
  network_in_ = BIO_new(BIO_s_mem());
  network_out_ = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(network_in_, -1);  // "no data yet", not EOF
  SSL_set_bio(ssl_.get(), network_in_, network_out_);
  SSL_set_app_data(ssl_.get(), this);
}

void PeerSession::start_reading() {
  uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp_),
                [](uv_handle_t*, std::size_t, uv_buf_t* buf) {
                  // One buffer for all sessions: the loop is single-threaded and
                  // on_read hands what arrived to TLS before returning.
                  static char buffer[64 * 1024];
                  *buf = uv_buf_init(buffer, sizeof buffer);
                },
                &PeerSession::on_read);
}

void PeerSession::on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* self = static_cast<PeerSession*>(stream->data);
  if (nread == 0 || self->closing()) return;
  if (nread < 0) {
    self->close(nread == UV_EOF ? "connection closed by the peer" : fmt::format("read: {}", uv_strerror(static_cast<int>(nread))));
    return;
  }
  self->last_received_ms_ = uv_now(self->node_.loop_);
  BIO_write(self->network_in_, buf->base, static_cast<int>(nread));
  self->drive();
}

void PeerSession::drive() {
  if (!SSL_is_init_finished(ssl_.get())) {
    int r = SSL_do_handshake(ssl_.get());
    if (r != 1) {
      int err = SSL_get_error(ssl_.get(), r);
      flush();  // an alert, or the next handshake flight
      if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
        close(fmt::format("TLS handshake failed: {}", openssl_error()));
      }
      return;
    }
    flush();
    on_handshake_done();
    if (closing()) return;
  }
  std::uint8_t plain[16 * 1024];
  while (!closing()) {
    int n = SSL_read(ssl_.get(), plain, sizeof plain);
    if (n <= 0) {
      int err = SSL_get_error(ssl_.get(), n);
      flush();  // e.g. the answer to a peer's KeyUpdate
      if (err == SSL_ERROR_ZERO_RETURN) {
        close("the peer closed the TLS session");
      } else if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
        close(fmt::format("TLS error: {}", openssl_error()));
      }
      return;
    }
    reader_.feed({plain, static_cast<std::size_t>(n)});
    while (!closing()) {
      auto frame = reader_.next();
      if (!frame) {
        close(frame.error().message, ErrorCode::FrameTooLarge);
        return;
      }
      if (!frame->has_value()) break;
      on_frame(**frame);
    }
  }
}

void PeerSession::on_handshake_done() {
  const unsigned char* alpn = nullptr;
  unsigned int alpn_len = 0;
  SSL_get0_alpn_selected(ssl_.get(), &alpn, &alpn_len);
  if (std::string_view(reinterpret_cast<const char*>(alpn), alpn_len) != kAlpnProtocol) {
    close(fmt::format("peer did not negotiate ALPN {}", kAlpnProtocol));
    return;
  }
  if (info.direction == Direction::Inbound) {
    const char* sni = SSL_get_servername(ssl_.get(), TLSEXT_NAMETYPE_host_name);
    info.local_domain = sni != nullptr ? sni : node_.identities_.begin()->first;
    state_ = State::AwaitClaim;
    return;
  }
  // docs/POLICY.md §1, outbound: the responder must hold one of the target's keys.
  PolicyVerdict verdict = decide(node_.settings_.policy, Direction::Outbound, peer_keys_, peer_spki());
  node_.audit(*this, "connect", verdict, peer_keys_.outcome);
  info.decision = verdict.decision;
  info.peer_key = verdict.key;
  if (!is_accepted(verdict.decision)) {
    fail_connect(fmt::format("{} {}: {}", to_string(verdict.decision), info.peer_domain, verdict.reason));
    return;
  }
  state_ = State::AwaitClaimOk;
  send_frame(encode_claim(info.local_domain));
}

std::vector<std::uint8_t> PeerSession::peer_spki() const {
  return certificate_spki(SSL_get0_peer_certificate(ssl_.get()));
}

void PeerSession::on_frame(const Frame& frame) {
  auto type = static_cast<FrameType>(frame.type);
  if (type == FrameType::Error) {
    auto error = parse_error(frame.payload);
    std::string text = error ? error->text : "malformed ERROR frame";
    if (info.direction == Direction::Outbound && state_ == State::AwaitClaimOk) {
      fail_connect(fmt::format("{} refused the claim: {}", info.peer_domain, text));
    } else {
      close(fmt::format("peer sent ERROR: {}", text));
    }
    return;
  }
  switch (state_) {
    case State::AwaitClaim:
      if (type == FrameType::Claim) return on_claim(frame);
      return close(fmt::format("{} before CLAIM", frame_type_name(frame.type)), ErrorCode::ProtocolViolation);
    case State::AwaitClaimOk:
      if (type == FrameType::ClaimOk) return established();
      return close(fmt::format("{} before CLAIM_OK", frame_type_name(frame.type)), ErrorCode::ProtocolViolation);
    case State::Verifying:
      return close(fmt::format("{} while the claim is being verified", frame_type_name(frame.type)),
                   ErrorCode::ProtocolViolation);
    case State::Established: break;
    default: return;
  }
  // docs/PROTOCOL.md §3: an unknown type gets UNSUPPORTED, so peers can probe extensions.
  if (!is_known_frame_type(frame.type)) return send_frame(encode_unsupported(frame.type));
  switch (type) {
    case FrameType::Message: return on_message(frame);
    case FrameType::Ack:
    case FrameType::Nack: {
      std::uint32_t id = 0;
      Status status = ok_status();
      if (type == FrameType::Ack) {
        auto ack = parse_ack(frame.payload);
        if (!ack) return close(ack.error().message, ErrorCode::ProtocolViolation);
        id = *ack;
      } else {
        auto nack = parse_nack(frame.payload);
        if (!nack) return close(nack.error().message, ErrorCode::ProtocolViolation);
        id = nack->id;
        status = make_error("NACK {}: {}", static_cast<int>(nack->code), nack->text);
      }
      auto it = pending_acks_.find(id);
      if (it == pending_acks_.end()) return;  // late answer; harmless
      Node::SendCallback callback = std::move(it->second);
      pending_acks_.erase(it);
      if (callback) callback(std::move(status));
      return;
    }
    case FrameType::Subscribe:
    case FrameType::Unsubscribe: return on_presence(frame);
    case FrameType::Notify: return on_notify(frame);
    case FrameType::Ping: return send_frame(encode_pong(frame.payload));
    case FrameType::Pong: return;
    case FrameType::Unsupported: {
      auto t = parse_unsupported(frame.payload);
      log_at(LogLevel::Info, "session {} ({}): peer does not support {}", info.id, info.peer_domain,
             t ? frame_type_name(*t) : "a frame");
      return;
    }
    case FrameType::Claim:
    case FrameType::ClaimOk:
      return close(fmt::format("{} after the session was established", frame_type_name(frame.type)),
                   ErrorCode::ProtocolViolation);
    case FrameType::Error: return;  // handled above, in every state
  }
}

void PeerSession::on_claim(const Frame& frame) {
  auto claim = parse_claim(frame.payload);
  Result<std::string> domain = claim ? normalize_domain(*claim) : Result<std::string>(claim.error());
  if (!domain) return close(fmt::format("bad CLAIM: {}", domain.error().message), ErrorCode::ProtocolViolation);
  info.peer_domain = *domain;
  state_ = State::Verifying;
  // The claim waits on the (maybe asynchronous) lookup; other sessions go on.
  std::weak_ptr<bool> alive = node_.alive_;
  Node* node = &node_;
  std::uint64_t id = info.id;
  node_.cache_.lookup(info.peer_domain, [alive, node, id](std::shared_ptr<const CachedKeys> entry) {
    if (alive.expired()) return;
    PeerSession* self = node->find(id);
    if (self != nullptr && self->state_ == State::Verifying) self->on_claim_keys(entry->answer);
  });
}

void PeerSession::on_claim_keys(const DomainKeys& answer) {
  // docs/POLICY.md §1, inbound: the initiator must hold one of the claimed domain's keys.
  PolicyVerdict verdict = decide(node_.settings_.policy, Direction::Inbound, answer, peer_spki());
  node_.audit(*this, "claim", verdict, answer.outcome);
  info.outcome = answer.outcome;
  info.decision = verdict.decision;
  info.peer_key = verdict.key;
  if (!is_accepted(verdict.decision)) {
    close(fmt::format("claim of {} refused: {}", info.peer_domain, verdict.reason), ErrorCode::ClaimRefused);
    return;
  }
  send_frame(encode_claim_ok());
  established();
}

void PeerSession::established() {
  state_ = State::Established;
  info.established = true;
  log_at(LogLevel::Info, "session {} {} {} <-> {} ({}) established: {}", info.id, to_string(info.direction),
         info.local_domain, info.peer_domain, info.peer_address, to_string(info.decision));
  const NodeLimits& limits = node_.settings_.limits;
  arm_timer(std::min(limits.keepalive_interval, limits.idle_timeout));
  if (connect_callback_) {
    auto callback = std::move(connect_callback_);
    connect_callback_ = nullptr;
    callback(info);
  }
}

void PeerSession::on_message(const Frame& frame) {
  auto message = parse_message(frame.payload);
  if (!message) return close(message.error().message, ErrorCode::ProtocolViolation);
  auto nack = [&](NackCode code, std::string text) {
    log_at(LogLevel::Info, "session {} ({}): NACK message {}: {}", info.id, info.peer_domain, message->id, text);
    send_frame(encode_nack({message->id, code, std::move(text)}));
  };
  if (!node_.take_message_token(info.peer_domain)) {
    return nack(NackCode::RateLimited, fmt::format("more than {} messages per second", node_.settings_.limits.message_rate));
  }
  auto routing = parse_cpim(message->cpim);
  if (!routing) return nack(NackCode::MalformedMessage, routing.error().message);
  // docs/PROTOCOL.md §5, sender binding: the sender's domain is the peer's.
  if (routing->from.domain != info.peer_domain) {
    return nack(NackCode::SenderNotPeer, fmt::format("sender {} is not of the peer domain {}", routing->from.uri,
                                                     info.peer_domain));
  }
  for (const CpimAddress& to : routing->to) {
    if (node_.identity(to.domain) == nullptr) {
      return nack(NackCode::UnknownRecipient, fmt::format("{} is not hosted here", to.domain));
    }
  }
  if (node_.handlers_.on_message) node_.handlers_.on_message({info, *routing, std::move(message->cpim)});
  send_frame(encode_ack(message->id));
}

void PeerSession::on_presence(const Frame& frame) {
  auto request = parse_presence(frame.payload);
  if (!request) return close(request.error().message, ErrorCode::ProtocolViolation);
  auto watcher = parse_user_uri(request->watcher, UriScheme::Pres);
  auto presentity = parse_user_uri(request->presentity, UriScheme::Pres);
  bool allowed = watcher && presentity && watcher->domain == info.peer_domain &&
                 node_.identity(presentity->domain) != nullptr;
  if (!allowed) {
    send_frame(encode_nack({request->id, NackCode::NotAuthorized,
                            "watcher must be of the peer domain and presentity hosted here"}));
    return;
  }
  auto key = std::make_pair(request->watcher, request->presentity);
  if (static_cast<FrameType>(frame.type) == FrameType::Unsubscribe) {
    subscriptions.erase(key);
    send_frame(encode_ack(request->id));
    return;
  }
  subscriptions.insert(key);
  send_frame(encode_ack(request->id));
  auto it = node_.presence_.find(request->presentity);
  send_frame(encode_notify({request->presentity, it != node_.presence_.end() ? it->second : ""}));
}

void PeerSession::on_notify(const Frame& frame) {
  auto notify = parse_notify(frame.payload);
  if (!notify) return close(notify.error().message, ErrorCode::ProtocolViolation);
  auto presentity = parse_user_uri(notify->presentity, UriScheme::Pres);
  if (!presentity || presentity->domain != info.peer_domain) {
    log_at(LogLevel::Warning, "session {} ({}): dropped NOTIFY for {}: not of the peer domain", info.id,
           info.peer_domain, notify->presentity);
    return;
  }
  if (node_.handlers_.on_notify) node_.handlers_.on_notify(info, *notify);
}

void PeerSession::send_message(std::vector<std::uint8_t> cpim, Node::SendCallback callback) {
  std::uint32_t id = next_message_id_++;
  pending_acks_.emplace(id, std::move(callback));
  send_frame(encode_message({id, std::move(cpim)}));
}

void PeerSession::send_frame(const std::vector<std::uint8_t>& frame) {
  if (closing() || !ssl_ || !SSL_is_init_finished(ssl_.get())) return;
  SSL_write(ssl_.get(), frame.data(), static_cast<int>(frame.size()));
  bytes_since_rekey_ += frame.size();
  std::uint64_t now = uv_now(node_.loop_);
  const NodeLimits& limits = node_.settings_.limits;
  // Long sessions re-key (docs/PROTOCOL.md §2): a KeyUpdate after a volume or a time.
  if (bytes_since_rekey_ >= limits.rekey_bytes ||
      now - last_rekey_ms_ >= static_cast<std::uint64_t>(limits.rekey_interval.count()) * 1000) {
    if (SSL_key_update(ssl_.get(), SSL_KEY_UPDATE_REQUESTED) == 1) {
      SSL_do_handshake(ssl_.get());  // sends the KeyUpdate now
      ++info.key_updates;
    }
    bytes_since_rekey_ = 0;
    last_rekey_ms_ = now;
  }
  flush();
}

void PeerSession::flush() {
  std::size_t pending = BIO_ctrl_pending(network_out_);
  if (pending == 0) return;
  auto* write = new WriteRequest;
  write->data.resize(pending);
  BIO_read(network_out_, write->data.data(), static_cast<int>(pending));
  write->req.data = write;
  uv_buf_t buf = uv_buf_init(reinterpret_cast<char*>(write->data.data()), static_cast<unsigned>(pending));
  last_sent_ms_ = uv_now(node_.loop_);
  int err = uv_write(&write->req, reinterpret_cast<uv_stream_t*>(&tcp_), &buf, 1,
                     [](uv_write_t* req, int) { delete static_cast<WriteRequest*>(req->data); });
  if (err != 0) delete write;
}

void PeerSession::arm_timer(std::chrono::milliseconds after) {
  uv_timer_start(&timer_, [](uv_timer_t* t) { static_cast<PeerSession*>(t->data)->on_timer(); },
                 static_cast<std::uint64_t>(after.count()), 0);
}

void PeerSession::on_timer() {
  if (closing()) return;
  const NodeLimits& limits = node_.settings_.limits;
  if (state_ != State::Established) {
    if (state_ == State::Connecting) {
      fail_connect(fmt::format("connect to {}: no answer within {} ms", info.peer_address, limits.connect_timeout.count()));
    } else if (info.direction == Direction::Outbound) {
      fail_connect(fmt::format("no session with {} within {} ms", info.peer_domain, limits.handshake_timeout.count()));
    } else {
      close(fmt::format("handshake not complete within {} ms", limits.handshake_timeout.count()), ErrorCode::Timeout);
    }
    return;
  }
  std::uint64_t now = uv_now(node_.loop_);
  if (now - last_received_ms_ >= static_cast<std::uint64_t>(limits.idle_timeout.count())) {
    close(fmt::format("idle for {} ms", limits.idle_timeout.count()), ErrorCode::Timeout);
    return;
  }
  if (now - last_sent_ms_ >= static_cast<std::uint64_t>(limits.keepalive_interval.count())) {
    std::uint8_t token[8] = {};
    std::memcpy(token, &now, sizeof token);
    send_frame(encode_ping(token));
  }
  arm_timer(std::min(limits.keepalive_interval, limits.idle_timeout));
}

void PeerSession::fail_connect(const std::string& reason) {
  auto callback = std::move(connect_callback_);
  connect_callback_ = nullptr;
  close(reason);
  if (callback) callback(make_error("{}", reason));
}

void PeerSession::close(const std::string& reason, std::optional<ErrorCode> code) {
  if (closing()) return;
  bool connected = state_ != State::Connecting;
  bool tls_up = ssl_ && SSL_is_init_finished(ssl_.get());
  if (code && tls_up) send_frame(encode_error({*code, reason}));
  state_ = State::Closing;
  log_at(LogLevel::Info, "session {} {} {} ({}): closed: {}", info.id, to_string(info.direction),
         info.peer_domain.empty() ? "(no claim yet)" : info.peer_domain, info.peer_address, reason);
  if (tls_up) {
    SSL_shutdown(ssl_.get());
    flush();
  }
  uv_timer_stop(&timer_);
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp_));
  for (auto& [id, callback] : pending_acks_) {
    if (callback) callback(make_error("session closed before the answer: {}", reason));
  }
  pending_acks_.clear();
  if (connect_callback_) {
    auto callback = std::move(connect_callback_);
    connect_callback_ = nullptr;
    callback(make_error("{}", reason));
  }
  if (node_.handlers_.on_session_closed) node_.handlers_.on_session_closed(info, reason);
  node_.release_session(info.id);  // from here on the session owns itself

  // Let queued writes (ERROR, close_notify) go out before closing the socket,
  // but only on a connected socket (a pending connect never drains) and only
  // for so long: a peer that stops reading must not keep the session alive.
  shutdown_req_.data = this;
  if (connected && uv_shutdown(&shutdown_req_, reinterpret_cast<uv_stream_t*>(&tcp_), [](uv_shutdown_t* req, int) {
        static_cast<PeerSession*>(req->data)->close_handles();
      }) == 0) {
    uv_timer_start(&timer_, [](uv_timer_t* t) { static_cast<PeerSession*>(t->data)->close_handles(); },
                   kLingerMs, 0);
  } else {
    close_handles();
  }
}

void PeerSession::close_handles() {
  for (auto* handle : {reinterpret_cast<uv_handle_t*>(&tcp_), reinterpret_cast<uv_handle_t*>(&timer_)}) {
    if (!uv_is_closing(handle)) uv_close(handle, &PeerSession::on_handle_closed);
  }
}

void PeerSession::on_handle_closed(uv_handle_t* handle) {
  // A closing session owns itself (see close()); it may outlive its node.
  auto* self = static_cast<PeerSession*>(handle->data);
  if (--self->open_handles_ == 0) delete self;
}

}  // namespace keyfed
