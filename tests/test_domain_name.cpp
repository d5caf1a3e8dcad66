#include <catch2/catch.hpp>

#include "dnskey/domain_name.h"

using keyfed::key_owner_name;
using keyfed::normalize_domain;

TEST_CASE("domain names are lower-cased and lose their trailing dot", "[domain]") {
  CHECK(*normalize_domain("Alpha.TEST.") == "alpha.test");
  CHECK(*normalize_domain("beta.test") == "beta.test");
  CHECK(*normalize_domain("x-1.example") == "x-1.example");
  CHECK(key_owner_name("alpha.test") == "_impp._tcp.alpha.test.");
}

TEST_CASE("malformed domain names are refused with the reason", "[domain]") {
  auto reason = [](std::string_view input) {
    auto r = normalize_domain(input);
    REQUIRE_FALSE(r.ok());
    return r.error().message;
  };
  CHECK_THAT(reason(""), Catch::Contains("empty"));
  CHECK_THAT(reason("."), Catch::Contains("empty"));
  CHECK_THAT(reason("a..b"), Catch::Contains("empty label"));
  CHECK_THAT(reason(".a"), Catch::Contains("empty label"));
  CHECK_THAT(reason("a b.test"), Catch::Contains("character ' '"));
  CHECK_THAT(reason("_impp.test"), Catch::Contains("character '_'"));
  CHECK_THAT(reason("-a.test"), Catch::Contains("'-'"));
  CHECK_THAT(reason(std::string(64, 'a') + ".test"), Catch::Contains("longer than 63"));
  std::string long_name;
  for (int i = 0; i < 50; ++i) long_name += "abcd.";
  long_name += "test";
  CHECK_THAT(reason(long_name), Catch::Contains("longer than 253"));
}
