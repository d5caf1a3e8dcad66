// The embedded store: one SQLite database file (docs/STORE.md). WAL,
// prepared statements, a versioned schema migrated on open. The loop never
// touches the database: calls are queued to one writer thread, which commits
// everything queued so far in one transaction (group commit), then hands the
// completions back to the loop through a uv_async_t.
#pragma once

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <memory>

#include <uv.h>

#include "common/result.h"
#include "store/store.h"

namespace keyfed {

/// The schema version this binary writes (PRAGMA user_version). A database
/// with a higher version is refused: an older binary must not write a newer
/// schema it does not understand.
inline constexpr int kStoreSchemaVersion = 1;

/// SQLite's synchronous setting in WAL mode (docs/STORE.md, "Durability").
enum class StoreSync {
  Full,    ///< every commit is on disk before it completes: survives power loss
  Normal,  ///< survives a crash of the process, not of the machine
};

struct SqliteStoreOptions {
  std::filesystem::path path;
  StoreSync synchronous = StoreSync::Full;
  /// Delivered and failed queue entries, and replay identities, are kept
  /// this long after they finish (at least as long as the delivery lifetime).
  std::chrono::seconds retention{7 * 24 * 3600};
  std::size_t max_batch = 1024;  ///< calls committed in one transaction at most
  /// Calls waiting for the writer at most (docs/STORE.md, "Budgets"): more
  /// are answered at once with an error (a peer's MESSAGE then gets NACK
  /// TemporaryFailure), so a disk slower than the traffic costs no memory.
  std::size_t max_pending = 100000;
};

/// Opens (creating if needed, 0600) and migrates the database, takes its
/// lock (one node per file), and starts the writer thread. Errors name the
/// file and the reason: not a keyfed database, a newer schema, locked by
/// another process, corrupt, unwritable.
Result<std::unique_ptr<MessageStore>> open_sqlite_store(uv_loop_t* loop, const SqliteStoreOptions& options);

}  // namespace keyfed
