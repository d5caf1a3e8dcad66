// The local control socket (docs/CONTROL.md): a Unix domain socket whose
// file permissions are its access control (0600, or 0660 for a group), one
// JSON object per line in each direction. This module is the transport:
// framing, budgets, and handing each request to the daemon; the commands
// themselves are the daemon's (control_commands.h).
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>
#include <uv.h>

#include "common/result.h"
#include "common/uv_handle.h"
#include "config/node_config.h"

namespace keyfed {

/// Budgets of the control socket (docs/CONTROL.md, "Budgets"). Local users
/// with access to the socket are trusted to command the node, not to exhaust
/// it.
struct ControlLimits {
  std::size_t max_clients = 64;
  std::size_t max_line = 4 * 1024 * 1024;       ///< bytes of one request line
  std::size_t max_queued = 16 * 1024 * 1024;    ///< bytes of answers a client has not read: closed
};

class ControlSocket {
 public:
  /// Sends one answer line to the client that made the request (any number
  /// of times, for a streaming command). false: that client is gone, stop.
  using Send = std::function<bool(const nlohmann::json&)>;
  /// One request (already checked to be a JSON object). `send` stays valid
  /// after the handler returns.
  using Handler = std::function<void(const nlohmann::json& request, Send send)>;

  /// Binds the socket at settings.socket (refusing to replace anything but a
  /// stale socket no node answers on), sets its mode and group, listens.
  static Result<std::unique_ptr<ControlSocket>> open(uv_loop_t* loop, const ControlSettings& settings,
                                                     Handler handler, ControlLimits limits = {});
  /// Closes every client and the listener, and removes the socket file.
  ~ControlSocket();
  ControlSocket(const ControlSocket&) = delete;
  ControlSocket& operator=(const ControlSocket&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::size_t clients() const;

 private:
  struct Client;
  ControlSocket(uv_loop_t* loop, Handler handler, ControlLimits limits);
  void on_connection();
  void on_read(Client& client, const char* data, std::size_t size);
  void drop(Client& client);

  uv_loop_t* loop_;
  Handler handler_;
  ControlLimits limits_;
  std::filesystem::path path_;
  UvHandle<uv_pipe_t> listener_;
  std::vector<std::shared_ptr<Client>> clients_;
};

/// The "json" of a message's bytes for answers: `cpim` holds them as a
/// string when they are UTF-8 (JSON strings are), and `cpim_base64` always.
void put_cpim(nlohmann::json& object, const std::vector<std::uint8_t>& cpim);
std::string base64_encode(const std::vector<std::uint8_t>& bytes);
Result<std::vector<std::uint8_t>> base64_decode(std::string_view text);

}  // namespace keyfed
