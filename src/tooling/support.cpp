#include "tooling/support.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "common/log.h"

namespace keyfed {

Status write_file_atomic(const std::filesystem::path& file, const std::string& text, unsigned mode) {
  std::filesystem::path dir = file.parent_path().empty() ? std::filesystem::path(".") : file.parent_path();
  std::random_device rd;
  std::filesystem::path temp = dir / fmt::format(".{}.tmp{:08x}", file.filename().string(), rd());
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return make_error("{}: cannot create: {}", temp.string(), std::strerror(errno));
  ::fchmod(fd, mode);  // whatever the umask
  std::size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = errno;
      ::close(fd);
      ::unlink(temp.c_str());
      return make_error("{}: cannot write: {}", temp.string(), std::strerror(e));
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int e = errno;
    ::unlink(temp.c_str());
    return make_error("{}: cannot sync: {}", temp.string(), std::strerror(e));
  }
  if (::rename(temp.c_str(), file.c_str()) != 0) {
    int e = errno;
    ::unlink(temp.c_str());
    return make_error("{}: cannot rename into place: {}", file.string(), std::strerror(e));
  }
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return ok_status();
}

Result<std::string> read_small_file(const std::filesystem::path& file, std::size_t limit) {
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return make_error("{}: cannot open: {}", file.string(), std::strerror(errno));
  std::string text;
  char buffer[8192];
  for (;;) {
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      return make_error("{}: cannot read: {}", file.string(), std::strerror(e));
    }
    if (n == 0) break;
    text.append(buffer, static_cast<std::size_t>(n));
    if (text.size() > limit) {
      ::close(fd);
      return make_error("{}: larger than {} bytes", file.string(), limit);
    }
  }
  ::close(fd);
  return text;
}

Result<std::string> run_program(const std::vector<std::string>& argv) {
  Result<ProgramRun> run = run_program_status(argv);
  if (!run) return run.error();
  if (run->status != 0) {
    return make_error("{} failed (status {}): {}", argv[0], run->status, untrusted(run->output, 1024));
  }
  return std::move(run->output);
}

Result<ProgramRun> run_program_status(const std::vector<std::string>& argv) {
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return make_error("pipe: {}", std::strerror(errno));
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    return make_error("fork: {}", std::strerror(errno));
  }
  if (pid == 0) {
    int null = ::open("/dev/null", O_RDONLY);
    ::dup2(null, 0);
    ::dup2(pipefd[1], 1);
    ::dup2(pipefd[1], 2);
    ::close_range(3, ~0U, 0);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    _exit(127);
  }
  ::close(pipefd[1]);
  std::string output;
  char buffer[4096];
  for (;;) {
    ssize_t n = ::read(pipefd[0], buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (output.size() < (1 << 20)) output.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(pipefd[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return ProgramRun{WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), std::move(output)};
}

Result<std::filesystem::path> find_program(const std::string& name) {
  std::string path = std::getenv("PATH") != nullptr ? std::getenv("PATH") : "/usr/bin:/bin";
  path += ":/usr/sbin:/usr/bin";
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    std::filesystem::path candidate = std::filesystem::path(path.substr(start, end - start)) / name;
    if (end > start && ::access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return make_error("{} not found on PATH", name);
}

Result<int> pick_free_port(const std::string& address) {
  for (int attempt = 0; attempt < 20; ++attempt) {
    int tcp = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (tcp < 0) return make_error("socket: {}", std::strerror(errno));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    ::inet_pton(AF_INET, address.c_str(), &sa.sin_addr);
    socklen_t len = sizeof sa;
    if (::bind(tcp, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 ||
        ::getsockname(tcp, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
      ::close(tcp);
      return make_error("cannot bind {}: {}", address, std::strerror(errno));
    }
    // The same port must be free for UDP too.
    int udp = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    bool ok = udp >= 0 && ::bind(udp, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
    if (udp >= 0) ::close(udp);
    ::close(tcp);
    if (ok) return static_cast<int>(ntohs(sa.sin_port));
  }
  return make_error("no free port on {}", address);
}

}  // namespace keyfed
