#include "dnskey/key_json.h"

#include "dnskey/key_record.h"

namespace keyfed {

nlohmann::json key_answer_json(const CachedKeys& entry, TimePoint now) {
  const DomainKeys& a = entry.answer;
  nlohmann::json keys = nlohmann::json::array();
  for (const FederationKey& key : a.keys) {
    keys.push_back({{"algorithm", key.algorithm},
                    {"algorithm_name", algorithm_name(key.algorithm)},
                    {"key_tag", key.key_tag},
                    {"key", key.key_base64()},
                    {"spki_sha256", key.spki_sha256}});
  }
  nlohmann::json skipped = nlohmann::json::array();
  for (const SkippedRecord& s : a.skipped) skipped.push_back({{"record", s.record}, {"reason", s.reason}});
  nlohmann::json out = {{"domain", a.domain},
                        {"outcome", std::string(to_string(a.outcome))},
                        {"keys", std::move(keys)},
                        {"ttl", a.ttl},
                        {"expires_in", entry.remaining_seconds(now)},
                        {"skipped", std::move(skipped)},
                        {"aliases", a.aliases},
                        {"wildcard", a.wildcard}};
  if (!a.reason.empty()) out["reason"] = a.reason;
  return out;
}

}  // namespace keyfed
