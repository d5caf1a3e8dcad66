#include "tooling/knot_testbed.h"

#include "tooling/testbed.h"

namespace keyfed {

Result<pid_t> knot_start(Testbed&) { return make_error("testbed --dns knot is not built yet"); }
Status knot_stop(Testbed&) { return ok_status(); }
Status knot_publish(Testbed&, const std::vector<std::string>&) {
  return make_error("testbed --dns knot is not built yet");
}

}  // namespace keyfed
