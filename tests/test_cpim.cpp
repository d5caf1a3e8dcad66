// The strict CPIM header reader (src/federation/cpim.h, docs/PROTOCOL.md §5.1).
//
// Scenarios are data, in tests/testdata/cpim/ (the .cpim files are byte-exact
// messages, so what to expect is in a sidecar .expect file):
//   accept/NAME.cpim  must parse; NAME.expect lists "key: value" checks
//                     (see check_accepted below), '#' lines are comments.
//   reject/NAME.cpim  must fail; NAME.expect starts with "expect: TEXT", a
//                     substring of the error, then '#' lines say why.
// Both directories also seed fuzz/fuzz_cpim.cpp.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <catch2/catch.hpp>

#include "federation/cpim.h"
#include "harness.h"

using namespace keyfed;

namespace {

using Bytes = std::vector<std::uint8_t>;

std::filesystem::path cpim_dir() { return test::testdata_dir() / "cpim"; }

Bytes read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  return {std::istreambuf_iterator<char>(in), {}};
}

Bytes bytes_of(std::string_view text) { return {text.begin(), text.end()}; }

// The .cpim files of one directory, sorted, with their .expect lines.
struct Scenario {
  std::string name;
  Bytes message;
  std::vector<std::string> expect;  // lines, comments dropped
};

std::vector<Scenario> scenarios(const std::string& kind) {
  std::vector<Scenario> out;
  for (const auto& entry : std::filesystem::directory_iterator(cpim_dir() / kind)) {
    if (entry.path().extension() != ".cpim") continue;
    Scenario s{entry.path().filename().string(), read_bytes(entry.path()), {}};
    std::filesystem::path expect_path = entry.path();
    expect_path.replace_extension(".expect");
    std::ifstream in(expect_path);
    INFO(s.name);
    REQUIRE(in);  // every scenario says what it expects
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line[0] != '#') s.expect.push_back(line);
    }
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(), [](const Scenario& a, const Scenario& b) { return a.name < b.name; });
  return out;
}

std::pair<std::string, std::string> split(const std::string& line, const std::string& separator) {
  auto at = line.find(separator);
  REQUIRE(at != std::string::npos);
  return {line.substr(0, at), line.substr(at + separator.size())};
}

std::vector<std::string> uris(const std::vector<CpimAddress>& addresses) {
  std::vector<std::string> out;
  for (const CpimAddress& a : addresses) out.push_back(a.uri);
  return out;
}

// Checks one accepted message against its .expect lines:
//   from, from-name, from-user, from-domain, datetime   single values
//   to, cc             every address URI, in order ("to:" lines list all of them)
//   subject            LANG|TEXT for each Subject, in order
//   ns                 PREFIX URI for each NS declaration, in order
//   require            NS_URI NAME for each Require name, in order
//   find               NS_URI NAME = VALUE: the first such header's raw value
//   param              NAME KEY = VALUE: a parameter of the first unprefixed header NAME
//   headers            the number of header lines
//   mime               the first line of the MIME object
//   understood-with-imdn  yes: check_required passes with the IMDN names
void check_accepted(const Scenario& s, const CpimMessage& m, const Bytes& bytes) {
  std::vector<std::string> to, cc, subjects, namespaces, required;
  bool lists_to = false, lists_cc = false, lists_subjects = false, lists_ns = false, lists_required = false;
  for (const std::string& line : s.expect) {
    INFO(s.name << ": " << line);
    auto [key, value] = split(line, ": ");
    if (key == "from") {
      CHECK(m.from.uri == value);
    } else if (key == "from-name") {
      CHECK(m.from.formal_name == value);
    } else if (key == "from-user") {
      CHECK(m.from.user == value);
    } else if (key == "from-domain") {
      CHECK(m.from.domain == value);
    } else if (key == "datetime") {
      REQUIRE(m.datetime.has_value());
      CHECK(*m.datetime == value);
    } else if (key == "to") {
      lists_to = true;
      to.push_back(value);
    } else if (key == "cc") {
      lists_cc = true;
      cc.push_back(value);
    } else if (key == "subject") {
      lists_subjects = true;
      subjects.push_back(value);
    } else if (key == "ns") {
      lists_ns = true;
      namespaces.push_back(value);
    } else if (key == "require") {
      lists_required = true;
      required.push_back(value);
    } else if (key == "find") {
      auto [where, expected] = split(value, " = ");
      auto [ns_uri, name] = split(where, " ");
      const CpimHeader* h = m.find(ns_uri, name);
      REQUIRE(h != nullptr);
      CHECK(h->value == expected);
    } else if (key == "param") {
      auto [where, expected] = split(value, " = ");
      auto [name, param] = split(where, " ");
      const CpimHeader* h = m.find(kCpimCoreNamespace, name);
      REQUIRE(h != nullptr);
      auto it = std::find_if(h->params.begin(), h->params.end(), [&](const auto& p) { return p.first == param; });
      REQUIRE(it != h->params.end());
      CHECK(it->second == expected);
    } else if (key == "headers") {
      CHECK(m.headers.size() == std::stoul(value));
    } else if (key == "mime") {
      auto mime = m.mime_object(bytes);
      std::string text(mime.begin(), mime.end());
      CHECK(text.substr(0, text.find("\r\n")) == value);
    } else if (key == "understood-with-imdn") {
      Status understood = check_required(m, imdn_header_names());
      INFO((understood ? std::string("ok") : understood.error().message));
      CHECK(understood.ok() == (value == "yes"));
    } else {
      FAIL("unknown expectation key '" << key << "'");
    }
  }
  INFO(s.name);
  if (lists_to) CHECK(uris(m.to) == to);
  if (lists_cc) CHECK(uris(m.cc) == cc);
  if (lists_subjects) {
    std::vector<std::string> got;
    for (const CpimSubject& sub : m.subjects) got.push_back(sub.lang + "|" + sub.text);
    CHECK(got == subjects);
  }
  if (lists_ns) {
    std::vector<std::string> got;
    for (const CpimNamespace& ns : m.namespaces) got.push_back(ns.prefix + " " + ns.uri);
    CHECK(got == namespaces);
  }
  if (lists_required) {
    std::vector<std::string> got;
    for (const CpimRequirement& r : m.required) got.push_back(r.ns_uri + " " + r.name);
    CHECK(got == required);
  }
}

// The parsed form, flattened, to compare two parses.
std::string summary(const CpimMessage& m) {
  std::ostringstream out;
  out << m.from.uri << '|' << m.from.formal_name << '|' << uris(m.to).size() << '|' << uris(m.cc).size() << '|'
      << m.datetime.value_or("-") << '|' << m.header_block_size;
  for (const CpimHeader& h : m.headers) out << '\n' << h.line << ' ' << h.ns_uri << ' ' << h.name << ": " << h.value;
  return out.str();
}

std::string message_with(const std::string& extra_header) {
  return "From: <im:bob@beta.test>\r\nTo: <im:alice@alpha.test>\r\n" + extra_header + "\r\n\r\nbody";
}

}  // namespace

TEST_CASE("CPIM messages in testdata/cpim/accept parse as their .expect files say", "[cpim]") {
  auto all = scenarios("accept");
  CHECK(all.size() >= 9);
  for (const Scenario& s : all) {
    INFO(s.name);
    Result<CpimMessage> m = parse_cpim(s.message);
    if (!m) FAIL(m.error().message);
    CHECK_FALSE(s.expect.empty());
    check_accepted(s, *m, s.message);
  }
}

TEST_CASE("CPIM messages in testdata/cpim/reject fail with the error their .expect files name", "[cpim]") {
  auto all = scenarios("reject");
  CHECK(all.size() >= 40);
  for (const Scenario& s : all) {
    INFO(s.name);
    REQUIRE(!s.expect.empty());
    REQUIRE(s.expect[0].rfind("expect: ", 0) == 0);
    std::string expected = s.expect[0].substr(8);
    Result<CpimMessage> m = parse_cpim(s.message);
    REQUIRE_FALSE(m.ok());
    CHECK_THAT(m.error().message, Catch::Contains(expected));
    CHECK(m.error().message.find('\n') == std::string::npos);
  }
}

TEST_CASE("header_block_size points at the MIME object, and no byte after it changes the parse", "[cpim]") {
  std::mt19937 rng(3862);
  for (const Scenario& s : scenarios("accept")) {
    INFO(s.name);
    Result<CpimMessage> m = parse_cpim(s.message);
    REQUIRE(m.ok());
    std::size_t size = m->header_block_size;
    REQUIRE(size >= 4);
    REQUIRE(size <= s.message.size());
    // The block ends with the first CRLF CRLF, and the MIME object follows it.
    std::string text(s.message.begin(), s.message.end());
    CHECK(text.find("\r\n\r\n") + 4 == size);
    CHECK(m->mime_object(s.message).data() == s.message.data() + size);

    // Cut right after the block: same result.
    Bytes block(s.message.begin(), s.message.begin() + static_cast<std::ptrdiff_t>(size));
    Result<CpimMessage> cut = parse_cpim(block);
    REQUIRE(cut.ok());
    CHECK(summary(*cut) == summary(*m));
    CHECK(cut->mime_object(block).empty());

    // Any bytes after the block (binary, NUL, bare LF, fake headers): same result.
    for (int round = 0; round < 20; ++round) {
      Bytes other = block;
      std::size_t extra = rng() % 200;
      for (std::size_t k = 0; k < extra; ++k) other.push_back(static_cast<std::uint8_t>(rng()));
      if (round == 0) {
        std::string fake = "From: <im:ceo@alpha.test>\r\nfrom: x\r\n\r\n";
        other.insert(other.end(), fake.begin(), fake.end());
      }
      Result<CpimMessage> again = parse_cpim(other);
      REQUIRE(again.ok());
      CHECK(summary(*again) == summary(*m));
    }
  }
}

TEST_CASE("CPIM limits: the block size, header count, recipients and line length are budgets", "[cpim]") {
  Bytes message = bytes_of(message_with("Subject: hi"));
  Result<CpimMessage> m = parse_cpim(message);
  REQUIRE(m.ok());
  const std::size_t block = m->header_block_size;

  CHECK(parse_cpim(message, {.max_header_block = block}).ok());
  auto too_small = parse_cpim(message, {.max_header_block = block - 1});
  REQUIRE_FALSE(too_small.ok());
  CHECK_THAT(too_small.error().message, Catch::Contains(fmt::format("longer than {} bytes", block - 1)));
  // Cut inside the final CRLF: still "too long", never a bare CR.
  auto cut_in_crlf = parse_cpim(message, {.max_header_block = block - 3});
  REQUIRE_FALSE(cut_in_crlf.ok());
  CHECK_THAT(cut_in_crlf.error().message, Catch::Contains("longer than"));

  CHECK(parse_cpim(message, {.max_headers = 3}).ok());
  auto headers = parse_cpim(message, {.max_headers = 2});
  REQUIRE_FALSE(headers.ok());
  CHECK_THAT(headers.error().message, Catch::Contains("more than 2 header lines"));

  std::string to_list;
  for (int i = 1; i < 32; ++i) to_list += fmt::format("To: <im:u{}@alpha.test>\r\n", i);
  CHECK(parse_cpim(bytes_of(message_with(to_list + "X-End: 1"))).ok());  // 32 recipients
  auto recipients = parse_cpim(bytes_of(message_with(to_list + "cc: <im:one-more@alpha.test>")));
  REQUIRE_FALSE(recipients.ok());
  CHECK_THAT(recipients.error().message, Catch::Contains("more than 32 recipients"));

  std::string at_limit = "X-Long: " + std::string(998 - 8, 'y');
  CHECK(parse_cpim(bytes_of(message_with(at_limit))).ok());
  auto line = parse_cpim(bytes_of(message_with(at_limit + "y")));
  REQUIRE_FALSE(line.ok());
  CHECK_THAT(line.error().message, Catch::Contains("line 3 is longer than 998 bytes"));
  // A multi-byte character that crosses the limit counts by its bytes.
  CHECK_FALSE(parse_cpim(bytes_of(message_with(at_limit.substr(0, 997) + "\xc3\xa9"))).ok());
}

TEST_CASE("a MIME object too large for the block limit does not matter, a block too large does", "[cpim]") {
  std::string big_body(100 * 1024, 'z');
  CHECK(parse_cpim(bytes_of(message_with("Subject: big") + big_body)).ok());
  std::string filler;
  for (int i = 0; i < 20; ++i) filler += fmt::format("X-Filler-{}: {}\r\n", i, std::string(900, 'f'));
  auto r = parse_cpim(bytes_of(message_with(filler + "X-End: 1")));
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.error().message, Catch::Contains("the header block is longer than 16384 bytes"));
}

TEST_CASE("DateTime must be an RFC 3339 date-time with valid ranges", "[cpim]") {
  for (const char* good : {"2000-12-13T13:40:00-08:00", "2024-02-29T00:00:00Z", "2000-02-29T00:00:00Z",
                           "1999-12-31T23:59:60Z", "2026-01-01t10:00:00.5+14:00", "2026-06-30T12:00:00-00:00"}) {
    INFO(good);
    auto r = parse_cpim(bytes_of(message_with(std::string("DateTime: ") + good)));
    if (!r) FAIL(r.error().message);
    CHECK(*r->datetime == good);
  }
  for (auto [bad, why] : {std::pair{"2026-13-01T00:00:00Z", "month 13"}, std::pair{"2100-02-29T00:00:00Z", "day 29"},
                          std::pair{"2026-04-31T00:00:00Z", "day 31"}, std::pair{"2026-01-01T24:00:00Z", "hour 24"},
                          std::pair{"2026-01-01T10:60:00Z", "minute 60"}, std::pair{"2026-01-01T10:58:60Z", "second 60"},
                          std::pair{"2026-01-01T10:00:00+24:00", "offset out of range"},
                          std::pair{"2026-01-01 10:00:00Z", "YYYY-MM-DDTHH:MM:SS"},
                          std::pair{"26-01-01T10:00:00Z", "YYYY-MM-DDTHH:MM:SS"},
                          std::pair{"2026-01-01T10:00:00.Z", "'.' without digits"},
                          std::pair{"2026-01-01T10:00:00Z ", "text after the time offset"},
                          std::pair{"2026-01-01T10:00:00+0100", "no time offset"}}) {
    INFO(bad);
    auto r = parse_cpim(bytes_of(message_with(std::string("DateTime: ") + bad)));
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Catch::Contains("line 3: DateTime") && Catch::Contains(why));
  }
}

TEST_CASE("parse_user_uri accepts scheme:user@domain and nothing else", "[cpim]") {
  auto im = parse_user_uri("im:Alice.B+x@Alpha.TEST", UriScheme::Im);
  REQUIRE(im.ok());
  CHECK(im->uri == "im:Alice.B+x@Alpha.TEST");
  CHECK(im->user == "Alice.B+x");
  CHECK(im->domain == "alpha.test");
  CHECK(im->formal_name.empty());
  auto pres = parse_user_uri("pres:bob@beta.test", UriScheme::Pres);
  REQUIRE(pres.ok());
  CHECK(pres->domain == "beta.test");
  CHECK(parse_user_uri("im:" + std::string(64, 'u') + "@alpha.test", UriScheme::Im).ok());
  CHECK(parse_user_uri("im:!$&'*+-=_~@alpha.test", UriScheme::Im).ok());

  using namespace std::string_view_literals;
  for (auto [uri, scheme, why] : {
           std::tuple{"pres:bob@beta.test"sv, UriScheme::Im, "is not an im: URI"},
           std::tuple{"im:bob@beta.test"sv, UriScheme::Pres, "is not a pres: URI"},
           std::tuple{"Im:bob@beta.test"sv, UriScheme::Im, "in lower case"},
           std::tuple{"im:bob"sv, UriScheme::Im, "has no '@'"},
           std::tuple{"im:a@b@beta.test"sv, UriScheme::Im, "has 2 '@'"},
           std::tuple{"im:@beta.test"sv, UriScheme::Im, "empty user part"},
           std::tuple{"im:bob@"sv, UriScheme::Im, "empty domain"},
           std::tuple{"im:ceo\0@evil.test"sv, UriScheme::Im, "U+0000 (NUL) in the user part"},
           std::tuple{"im:ceo\r@evil.test"sv, UriScheme::Im, "U+000D (CR) in the user part"},
           std::tuple{"im:c>o@evil.test"sv, UriScheme::Im, "'>' in the user part"},
           std::tuple{"im:c\xc3\xa9o@evil.test"sv, UriScheme::Im, "the byte 0xc3 in the user part"},
           std::tuple{"im:c%40o@evil.test"sv, UriScheme::Im, "percent-encoding"},
           std::tuple{"im:bob@beta.test?body=x"sv, UriScheme::Im, "'?' in the domain"},
           std::tuple{"im:bob@beta.test;x"sv, UriScheme::Im, "';' in the domain"},
           std::tuple{"im:bob@beta..test"sv, UriScheme::Im, "empty label"},
           std::tuple{"im:bob@-beta.test"sv, UriScheme::Im, "starts or ends with '-'"},
           std::tuple{"im:bob@beta.test."sv, UriScheme::Im, "ending with '.'"},
           std::tuple{"im:bob.@beta.test"sv, UriScheme::Im, "starts or ends with '.'"},
           std::tuple{"im:b..b@beta.test"sv, UriScheme::Im, "has '..'"},
           std::tuple{"im:bob @beta.test"sv, UriScheme::Im, "a space in the user part"},
       }) {
    INFO(uri);
    auto r = parse_user_uri(uri, scheme);
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Catch::Contains(why));
    // The error quotes the URI with every non-printable byte escaped.
    CHECK(std::all_of(r.error().message.begin(), r.error().message.end(),
                      [](char c) { return c >= 0x20 && c < 0x7f; }));
  }
  auto long_user = parse_user_uri("im:" + std::string(65, 'u') + "@alpha.test", UriScheme::Im);
  REQUIRE_FALSE(long_user.ok());
  CHECK_THAT(long_user.error().message, Catch::Contains("longer than 64"));
}

TEST_CASE("Require: a header the caller does not understand is named in the error", "[cpim]") {
  auto example = parse_cpim(read_bytes(cpim_dir() / "accept" / "rfc3862-section6.cpim"));
  REQUIRE(example.ok());
  REQUIRE(example->required.size() == 1);
  CHECK(example->required[0].written == "MyFeatures.VitalMessageOption");
  Status not_understood = check_required(*example, imdn_header_names());
  REQUIRE_FALSE(not_understood.ok());
  CHECK_THAT(not_understood.error().message, Catch::Contains("requires header 'MyFeatures.VitalMessageOption'"));
  const CpimHeaderName vital{"mid:MessageFeatures@id.foo.com", "VitalMessageOption"};
  CHECK(check_required(*example, {&vital, 1}).ok());

  auto imdn = parse_cpim(read_bytes(cpim_dir() / "accept" / "rfc5438-imdn-notification.cpim"));
  REQUIRE(imdn.ok());
  CHECK(check_required(*imdn, imdn_header_names()).ok());
  Status without = check_required(*imdn, {});
  REQUIRE_FALSE(without.ok());
  CHECK_THAT(without.error().message, Catch::Contains("'imdn.Message-ID'"));

  // An unprefixed name that is not a core header is not understood by default.
  auto custom = parse_cpim(bytes_of(message_with("Require: X-Custom")));
  REQUIRE(custom.ok());
  CHECK_FALSE(check_required(*custom, {}).ok());
  auto core = parse_cpim(bytes_of(message_with("Require: DateTime,Subject")));
  REQUIRE(core.ok());
  CHECK(check_required(*core, {}).ok());
}

TEST_CASE("escapes in values: only the RFC 3862 ones, never a control character", "[cpim]") {
  auto ok = parse_cpim(bytes_of(message_with("Subject: caf\\u00E9 \\\\ \\\" \\'")));
  REQUIRE(ok.ok());
  CHECK(ok->subjects.at(0).text == "caf\xc3\xa9 \\ \" '");
  CHECK(ok->headers.back().value == "caf\\u00E9 \\\\ \\\" \\'");  // kept as written
  for (auto [value, why] : {std::pair{"Subject: a\\x", "'\\' before 'x' is not an escape"},
                            std::pair{"Subject: a\\\xc3\xa9", "'\\' before U+00E9 is not an escape"},
                            std::pair{"Subject: a\\", "a '\\' ends the value"},
                            std::pair{"Subject: a\\u12", "four hexadecimal digits"},
                            std::pair{"Subject: \\uD800", "surrogate"},
                            std::pair{"Subject: \\u009B", "U+009B"},
                            std::pair{"Subject: \\u2029", "line separator U+2029"},
                            std::pair{"X-Other: \\t", "stands for a control character"},
                            std::pair{"From: \"a\\rb\" <im:c@d.test>", "stands for a control character"}}) {
    INFO(value);
    auto r = parse_cpim(bytes_of(message_with(value)));
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Catch::Contains(why));
  }
}

TEST_CASE("every prefix and every one-byte change of an accepted message is an error or a parse, never a crash",
          "[cpim]") {
  for (const Scenario& s : scenarios("accept")) {
    INFO(s.name);
    for (std::size_t n = 0; n < s.message.size(); ++n) {
      Bytes prefix(s.message.begin(), s.message.begin() + static_cast<std::ptrdiff_t>(n));
      (void)parse_cpim(prefix);
    }
    for (std::size_t i = 0; i < std::min<std::size_t>(s.message.size(), 400); ++i) {
      for (std::uint8_t b : {0x00, 0x09, 0x0a, 0x0d, 0x20, 0x3c, 0x3e, 0x40, 0x5c, 0x80, 0xc3, 0xff}) {
        Bytes changed = s.message;
        changed[i] = b;
        auto r = parse_cpim(changed);
        if (r) CHECK(r->header_block_size <= changed.size());
      }
    }
  }
}
