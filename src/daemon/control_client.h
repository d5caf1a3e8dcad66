// The CLI's side of the control socket (docs/CONTROL.md): connects to the
// running node named by a configuration file, sends one JSON request per
// line, reads answers one line at a time. Blocking: the CLI has no loop.
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "common/result.h"

namespace keyfed {

class ControlClient {
 public:
  /// An error means no node answers on `socket` (not running, or no access).
  static Result<ControlClient> connect(const std::filesystem::path& socket);
  ControlClient(ControlClient&& other) noexcept;
  ControlClient& operator=(ControlClient&&) = delete;
  ~ControlClient();

  Status send(const nlohmann::json& request);
  /// The next answer line; an error when the node closed the socket.
  Result<nlohmann::json> receive();
  /// send() then receive().
  Result<nlohmann::json> request(const nlohmann::json& request);

 private:
  explicit ControlClient(int fd) : fd_(fd) {}
  int fd_ = -1;
  std::string buffer_;
};

}  // namespace keyfed
