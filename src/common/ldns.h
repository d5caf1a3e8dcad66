// Include ldns through this header: ldns/common.h defines bool, true and false
// as macros (breaking C++ headers included later) unless <stdbool.h> has
// already declared them.
#pragma once

#include <stdbool.h>  // NOLINT(modernize-deprecated-headers): must precede ldns

#include <ldns/ldns.h>
