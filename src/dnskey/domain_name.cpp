#include "dnskey/domain_name.h"

#include <cctype>

namespace keyfed {
namespace {

constexpr std::size_t kMaxNameLength = 253;  // RFC 1035 2.3.4, in presentation form
constexpr std::size_t kMaxLabelLength = 63;

bool is_ldh(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-';
}

}  // namespace

Result<std::string> normalize_domain(std::string_view input) {
  std::string_view name = input;
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty()) return make_error("domain name '{}' is empty", input);
  if (name.size() > kMaxNameLength) {
    return make_error("domain name '{}' is longer than {} characters", input, kMaxNameLength);
  }
  std::string out;
  out.reserve(name.size());
  std::size_t label_start = 0;
  while (label_start <= name.size()) {
    std::size_t dot = name.find('.', label_start);
    if (dot == std::string_view::npos) dot = name.size();
    std::string_view label = name.substr(label_start, dot - label_start);
    if (label.empty()) return make_error("domain name '{}' has an empty label", input);
    if (label.size() > kMaxLabelLength) {
      return make_error("domain name '{}': label '{}' is longer than {} characters", input, label,
                        kMaxLabelLength);
    }
    for (char c : label) {
      if (!is_ldh(c)) {
        return make_error("domain name '{}': label '{}' has the character '{}' (only letters, "
                          "digits and '-' are allowed)",
                          input, label, c);
      }
    }
    if (label.front() == '-' || label.back() == '-') {
      return make_error("domain name '{}': label '{}' starts or ends with '-'", input, label);
    }
    if (!out.empty()) out.push_back('.');
    for (char c : label) out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    label_start = dot + 1;
  }
  return out;
}

std::string key_owner_name(std::string_view domain) {
  std::string owner = "_impp._tcp.";
  owner.append(domain);
  owner.push_back('.');
  return owner;
}

}  // namespace keyfed
