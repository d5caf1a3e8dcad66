#include "federation/cpim.h"

#include <optional>
#include <string_view>

#include "dnskey/domain_name.h"

namespace keyfed {
namespace {

constexpr std::size_t kMaxHeaderBlock = 16 * 1024;

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

}  // namespace

Result<CpimAddress> parse_im_uri(std::string_view uri) {
  std::string_view rest;
  if (uri.starts_with("im:")) {
    rest = uri.substr(3);
  } else if (uri.starts_with("pres:")) {
    rest = uri.substr(5);
  } else {
    return make_error("address '{}' is not an im: or pres: URI", uri);
  }
  auto at = rest.rfind('@');
  if (at == std::string_view::npos || at == 0) return make_error("address '{}' has no user@domain", uri);
  Result<std::string> domain = normalize_domain(rest.substr(at + 1));
  if (!domain) return make_error("address '{}': {}", uri, domain.error().message);
  return CpimAddress{std::string(uri), std::string(rest.substr(0, at)), std::move(domain).value()};
}

Result<CpimRouting> parse_cpim_routing(std::span<const std::uint8_t> message) {
  std::string_view text(reinterpret_cast<const char*>(message.data()),
                        std::min(message.size(), kMaxHeaderBlock));
  std::optional<CpimAddress> from;
  std::vector<CpimAddress> to;
  std::size_t pos = 0;
  bool ended = false;
  while (pos < text.size()) {
    std::size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) break;
    std::string_view line = text.substr(pos, eol - pos);
    pos = eol + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) {
      ended = true;
      break;
    }
    auto colon = line.find(':');
    if (colon == std::string_view::npos) return make_error("CPIM header line without ':'");
    std::string_view name = line.substr(0, colon);
    std::string_view value = trim(line.substr(colon + 1));
    if (name != "From" && name != "To") continue;
    auto open = value.find('<');
    auto close = value.rfind('>');
    if (open != std::string_view::npos && close != std::string_view::npos && close > open) {
      value = value.substr(open + 1, close - open - 1);
    }
    Result<CpimAddress> address = parse_im_uri(value);
    if (!address) return make_error("CPIM {} header: {}", name, address.error().message);
    if (name == "From") {
      if (from) return make_error("CPIM message has two From headers");
      from = std::move(address).value();
    } else {
      to.push_back(std::move(address).value());
    }
  }
  if (!ended) return make_error("CPIM message headers do not end with an empty line");
  if (!from) return make_error("CPIM message has no From header");
  if (to.empty()) return make_error("CPIM message has no To header");
  return CpimRouting{std::move(*from), std::move(to)};
}

}  // namespace keyfed
