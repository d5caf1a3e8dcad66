// The keyfed wire protocol's frames (docs/PROTOCOL.md). Pure encoding and
// decoding: no I/O, so every function here can be fuzzed and tested alone.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace keyfed {

/// ALPN protocol name; a later version gets a new name (docs/PROTOCOL.md §1).
inline constexpr std::string_view kAlpnProtocol = "keyfed/2";
/// The same as an ALPN protocol list on the wire (length-prefixed).
inline constexpr unsigned char kAlpnWire[] = {8, 'k', 'e', 'y', 'f', 'e', 'd', '/', '2'};
static_assert(sizeof kAlpnWire == kAlpnProtocol.size() + 1 && kAlpnWire[0] == kAlpnProtocol.size());

/// docs/PROTOCOL.md §3: type (1 byte) then payload length (4 bytes, big-endian).
inline constexpr std::size_t kFrameHeaderSize = 5;
/// No configuration may raise the frame limit above this.
inline constexpr std::size_t kHardMaxFrameSize = 16 * 1024 * 1024;

enum class FrameType : std::uint8_t {
  Claim = 0x01,        ///< initiator -> responder: the domain it speaks for
  ClaimOk = 0x02,      ///< responder -> initiator: claim accepted
  Message = 0x10,      ///< id, message/cpim bytes verbatim
  Ack = 0x11,          ///< id
  Nack = 0x12,         ///< id, reason code, text
  Subscribe = 0x20,    ///< id, watcher, presentity
  Unsubscribe = 0x21,  ///< id, watcher, presentity
  Notify = 0x22,       ///< watcher, presentity, presence document
  Ping = 0x30,         ///< opaque bytes (at most 64)
  Pong = 0x31,         ///< the ping's bytes
  Unsupported = 0x3e,  ///< the type byte that was not understood
  Error = 0x3f,        ///< code, text; the sender then closes
};

/// True for the types this version understands.
bool is_known_frame_type(std::uint8_t type);
std::string frame_type_name(std::uint8_t type);

/// NACK reason codes (docs/PROTOCOL.md §5).
enum class NackCode : std::uint16_t {
  SenderNotPeer = 1,      ///< CPIM From domain is not the authenticated peer domain
  UnknownRecipient = 2,   ///< CPIM To domain is not hosted by this node
  MalformedMessage = 3,   ///< not a message/cpim this node can route
  RateLimited = 4,        ///< the peer exceeded its message rate
  NotAuthorized = 5,      ///< presence request not allowed
  LimitExceeded = 6,      ///< a per-session budget is used up (subscriptions)
  TemporaryFailure = 7,   ///< the receiver cannot take it now (its store failed): send it again later
};

/// ERROR codes (docs/PROTOCOL.md §6).
enum class ErrorCode : std::uint16_t {
  ProtocolViolation = 1,
  FrameTooLarge = 2,
  ClaimRefused = 3,
  Timeout = 4,
  Shutdown = 5,
  KeyRevoked = 6,
};

struct Frame {
  std::uint8_t type = 0;
  std::vector<std::uint8_t> payload;
};

std::vector<std::uint8_t> encode_frame(FrameType type, std::span<const std::uint8_t> payload);

/// Reassembles frames from a byte stream. Refuses a frame whose declared
/// length exceeds the limit as soon as its header is seen.
class FrameReader {
 public:
  explicit FrameReader(std::size_t max_frame_size) : max_frame_size_(max_frame_size) {}
  void feed(std::span<const std::uint8_t> bytes);
  /// The next complete frame, nullopt if more bytes are needed, or an error.
  Result<std::optional<Frame>> next();
  std::size_t buffered() const { return buffer_.size() - consumed_; }
  /// Bytes of memory the reader holds for its buffer (docs/SECURITY.md, "Budgets").
  std::size_t capacity() const { return buffer_.capacity(); }
  /// A new limit for frames whose header has not been read yet.
  void set_max_frame_size(std::size_t max_frame_size) { max_frame_size_ = max_frame_size; }

 private:
  static constexpr std::size_t kKeptCapacity = 16 * 1024;
  void compact();
  std::size_t max_frame_size_;
  std::vector<std::uint8_t> buffer_;
  std::size_t consumed_ = 0;
};

// Typed payloads. Each encode_x returns a whole frame; each parse_x reads a
// payload and fails on truncation or trailing bytes.

struct MessagePayload {
  std::uint32_t id = 0;
  std::vector<std::uint8_t> cpim;
};
struct NackPayload {
  std::uint32_t id = 0;
  NackCode code = NackCode::MalformedMessage;
  std::string text;
};
struct ErrorPayload {
  ErrorCode code = ErrorCode::ProtocolViolation;
  std::string text;
};
struct PresenceRequest {  // SUBSCRIBE and UNSUBSCRIBE
  std::uint32_t id = 0;
  std::string watcher;     ///< URI of the watching user (peer's domain)
  std::string presentity;  ///< URI of the watched user (this node's domain)
};
struct NotifyPayload {
  std::string watcher;     ///< the one watcher (of the receiving domain) it is for
  std::string presentity;
  std::string document;  ///< presence document, opaque here
};

std::vector<std::uint8_t> encode_claim(std::string_view domain);
std::vector<std::uint8_t> encode_claim_ok();
std::vector<std::uint8_t> encode_message(const MessagePayload& message);
std::vector<std::uint8_t> encode_ack(std::uint32_t id);
std::vector<std::uint8_t> encode_nack(const NackPayload& nack);
std::vector<std::uint8_t> encode_presence(FrameType type, const PresenceRequest& request);
std::vector<std::uint8_t> encode_notify(const NotifyPayload& notify);
std::vector<std::uint8_t> encode_ping(std::span<const std::uint8_t> data);
std::vector<std::uint8_t> encode_pong(std::span<const std::uint8_t> data);
std::vector<std::uint8_t> encode_unsupported(std::uint8_t type);
std::vector<std::uint8_t> encode_error(const ErrorPayload& error);

Result<std::string> parse_claim(std::span<const std::uint8_t> payload);
Result<MessagePayload> parse_message(std::span<const std::uint8_t> payload);
Result<std::uint32_t> parse_ack(std::span<const std::uint8_t> payload);
Result<NackPayload> parse_nack(std::span<const std::uint8_t> payload);
Result<PresenceRequest> parse_presence(std::span<const std::uint8_t> payload);
Result<NotifyPayload> parse_notify(std::span<const std::uint8_t> payload);
Result<std::uint8_t> parse_unsupported(std::span<const std::uint8_t> payload);
Result<ErrorPayload> parse_error(std::span<const std::uint8_t> payload);

inline constexpr std::size_t kMaxPingSize = 64;

}  // namespace keyfed
