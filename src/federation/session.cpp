#include "federation/session.h"

#include <chrono>
#include <cstring>

#include "common/log.h"
#include "common/openssl_call.h"
#include "dnskey/domain_name.h"

namespace keyfed {
namespace {

// Lines a peer's frames may cause per session and second (NACKs, dropped
// NOTIFYs, UNSUPPORTED): enough to debug a peer, not enough to flood the log.
constexpr unsigned kPeerLogLinesPerSecond = 10;

bool peer_sent_no_certificate(const SslIo& io) {
  return ERR_GET_LIB(io.code) == ERR_LIB_SSL && ERR_GET_REASON(io.code) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE;
}

}  // namespace

std::string_view to_string(PeerSession::State state) {
  switch (state) {
    case PeerSession::State::AwaitKeys: return "await-keys";
    case PeerSession::State::Connecting: return "connecting";
    case PeerSession::State::Handshaking: return "handshaking";
    case PeerSession::State::AwaitClaim: return "await-claim";
    case PeerSession::State::Verifying: return "verifying";
    case PeerSession::State::AwaitClaimOk: return "await-claim-ok";
    case PeerSession::State::Established: return "established";
    case PeerSession::State::Closing: return "closing";
  }
  return "closing";
}

PeerSession::PeerSession(SessionHost& host, std::uint64_t id, Direction direction)
    : host_(host), self_(std::make_shared<PeerSession*>(this)) {
  info_.id = id;
  info_.direction = direction;
  timer_ = make_uv_handle<uv_timer_t>();
  uv_timer_init(host.loop(), timer_.get());
  timer_->data = this;
  started_ms_ = phase_started_ms_ = last_received_ms_ = last_sent_ms_ = last_rekey_ms_ = uv_now(host.loop());
}

PeerSession::~PeerSession() { *self_ = nullptr; }

// ---- starting -------------------------------------------------------------

void PeerSession::accept(std::unique_ptr<Transport> transport) {
  transport_ = std::move(transport);
  info_.peer_address = transport_->peer_address();
  source_ = transport_->source();
  state_ = State::Handshaking;
  phase_started_ms_ = uv_now(host_.loop());
  start_tls(true);
  arm_timer();
  transport_->attach(this);
}

void PeerSession::await_keys(std::string local_domain, std::string peer_domain, ConnectCallback callback) {
  info_.local_domain = std::move(local_domain);
  info_.peer_domain = std::move(peer_domain);
  connect_callback_ = std::move(callback);
  state_ = State::AwaitKeys;
}

void PeerSession::connect(std::unique_ptr<Transport> transport, std::shared_ptr<const CachedKeys> target_keys) {
  lookup_ = 0;
  target_keys_ = std::move(target_keys);
  info_.outcome = target_keys_->answer.outcome;
  transport_ = std::move(transport);
  info_.peer_address = transport_->peer_address();
  source_ = transport_->source();
  state_ = State::Connecting;
  phase_started_ms_ = uv_now(host_.loop());
  arm_timer();
  transport_->attach(this);
}

void PeerSession::update_target_keys(std::shared_ptr<const CachedKeys> target_keys) {
  if (info_.direction != Direction::Outbound || authentication_ || closing()) return;
  target_keys_ = std::move(target_keys);
  if (awaiting_fresh_keys_) {
    awaiting_fresh_keys_ = false;
    decide_outbound();
  }
}

void PeerSession::forget_target_keys() {
  if (info_.direction != Direction::Outbound || authentication_ || closing() || state_ == State::AwaitKeys) return;
  target_keys_ = nullptr;
}

void PeerSession::on_transport_connected(Status status) {
  if (closing()) return;
  if (!status) return fail_connect(status.error().message);
  // The local domain may have been dropped by a reload while connecting.
  identity_ = host_.identity(info_.local_domain);
  if (!identity_) return fail_connect(fmt::format("{} is no longer hosted by this node", info_.local_domain));
  state_ = State::Handshaking;
  phase_started_ms_ = uv_now(host_.loop());
  arm_timer();
  start_tls(false);
  Status configured = openssl_check("cannot set up the TLS client", [&] {
    return SSL_set_tlsext_host_name(ssl_.get(), info_.peer_domain.c_str()) == 1 &&
                   SSL_use_certificate(ssl_.get(), identity_->certificate.get()) == 1 &&
                   SSL_use_PrivateKey(ssl_.get(), identity_->key.get()) == 1
               ? 1
               : 0;
  });
  if (!configured) return fail_connect(configured.error().message);
  drive();
}

void PeerSession::start_tls(bool server) {
  tls_ = host_.tls();
  ssl_.reset(openssl_call([&] { return SSL_new(server ? tls_->server() : tls_->client()); }));
  network_in_ = BIO_new(BIO_s_mem());
  network_out_ = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(network_in_, -1);  // "no data yet", not EOF
  SSL_set_bio(ssl_.get(), network_in_, network_out_);
  if (server) {
    SSL_set_accept_state(ssl_.get());
  } else {
    SSL_set_connect_state(ssl_.get());
  }
}

// ---- reading --------------------------------------------------------------

void PeerSession::on_transport_bytes(std::span<const std::uint8_t> bytes) {
  if (closing() || !ssl_) return;
  last_received_ms_ = uv_now(host_.loop());
  bytes_received_ += bytes.size();
  BIO_write(network_in_, bytes.data(), static_cast<int>(bytes.size()));
  drive();
}

void PeerSession::on_transport_end(const std::string& reason) {
  if (state_ == State::Connecting) return fail_connect(reason);
  close(reason);
}

void PeerSession::drive() {
  if (!SSL_is_init_finished(ssl_.get())) {
    SslIo io = ssl_io(ssl_.get(), [&] { return SSL_do_handshake(ssl_.get()); });
    flush();  // an alert, or the next handshake flight
    if (io.result != 1) {
      if (!io.would_block()) on_handshake_failed(io);
      return;
    }
    on_handshake_done();
    if (closing()) return;
  }
  std::uint8_t plain[16 * 1024];
  batching_ = true;
  struct EndBatch {
    PeerSession* self;
    ~EndBatch() {
      self->batching_ = false;
      if (self->batch_.empty() || self->closing()) return;
      std::vector<std::uint8_t> batch = std::exchange(self->batch_, {});
      self->send_plain(batch);
    }
  } end_batch{this};
  while (!closing()) {
    SslIo io = ssl_io(ssl_.get(), [&] { return SSL_read(ssl_.get(), plain, sizeof plain); });
    if (io.result <= 0) {
      flush();  // e.g. the answer to a peer's KeyUpdate
      if (io.error == SSL_ERROR_ZERO_RETURN) {
        close("the peer closed the TLS session");
      } else if (io.failed()) {
        close(fmt::format("TLS error: {}", io.reason));
      }
      return;
    }
    reader_.feed({plain, static_cast<std::size_t>(io.result)});
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

void PeerSession::on_handshake_failed(const SslIo& io) {
  if (info_.direction == Direction::Inbound && peer_sent_no_certificate(io)) {
    // docs/POLICY.md §1: without a key nobody can authenticate, and the
    // policy admits no unauthenticated peer: refused in the handshake.
    host_.audit(info_, AuditEvent::Handshake,
                PolicyVerdict{Decision::Refuse,
                              "the peer sent no certificate, and the policy admits no unauthenticated peer", {},
                              true});
  }
  std::string reason = fmt::format("TLS handshake failed: {}", io.reason);
  if (info_.direction == Direction::Outbound) return fail_connect(reason);
  close(reason);
}

void PeerSession::on_handshake_done() {
  const unsigned char* alpn = nullptr;
  unsigned int alpn_len = 0;
  SSL_get0_alpn_selected(ssl_.get(), &alpn, &alpn_len);
  if (alpn_len == 0 || std::string_view(reinterpret_cast<const char*>(alpn), alpn_len) != kAlpnProtocol) {
    std::string reason = fmt::format("peer did not negotiate ALPN {}", kAlpnProtocol);
    if (info_.direction == Direction::Outbound) return fail_connect(reason);
    return close(reason);
  }
  peer_spki_ = certificate_spki(openssl_call([&] { return SSL_get0_peer_certificate(ssl_.get()); }));
  if (info_.direction == Direction::Inbound) {
    const char* sni = SSL_get_servername(ssl_.get(), TLSEXT_NAMETYPE_host_name);
    std::string local = sni != nullptr ? sni : tls_->identities().first->domain;
    if (!host_.identity(local)) return close(fmt::format("{} is no longer hosted by this node", untrusted(local)));
    info_.local_domain = std::move(local);
    state_ = State::AwaitClaim;
    return;
  }
  if (!target_keys_) {
    // A reload flushed the answer this connection was started on: decide on
    // a fresh one (it is being looked up), within the handshake timeout.
    awaiting_fresh_keys_ = true;
    return;
  }
  decide_outbound();
}

void PeerSession::decide_outbound() {
  // docs/POLICY.md §1, outbound: the responder must hold one of the target's keys.
  PolicyVerdict verdict = host_.admit(info_, AuditEvent::Connect, target_keys_->answer, peer_spki_);
  if (!is_accepted(verdict.decision)) {
    return fail_connect(fmt::format("{} {}: {}", to_string(verdict.decision), info_.peer_domain, verdict.reason));
  }
  admitted(verdict, target_keys_);
  state_ = State::AwaitClaimOk;
  send_frame(encode_claim(info_.local_domain));
}

void PeerSession::admitted(const PolicyVerdict& verdict, const std::shared_ptr<const CachedKeys>& entry) {
  info_.outcome = entry->answer.outcome;
  info_.decision = verdict.decision;
  info_.peer_key = verdict.key;
  authentication_ = SessionAuthentication{info_.direction, verdict.decision, peer_spki_, verdict.key};
  confirm(entry);
}

void PeerSession::confirm(std::shared_ptr<const CachedKeys> entry) {
  confirmed_until_ = std::max(confirmed_until_, entry->expires);
  last_answer_ = std::move(entry);
}

void PeerSession::on_frame(const Frame& frame) {
  auto type = static_cast<FrameType>(frame.type);
  if (type == FrameType::Error) {
    auto error = parse_error(frame.payload);
    std::string text = error ? fmt::format("{} {}", static_cast<int>(error->code), untrusted(error->text))
                             : std::string("(malformed ERROR frame)");
    if (info_.direction == Direction::Outbound && state_ == State::AwaitClaimOk) {
      fail_connect(fmt::format("{} refused the claim: ERROR {}", info_.peer_domain, text));
    } else {
      close(fmt::format("peer sent ERROR {}", text));
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
    case FrameType::Nack: return on_answer(type, frame);
    case FrameType::Subscribe:
    case FrameType::Unsubscribe: return on_presence(frame);
    case FrameType::Notify: return on_notify(frame);
    case FrameType::Ping: return send_frame(encode_pong(frame.payload));
    case FrameType::Pong: return;
    case FrameType::Unsupported: {
      auto t = parse_unsupported(frame.payload);
      if (may_log()) {
        log_at(LogLevel::Info, "session {} ({}): peer does not support {}", info_.id, info_.peer_domain,
               t ? frame_type_name(*t) : "a frame");
      }
      return;
    }
    case FrameType::Claim:
    case FrameType::ClaimOk:
      return close(fmt::format("{} after the session was established", frame_type_name(frame.type)),
                   ErrorCode::ProtocolViolation);
    case FrameType::Error: return;  // handled above, in every state
  }
}

// ---- claim (inbound) ------------------------------------------------------

void PeerSession::on_claim(const Frame& frame) {
  auto claim = parse_claim(frame.payload);
  Result<std::string> domain = claim ? normalize_domain(*claim) : Result<std::string>(claim.error());
  if (!domain) {
    std::string bytes(frame.payload.begin(), frame.payload.end());
    return close(fmt::format("bad CLAIM {}: not a domain name", untrusted(bytes, 64)), ErrorCode::ProtocolViolation);
  }
  info_.peer_domain = *domain;
  state_ = State::Verifying;
  // The claim waits on the (maybe asynchronous) lookup; other sessions go on.
  std::weak_ptr<PeerSession*> self = self_;
  Result<KeyCache::LookupId> lookup =
      host_.lookup_claimed_keys(info_, source_, [self](std::shared_ptr<const CachedKeys> entry) {
        auto alive = self.lock();
        if (!alive || *alive == nullptr) return;
        PeerSession* session = *alive;
        session->lookup_ = 0;
        if (session->state_ == State::Verifying) session->on_claim_keys(entry);
      });
  if (!lookup) {
    PolicyVerdict refused{Decision::Refuse, lookup.error().message, {}, false};
    host_.audit(info_, AuditEvent::Claim, refused);
    return close(fmt::format("claim of {} refused: {}", info_.peer_domain, refused.reason), ErrorCode::ClaimRefused);
  }
  if (state_ == State::Verifying) lookup_ = *lookup;
}

void PeerSession::on_claim_keys(const std::shared_ptr<const CachedKeys>& entry) {
  // docs/POLICY.md §1, inbound: the initiator must hold one of the claimed domain's keys.
  PolicyVerdict verdict = host_.admit(info_, AuditEvent::Claim, entry->answer, peer_spki_);
  info_.outcome = entry->answer.outcome;
  info_.decision = verdict.decision;
  if (!is_accepted(verdict.decision)) {
    return close(fmt::format("claim of {} refused: {}", info_.peer_domain, verdict.reason), ErrorCode::ClaimRefused);
  }
  admitted(verdict, entry);
  send_frame(encode_claim_ok());
  established();
}

void PeerSession::established() {
  if (closing()) return;
  state_ = State::Established;
  info_.established = true;
  info_.established_at_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count();
  reader_.set_max_frame_size(host_.limits().max_frame_size);
  host_.established(*this);
  log_at(LogLevel::Info, "session {} {} {} <-> {} ({}) established: {}", info_.id, to_string(info_.direction),
         info_.local_domain, info_.peer_domain, info_.peer_address, to_string(info_.decision));
  arm_timer();
  if (connect_callback_) {
    auto callback = std::move(connect_callback_);
    connect_callback_ = nullptr;
    callback(info_);
  }
}

// ---- established: messages and presence -----------------------------------

void PeerSession::on_message(const Frame& frame) {
  auto message = parse_message(frame.payload);
  if (!message) return close(message.error().message, ErrorCode::ProtocolViolation);
  std::uint32_t id = message->id;
  auto nack = [&](NackCode code, std::string text) {
    if (may_log()) log_at(LogLevel::Info, "session {} ({}): NACK message {}: {}", info_.id, info_.peer_domain, id, text);
    send_frame(encode_nack({id, code, std::move(text)}));
  };
  if (!host_.take_message_token(info_)) {
    return nack(NackCode::RateLimited, fmt::format("more than {} messages per second", host_.limits().message_rate));
  }
  // docs/PROTOCOL.md §5.1: the whole header block, strictly; consumers get
  // the parsed form and never read the text again.
  Result<CpimMessage> parsed = parse_cpim(message->cpim);
  if (!parsed) return nack(NackCode::MalformedMessage, parsed.error().message);
  // docs/PROTOCOL.md §5, sender binding: the sender's domain is the peer's.
  if (parsed->from.domain != info_.peer_domain) {
    return nack(NackCode::SenderNotPeer,
                fmt::format("sender {} is not of the peer domain {}", parsed->from.uri, info_.peer_domain));
  }
  std::weak_ptr<PeerSession*> self = self_;
  host_.deliver(info_, std::move(parsed).value(), std::move(message->cpim),
                [self, id](std::optional<NackPayload> refusal) {
                  auto alive = self.lock();
                  if (!alive || *alive == nullptr) return;
                  PeerSession* session = *alive;
                  if (!refusal) {
                    ++session->info_.messages_in;
                    return session->send_frame(encode_ack(id));
                  }
                  refusal->id = id;
                  if (session->may_log()) {
                    log_at(LogLevel::Info, "session {} ({}): NACK message {}: {}", session->info_.id,
                           session->info_.peer_domain, id, refusal->text);
                  }
                  session->send_frame(encode_nack(*refusal));
                });
}

void PeerSession::on_answer(FrameType type, const Frame& frame) {
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
    status = make_error("NACK {}: {}", static_cast<int>(nack->code), untrusted(nack->text));
  }
  auto it = pending_acks_.find(id);
  if (it == pending_acks_.end()) return;  // late answer; harmless
  if (status) ++info_.messages_out;
  SendCallback callback = std::move(it->second);
  pending_acks_.erase(it);
  if (callback) callback(std::move(status));
}

void PeerSession::on_presence(const Frame& frame) {
  auto request = parse_presence(frame.payload);
  if (!request) return close(request.error().message, ErrorCode::ProtocolViolation);
  auto type = static_cast<FrameType>(frame.type);
  if (std::optional<NackPayload> refusal = host_.presence_request(info_, type, *request)) {
    refusal->id = request->id;
    return send_frame(encode_nack(*refusal));
  }
  send_frame(encode_ack(request->id));
  if (type == FrameType::Subscribe) {
    if (auto document = host_.notify_document(request->watcher, request->presentity)) {
      send_frame(encode_notify({request->watcher, request->presentity, *document}));
    }
  }
}

void PeerSession::on_notify(const Frame& frame) {
  auto notify = parse_notify(frame.payload);
  if (!notify) return close(notify.error().message, ErrorCode::ProtocolViolation);
  auto presentity = parse_user_uri(notify->presentity, UriScheme::Pres);
  auto watcher = parse_user_uri(notify->watcher, UriScheme::Pres);
  if (!presentity || presentity->domain != info_.peer_domain || !watcher || watcher->domain != info_.local_domain) {
    if (may_log()) {
      log_at(LogLevel::Warning, "session {} ({}): dropped NOTIFY of {} for {}: not a presentity of the peer domain "
             "for a watcher of this one",
             info_.id, info_.peer_domain, untrusted(notify->presentity), untrusted(notify->watcher));
    }
    return;
  }
  // A NOTIFY costs its sender like a MESSAGE (docs/SECURITY.md §3).
  if (!host_.take_message_token(info_)) {
    if (may_log()) log_at(LogLevel::Info, "session {} ({}): NOTIFY dropped: message rate", info_.id, info_.peer_domain);
    return;
  }
  host_.notify_received(info_, *notify);
}

// ---- writing ----------------------------------------------------------------

void PeerSession::send_message(std::vector<std::uint8_t> cpim, SendCallback callback) {
  std::uint32_t id = next_message_id_++;
  pending_acks_.emplace(id, std::move(callback));
  send_frame(encode_message({id, std::move(cpim)}));
}

void PeerSession::send_frame(const std::vector<std::uint8_t>& frame) {
  if (closing() || !ssl_ || !SSL_is_init_finished(ssl_.get())) return;
  if (batching_) {
    batch_.insert(batch_.end(), frame.begin(), frame.end());
    return;
  }
  send_plain(frame);
}

void PeerSession::send_plain(const std::vector<std::uint8_t>& plain) {
  write_tls(plain);
  if (closing()) return;
  std::uint64_t now = uv_now(host_.loop());
  const NodeLimits& limits = host_.limits();
  // Long sessions re-key (docs/PROTOCOL.md §2): a KeyUpdate after a volume or a time.
  if (bytes_since_rekey_ >= limits.rekey_bytes ||
      now - last_rekey_ms_ >= static_cast<std::uint64_t>(limits.rekey_interval.count()) * 1000) {
    SslIo update = ssl_io(ssl_.get(), [&] { return SSL_key_update(ssl_.get(), SSL_KEY_UPDATE_REQUESTED); });
    if (update.result == 1) {
      ssl_io(ssl_.get(), [&] { return SSL_do_handshake(ssl_.get()); });  // sends the KeyUpdate now
      ++info_.key_updates;
    }
    bytes_since_rekey_ = 0;
    last_rekey_ms_ = now;
  }
  flush();
}

void PeerSession::write_tls(const std::vector<std::uint8_t>& frame) {
  // The network side is a memory BIO: a write never blocks.
  SslIo io = ssl_io(ssl_.get(), [&] { return SSL_write(ssl_.get(), frame.data(), static_cast<int>(frame.size())); });
  if (io.result <= 0 && !closing()) {
    close(fmt::format("TLS write failed: {}", io.reason));
    return;
  }
  bytes_since_rekey_ += frame.size();
}

void PeerSession::flush() {
  std::size_t pending = BIO_ctrl_pending(network_out_);
  if (pending == 0 || !transport_) return;
  std::vector<std::uint8_t> bytes(pending);
  BIO_read(network_out_, bytes.data(), static_cast<int>(pending));
  transport_->write(std::move(bytes));
  last_sent_ms_ = uv_now(host_.loop());
  check_send_queue();
}

// docs/SECURITY.md, "Budgets": a peer that does not take what we send stops
// being read (so it cannot make us produce more), and is cut off if it stays
// so, or if what is queued for it still grows.
void PeerSession::check_send_queue() {
  if (closing()) return;
  const NodeLimits& limits = host_.limits();
  std::size_t queued = transport_->queued_bytes();
  if (queued > limits.send_queue_limit) {
    return close(fmt::format("the peer does not take what is sent to it ({} bytes queued, send_queue_limit {})",
                             queued, limits.send_queue_limit));
  }
  if (queued > limits.send_queue_high_water && stalled_since_ms_ == 0) {
    stalled_since_ms_ = uv_now(host_.loop());
    transport_->set_reading(false);
    arm_timer();
  }
}

void PeerSession::on_transport_written() {
  if (closing() || stalled_since_ms_ == 0) return;
  if (transport_->queued_bytes() <= host_.limits().send_queue_high_water / 2) {
    stalled_since_ms_ = 0;
    transport_->set_reading(true);
    arm_timer();
  }
}

// ---- time -------------------------------------------------------------------

void PeerSession::arm_timer() {
  if (closing()) return;
  const NodeLimits& limits = host_.limits();
  std::uint64_t now = uv_now(host_.loop());
  auto at = [&](std::uint64_t since, std::chrono::milliseconds after) {
    return since + static_cast<std::uint64_t>(after.count());
  };
  std::uint64_t deadline;
  switch (state_) {
    case State::AwaitKeys: return;  // the lookup has its own deadline
    case State::Connecting: deadline = at(phase_started_ms_, limits.connect_timeout); break;
    case State::Established:
      deadline = std::min(at(last_received_ms_, limits.idle_timeout), at(last_sent_ms_, limits.keepalive_interval));
      if (stalled_since_ms_ != 0) deadline = std::min(deadline, at(stalled_since_ms_, limits.send_stall_timeout));
      break;
    default: deadline = at(phase_started_ms_, limits.handshake_timeout);
  }
  uv_timer_start(timer_.get(), [](uv_timer_t* t) { static_cast<PeerSession*>(t->data)->on_timer(); },
                 deadline > now ? deadline - now : 0, 0);
}

void PeerSession::on_timer() {
  if (closing()) return;
  const NodeLimits& limits = host_.limits();
  std::uint64_t now = uv_now(host_.loop());
  auto passed = [&](std::uint64_t since, std::chrono::milliseconds after) {
    return now - since >= static_cast<std::uint64_t>(after.count());
  };
  switch (state_) {
    case State::AwaitKeys: return;
    case State::Connecting:
      if (passed(phase_started_ms_, limits.connect_timeout)) {
        return fail_connect(fmt::format("connect to {}: no answer within {} ms", info_.peer_address,
                                        limits.connect_timeout.count()));
      }
      return arm_timer();
    case State::Established: break;
    default:
      if (!passed(phase_started_ms_, limits.handshake_timeout)) return arm_timer();
      if (info_.direction == Direction::Outbound) {
        return fail_connect(
            fmt::format("no session with {} within {} ms", info_.peer_domain, limits.handshake_timeout.count()));
      }
      return close(fmt::format("handshake not complete within {} ms", limits.handshake_timeout.count()),
                   ErrorCode::Timeout);
  }
  if (stalled_since_ms_ != 0 && passed(stalled_since_ms_, limits.send_stall_timeout)) {
    return close(fmt::format("the peer took nothing of what was sent to it for {} ms", limits.send_stall_timeout.count()));
  }
  if (passed(last_received_ms_, limits.idle_timeout)) {
    return close(fmt::format("idle for {} ms", limits.idle_timeout.count()), ErrorCode::Timeout);
  }
  if (passed(last_sent_ms_, limits.keepalive_interval)) {
    std::uint8_t token[8] = {};
    std::memcpy(token, &now, sizeof token);
    send_frame(encode_ping(token));
  }
  arm_timer();
}

bool PeerSession::may_log() {
  std::uint64_t now = uv_now(host_.loop());
  if (now - log_window_ms_ >= 1000) {
    if (not_logged_ > 0) {
      log_at(LogLevel::Info, "session {} ({}): {} more lines about this peer's frames were not logged", info_.id,
             info_.peer_domain, not_logged_);
    }
    log_window_ms_ = now;
    logged_in_window_ = 0;
    not_logged_ = 0;
  }
  if (logged_in_window_ < kPeerLogLinesPerSecond) {
    ++logged_in_window_;
    return true;
  }
  ++not_logged_;
  return false;
}

// ---- closing ----------------------------------------------------------------

void PeerSession::fail_connect(const std::string& reason) {
  auto callback = std::move(connect_callback_);
  connect_callback_ = nullptr;
  close(reason);
  if (callback) callback(make_error("{}", reason));
}

void PeerSession::close(const std::string& reason, std::optional<ErrorCode> code) {
  if (closing()) return;
  bool tls_up = ssl_ && SSL_is_init_finished(ssl_.get());
  if (tls_up && !batch_.empty()) write_tls(std::exchange(batch_, {}));  // answers due before the ERROR
  if (code && tls_up && !closing()) write_tls(encode_error({*code, reason}));
  if (closing()) return;  // the write itself failed and closed
  state_ = State::Closing;
  *self_ = nullptr;
  log_at(LogLevel::Info, "session {} {} {} ({}): closed: {}", info_.id, to_string(info_.direction),
         info_.peer_domain.empty() ? "(no claim yet)" : info_.peer_domain, info_.peer_address, reason);
  if (tls_up) {
    ssl_io(ssl_.get(), [&] { return SSL_shutdown(ssl_.get()); });
    std::size_t pending = BIO_ctrl_pending(network_out_);
    if (pending > 0 && transport_) {
      std::vector<std::uint8_t> bytes(pending);
      BIO_read(network_out_, bytes.data(), static_cast<int>(pending));
      transport_->write(std::move(bytes));
    }
  }
  uv_timer_stop(timer_.get());
  if (lookup_ != 0) host_.cancel_lookup(std::exchange(lookup_, 0));
  for (auto& [id, callback] : pending_acks_) {
    if (callback) callback(make_error("session closed before the answer: {}", reason));
  }
  pending_acks_.clear();
  if (connect_callback_) {
    auto callback = std::move(connect_callback_);
    connect_callback_ = nullptr;
    callback(make_error("{}", reason));
  }
  host_.closed(*this, reason);  // from here on the session owns itself

  if (transport_) {
    // Queued writes (ERROR, close_notify) may go out, for at most kLinger.
    transport_->close(kLinger);
  } else {
    // Never connected: freed on the loop's next turn, not under the caller.
    uv_timer_start(timer_.get(), [](uv_timer_t* t) { delete static_cast<PeerSession*>(t->data); }, 0, 0);
  }
}

void PeerSession::on_transport_closed() {
  // A closing session owns itself (see close()); it may outlive its node.
  if (!closing()) {
    // The transport closed under a live session: release it like any close.
    close("connection closed");
  }
  delete this;
}

}  // namespace keyfed
