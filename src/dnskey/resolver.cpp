#include "dnskey/resolver.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "common/ldns.h"
#include <unbound.h>

#include "common/c_handles.h"
#include "common/log.h"
#include "common/uv_handle.h"
#include "dnskey/domain_name.h"

namespace keyfed {

struct KeyResolver::Context {
  /// Where libunbound's own log goes once the context runs: keyfed logs the
  /// outcomes itself. Declared first: closed after libunbound is gone.
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> quiet{nullptr, &std::fclose};
  UbCtxPtr ub;
  UvHandle<uv_poll_t> poll;  // declared last: closed before the context is deleted
};

struct KeyResolver::Query {
  KeyResolver* owner = nullptr;
  QueryId id = 0;
  std::string name;
  std::uint16_t type = 0;
  AnswerCallback callback;
  int async_id = 0;       // libunbound's id while the query is with libunbound, else 0
  std::string failure;    // set when libunbound would not take the query
  UvHandle<uv_timer_t> deadline;
};

namespace {

Status check_config_text(const std::string& text, std::string_view what) {
  if (text.find_first_of("\"\n\r") != std::string::npos) {
    return make_error("{} '{}' contains a quote or line break", what, text);
  }
  return ok_status();
}

// libunbound's configuration for the testbed (docs/TESTBED.md, "Resolver"):
// every zone file is an auth-zone consulted instead of name servers, every
// other name is refused locally, and no name server address may be queried,
// so nothing ever leaves the machine.
Result<std::string> unbound_config_text(const ResolverConfig& config) {
  std::string text =
      "server:\n"
      "  use-syslog: no\n"  // keyfed logs outcomes itself (libunbound's log: see prepare())
      "  val-log-level: 2\n";       // fills why_bogus
  // docs/SECURITY.md, "Budgets": libunbound's own memory is bounded by its
  // caches; these are its defaults, written down so that they are ours too.
  text += "  msg-cache-size: 4m\n  rrset-cache-size: 4m\n  key-cache-size: 4m\n  neg-cache-size: 1m\n";
  if (config.mode == ResolverMode::Production && config.upstream_ratelimit > 0) {
    text += fmt::format("  ratelimit: {}\n", config.upstream_ratelimit);
  }
  if (config.mode == ResolverMode::Testbed) {
    text += "  local-zone: \"test.\" nodefault\n";  // RFC 6761 name, blocked by default
    // A repaired zone validates again within seconds, not after libunbound's
    // default minute of remembering it bogus: testbeds break and repair
    // zones on purpose (docs/TESTBED.md, "Resolver").
    text += "  val-bogus-ttl: 5\n";
    if (!config.server.empty()) {
      // One authoritative server holds every testbed zone: it is asked
      // everything (with RD set; it answers from whichever zone is closest),
      // on loopback, which libunbound refuses to query unless told.
      if (Status s = check_config_text(config.server, "testbed server"); !s) return s.error();
      text += "  do-not-query-localhost: no\n";
      // The server is stopped and started on purpose (a DNS outage): it is
      // probed again within seconds, not written off for libunbound's 15 minutes.
      text += "  infra-host-ttl: 5\n  infra-keep-probing: yes\n";
      text += fmt::format("forward-zone:\n  name: \".\"\n  forward-addr: {}\n", config.server);
      return text;
    }
    text += "  local-zone: \".\" refuse\n";
    // Delegations to zones that were not loaded must fail at once, not wait
    // on name servers: the testbed sends no packet anywhere.
    text += "  do-not-query-address: 0.0.0.0/0\n  do-not-query-address: ::/0\n";
    for (const ZoneFile& zone : config.zones) {
      text += fmt::format("  local-zone: \"{}.\" transparent\n", zone.origin);
    }
    for (const ZoneFile& zone : config.zones) {
      std::string path = std::filesystem::absolute(zone.path).string();
      if (Status s = check_config_text(path, "zone file path"); !s) return s.error();
      text += fmt::format(
          "auth-zone:\n  name: \"{}.\"\n  zonefile: \"{}\"\n"
          "  for-upstream: yes\n  for-downstream: no\n  fallback-enabled: no\n",
          zone.origin, path);
    }
  }
  return text;
}

// ub_ctx_config() reads a file, so the generated text goes through a private
// temporary one that is removed at once.
Status load_unbound_config(ub_ctx* ub, const std::string& text) {
  const char* tmpdir = std::getenv("TMPDIR");
  std::string path = fmt::format("{}/keyfed-unbound-XXXXXX", tmpdir != nullptr ? tmpdir : "/tmp");
  int fd = mkstemp(path.data());
  if (fd < 0) return make_error("cannot create a temporary file for libunbound's configuration");
  bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  int err = written ? ub_ctx_config(ub, path.c_str()) : UB_NOMEM;
  ::unlink(path.c_str());
  if (!written) return make_error("cannot write libunbound's configuration to {}", path);
  if (err != 0) return make_error("libunbound rejected its configuration: {}", ub_strerror(err));
  return ok_status();
}

}  // namespace

Result<std::unique_ptr<KeyResolver>> KeyResolver::create(uv_loop_t* loop, ResolverConfig config) {
  auto resolver = std::unique_ptr<KeyResolver>(new KeyResolver(loop, std::move(config), nullptr));
  if (Status s = resolver->reload(resolver->config_); !s) return s.error();  // checks the config first
  return resolver;
}

KeyResolver::KeyResolver(uv_loop_t* loop, ResolverConfig config, std::unique_ptr<Context> context)
    : loop_(loop), config_(std::move(config)), context_(std::move(context)) {}

KeyResolver::~KeyResolver() {
  for (auto& [id, query] : queries_) {
    if (query->async_id != 0 && context_) ub_cancel(context_->ub.get(), query->async_id);
  }
  queries_.clear();
}

KeyResolver::Prepared::Prepared(ResolverConfig config, std::unique_ptr<Context> context)
    : config_(std::move(config)), context_(std::move(context)) {}
KeyResolver::Prepared::~Prepared() = default;
KeyResolver::Prepared::Prepared(Prepared&&) noexcept = default;
KeyResolver::Prepared& KeyResolver::Prepared::operator=(Prepared&&) noexcept = default;

Result<KeyResolver::Prepared> KeyResolver::prepare(ResolverConfig config) const {
  if (Status s = check_resolver_config(config); !s) return s.error();
  Result<std::string> text = unbound_config_text(config);
  if (!text) return text.error();

  auto context = std::make_unique<Context>();
  context->ub.reset(ub_ctx_create());
  if (!context->ub) return make_error("cannot create a libunbound context");
  ub_ctx* ub = context->ub.get();
  // libunbound works on its own thread and hands results back through a pipe.
  if (int err = ub_ctx_async(ub, 1); err != 0) {
    return make_error("libunbound cannot run asynchronously: {}", ub_strerror(err));
  }
  if (Status s = load_unbound_config(ub, *text); !s) return s.error();
  if (int err = ub_ctx_add_ta_file(ub, config.trust_anchor.c_str()); err != 0) {
    return make_error("{}: libunbound rejected the trust anchor: {}", config.trust_anchor.string(),
                      ub_strerror(err));
  }
  for (const std::string& forwarder : config.forwarders) {
    if (int err = ub_ctx_set_fwd(ub, forwarder.c_str()); err != 0) {
      return make_error("forwarder '{}': {}", forwarder, ub_strerror(err));
    }
  }

  // libunbound reads its zone files only when a first query finalizes the
  // context: ask it now a name it answers locally (the default localhost
  // zone; nothing leaves the machine), so that a zone file libunbound cannot
  // load refuses the reload here rather than failing every lookup after it.
  // What libunbound says while it loads goes to a private file, for the error.
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> log(std::tmpfile(), &std::fclose);
  if (log) ub_ctx_debugout(ub, log.get());
  ub_result* probe_raw = nullptr;
  int probe = ub_resolve(ub, "localhost.", LDNS_RR_TYPE_A, LDNS_RR_CLASS_IN, &probe_raw);
  UbResultPtr probe_result(probe_raw);
  context->quiet.reset(std::fopen("/dev/null", "w"));
  ub_ctx_debugout(ub, context->quiet.get());
  if (probe != 0) {
    std::string said;
    if (log) {
      std::rewind(log.get());
      char line[512];
      while (std::fgets(line, sizeof line, log.get()) != nullptr) {
        std::string_view l(line);
        if (l.find("error") == std::string_view::npos) continue;
        while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.remove_suffix(1);
        said += fmt::format("{}{}", said.empty() ? "" : "; ", l.substr(l.find("error")));
      }
    }
    return make_error("libunbound cannot start with this configuration: {}{}", ub_strerror(probe),
                      said.empty() ? " (a zone or trust anchor file it could not load?)" : ": " + said);
  }

  context->poll = make_uv_handle<uv_poll_t>();
  if (int err = uv_poll_init(loop_, context->poll.get(), ub_fd(ub)); err != 0) {
    delete context->poll.release();  // never initialised, so it must not be uv_close()d
    return make_error("cannot watch libunbound's result pipe: {}", uv_strerror(err));
  }
  context->poll->data = context->ub.get();
  return Prepared(std::move(config), std::move(context));
}

void KeyResolver::commit(Prepared prepared) {
  uv_poll_start(prepared.context_->poll.get(), UV_READABLE, [](uv_poll_t* handle, int status, int) {
    if (status < 0) {
      log_at(LogLevel::Warning, "libunbound result pipe: {}", uv_strerror(status));
      return;
    }
    ub_process(static_cast<ub_ctx*>(handle->data));  // runs on_unbound_result for each answer
  });
  // Move pending queries over: cancel them on the old context, resend on the new.
  for (auto& [id, query] : queries_) {
    if (query->async_id != 0 && context_) ub_cancel(context_->ub.get(), query->async_id);
    query->async_id = 0;
  }
  context_ = std::move(prepared.context_);
  config_ = std::move(prepared.config_);
  for (auto& [id, query] : queries_) {
    if (query->failure.empty()) submit(*query);
  }
}

Status KeyResolver::reload(ResolverConfig config) {
  Result<Prepared> prepared = prepare(std::move(config));
  if (!prepared) return prepared.error();
  commit(std::move(prepared).value());
  return ok_status();
}

KeyResolver::QueryId KeyResolver::resolve(const std::string& domain, Callback callback) {
  std::size_t max_key_records = config_.max_key_records;
  return query(key_owner_name(domain), LDNS_RR_TYPE_KEY,
               [this, domain, max_key_records, callback = std::move(callback)](const ub_result* answer,
                                                                                const std::string& failure) {
                 callback(answer != nullptr ? classify_answer(domain, *answer, max_key_records, &memo_)
                                            : temp_fail(domain, failure));
               });
}

KeyResolver::QueryId KeyResolver::query(const std::string& name, std::uint16_t type, AnswerCallback callback) {
  auto pending = std::make_unique<Query>();
  pending->owner = this;
  pending->id = next_id_++;
  pending->name = name;
  pending->type = type;
  pending->callback = std::move(callback);
  pending->deadline = make_uv_handle<uv_timer_t>();
  uv_timer_init(loop_, pending->deadline.get());
  pending->deadline->data = pending.get();

  Query& ref = *pending;
  queries_.emplace(ref.id, std::move(pending));
  submit(ref);

  // The deadline also delivers a submit failure, so callbacks never run
  // inside resolve().
  auto timeout = ref.failure.empty() ? static_cast<std::uint64_t>(config_.query_timeout.count()) : 0;
  uv_timer_start(ref.deadline.get(), [](uv_timer_t* timer) {
    auto* q = static_cast<Query*>(timer->data);
    KeyResolver* self = q->owner;
    if (q->async_id != 0) ub_cancel(self->context_->ub.get(), q->async_id);
    q->async_id = 0;
    std::string reason = !q->failure.empty()
        ? q->failure
        : fmt::format("no answer within {} ms", self->config_.query_timeout.count());
    self->finish(q->id, nullptr, reason);
  }, timeout, 0);
  return ref.id;
}

void KeyResolver::submit(Query& query) {
  int async_id = 0;
  int err = ub_resolve_async(context_->ub.get(), query.name.c_str(), query.type, LDNS_RR_CLASS_IN,
                             &query, &KeyResolver::on_unbound_result, &async_id);
  if (err != 0) {
    query.failure = fmt::format("libunbound could not start the query: {}", ub_strerror(err));
    return;
  }
  query.async_id = async_id;
  ++queries_sent_;
}

void KeyResolver::on_unbound_result(void* data, int err, ub_result* raw) {
  UbResultPtr result(raw);
  auto* query = static_cast<Query*>(data);
  query->async_id = 0;
  if (err != 0 || !result) {
    query->owner->finish(query->id, nullptr, fmt::format("libunbound: {}", ub_strerror(err)));
  } else {
    query->owner->finish(query->id, result.get(), "");
  }
}

void KeyResolver::cancel(QueryId id) {
  auto it = queries_.find(id);
  if (it == queries_.end()) return;
  if (it->second->async_id != 0) ub_cancel(context_->ub.get(), it->second->async_id);
  queries_.erase(it);
}

void KeyResolver::finish(QueryId id, const ub_result* answer, const std::string& failure) {
  auto it = queries_.find(id);
  if (it == queries_.end()) return;
  AnswerCallback callback = std::move(it->second->callback);
  queries_.erase(it);  // before the callback, which may resolve again
  callback(answer, failure);
}

}  // namespace keyfed
