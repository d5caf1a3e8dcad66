#include "daemon/control_socket.h"

#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/log.h"

namespace keyfed {

namespace {

// nlohmann's parser recurses once per nesting level: a line of a few million
// '[' would overflow the stack. Requests are at most two levels deep.
constexpr int kMaxJsonNesting = 16;

bool nesting_within(std::string_view text, int max) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

bool valid_utf8(const std::vector<std::uint8_t>& bytes) {
  for (std::size_t i = 0; i < bytes.size();) {
    std::uint8_t c = bytes[i];
    std::size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (n == 0 || i + n > bytes.size()) return false;
    if (n == 2 && c < 0xc2) return false;
    for (std::size_t k = 1; k < n; ++k) {
      if ((bytes[i + k] & 0xc0) != 0x80) return false;
    }
    if (n == 3) {
      unsigned cp = (c & 0x0fu) << 12 | (bytes[i + 1] & 0x3fu) << 6 | (bytes[i + 2] & 0x3fu);
      if (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    } else if (n == 4) {
      unsigned cp = (c & 0x07u) << 18 | (bytes[i + 1] & 0x3fu) << 12 | (bytes[i + 2] & 0x3fu) << 6 |
                    (bytes[i + 3] & 0x3fu);
      if (cp < 0x10000 || cp > 0x10ffff) return false;
    }
    i += n;
  }
  return true;
}

constexpr char kBase64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

}  // namespace

std::string base64_encode(const std::vector<std::uint8_t>& bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (std::size_t i = 0; i < bytes.size(); i += 3) {
    std::uint32_t v = static_cast<std::uint32_t>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= static_cast<std::uint32_t>(bytes[i + 1]) << 8;
    if (i + 2 < bytes.size()) v |= bytes[i + 2];
    out += kBase64[(v >> 18) & 63];
    out += kBase64[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? kBase64[(v >> 6) & 63] : '=';
    out += i + 2 < bytes.size() ? kBase64[v & 63] : '=';
  }
  return out;
}

Result<std::vector<std::uint8_t>> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) return make_error("base64 length is not a multiple of 4");
  std::vector<std::uint8_t> out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    std::uint32_t v = 0;
    int pad = 0;
    for (std::size_t k = 0; k < 4; ++k) {
      char c = text[i + k];
      const char* at = std::strchr(kBase64, c);
      if (c == '=' && i + 4 == text.size() && k >= 2) {
        ++pad;
        v <<= 6;
        continue;
      }
      if (c == '\0' || at == nullptr || pad > 0) return make_error("not base64 at offset {}", i + k);
      v = v << 6 | static_cast<std::uint32_t>(at - kBase64);
    }
    out.push_back(static_cast<std::uint8_t>(v >> 16));
    if (pad < 2) out.push_back(static_cast<std::uint8_t>(v >> 8));
    if (pad < 1) out.push_back(static_cast<std::uint8_t>(v));
  }
  return out;
}

void put_cpim(nlohmann::json& object, const std::vector<std::uint8_t>& cpim) {
  if (valid_utf8(cpim)) object["cpim"] = std::string(cpim.begin(), cpim.end());
  object["cpim_base64"] = base64_encode(cpim);
}

struct ControlSocket::Client {
  ControlSocket* owner = nullptr;
  uv_pipe_t* handle = nullptr;  // freed by its close callback
  std::string buffer;           // bytes of a request line not yet complete
  std::size_t queued = 0;       // answer bytes written but not yet taken by the client
  bool open = true;
};

namespace {

struct WriteRequest {
  uv_write_t req{};
  std::string data;
  std::weak_ptr<void> client;  // a Client, as an opaque token
  std::size_t* queued = nullptr;
};

}  // namespace

ControlSocket::ControlSocket(uv_loop_t* loop, Handler handler, ControlLimits limits)
    : loop_(loop), handler_(std::move(handler)), limits_(limits) {}

Result<std::unique_ptr<ControlSocket>> ControlSocket::open(uv_loop_t* loop, const ControlSettings& settings,
                                                           Handler handler, ControlLimits limits) {
  const std::string path = settings.socket.string();
  if (path.empty() || path.size() >= sizeof(sockaddr_un::sun_path)) {
    return make_error("{}: the control socket path is empty or longer than {} bytes; set [control] socket", path,
                      sizeof(sockaddr_un::sun_path) - 1);
  }
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return make_error("{}: exists and is not a socket; not replacing it", path);
    // A socket file: stale if no one answers on it.
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    bool answered = fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    if (fd >= 0) ::close(fd);
    if (answered) return make_error("{}: another node is running on this control socket", path);
    if (::unlink(path.c_str()) != 0) {
      return make_error("{}: cannot remove the stale control socket: {}", path, std::strerror(errno));
    }
  }
  gid_t gid = static_cast<gid_t>(-1);
  if (!settings.group.empty()) {
    group* g = getgrnam(settings.group.c_str());
    if (g == nullptr) return make_error("[control] group '{}' does not exist", escape_text(settings.group));
    gid = g->gr_gid;
  }

  std::unique_ptr<ControlSocket> self(new ControlSocket(loop, std::move(handler), limits));
  self->path_ = settings.socket;
  self->listener_ = make_uv_handle<uv_pipe_t>();
  uv_pipe_init(loop, self->listener_.get(), 0);
  self->listener_->data = self.get();
  // Created 0600: no moment when another user could connect.
  mode_t old_mask = ::umask(0177);
  int rc = uv_pipe_bind(self->listener_.get(), path.c_str());
  ::umask(old_mask);
  if (rc != 0) return make_error("{}: cannot bind the control socket: {}", path, uv_strerror(rc));
  if (!settings.group.empty()) {
    if (::chown(path.c_str(), static_cast<uid_t>(-1), gid) != 0 || ::chmod(path.c_str(), 0660) != 0) {
      int e = errno;
      ::unlink(path.c_str());
      return make_error("{}: cannot give the control socket to group '{}': {}", path, escape_text(settings.group),
                        std::strerror(e));
    }
  }
  rc = uv_listen(reinterpret_cast<uv_stream_t*>(self->listener_.get()), 16, [](uv_stream_t* server, int status) {
    if (status == 0) static_cast<ControlSocket*>(server->data)->on_connection();
  });
  if (rc != 0) {
    ::unlink(path.c_str());
    return make_error("{}: cannot listen on the control socket: {}", path, uv_strerror(rc));
  }
  return self;
}

ControlSocket::~ControlSocket() {
  for (auto& client : std::vector<std::shared_ptr<Client>>(clients_)) drop(*client);
  listener_.reset();
  if (!path_.empty()) ::unlink(path_.c_str());
}

std::size_t ControlSocket::clients() const { return clients_.size(); }

void ControlSocket::on_connection() {
  auto* handle = new uv_pipe_t{};
  uv_pipe_init(loop_, handle, 0);
  if (uv_accept(reinterpret_cast<uv_stream_t*>(listener_.get()), reinterpret_cast<uv_stream_t*>(handle)) != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(handle), [](uv_handle_t* h) { delete reinterpret_cast<uv_pipe_t*>(h); });
    return;
  }
  if (clients_.size() >= limits_.max_clients) {
    log_at(LogLevel::Warning, "control: refused a client: {} clients already (max)", clients_.size());
    uv_close(reinterpret_cast<uv_handle_t*>(handle), [](uv_handle_t* h) { delete reinterpret_cast<uv_pipe_t*>(h); });
    return;
  }
  auto client = std::make_shared<Client>();
  client->owner = this;
  client->handle = handle;
  handle->data = client.get();
  clients_.push_back(client);
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(handle),
      [](uv_handle_t*, std::size_t suggested, uv_buf_t* buf) {
        buf->base = new char[suggested];
        buf->len = suggested;
      },
      [](uv_stream_t* stream, ssize_t n, const uv_buf_t* buf) {
        std::unique_ptr<char[]> owned(buf->base);
        auto* c = static_cast<Client*>(stream->data);
        if (c == nullptr) return;
        if (n < 0) {
          c->owner->drop(*c);  // EOF or error: the client is gone, mid-command or not
          return;
        }
        c->owner->on_read(*c, buf->base, static_cast<std::size_t>(n));
      });
}

void ControlSocket::on_read(Client& client, const char* data, std::size_t size) {
  client.buffer.append(data, size);
  std::shared_ptr<Client> self;
  for (auto& c : clients_) {
    if (c.get() == &client) self = c;
  }
  if (!self) return;
  std::weak_ptr<Client> weak = self;
  Send send = [weak, this](const nlohmann::json& answer) {
    auto c = weak.lock();
    if (!c || !c->open) return false;
    if (c->queued > limits_.max_queued) {
      log_at(LogLevel::Warning, "control: a client that does not read its answers ({} bytes queued) is closed",
             c->queued);
      drop(*c);
      return false;
    }
    auto* w = new WriteRequest;
    w->data = answer.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    w->client = c;
    w->queued = &c->queued;
    c->queued += w->data.size();
    uv_buf_t buf = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
    int rc = uv_write(&w->req, reinterpret_cast<uv_stream_t*>(c->handle), &buf, 1, [](uv_write_t* req, int) {
      std::unique_ptr<WriteRequest> done(reinterpret_cast<WriteRequest*>(req));
      if (!done->client.expired()) *done->queued -= done->data.size();
    });
    if (rc != 0) {
      c->queued -= w->data.size();
      delete w;
      drop(*c);
      return false;
    }
    return true;
  };
  for (std::size_t eol; client.open && (eol = client.buffer.find('\n')) != std::string::npos;) {
    std::string line = client.buffer.substr(0, eol);
    client.buffer.erase(0, eol + 1);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    nlohmann::json request;
    if (nesting_within(line, kMaxJsonNesting)) request = nlohmann::json::parse(line, nullptr, false);
    if (request.is_discarded() || !request.is_object()) {
      send({{"ok", false}, {"error", "the request is not one JSON object on one line (docs/CONTROL.md)"},
            {"status", "bad-request"}});
      continue;
    }
    handler_(request, send);
  }
  if (client.open && client.buffer.size() > limits_.max_line) {
    send({{"ok", false},
          {"error", fmt::format("a request line longer than {} bytes (docs/CONTROL.md)", limits_.max_line)},
          {"status", "bad-request"}});
    drop(client);
  }
}

void ControlSocket::drop(Client& client) {
  if (!client.open) return;
  client.open = false;
  client.handle->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(client.handle),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_pipe_t*>(h); });
  std::erase_if(clients_, [&](const std::shared_ptr<Client>& c) { return c.get() == &client; });
}

}  // namespace keyfed
