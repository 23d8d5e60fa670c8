//! Helpers shared by the integration tests.

use std::path::Path;

/// (finished and not interrupted, RUNNING, integrity check).
pub fn db_counts(db: &Path) -> (i64, i64, String) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let finished: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM trials t WHERE state IN ('COMPLETE','PRUNED') OR (state = 'FAIL' AND NOT EXISTS \
             (SELECT 1 FROM trial_system_attributes a WHERE a.trial_id = t.trial_id AND a.key = 'tune:interrupted'))",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let running: i64 = conn.query_row("SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'", [], |r| r.get(0)).unwrap();
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    (finished, running, integrity)
}
