// The fixed ports the testbed's SRV records name (25401, 25402, 25411,
// 25412; docs/TESTBED.md). A test case that listens on any of them holds this
// lock for its whole run, so parallel test processes (ctest -j, other build
// directories) take turns instead of competing for the ports.
#pragma once

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <stdexcept>

namespace keyfed::test {

class TestbedPortsLock {
 public:
  TestbedPortsLock() : fd_(::open("/tmp/keyfed-testbed-ports.lock", O_CREAT | O_RDWR | O_CLOEXEC, 0666)) {
    if (fd_ < 0 || ::flock(fd_, LOCK_EX) != 0) throw std::runtime_error("cannot lock the testbed ports");
  }
  ~TestbedPortsLock() { ::close(fd_); }
  TestbedPortsLock(const TestbedPortsLock&) = delete;
  TestbedPortsLock& operator=(const TestbedPortsLock&) = delete;

 private:
  int fd_;
};

}  // namespace keyfed::test
