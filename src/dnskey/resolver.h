// KeyResolver: asynchronous, validating lookup of a domain's KEY RRset on the
// node's libuv loop (docs/KEYS.md, "Resolution"), and of the other records a
// node needs from the same validated view of DNS (discovery's SRV, A, AAAA).
//
// One libunbound context per resolver, running its work on libunbound's own
// thread; its result pipe is watched with uv_poll, so the loop never blocks on
// DNS. Every query has a deadline; past it the query is cancelled and answered
// TempFail.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

#include <uv.h>

#include "common/result.h"
#include "dnskey/key_answer.h"
#include "dnskey/resolver_config.h"

namespace keyfed {

class KeyResolver {
  struct Context;

 public:
  using QueryId = std::uint64_t;
  /// Receives the classified answer, always on the loop and never from inside
  /// resolve() itself.
  using Callback = std::function<void(DomainKeys)>;

  /// Builds the libunbound context from `config` (checked with
  /// check_resolver_config first). The loop must outlive the resolver.
  static Result<std::unique_ptr<KeyResolver>> create(uv_loop_t* loop, ResolverConfig config);

  /// Drops pending queries without calling their callbacks. Handles are
  /// closed; run the loop once more to release them.
  ~KeyResolver();
  KeyResolver(const KeyResolver&) = delete;
  KeyResolver& operator=(const KeyResolver&) = delete;

  /// Looks up the KEY RRset of `domain` (normalized, see normalize_domain).
  /// The callback runs exactly once, unless the query is cancelled first.
  QueryId resolve(const std::string& domain, Callback callback);

  /// Receives libunbound's answer (valid only during the call), or nullptr
  /// and the reason there is none (deadline, libunbound error).
  using AnswerCallback = std::function<void(const struct ub_result* answer, const std::string& failure)>;
  /// Any query (discovery's SRV, A and AAAA), with the same deadline and
  /// callback guarantees as resolve(). `name` is absolute ("x.test.").
  QueryId query(const std::string& name, std::uint16_t type, AnswerCallback callback);

  /// Forgets a pending query; its callback will not run. Unknown ids are ignored.
  void cancel(QueryId id);

  /// A libunbound context built from a configuration, not in service yet.
  /// Reloading in two steps lets a daemon prepare every part of a new
  /// configuration and then commit all of them or none (docs/CLI.md, SIGHUP).
  class Prepared {
   public:
    ~Prepared();
    Prepared(Prepared&&) noexcept;
    Prepared& operator=(Prepared&&) noexcept;
    const ResolverConfig& config() const { return config_; }

   private:
    friend class KeyResolver;
    Prepared(ResolverConfig config, std::unique_ptr<Context> context);
    ResolverConfig config_;
    std::unique_ptr<Context> context_;
  };

  /// Checks `config` and builds a context from it (re-reading zone files and
  /// trust anchors); the running context is not touched.
  Result<Prepared> prepare(ResolverConfig config) const;
  /// Puts a prepared context in service. Pending queries move to it and keep
  /// their deadlines; the old context is dropped.
  void commit(Prepared prepared);
  /// prepare() then commit(); on error the old context stays in service.
  Status reload(ResolverConfig config);

  const ResolverConfig& config() const { return config_; }
  std::size_t pending() const { return queries_.size(); }
  /// The memory of decoded KEY RDATA (its hits show what it saved).
  const KeyRecordMemo& decoded_keys() const { return memo_; }
  /// Queries sent to libunbound since creation (reissues after reload included).
  std::uint64_t queries_sent() const { return queries_sent_; }

 private:
  struct Query;

  KeyResolver(uv_loop_t* loop, ResolverConfig config, std::unique_ptr<Context> context);
  void submit(Query& query);
  void finish(QueryId id, const struct ub_result* answer, const std::string& failure);
  static void on_unbound_result(void* data, int err, struct ub_result* result);

  uv_loop_t* loop_;
  ResolverConfig config_;
  KeyRecordMemo memo_;  // decoded KEY RDATA, shared by every answer
  std::unique_ptr<Context> context_;
  std::unordered_map<QueryId, std::unique_ptr<Query>> queries_;
  QueryId next_id_ = 1;
  std::uint64_t queries_sent_ = 0;
};

}  // namespace keyfed
