#include "daemon/access_lists.h"

#include <fmt/format.h>

#include "common/log.h"
#include "federation/cpim.h"

namespace keyfed {

std::string_view access_list_name(AccessList list) { return list == AccessList::Presence ? "presence" : "inbox"; }

std::optional<AccessList> access_list_from_string(std::string_view text) {
  if (text == "presence") return AccessList::Presence;
  if (text == "inbox") return AccessList::Inbox;
  return std::nullopt;
}

std::string_view access_verdict_name(AccessVerdict verdict) { return verdict == AccessVerdict::Allow ? "allow" : "deny"; }

Result<std::string> normalize_access_pattern(std::string_view text) {
  std::string_view bare = text;
  for (std::string_view scheme : {"im:", "pres:"}) {
    if (bare.starts_with(scheme)) bare.remove_prefix(scheme.size());
  }
  bool whole_domain = bare.starts_with("*@");
  // A domain pattern is checked as if it named a user: the same domain rules.
  std::string probe = "im:" + (whole_domain ? "x" + std::string(bare.substr(1)) : std::string(bare));
  Result<CpimAddress> address = parse_user_uri(probe, UriScheme::Im);
  if (!address) {
    return make_error("{} is not user@domain or *@domain", untrusted(text));
  }
  return fmt::format("{}@{}", whole_domain ? "*" : address->user, address->domain);
}

std::vector<std::string> AccessLists::load(const std::vector<std::pair<std::string, std::string>>& records) {
  lists_.clear();
  std::vector<std::string> errors;
  for (const auto& [key, value] : records) {
    // "owner list pattern"
    auto first = key.find(' ');
    auto second = first == std::string::npos ? first : key.find(' ', first + 1);
    std::optional<AccessList> list =
        second == std::string::npos ? std::nullopt : access_list_from_string(key.substr(first + 1, second - first - 1));
    if (!list || (value != "allow" && value != "deny")) {
      errors.push_back(fmt::format("access list record {} = {} is not understood", untrusted(key), untrusted(value)));
      continue;
    }
    lists_[{key.substr(0, first), *list}][key.substr(second + 1)] =
        value == "allow" ? AccessVerdict::Allow : AccessVerdict::Deny;
  }
  loaded_ = true;
  return errors;
}

bool AccessLists::allowed(const std::string& owner, AccessList list, std::string_view user,
                          std::string_view domain) const {
  std::string who = fmt::format("{}@{}", user, domain);
  if (who == owner) return true;
  bool allow = false;
  if (auto it = lists_.find({owner, list}); it != lists_.end()) {
    for (const std::string& pattern : {who, fmt::format("*@{}", domain)}) {
      auto entry = it->second.find(pattern);
      if (entry == it->second.end()) continue;
      if (entry->second == AccessVerdict::Deny) return false;  // deny wins
      allow = true;
    }
  }
  return allow || (list == AccessList::Presence ? defaults_.presence_allow : defaults_.inbox_allow);
}

void AccessLists::set(const std::string& owner, AccessList list, const std::string& pattern,
                      std::optional<AccessVerdict> verdict) {
  auto& entries = lists_[{owner, list}];
  if (verdict) {
    entries[pattern] = *verdict;
  } else {
    entries.erase(pattern);
    if (entries.empty()) lists_.erase({owner, list});
  }
}

std::vector<AccessEntry> AccessLists::entries(const std::string& owner, AccessList list) const {
  std::vector<AccessEntry> out;
  if (auto it = lists_.find({owner, list}); it != lists_.end()) {
    for (const auto& [pattern, verdict] : it->second) out.push_back({pattern, verdict});
  }
  return out;
}

std::string AccessLists::record_key(const std::string& owner, AccessList list, const std::string& pattern) {
  return fmt::format("{} {} {}", owner, access_list_name(list), pattern);
}

std::string AccessLists::record_value(std::optional<AccessVerdict> verdict) {
  return verdict ? std::string(access_verdict_name(*verdict)) : std::string();
}

}  // namespace keyfed
