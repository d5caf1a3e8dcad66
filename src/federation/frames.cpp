#include "federation/frames.h"

#include <fmt/format.h>

namespace keyfed {
namespace {

class Writer {
 public:
  void u8(std::uint8_t v) { out_.push_back(v); }
  void u16(std::uint16_t v) {
    out_.push_back(static_cast<std::uint8_t>(v >> 8));
    out_.push_back(static_cast<std::uint8_t>(v));
  }
  void u32(std::uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) out_.push_back(static_cast<std::uint8_t>(v >> shift));
  }
  void bytes(std::span<const std::uint8_t> b) { out_.insert(out_.end(), b.begin(), b.end()); }
  void text(std::string_view s) { out_.insert(out_.end(), s.begin(), s.end()); }
  void short_string(std::string_view s) {  // u16 length + bytes
    u16(static_cast<std::uint16_t>(std::min<std::size_t>(s.size(), 0xffff)));
    text(s.substr(0, 0xffff));
  }
  std::vector<std::uint8_t> frame(FrameType type) { return encode_frame(type, out_); }

 private:
  std::vector<std::uint8_t> out_;
};

class Reader {
 public:
  explicit Reader(std::span<const std::uint8_t> in) : in_(in) {}
  bool u8(std::uint8_t& v) {
    if (left() < 1) return false;
    v = in_[pos_++];
    return true;
  }
  bool u16(std::uint16_t& v) {
    if (left() < 2) return false;
    v = static_cast<std::uint16_t>(in_[pos_] << 8 | in_[pos_ + 1]);
    pos_ += 2;
    return true;
  }
  bool u32(std::uint32_t& v) {
    if (left() < 4) return false;
    v = 0;
    for (int i = 0; i < 4; ++i) v = v << 8 | in_[pos_++];
    return true;
  }
  bool short_string(std::string& s) {
    std::uint16_t n = 0;
    if (!u16(n) || left() < n) return false;
    s.assign(in_.begin() + static_cast<std::ptrdiff_t>(pos_), in_.begin() + static_cast<std::ptrdiff_t>(pos_ + n));
    pos_ += n;
    return true;
  }
  std::string rest_text() {
    std::string s(in_.begin() + static_cast<std::ptrdiff_t>(pos_), in_.end());
    pos_ = in_.size();
    return s;
  }
  std::vector<std::uint8_t> rest_bytes() {
    std::vector<std::uint8_t> b(in_.begin() + static_cast<std::ptrdiff_t>(pos_), in_.end());
    pos_ = in_.size();
    return b;
  }
  std::size_t left() const { return in_.size() - pos_; }
  bool done() const { return left() == 0; }

 private:
  std::span<const std::uint8_t> in_;
  std::size_t pos_ = 0;
};

Error truncated(std::string_view what) { return make_error("{} payload is truncated or has trailing bytes", what); }

}  // namespace

bool is_known_frame_type(std::uint8_t type) {
  switch (static_cast<FrameType>(type)) {
    case FrameType::Claim:
    case FrameType::ClaimOk:
    case FrameType::Message:
    case FrameType::Ack:
    case FrameType::Nack:
    case FrameType::Subscribe:
    case FrameType::Unsubscribe:
    case FrameType::Notify:
    case FrameType::Ping:
    case FrameType::Pong:
    case FrameType::Unsupported:
    case FrameType::Error: return true;
  }
  return false;
}

std::string frame_type_name(std::uint8_t type) {
  switch (static_cast<FrameType>(type)) {
    case FrameType::Claim: return "CLAIM";
    case FrameType::ClaimOk: return "CLAIM_OK";
    case FrameType::Message: return "MESSAGE";
    case FrameType::Ack: return "ACK";
    case FrameType::Nack: return "NACK";
    case FrameType::Subscribe: return "SUBSCRIBE";
    case FrameType::Unsubscribe: return "UNSUBSCRIBE";
    case FrameType::Notify: return "NOTIFY";
    case FrameType::Ping: return "PING";
    case FrameType::Pong: return "PONG";
    case FrameType::Unsupported: return "UNSUPPORTED";
    case FrameType::Error: return "ERROR";
  }
  return fmt::format("type 0x{:02x}", type);
}

std::vector<std::uint8_t> encode_frame(FrameType type, std::span<const std::uint8_t> payload) {
  std::vector<std::uint8_t> out;
  out.reserve(kFrameHeaderSize + payload.size());
  out.push_back(static_cast<std::uint8_t>(type));
  auto n = static_cast<std::uint32_t>(payload.size());
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(n >> shift));
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

void FrameReader::feed(std::span<const std::uint8_t> bytes) {
  compact();
  buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
}

void FrameReader::compact() {
  // What was consumed is dropped as soon as the reader waits for more, so a
  // session holds at most one partial frame; a buffer grown for a large
  // frame is given back once it is empty (docs/SECURITY.md, "Budgets").
  if (consumed_ == 0) return;
  buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(consumed_));
  consumed_ = 0;
  if (buffer_.empty() && buffer_.capacity() > kKeptCapacity) std::vector<std::uint8_t>().swap(buffer_);
}

Result<std::optional<Frame>> FrameReader::next() {
  std::size_t available = buffer_.size() - consumed_;
  if (available < kFrameHeaderSize) {
    compact();
    return std::optional<Frame>{};
  }
  const std::uint8_t* p = buffer_.data() + consumed_;
  std::size_t length = static_cast<std::size_t>(p[1]) << 24 | static_cast<std::size_t>(p[2]) << 16 |
                       static_cast<std::size_t>(p[3]) << 8 | p[4];
  if (length > max_frame_size_) {
    return make_error("{} frame of {} bytes exceeds the limit of {}", frame_type_name(p[0]), length,
                      max_frame_size_);
  }
  if (available < kFrameHeaderSize + length) {
    compact();
    return std::optional<Frame>{};
  }
  Frame frame;
  frame.type = p[0];
  frame.payload.assign(p + kFrameHeaderSize, p + kFrameHeaderSize + length);
  consumed_ += kFrameHeaderSize + length;
  return std::optional<Frame>{std::move(frame)};
}

std::vector<std::uint8_t> encode_claim(std::string_view domain) {
  Writer w;
  w.text(domain);
  return w.frame(FrameType::Claim);
}
std::vector<std::uint8_t> encode_claim_ok() { return encode_frame(FrameType::ClaimOk, {}); }
std::vector<std::uint8_t> encode_message(const MessagePayload& message) {
  Writer w;
  w.u32(message.id);
  w.bytes(message.cpim);
  return w.frame(FrameType::Message);
}
std::vector<std::uint8_t> encode_ack(std::uint32_t id) {
  Writer w;
  w.u32(id);
  return w.frame(FrameType::Ack);
}
std::vector<std::uint8_t> encode_nack(const NackPayload& nack) {
  Writer w;
  w.u32(nack.id);
  w.u16(static_cast<std::uint16_t>(nack.code));
  w.text(nack.text);
  return w.frame(FrameType::Nack);
}
std::vector<std::uint8_t> encode_presence(FrameType type, const PresenceRequest& request) {
  Writer w;
  w.u32(request.id);
  w.short_string(request.watcher);
  w.short_string(request.presentity);
  return w.frame(type);
}
std::vector<std::uint8_t> encode_notify(const NotifyPayload& notify) {
  Writer w;
  w.short_string(notify.watcher);
  w.short_string(notify.presentity);
  w.text(notify.document);
  return w.frame(FrameType::Notify);
}
std::vector<std::uint8_t> encode_ping(std::span<const std::uint8_t> data) {
  return encode_frame(FrameType::Ping, data.first(std::min(data.size(), kMaxPingSize)));
}
std::vector<std::uint8_t> encode_pong(std::span<const std::uint8_t> data) {
  return encode_frame(FrameType::Pong, data.first(std::min(data.size(), kMaxPingSize)));
}
std::vector<std::uint8_t> encode_unsupported(std::uint8_t type) {
  Writer w;
  w.u8(type);
  return w.frame(FrameType::Unsupported);
}
std::vector<std::uint8_t> encode_error(const ErrorPayload& error) {
  Writer w;
  w.u16(static_cast<std::uint16_t>(error.code));
  w.text(error.text);
  return w.frame(FrameType::Error);
}

Result<std::string> parse_claim(std::span<const std::uint8_t> payload) {
  if (payload.empty() || payload.size() > 253) return make_error("CLAIM payload must be a domain name");
  return std::string(payload.begin(), payload.end());
}
Result<MessagePayload> parse_message(std::span<const std::uint8_t> payload) {
  Reader r(payload);
  MessagePayload m;
  if (!r.u32(m.id)) return truncated("MESSAGE");
  m.cpim = r.rest_bytes();
  return m;
}
Result<std::uint32_t> parse_ack(std::span<const std::uint8_t> payload) {
  Reader r(payload);
  std::uint32_t id = 0;
  if (!r.u32(id) || !r.done()) return truncated("ACK");
  return id;
}
Result<NackPayload> parse_nack(std::span<const std::uint8_t> payload) {
  Reader r(payload);
  NackPayload n;
  std::uint16_t code = 0;
  if (!r.u32(n.id) || !r.u16(code)) return truncated("NACK");
  n.code = static_cast<NackCode>(code);
  n.text = r.rest_text();
  return n;
}
Result<PresenceRequest> parse_presence(std::span<const std::uint8_t> payload) {
  Reader r(payload);
  PresenceRequest p;
  if (!r.u32(p.id) || !r.short_string(p.watcher) || !r.short_string(p.presentity) || !r.done()) {
    return truncated("SUBSCRIBE/UNSUBSCRIBE");
  }
  return p;
}
Result<NotifyPayload> parse_notify(std::span<const std::uint8_t> payload) {
  Reader r(payload);
  NotifyPayload n;
  if (!r.short_string(n.watcher) || !r.short_string(n.presentity)) return truncated("NOTIFY");
  n.document = r.rest_text();
  return n;
}
Result<std::uint8_t> parse_unsupported(std::span<const std::uint8_t> payload) {
  Reader r(payload);
  std::uint8_t type = 0;
  if (!r.u8(type) || !r.done()) return truncated("UNSUPPORTED");
  return type;
}
Result<ErrorPayload> parse_error(std::span<const std::uint8_t> payload) {
  Reader r(payload);
  ErrorPayload e;
  std::uint16_t code = 0;
  if (!r.u16(code)) return truncated("ERROR");
  e.code = static_cast<ErrorCode>(code);
  e.text = r.rest_text();
  return e;
}

}  // namespace keyfed
