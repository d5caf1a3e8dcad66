// Per-user allow and deny lists (docs/STORE.md, "Authorization"): who may
// watch a user's presence, and who may write to a user's inbox. Entries name
// one user (`bob@beta.test`) or a whole domain (`*@beta.test`); deny wins
// over allow; whoever no entry names gets the configured default ([policy]
// presence_default, inbox_default). The lists are kept in the store as
// records; this class is their in-memory index and the one place the rule
// is written.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "common/result.h"
#include "config/node_config.h"

namespace keyfed {

enum class AccessList { Presence, Inbox };
enum class AccessVerdict { Allow, Deny };

std::string_view access_list_name(AccessList list);
std::optional<AccessList> access_list_from_string(std::string_view text);
std::string_view access_verdict_name(AccessVerdict verdict);

/// "bob@beta.test", "im:bob@beta.test", "pres:bob@beta.test" -> "bob@beta.test";
/// "*@beta.test" -> "*@beta.test" (domains lower-cased). An error names what
/// is wrong with anything else.
Result<std::string> normalize_access_pattern(std::string_view text);

struct AccessEntry {
  std::string pattern;  ///< "bob@beta.test" or "*@beta.test"
  AccessVerdict verdict = AccessVerdict::Allow;
};

class AccessLists {
 public:
  /// The store record kind the lists are kept under.
  static constexpr std::string_view kRecordKind = "acl";

  explicit AccessLists(AccessDefaults defaults) : defaults_(defaults) {}
  void set_defaults(AccessDefaults defaults) { defaults_ = defaults; }

  /// Replaces the lists with the store's records (kRecordKind). Records that
  /// do not parse are skipped and named in the result's errors.
  std::vector<std::string> load(const std::vector<std::pair<std::string, std::string>>& records);

  /// Does `owner`'s `list` let `user@domain` in? A user is always allowed
  /// to itself.
  bool loaded() const { return loaded_; }
  bool allowed(const std::string& owner, AccessList list, std::string_view user, std::string_view domain) const;

  /// Sets (or with nullopt removes) `owner`'s entry for `pattern`.
  void set(const std::string& owner, AccessList list, const std::string& pattern, std::optional<AccessVerdict> verdict);
  std::vector<AccessEntry> entries(const std::string& owner, AccessList list) const;

  /// The record key and value that keep an entry in the store.
  static std::string record_key(const std::string& owner, AccessList list, const std::string& pattern);
  static std::string record_value(std::optional<AccessVerdict> verdict);

 private:
  AccessDefaults defaults_;
  bool loaded_ = false;
  // (owner, list) -> pattern -> verdict
  std::map<std::pair<std::string, AccessList>, std::map<std::string, AccessVerdict>> lists_;
};

}  // namespace keyfed
