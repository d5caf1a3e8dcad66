#include "daemon/control_client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace keyfed {

Result<ControlClient> ControlClient::connect(const std::filesystem::path& socket) {
  const std::string path = socket.string();
  if (path.size() >= sizeof(sockaddr_un::sun_path)) return make_error("{}: the control socket path is too long", path);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error("cannot create a socket: {}", std::strerror(errno));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int e = errno;
    ::close(fd);
    return make_error("the node is not running (no answer on the control socket {}: {})", path, std::strerror(e));
  }
  return ControlClient(fd);
}

ControlClient::ControlClient(ControlClient&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), buffer_(std::move(other.buffer_)) {}

ControlClient::~ControlClient() {
  if (fd_ >= 0) ::close(fd_);
}

Status ControlClient::send(const nlohmann::json& request) {
  std::string line = request.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  for (std::size_t at = 0; at < line.size();) {
    ssize_t n = ::send(fd_, line.data() + at, line.size() - at, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return make_error("the node closed the control socket: {}", std::strerror(errno));
    at += static_cast<std::size_t>(n);
  }
  return ok_status();
}

Result<nlohmann::json> ControlClient::receive() {
  for (;;) {
    if (auto eol = buffer_.find('\n'); eol != std::string::npos) {
      std::string line = buffer_.substr(0, eol);
      buffer_.erase(0, eol + 1);
      auto answer = nlohmann::json::parse(line, nullptr, false);
      if (answer.is_discarded() || !answer.is_object()) return make_error("the node sent an answer that is not JSON");
      return answer;
    }
    char chunk[65536];
    ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return make_error("the node closed the control socket");
    buffer_.append(chunk, static_cast<std::size_t>(n));
  }
}

Result<nlohmann::json> ControlClient::request(const nlohmann::json& request) {
  if (Status s = send(request); !s) return s.error();
  return receive();
}

}  // namespace keyfed
