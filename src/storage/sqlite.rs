//! SQLite storage in Optuna 5.0's own schema, so `optuna.load_study` and optuna-dashboard read
//! our studies and we read theirs. Several processes may share one file: WAL journal, every
//! write in a `BEGIN IMMEDIATE` transaction, and finished trials cached in-process because they
//! never change again.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::NaiveDateTime;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use serde_json::Value;

use super::memory::{is_stale, now, stale_reason, transition_allowed};
use super::optuna_schema::{
    merge_in_order, missing_tables, value_from_repr, value_repr, ALEMBIC_VERSION, LIBRARY_VERSION, SCHEMA_VERSION,
    STUDY_TABLES, TRIAL_TABLES,
};
use super::{Result, Storage, StorageError, StudySummary};
use crate::distribution::Distribution;
use crate::frozen::{Direction, FrozenTrial, TrialState, FAIL_REASON_KEY, INTERRUPTED_KEY};

/// Optuna's DDL, byte for byte.
const SCHEMA: &str = include_str!("schema.sql");
/// How long a write waits for another process's transaction before giving up with `Locked`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// Page size of the files we create (SQLite's default is 4096; see `init`).
const NEW_FILE_PAGE_SIZE: i64 = 1024;
/// WAL size at which SQLite checkpoints it into the database file.
const WAL_CHECKPOINT_BYTES: i64 = 8 << 20;
/// SQLAlchemy's text form of a naive datetime.
const DATETIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.6f";

/// An error inside a transaction: SQLite's, or one of ours. Turned into a `StorageError`
/// (with the file's path) when the transaction ends.
#[derive(Debug)]
enum Fail {
    Sql(rusqlite::Error),
    Storage(StorageError),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sql(e)
    }
}

impl From<StorageError> for Fail {
    fn from(e: StorageError) -> Self {
        Fail::Storage(e)
    }
}

impl Fail {
    fn into_storage(self, path: &str) -> StorageError {
        match self {
            Fail::Storage(e) => e,
            Fail::Sql(e) => sql_error(e, path),
        }
    }
}

/// Maps SQLite's error codes to the errors a user can act on.
fn sql_error(e: rusqlite::Error, path: &str) -> StorageError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        match f.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                return StorageError::Locked { path: path.to_string(), secs: BUSY_TIMEOUT.as_secs() };
            }
            ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => {
                return StorageError::Corrupt { path: path.to_string(), detail: e.to_string() };
            }
            _ => {}
        }
    }
    StorageError::Sql(e.to_string())
}

type FResult<T> = std::result::Result<T, Fail>;

fn bad_data(what: String) -> Fail {
    Fail::Storage(StorageError::Sql(what))
}

fn format_datetime(t: NaiveDateTime) -> String {
    t.format(DATETIME_FORMAT).to_string()
}

fn parse_datetime(s: Option<String>) -> FResult<Option<NaiveDateTime>> {
    let Some(s) = s else { return Ok(None) };
    // `%.f` also accepts no fraction: Optuna's heartbeats come from CURRENT_TIMESTAMP.
    NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S%.f")
        .map(Some)
        .map_err(|e| bad_data(format!("unreadable datetime `{s}` in the database: {e}")))
}

fn parse_state(s: &str) -> FResult<TrialState> {
    TrialState::parse(s).ok_or_else(|| bad_data(format!("unknown trial state `{s}` in the database")))
}

fn parse_json(s: &str) -> FResult<Value> {
    serde_json::from_str(s).map_err(|e| bad_data(format!("unreadable JSON `{s}` in the database: {e}")))
}

fn dist_json(d: &Distribution) -> String {
    d.to_optuna_json().to_string()
}

/// The finished trials of one study, known to this process.
#[derive(Default)]
struct StudyCache {
    /// Finished trials by `(number, trial_id)`: immutable once finished, so never reloaded.
    finished: BTreeMap<(i64, i64), Arc<FrozenTrial>>,
    /// Sum of the ids in `finished`: with the count, checks the cache against the database.
    finished_id_sum: i64,
    /// How many of `finished` count towards a budget (all but interrupted FAIL trials).
    finished_in_budget: u64,
    /// Trials that were RUNNING or WAITING at the last sync: the only trials up to `max_id`
    /// whose state can still change.
    pending: Vec<i64>,
    /// Largest trial id seen; trials created later have larger ids.
    max_id: i64,
    /// The distribution each parameter name has in the study (it keeps one kind for good).
    dists: HashMap<String, Distribution>,
}

/// The connection and everything cached next to it; one lock guards both.
struct Inner {
    conn: Connection,
    studies: HashMap<i64, StudyCache>,
    /// Finished trial id -> (study id, number), to find it in `studies`.
    finished_index: HashMap<i64, (i64, i64)>,
    /// Parsed `distribution_json` strings (a study uses a handful of distinct ones).
    parsed_dists: HashMap<String, Distribution>,
}

/// A study file shared with Optuna and with other `tune` processes.
pub struct SqliteStorage {
    path: String,
    inner: Mutex<Inner>,
}

impl SqliteStorage {
    /// Opens `path`, creating Optuna's schema in a new or empty file. A file that is not an
    /// SQLite database is `Corrupt`; an SQLite database without Optuna 5's tables and alembic
    /// revision is `Incompatible`. Neither is written to.
    pub fn open(path: &Path) -> Result<SqliteStorage> {
        let shown = path.display().to_string();
        let corrupt = |detail: String| StorageError::Corrupt { path: shown.clone(), detail };
        let has_content = std::fs::metadata(path).map(|m| m.len() > 0).unwrap_or(false);
        if has_content {
            let mut header = [0u8; 16];
            let mut f = std::fs::File::open(path).map_err(|e| corrupt(format!("cannot read it: {e}")))?;
            if f.read_exact(&mut header).is_err() || &header != b"SQLite format 3\0" {
                return Err(corrupt("it does not start with the SQLite file header".into()));
            }
        } else if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StorageError::Sql(format!("cannot create the folder {}: {e}", dir.display())))?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| sql_error(e, &shown))?;
        Self::init(&conn, &shown).map_err(|f| f.into_storage(&shown))?;
        Ok(SqliteStorage {
            path: shown,
            inner: Mutex::new(Inner {
                conn,
                studies: HashMap::new(),
                finished_index: HashMap::new(),
                parsed_dists: HashMap::new(),
            }),
        })
    }

    /// Checks the file and sets the connection up; writes only to a file that is ours.
    fn init(conn: &Connection, path: &str) -> FResult<()> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(64);
        let tables = Self::table_names(conn)?;
        let incompatible =
            |detail: String| Fail::Storage(StorageError::Incompatible { path: path.to_string(), detail });
        if !tables.is_empty() {
            Self::check_schema(&tables, conn).map_err(incompatible)?;
        }
        if tables.is_empty() {
            // Every call is its own small transaction, and a commit appends each page it
            // dirtied (typically a table leaf and an index leaf) to the WAL: 1 KiB pages write
            // and checksum a quarter of what 4 KiB pages do, about a third less time per
            // commit here. Takes effect only in a file without content, before WAL is on.
            conn.execute_batch(&format!("PRAGMA page_size={NEW_FILE_PAGE_SIZE}"))?;
        }
        // WAL lets readers (optuna-dashboard, `tune show`) run while a worker writes; with it,
        // synchronous=NORMAL keeps every committed transaction through a process crash and
        // only skips the fsync per commit.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            eprintln!("warning: {path}: SQLite refused WAL mode (journal mode is {mode}); readers may block writers");
        }
        conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        // A checkpoint copies the WAL back into the file with two fsyncs. With many tiny
        // commits rewriting the same few pages, checkpointing every ~8 MiB instead of every
        // 1000 pages copies each hot page once rather than many times. Durability is the
        // same: a committed transaction is in the WAL either way.
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages = WAL_CHECKPOINT_BYTES / page_size.max(512);
        conn.query_row(&format!("PRAGMA wal_autocheckpoint={pages}"), [], |_| Ok(()))?;
        if tables.is_empty() {
            // Another process may be creating the schema right now: decide inside the lock.
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let r = (|| -> FResult<()> {
                if Self::table_names(conn)?.is_empty() {
                    conn.execute_batch(SCHEMA)?;
                    conn.execute(
                        "INSERT INTO version_info (version_info_id, schema_version, library_version) VALUES (1, ?1, ?2)",
                        params![SCHEMA_VERSION, LIBRARY_VERSION],
                    )?;
                    conn.execute("INSERT INTO alembic_version (version_num) VALUES (?1)", [ALEMBIC_VERSION])?;
                }
                Ok(())
            })();
            match r {
                Ok(()) => conn.execute_batch("COMMIT")?,
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(e);
                }
            }
            let tables = Self::table_names(conn)?;
            Self::check_schema(&tables, conn).map_err(incompatible)?;
        }
        Ok(())
    }

    fn table_names(conn: &Connection) -> FResult<Vec<String>> {
        let mut st = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?;
        let names = st.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(names)
    }

    /// Why the database is not an Optuna 5 storage, if it is not.
    fn check_schema(tables: &[String], conn: &Connection) -> std::result::Result<(), String> {
        let missing = missing_tables(tables);
        if !missing.is_empty() {
            return Err(format!("it lacks Optuna's tables {}", missing.join(", ")));
        }
        let versions: Vec<String> = conn
            .prepare("SELECT version_num FROM alembic_version")
            .and_then(|mut st| st.query_map([], |r| r.get::<_, String>(0))?.collect())
            .map_err(|e| format!("cannot read alembic_version: {e}"))?;
        if versions != [ALEMBIC_VERSION] {
            return Err(format!(
                "its schema revision is {:?}, tune reads Optuna 5's {ALEMBIC_VERSION}; \
                 run `optuna storage upgrade --storage sqlite:///FILE` with optuna 5, or use another file",
                versions
            ));
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // A panic inside a transaction leaves it open: end it before anyone else uses the
        // connection.
        if !g.conn.is_autocommit() {
            let _ = g.conn.execute_batch("ROLLBACK");
        }
        g
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction: writers from every process queue on
    /// SQLite's lock (up to the busy timeout) instead of failing with "database is locked".
    fn write<T>(&self, f: impl FnOnce(&mut Inner) -> FResult<T>) -> Result<T> {
        self.transaction("BEGIN IMMEDIATE", f)
    }

    /// Runs `f` in one read transaction, so that it sees a single snapshot of the file.
    fn read<T>(&self, f: impl FnOnce(&mut Inner) -> FResult<T>) -> Result<T> {
        self.transaction("BEGIN", f)
    }

    fn transaction<T>(&self, begin: &str, f: impl FnOnce(&mut Inner) -> FResult<T>) -> Result<T> {
        let mut g = self.lock();
        let r = (|| {
            g.conn.prepare_cached(begin)?.execute([])?;
            let v = f(&mut g)?;
            g.conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(v)
        })();
        r.map_err(|e: Fail| {
            if !g.conn.is_autocommit() {
                let _ = g.conn.execute_batch("ROLLBACK");
            }
            e.into_storage(&self.path)
        })
    }
}

/// One row of `trials`.
struct TrialRow {
    trial_id: i64,
    study_id: i64,
    number: i64,
    state: TrialState,
    start: Option<NaiveDateTime>,
    complete: Option<NaiveDateTime>,
}

impl TrialRow {
    fn into_frozen(self) -> FrozenTrial {
        let mut t = FrozenTrial::new(self.trial_id, self.number, self.state);
        t.datetime_start = self.start;
        t.datetime_complete = self.complete;
        t
    }
}

const TRIAL_COLUMNS: &str = "trial_id, study_id, number, state, datetime_start, datetime_complete";

/// The columns of `TRIAL_COLUMNS` as SQLite returns them, before parsing.
type RawTrialRow = (i64, i64, i64, String, Option<String>, Option<String>);

fn trial_row(r: &rusqlite::Row) -> rusqlite::Result<RawTrialRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

fn to_trial_row(raw: RawTrialRow) -> FResult<TrialRow> {
    let (trial_id, study_id, number, state, start, complete) = raw;
    Ok(TrialRow {
        trial_id,
        study_id,
        number,
        state: parse_state(&state)?,
        start: parse_datetime(start)?,
        complete: parse_datetime(complete)?,
    })
}

impl Inner {
    fn study_exists(&self, study_id: i64) -> FResult<()> {
        let found = self
            .conn
            .prepare_cached("SELECT 1 FROM studies WHERE study_id = ?1")?
            .query_row([study_id], |_| Ok(()))
            .optional()?;
        found.ok_or_else(|| Fail::Storage(StorageError::StudyNotFound(format!("#{study_id}"))))
    }

    fn trial_row(&self, trial_id: i64) -> FResult<Option<TrialRow>> {
        let raw = self
            .conn
            .prepare_cached(&format!("SELECT {TRIAL_COLUMNS} FROM trials WHERE trial_id = ?1"))?
            .query_row([trial_id], trial_row)
            .optional()?;
        raw.map(to_trial_row).transpose()
    }

    /// The trial's study id, if it exists and can still be written to.
    fn updatable(&self, trial_id: i64) -> FResult<i64> {
        if let Some(&(study_id, number)) = self.finished_index.get(&trial_id) {
            let state = self.studies[&study_id].finished[&(number, trial_id)].state;
            return Err(StorageError::TrialFinished { number, state }.into());
        }
        let (study_id, number, state): (i64, i64, String) = self
            .conn
            .prepare_cached("SELECT study_id, number, state FROM trials WHERE trial_id = ?1")?
            .query_row([trial_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?
            .ok_or(StorageError::TrialNotFound(trial_id))?;
        let state = parse_state(&state)?;
        if state.is_finished() {
            return Err(StorageError::TrialFinished { number, state }.into());
        }
        Ok(study_id)
    }

    fn distribution(&mut self, json: String) -> FResult<Distribution> {
        if let Some(d) = self.parsed_dists.get(&json) {
            return Ok(d.clone());
        }
        let d = Distribution::from_optuna_json(&parse_json(&json)?)
            .map_err(|e| bad_data(format!("unreadable distribution_json `{json}`: {e}")))?;
        self.parsed_dists.insert(json, d.clone());
        Ok(d)
    }

    /// Loads the given trials completely, keyed by id; ids that do not exist are left out.
    /// Five queries whatever the number of trials (the ids travel as one JSON array).
    fn load_trials(&mut self, ids: &[i64]) -> FResult<HashMap<i64, (i64, FrozenTrial)>> {
        let mut out: HashMap<i64, (i64, FrozenTrial)> = HashMap::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(out);
        }
        let list = serde_json::to_string(ids).expect("integers serialize");
        const IN_LIST: &str = "trial_id IN (SELECT value FROM json_each(?1))";
        {
            let mut st = self.conn.prepare_cached(&format!("SELECT {TRIAL_COLUMNS} FROM trials WHERE {IN_LIST}"))?;
            let rows = st.query_map([&list], trial_row)?;
            for raw in rows {
                let row = to_trial_row(raw?)?;
                out.insert(row.trial_id, (row.study_id, row.into_frozen()));
            }
        }
        let mut params = Vec::new();
        {
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT trial_id, param_name, param_value, distribution_json FROM trial_params WHERE {IN_LIST} \
                 ORDER BY param_id"
            ))?;
            let rows = st.query_map([&list], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, f64>(2)?, r.get::<_, String>(3)?))
            })?;
            for row in rows {
                params.push(row?);
            }
        }
        for (id, name, value, json) in params {
            let d = self.distribution(json)?;
            if let Some((_, t)) = out.get_mut(&id) {
                t.params.insert(name.clone(), value);
                t.distributions.insert(name, d);
            }
        }
        {
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT trial_id, value, value_type FROM trial_values WHERE objective = 0 AND {IN_LIST}"
            ))?;
            let rows = st.query_map([&list], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Option<f64>>(1)?, r.get::<_, String>(2)?))
            })?;
            for row in rows {
                let (id, v, kind) = row?;
                if let Some((_, t)) = out.get_mut(&id) {
                    t.value = value_from_repr(v, &kind).filter(|v| !v.is_nan());
                }
            }
        }
        {
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT trial_id, step, intermediate_value, intermediate_value_type FROM trial_intermediate_values \
                 WHERE {IN_LIST}"
            ))?;
            let rows = st.query_map([&list], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Option<f64>>(2)?, r.get::<_, String>(3)?))
            })?;
            for row in rows {
                let (id, step, v, kind) = row?;
                if let (Some((_, t)), Some(v)) = (out.get_mut(&id), value_from_repr(v, &kind)) {
                    t.intermediate_values.insert(step, v);
                }
            }
        }
        for (table, user) in [("trial_user_attributes", true), ("trial_system_attributes", false)] {
            let mut st = self
                .conn
                .prepare_cached(&format!("SELECT trial_id, \"key\", value_json FROM {table} WHERE {IN_LIST}"))?;
            let rows =
                st.query_map([&list], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
            for row in rows {
                let (id, key, json) = row?;
                if let Some((_, t)) = out.get_mut(&id) {
                    let v = parse_json(&json)?;
                    if user {
                        t.user_attrs.insert(key, v);
                    } else {
                        t.system_attrs.insert(key, v);
                    }
                }
            }
        }
        Ok(out)
    }

    fn load_trial(&mut self, trial_id: i64) -> FResult<FrozenTrial> {
        self.load_trials(&[trial_id])?
            .remove(&trial_id)
            .map(|(_, t)| t)
            .ok_or_else(|| StorageError::TrialNotFound(trial_id).into())
    }

    /// Adds a finished trial to its study's cache.
    fn cache_finished(&mut self, study_id: i64, t: FrozenTrial) {
        if self.finished_index.contains_key(&t.trial_id) {
            return;
        }
        let c = self.studies.entry(study_id).or_default();
        for (name, d) in &t.distributions {
            c.dists.entry(name.clone()).or_insert_with(|| d.clone());
        }
        c.finished_id_sum += t.trial_id;
        if !(t.state == TrialState::Fail && t.interrupted()) {
            c.finished_in_budget += 1;
        }
        self.finished_index.insert(t.trial_id, (study_id, t.number));
        c.finished.insert((t.number, t.trial_id), Arc::new(t));
    }

    fn forget_study(&mut self, study_id: i64) {
        if let Some(c) = self.studies.remove(&study_id) {
            for (_, id) in c.finished.keys() {
                self.finished_index.remove(id);
            }
        }
    }

    /// Brings the study's cache up to date inside the current transaction and returns the
    /// study's trial count with its unfinished trials (rows only), ordered by number.
    ///
    /// Only two kinds of trials can have changed since the last sync: those that were
    /// unfinished then (`pending`) and those created since (ids above `max_id`); finished
    /// trials never change. So a sync reads a handful of rows, not the whole study. The
    /// trial count and id sum, read from the study_id index alone, catch the one case this
    /// misses: the study deleted and recreated under the same id by another process.
    fn sync(&mut self, study_id: i64) -> FResult<(i64, Vec<TrialRow>)> {
        let (count, id_sum): (i64, i64) = self
            .conn
            .prepare_cached("SELECT COUNT(*), COALESCE(SUM(trial_id), 0) FROM trials WHERE study_id = ?1")?
            .query_row([study_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        if count == 0 {
            self.study_exists(study_id)?;
        }
        for _attempt in 0..2 {
            let (max_id, pending) = {
                let c = self.studies.entry(study_id).or_default();
                (c.max_id, std::mem::take(&mut c.pending))
            };
            let mut rows = Vec::new();
            {
                let mut st = self.conn.prepare_cached(&format!(
                    "SELECT {TRIAL_COLUMNS} FROM trials WHERE study_id = ?1 AND trial_id > ?2"
                ))?;
                for raw in st.query_map([study_id, max_id], trial_row)? {
                    rows.push(to_trial_row(raw?)?);
                }
            }
            if !pending.is_empty() {
                let list = serde_json::to_string(&pending).expect("integers serialize");
                let mut st = self.conn.prepare_cached(&format!(
                    "SELECT {TRIAL_COLUMNS} FROM trials WHERE trial_id IN (SELECT value FROM json_each(?1)) \
                     AND study_id = ?2"
                ))?;
                for raw in st.query_map(params![list, study_id], trial_row)? {
                    rows.push(to_trial_row(raw?)?);
                }
            }
            let mut new_max = max_id;
            let mut to_load = Vec::new();
            let mut unfinished = Vec::new();
            for row in rows {
                new_max = new_max.max(row.trial_id);
                if !row.state.is_finished() {
                    unfinished.push(row);
                } else if !self.finished_index.contains_key(&row.trial_id) {
                    to_load.push(row.trial_id);
                }
            }
            for (sid, t) in self.load_trials(&to_load)?.into_values() {
                if sid == study_id && t.state.is_finished() {
                    self.cache_finished(study_id, t);
                }
            }
            unfinished.sort_by_key(|r| (r.number, r.trial_id));
            let c = self.studies.entry(study_id).or_default();
            c.pending = unfinished.iter().map(|r| r.trial_id).collect();
            c.max_id = new_max;
            let known = c.finished.len() as i64 + unfinished.len() as i64;
            let known_sum = c.finished_id_sum + c.pending.iter().sum::<i64>();
            if (known, known_sum) == (count, id_sum) {
                return Ok((count, unfinished));
            }
            // The study was deleted and recreated under the same id elsewhere: start over.
            self.forget_study(study_id);
        }
        Err(bad_data(format!("the trials of study #{study_id} changed while being read")))
    }

    /// Inserts a trial with the given number (the caller's immediate transaction counted the
    /// study's trials, so numbers are unique across processes) and returns it as stored.
    fn insert_trial(
        &mut self,
        study_id: i64,
        number: i64,
        state: TrialState,
        system_attrs: &BTreeMap<String, Value>,
    ) -> FResult<FrozenTrial> {
        let stamp = now();
        let text = format_datetime(stamp);
        let start = (state == TrialState::Running).then_some(stamp);
        let complete = state.is_finished().then_some(stamp);
        self.conn
            .prepare_cached(
                "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                number,
                study_id,
                state.as_str(),
                start.map(|_| text.as_str()),
                complete.map(|_| text.as_str())
            ])?;
        let trial_id = self.conn.last_insert_rowid();
        if state == TrialState::Running {
            self.upsert_heartbeat(trial_id, &text)?;
        }
        for (k, v) in system_attrs {
            self.upsert_attr("trial_system_attributes", trial_id, k, v)?;
        }
        let mut t = FrozenTrial::new(trial_id, number, state);
        t.datetime_start = start;
        t.datetime_complete = complete;
        t.system_attrs = system_attrs.clone();
        Ok(t)
    }

    fn upsert_heartbeat(&self, trial_id: i64, stamp: &str) -> FResult<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (?1, ?2) \
                 ON CONFLICT (trial_id) DO UPDATE SET heartbeat = excluded.heartbeat",
            )?
            .execute(params![trial_id, stamp])?;
        Ok(())
    }

    fn upsert_attr(&self, table: &str, owner: i64, key: &str, value: &Value) -> FResult<()> {
        let owner_col = if table.starts_with("study") { "study_id" } else { "trial_id" };
        let json = serde_json::to_string(value).expect("JSON values serialize");
        self.conn
            .prepare_cached(&format!(
                "INSERT INTO {table} ({owner_col}, \"key\", value_json) VALUES (?1, ?2, ?3) \
                 ON CONFLICT ({owner_col}, \"key\") DO UPDATE SET value_json = excluded.value_json"
            ))?
            .execute(params![owner, key, json])?;
        Ok(())
    }

    fn study_attrs(&self, table: &str, study_id: i64) -> FResult<BTreeMap<String, Value>> {
        self.study_exists(study_id)?;
        let mut st =
            self.conn.prepare_cached(&format!("SELECT \"key\", value_json FROM {table} WHERE study_id = ?1"))?;
        let rows = st.query_map([study_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (k, json) = row?;
            out.insert(k, parse_json(&json)?);
        }
        Ok(out)
    }

    fn direction(&self, study_id: i64) -> FResult<Direction> {
        let d: Option<String> = self
            .conn
            .prepare_cached("SELECT direction FROM study_directions WHERE study_id = ?1 AND objective = 0")?
            .query_row([study_id], |r| r.get(0))
            .optional()?;
        match d {
            Some(d) => Direction::parse(&d).ok_or_else(|| bad_data(format!("unknown study direction `{d}`"))),
            None => {
                self.study_exists(study_id)?;
                Err(bad_data(format!("study #{study_id} has no direction in the database")))
            }
        }
    }
}

impl Storage for SqliteStorage {
    fn create_new_study(&self, name: &str, direction: Direction) -> Result<i64> {
        self.write(|g| {
            let taken = g
                .conn
                .prepare_cached("SELECT 1 FROM studies WHERE study_name = ?1")?
                .query_row([name], |_| Ok(()))
                .optional()?;
            if taken.is_some() {
                return Err(StorageError::DuplicateStudy(name.to_string()).into());
            }
            g.conn.prepare_cached("INSERT INTO studies (study_name) VALUES (?1)")?.execute([name])?;
            let id = g.conn.last_insert_rowid();
            g.conn
                .prepare_cached("INSERT INTO study_directions (direction, study_id, objective) VALUES (?1, ?2, 0)")?
                .execute(params![direction.as_str(), id])?;
            // A study deleted elsewhere may have had this id: drop anything cached under it.
            g.forget_study(id);
            Ok(id)
        })
    }

    fn get_study_id_from_name(&self, name: &str) -> Result<Option<i64>> {
        self.read(|g| {
            Ok(g.conn
                .prepare_cached("SELECT study_id FROM studies WHERE study_name = ?1")?
                .query_row([name], |r| r.get(0))
                .optional()?)
        })
    }

    fn get_study_direction(&self, study_id: i64) -> Result<Direction> {
        self.read(|g| g.direction(study_id))
    }

    fn get_all_studies(&self) -> Result<Vec<StudySummary>> {
        self.read(|g| {
            let mut out: Vec<StudySummary> = Vec::new();
            {
                let mut st = g.conn.prepare_cached(
                    "SELECT s.study_id, s.study_name, d.direction FROM studies s \
                     LEFT JOIN study_directions d ON d.study_id = s.study_id AND d.objective = 0 ORDER BY s.study_id",
                )?;
                let rows = st.query_map([], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?))
                })?;
                for row in rows {
                    let (study_id, name, d) = row?;
                    let direction = d
                        .as_deref()
                        .and_then(Direction::parse)
                        .ok_or_else(|| bad_data(format!("study `{name}` has no readable direction")))?;
                    out.push(StudySummary {
                        study_id,
                        name,
                        direction,
                        counts: BTreeMap::new(),
                        best_value: None,
                        datetime_start: None,
                    });
                }
            }
            let index: HashMap<i64, usize> = out.iter().enumerate().map(|(i, s)| (s.study_id, i)).collect();
            {
                let mut st = g.conn.prepare_cached(
                    "SELECT study_id, state, COUNT(*), MIN(datetime_start) FROM trials GROUP BY study_id, state",
                )?;
                let rows = st.query_map([], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, Option<String>>(3)?))
                })?;
                for row in rows {
                    let (sid, state, n, start) = row?;
                    let Some(&i) = index.get(&sid) else { continue };
                    let s = &mut out[i];
                    s.counts.insert(parse_state(&state)?, n as usize);
                    if let Some(t) = parse_datetime(start)? {
                        if s.datetime_start.is_none_or(|e| t < e) {
                            s.datetime_start = Some(t);
                        }
                    }
                }
            }
            {
                let mut st = g.conn.prepare_cached(
                    "SELECT t.study_id, v.value, v.value_type FROM trial_values v JOIN trials t ON t.trial_id = v.trial_id \
                     WHERE t.state = 'COMPLETE' AND v.objective = 0",
                )?;
                let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<f64>>(1)?, r.get::<_, String>(2)?)))?;
                for row in rows {
                    let (sid, v, kind) = row?;
                    let (Some(&i), Some(v)) = (index.get(&sid), value_from_repr(v, &kind)) else { continue };
                    let s = &mut out[i];
                    if !v.is_nan() && s.best_value.is_none_or(|b| s.direction.better(v, b)) {
                        s.best_value = Some(v);
                    }
                }
            }
            Ok(out)
        })
    }

    fn delete_study(&self, study_id: i64) -> Result<()> {
        self.write(|g| {
            g.study_exists(study_id)?;
            for table in TRIAL_TABLES {
                g.conn
                    .prepare_cached(&format!(
                        "DELETE FROM {table} WHERE trial_id IN (SELECT trial_id FROM trials WHERE study_id = ?1)"
                    ))?
                    .execute([study_id])?;
            }
            for table in STUDY_TABLES {
                g.conn.prepare_cached(&format!("DELETE FROM {table} WHERE study_id = ?1"))?.execute([study_id])?;
            }
            g.forget_study(study_id);
            Ok(())
        })
    }

    fn set_study_user_attr(&self, study_id: i64, key: &str, value: &Value) -> Result<()> {
        self.write(|g| {
            g.study_exists(study_id)?;
            g.upsert_attr("study_user_attributes", study_id, key, value)
        })
    }

    fn set_study_system_attr(&self, study_id: i64, key: &str, value: &Value) -> Result<()> {
        self.write(|g| {
            g.study_exists(study_id)?;
            g.upsert_attr("study_system_attributes", study_id, key, value)
        })
    }

    fn get_study_user_attrs(&self, study_id: i64) -> Result<BTreeMap<String, Value>> {
        self.read(|g| g.study_attrs("study_user_attributes", study_id))
    }

    fn get_study_system_attrs(&self, study_id: i64) -> Result<BTreeMap<String, Value>> {
        self.read(|g| g.study_attrs("study_system_attributes", study_id))
    }

    fn create_new_trial(
        &self,
        study_id: i64,
        state: TrialState,
        system_attrs: &BTreeMap<String, Value>,
    ) -> Result<FrozenTrial> {
        self.write(|g| {
            let (count, _) = g.sync(study_id)?;
            g.insert_trial(study_id, count, state, system_attrs)
        })
    }

    fn start_next_trial(&self, study_id: i64, budget: Option<u64>) -> Result<Option<FrozenTrial>> {
        self.write(|g| {
            let (count, unfinished) = g.sync(study_id)?;
            if let Some(budget) = budget {
                let running = unfinished.iter().filter(|r| r.state == TrialState::Running).count() as u64;
                if g.studies[&study_id].finished_in_budget + running >= budget {
                    return Ok(None);
                }
            }
            // Optuna pops the WAITING trial with the smallest id (the oldest enqueued one).
            let waiting = unfinished.iter().filter(|r| r.state == TrialState::Waiting).map(|r| r.trial_id).min();
            match waiting {
                Some(id) => {
                    let stamp = format_datetime(now());
                    g.conn
                        .prepare_cached("UPDATE trials SET state = 'RUNNING', datetime_start = ?2 WHERE trial_id = ?1")?
                        .execute(params![id, stamp])?;
                    g.upsert_heartbeat(id, &stamp)?;
                    g.load_trial(id).map(Some)
                }
                None => g.insert_trial(study_id, count, TrialState::Running, &BTreeMap::new()).map(Some),
            }
        })
    }

    fn set_trial_param(&self, trial_id: i64, name: &str, internal: f64, dist: &Distribution) -> Result<()> {
        let study_id = self.write(|g| {
            let study_id = g.updatable(trial_id)?;
            let known = g.studies.get(&study_id).and_then(|c| c.dists.get(name)).cloned();
            let old = match known {
                Some(d) => Some(d),
                None => {
                    let json: Option<String> = g
                        .conn
                        .prepare_cached(
                            "SELECT p.distribution_json FROM trial_params p JOIN trials t ON t.trial_id = p.trial_id \
                             WHERE t.study_id = ?1 AND p.param_name = ?2 LIMIT 1",
                        )?
                        .query_row(params![study_id, name], |r| r.get(0))
                        .optional()?;
                    match json {
                        Some(json) => {
                            let d = g.distribution(json)?;
                            g.studies.entry(study_id).or_default().dists.insert(name.to_string(), d.clone());
                            Some(d)
                        }
                        None => None,
                    }
                }
            };
            StorageError::check_distribution(name, old.as_ref(), dist)?;
            g.conn
                .prepare_cached(
                    "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (trial_id, param_name) \
                     DO UPDATE SET param_value = excluded.param_value, distribution_json = excluded.distribution_json",
                )?
                .execute(params![trial_id, name, internal, dist_json(dist)])?;
            Ok(study_id)
        })?;
        // Only once the row is committed does the name's kind of distribution become fixed.
        let mut g = self.lock();
        g.studies.entry(study_id).or_default().dists.entry(name.to_string()).or_insert_with(|| dist.clone());
        Ok(())
    }

    fn set_trial_state_values(&self, trial_id: i64, state: TrialState, value: Option<f64>) -> Result<bool> {
        self.write(|g| {
            if g.finished_index.contains_key(&trial_id) {
                return Ok(false);
            }
            let row = g.trial_row(trial_id)?.ok_or(StorageError::TrialNotFound(trial_id))?;
            if !transition_allowed(row.state, state) {
                return Ok(false);
            }
            let stamp = format_datetime(now());
            if state == TrialState::Running {
                g.conn
                    .prepare_cached("UPDATE trials SET state = ?2, datetime_start = ?3 WHERE trial_id = ?1")?
                    .execute(params![trial_id, state.as_str(), stamp])?;
                g.upsert_heartbeat(trial_id, &stamp)?;
            } else if state.is_finished() {
                g.conn
                    .prepare_cached("UPDATE trials SET state = ?2, datetime_complete = ?3 WHERE trial_id = ?1")?
                    .execute(params![trial_id, state.as_str(), stamp])?;
            } else {
                g.conn
                    .prepare_cached("UPDATE trials SET state = ?2 WHERE trial_id = ?1")?
                    .execute(params![trial_id, state.as_str()])?;
            }
            // A NaN trial value has no stored form in Optuna's schema; it is not kept.
            if let Some(v) = value.filter(|v| !v.is_nan()) {
                let (v, kind) = value_repr(v);
                g.conn
                    .prepare_cached(
                        "INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES (?1, 0, ?2, ?3) \
                         ON CONFLICT (trial_id, objective) DO UPDATE SET value = excluded.value, value_type = excluded.value_type",
                    )?
                    .execute(params![trial_id, v, kind])?;
            }
            Ok(true)
        })
    }

    fn set_trial_intermediate_value(&self, trial_id: i64, step: i64, value: f64) -> Result<()> {
        self.set_trial_intermediate_values(trial_id, &[(step, value)])
    }

    fn set_trial_intermediate_values(&self, trial_id: i64, values: &[(i64, f64)]) -> Result<()> {
        self.write(|g| {
            g.updatable(trial_id)?;
            let mut insert = g.conn.prepare_cached(
                "INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, intermediate_value_type) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (trial_id, step) DO UPDATE SET \
                 intermediate_value = excluded.intermediate_value, intermediate_value_type = excluded.intermediate_value_type",
            )?;
            for &(step, value) in values {
                let (v, kind) = value_repr(value);
                insert.execute(params![trial_id, step, v, kind])?;
            }
            Ok(())
        })
    }

    fn set_trial_user_attr(&self, trial_id: i64, key: &str, value: &Value) -> Result<()> {
        self.write(|g| {
            g.updatable(trial_id)?;
            g.upsert_attr("trial_user_attributes", trial_id, key, value)
        })
    }

    fn set_trial_system_attr(&self, trial_id: i64, key: &str, value: &Value) -> Result<()> {
        self.write(|g| {
            g.updatable(trial_id)?;
            g.upsert_attr("trial_system_attributes", trial_id, key, value)
        })
    }

    fn get_trial(&self, trial_id: i64) -> Result<FrozenTrial> {
        {
            let g = self.lock();
            if let Some(&(study_id, number)) = g.finished_index.get(&trial_id) {
                return Ok((*g.studies[&study_id].finished[&(number, trial_id)]).clone());
            }
        }
        self.read(|g| {
            let (study_id, t) =
                g.load_trials(&[trial_id])?.remove(&trial_id).ok_or(StorageError::TrialNotFound(trial_id))?;
            if t.state.is_finished() && g.studies.contains_key(&study_id) {
                g.cache_finished(study_id, t.clone());
            }
            Ok(t)
        })
    }

    fn get_all_trials(&self, study_id: i64, states: Option<&[TrialState]>) -> Result<Vec<Arc<FrozenTrial>>> {
        self.read(|g| {
            let (_, rows) = g.sync(study_id)?;
            let ids: Vec<i64> = rows.iter().map(|r| r.trial_id).collect();
            let mut loaded = g.load_trials(&ids)?;
            let unfinished: Vec<Arc<FrozenTrial>> =
                ids.iter().filter_map(|id| loaded.remove(id).map(|(_, t)| Arc::new(t))).collect();
            Ok(merge_in_order(&g.studies[&study_id].finished, unfinished, states))
        })
    }

    fn record_heartbeat(&self, trial_id: i64) -> Result<()> {
        self.write(|g| {
            let exists = g
                .conn
                .prepare_cached("SELECT 1 FROM trials WHERE trial_id = ?1")?
                .query_row([trial_id], |_| Ok(()))
                .optional()?;
            exists.ok_or(StorageError::TrialNotFound(trial_id))?;
            g.upsert_heartbeat(trial_id, &format_datetime(now()))
        })
    }

    fn fail_stale_trials(&self, study_id: i64, grace: Duration) -> Result<Vec<FrozenTrial>> {
        self.write(|g| {
            let (_, unfinished) = g.sync(study_id)?;
            let stamp = now();
            let mut failed = Vec::new();
            for row in unfinished.iter().filter(|r| r.state == TrialState::Running) {
                let heartbeat: Option<String> = g
                    .conn
                    .prepare_cached("SELECT heartbeat FROM trial_heartbeats WHERE trial_id = ?1")?
                    .query_row([row.trial_id], |r| r.get(0))
                    .optional()?;
                let Some(last) = parse_datetime(heartbeat)?.or(row.start) else { continue };
                if !is_stale(last, stamp, grace) {
                    continue;
                }
                g.conn
                    .prepare_cached("UPDATE trials SET state = 'FAIL', datetime_complete = ?2 WHERE trial_id = ?1")?
                    .execute(params![row.trial_id, format_datetime(stamp)])?;
                g.upsert_attr("trial_system_attributes", row.trial_id, INTERRUPTED_KEY, &Value::Bool(true))?;
                let reason = Value::from(stale_reason(last, grace));
                g.upsert_attr("trial_system_attributes", row.trial_id, FAIL_REASON_KEY, &reason)?;
                failed.push(row.trial_id);
            }
            let mut loaded = g.load_trials(&failed)?;
            Ok(failed.iter().filter_map(|id| loaded.remove(id).map(|(_, t)| t)).collect())
        })
    }

    fn count_trials(&self, study_id: i64) -> Result<BTreeMap<TrialState, usize>> {
        self.read(|g| {
            let (_, unfinished) = g.sync(study_id)?;
            let mut counts = BTreeMap::new();
            let finished = g.studies[&study_id].finished.values().map(|t| t.state);
            for state in finished.chain(unfinished.iter().map(|r| r.state)) {
                *counts.entry(state).or_insert(0) += 1;
            }
            Ok(counts)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    /// Keeps the temporary folder alive as long as the storage.
    struct Held {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    }

    fn temp_db() -> Held {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("study.db");
        Held { _dir: dir, path }
    }

    #[test]
    fn contract() {
        let dirs = Mutex::new(Vec::new());
        super::super::contract::run_all(&|| {
            let h = temp_db();
            let s = Arc::new(SqliteStorage::open(&h.path).unwrap());
            dirs.lock().unwrap().push(h);
            s
        });
    }

    #[test]
    fn schema_and_pragmas_match_optuna() {
        let h = temp_db();
        let s = SqliteStorage::open(&h.path).unwrap();
        let g = s.lock();
        let alembic: String = g.conn.query_row("SELECT version_num FROM alembic_version", [], |r| r.get(0)).unwrap();
        assert_eq!(alembic, "v3.2.0.a");
        let vi: (i64, i64, String) = g
            .conn
            .query_row("SELECT version_info_id, schema_version, library_version FROM version_info", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(vi, (1, 12, "5.0.0".to_string()));
        let mode: String = g.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = g.conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, 1, "NORMAL");
        let page: i64 = g.conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        assert_eq!(page, NEW_FILE_PAGE_SIZE);
        let ckpt: i64 = g.conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
        assert_eq!(ckpt, WAL_CHECKPOINT_BYTES / NEW_FILE_PAGE_SIZE);
        let busy: i64 = g.conn.query_row("PRAGMA busy_timeout", [], |r| r.get(0)).unwrap();
        assert_eq!(busy, 30_000);
        // The stored DDL is the text of schema.sql, statement by statement.
        let mut st = g.conn.prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid").unwrap();
        let stored: Vec<String> = st.query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect();
        let expected: Vec<String> = SCHEMA
            .split(";\n")
            .map(|s| s.lines().filter(|l| !l.starts_with("--")).collect::<Vec<_>>().join("\n").trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        assert_eq!(stored, expected);
    }

    #[test]
    fn datetimes_read_with_and_without_microseconds() {
        let t = parse_datetime(Some("2026-11-21 20:26:54.383112".into())).unwrap().unwrap();
        assert_eq!(format_datetime(t), "2026-11-21 20:26:54.383112");
        // Optuna's heartbeats come from SQLite's CURRENT_TIMESTAMP, without a fraction.
        let t = parse_datetime(Some("2026-11-21 20:26:54".into())).unwrap().unwrap();
        assert_eq!(format_datetime(t), "2026-11-21 20:26:54.000000");
        assert!(parse_datetime(Some("yesterday".into())).is_err());
        let now = now();
        assert_eq!(parse_datetime(Some(format_datetime(now))).unwrap(), Some(now));
    }

    #[test]
    fn reopen_keeps_everything() {
        let h = temp_db();
        let (id, trials) = {
            let s = SqliteStorage::open(&h.path).unwrap();
            let id = s.create_new_study("kept", Direction::Maximize).unwrap();
            s.set_study_user_attr(id, "env", &json!("CartPole-v1")).unwrap();
            s.set_study_system_attr(id, "sys", &json!({"a": 1})).unwrap();
            for i in 0..5 {
                let t = s.start_next_trial(id, None).unwrap().unwrap();
                s.set_trial_param(
                    t.trial_id,
                    "lr",
                    1e-3 * (i + 1) as f64,
                    &Distribution::float(1e-5, 1.0, true, None).unwrap(),
                )
                .unwrap();
                s.set_trial_intermediate_value(t.trial_id, 0, f64::NAN).unwrap();
                s.set_trial_user_attr(t.trial_id, "i", &json!(i)).unwrap();
                if i < 4 {
                    s.set_trial_state_values(t.trial_id, TrialState::Complete, Some(i as f64)).unwrap();
                }
            }
            s.create_new_trial(
                id,
                TrialState::Waiting,
                &BTreeMap::from([("fixed_params".to_string(), json!({"lr": 0.1}))]),
            )
            .unwrap();
            (id, s.get_all_trials(id, None).unwrap())
        };
        let s = SqliteStorage::open(&h.path).unwrap();
        assert_eq!(s.get_study_id_from_name("kept").unwrap(), Some(id));
        assert_eq!(s.get_study_direction(id).unwrap(), Direction::Maximize);
        assert_eq!(s.get_study_user_attrs(id).unwrap()["env"], json!("CartPole-v1"));
        assert_eq!(s.get_study_system_attrs(id).unwrap()["sys"], json!({"a": 1}));
        let again = s.get_all_trials(id, None).unwrap();
        assert_eq!(again.len(), trials.len());
        for (a, b) in again.iter().zip(&trials) {
            // NaN != NaN: compare the intermediate values apart.
            assert!(a.state == TrialState::Waiting || a.intermediate_values[&0].is_nan());
            let strip = |t: &FrozenTrial| FrozenTrial { intermediate_values: BTreeMap::new(), ..t.clone() };
            assert_eq!(strip(a), strip(b));
        }
        assert_eq!(s.get_best_trial(id).unwrap().unwrap().number, 3);
    }

    #[test]
    fn two_handles_race_start_next_trial_under_a_budget() {
        let h = temp_db();
        let a = Arc::new(SqliteStorage::open(&h.path).unwrap());
        let b = Arc::new(SqliteStorage::open(&h.path).unwrap());
        let id = a.create_new_study("race", Direction::Minimize).unwrap();
        let budget = 60u64;
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    while let Some(t) = s.start_next_trial(id, Some(budget)).unwrap() {
                        s.set_trial_intermediate_value(t.trial_id, 0, 1.0).unwrap();
                        s.get_all_trials(id, None).unwrap();
                        s.set_trial_state_values(t.trial_id, TrialState::Complete, Some(t.number as f64)).unwrap();
                        mine.push(t.number);
                    }
                    mine
                })
            })
            .collect();
        let mut numbers: Vec<i64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        numbers.sort();
        assert_eq!(numbers, (0..budget as i64).collect::<Vec<_>>());
        for s in [&a, &b] {
            let all = s.get_all_trials(id, None).unwrap();
            assert_eq!(all.iter().map(|t| t.number).collect::<Vec<_>>(), numbers);
            assert!(all.iter().all(|t| t.state == TrialState::Complete && t.value == Some(t.number as f64)));
        }
    }

    #[test]
    fn trials_finished_by_another_handle_are_seen() {
        let h = temp_db();
        let a = SqliteStorage::open(&h.path).unwrap();
        let b = SqliteStorage::open(&h.path).unwrap();
        let id = a.create_new_study("s", Direction::Minimize).unwrap();
        let t0 = a.start_next_trial(id, None).unwrap().unwrap();
        let t1 = b.start_next_trial(id, None).unwrap().unwrap();
        a.set_trial_state_values(t0.trial_id, TrialState::Complete, Some(1.0)).unwrap();
        assert_eq!(a.get_all_trials(id, None).unwrap().len(), 2);
        assert_eq!(a.get_trial(t1.trial_id).unwrap().state, TrialState::Running);
        b.set_trial_intermediate_value(t1.trial_id, 3, 0.5).unwrap();
        b.set_trial_state_values(t1.trial_id, TrialState::Pruned, Some(0.5)).unwrap();
        let seen = a.get_all_trials(id, None).unwrap();
        assert_eq!(seen[1].state, TrialState::Pruned);
        assert_eq!(seen[1].intermediate_values, BTreeMap::from([(3, 0.5)]));
        assert_eq!(a.get_trial(t1.trial_id).unwrap(), *seen[1]);
        // A finished trial is refused by both handles.
        assert!(matches!(a.set_trial_user_attr(t1.trial_id, "k", &json!(1)), Err(StorageError::TrialFinished { .. })));
        // Stale trials failed by one worker count as finished for the other.
        let t2 = a.start_next_trial(id, None).unwrap().unwrap();
        a.get_all_trials(id, None).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(b.fail_stale_trials(id, Duration::from_millis(1)).unwrap().len(), 1);
        assert!(a.get_all_trials(id, Some(&[TrialState::Fail])).unwrap()[0].interrupted());
        assert!(!a.set_trial_state_values(t2.trial_id, TrialState::Complete, Some(1.0)).unwrap());
    }

    #[test]
    fn a_study_recreated_elsewhere_under_the_same_id_is_reloaded() {
        let h = temp_db();
        let a = SqliteStorage::open(&h.path).unwrap();
        let b = SqliteStorage::open(&h.path).unwrap();
        let id = a.create_new_study("s", Direction::Minimize).unwrap();
        for v in [1.0, 2.0] {
            let t = a.start_next_trial(id, None).unwrap().unwrap();
            a.set_trial_param(t.trial_id, "x", v, &Distribution::float(0.0, 5.0, false, None).unwrap()).unwrap();
            a.set_trial_state_values(t.trial_id, TrialState::Complete, Some(v)).unwrap();
        }
        assert_eq!(a.get_all_trials(id, None).unwrap().len(), 2);
        b.delete_study(id).unwrap();
        let id2 = b.create_new_study("s2", Direction::Minimize).unwrap();
        assert_eq!(id2, id, "SQLite reuses the largest rowid once it is deleted");
        let t = b.start_next_trial(id2, None).unwrap().unwrap();
        b.set_trial_param(t.trial_id, "x", 1.0, &Distribution::int(0, 5, false, 1).unwrap()).unwrap();
        b.set_trial_state_values(t.trial_id, TrialState::Complete, Some(7.0)).unwrap();
        let seen = a.get_all_trials(id, None).unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].value, Some(7.0));
        assert!(matches!(seen[0].distributions["x"], Distribution::Int { .. }));
    }

    #[test]
    fn random_bytes_are_corrupt_and_left_alone() {
        let h = temp_db();
        let bytes: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        std::fs::write(&h.path, &bytes).unwrap();
        let err = SqliteStorage::open(&h.path).err().expect("random bytes are refused");
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains(&h.path.display().to_string()));
        assert_eq!(std::fs::read(&h.path).unwrap(), bytes);
        // A damaged database (valid header, garbage pages) is refused too.
        {
            SqliteStorage::open(&h.path.with_extension("x")).unwrap();
        }
        let mut damaged = std::fs::read(h.path.with_extension("x")).unwrap();
        for b in damaged.iter_mut().skip(100) {
            *b = b.wrapping_mul(31).wrapping_add(7);
        }
        std::fs::write(&h.path, &damaged).unwrap();
        let err = SqliteStorage::open(&h.path).err().expect("damaged pages are refused");
        assert!(matches!(err, StorageError::Corrupt { .. } | StorageError::Incompatible { .. }), "{err:?}");
    }

    #[test]
    fn foreign_databases_are_incompatible_and_left_alone() {
        let h = temp_db();
        {
            let c = Connection::open(&h.path).unwrap();
            c.execute_batch(
                "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes (body) VALUES ('hi');",
            )
            .unwrap();
        }
        let before = std::fs::read(&h.path).unwrap();
        let err = SqliteStorage::open(&h.path).err().expect("a foreign database is refused");
        assert!(matches!(err, StorageError::Incompatible { .. }), "{err:?}");
        assert!(err.to_string().contains("studies"), "{err}");
        assert_eq!(std::fs::read(&h.path).unwrap(), before, "nothing written");

        // An Optuna database of another schema revision.
        let h2 = temp_db();
        {
            SqliteStorage::open(&h2.path).unwrap();
            let c = Connection::open(&h2.path).unwrap();
            c.execute("UPDATE alembic_version SET version_num = 'v3.0.0.d'", []).unwrap();
            c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        }
        let before = std::fs::read(&h2.path).unwrap();
        let err = SqliteStorage::open(&h2.path).err().expect("another revision is refused");
        assert!(matches!(err, StorageError::Incompatible { .. }), "{err:?}");
        assert!(err.to_string().contains("v3.0.0.d"), "{err}");
        assert_eq!(std::fs::read(&h2.path).unwrap(), before, "nothing written");
    }

    #[test]
    fn empty_file_gets_the_schema() {
        let h = temp_db();
        std::fs::write(&h.path, b"").unwrap();
        let s = SqliteStorage::open(&h.path).unwrap();
        s.create_new_study("s", Direction::Minimize).unwrap();
        let nested = h.path.parent().unwrap().join("a/b/c.db");
        SqliteStorage::open(&nested).unwrap();
        assert!(nested.exists());
    }

    #[test]
    fn held_write_lock_times_out_as_locked() {
        let h = temp_db();
        let s = SqliteStorage::open(&h.path).unwrap();
        let id = s.create_new_study("s", Direction::Minimize).unwrap();
        let c = Connection::open(&h.path).unwrap();
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        s.lock().conn.busy_timeout(Duration::from_millis(100)).unwrap();
        let err = s.start_next_trial(id, None).unwrap_err();
        assert!(matches!(err, StorageError::Locked { .. }), "{err:?}");
        // Readers are not blocked by the writer (WAL).
        assert!(s.get_all_trials(id, None).unwrap().is_empty());
        c.execute_batch("ROLLBACK").unwrap();
        assert!(s.start_next_trial(id, None).unwrap().is_some());
    }

    const CHILD_ENV: &str = "TUNE_SQLITE_KILL_CHILD";

    /// The child side of `sigkill_mid_write_keeps_a_sound_file`: writes trials until killed,
    /// printing each finished trial's number once its transaction committed.
    fn child_writes_until_killed(path: &str) -> ! {
        let s = SqliteStorage::open(Path::new(path)).unwrap();
        let id = s.get_study_id_from_name("crash").unwrap().unwrap();
        let d = Distribution::float(0.0, 1.0, false, None).unwrap();
        let mut out = std::io::stdout().lock();
        loop {
            let t = s.start_next_trial(id, None).unwrap().unwrap();
            s.set_trial_param(t.trial_id, "x", 0.5, &d).unwrap();
            for step in 0..20 {
                s.set_trial_intermediate_value(t.trial_id, step, step as f64).unwrap();
            }
            s.set_trial_state_values(t.trial_id, TrialState::Complete, Some(t.number as f64)).unwrap();
            writeln!(out, "finished {}", t.number).unwrap();
            out.flush().unwrap();
        }
    }

    #[test]
    fn sigkill_mid_write_keeps_a_sound_file() {
        if let Ok(path) = std::env::var(CHILD_ENV) {
            child_writes_until_killed(&path);
        }
        let h = temp_db();
        let id = SqliteStorage::open(&h.path).unwrap().create_new_study("crash", Direction::Minimize).unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "storage::sqlite::tests::sigkill_mid_write_keeps_a_sound_file",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &h.path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut finished = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("finished ") {
                    finished.push(n.parse::<i64>().unwrap());
                }
            }
            finished
        });
        // Wait until it is writing, then kill it in the middle of whatever it does.
        let start = std::time::Instant::now();
        while SqliteStorage::open(&h.path).unwrap().count_trials(id).unwrap().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(60), "the child never started writing");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        let finished = reader.join().unwrap();
        assert!(!finished.is_empty(), "the child finished no trial in 200 ms");

        let s = SqliteStorage::open(&h.path).unwrap();
        let ok: String = s.lock().conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(ok, "ok");
        let trials = s.get_all_trials(id, None).unwrap();
        for n in &finished {
            let t = &trials[*n as usize];
            assert_eq!((t.number, t.state, t.value), (*n, TrialState::Complete, Some(*n as f64)));
            assert_eq!(t.intermediate_values.len(), 20);
        }
        // At most the trial being written when the kill came is left RUNNING.
        assert!(trials.iter().filter(|t| t.state == TrialState::Running).count() <= 1);
        assert!(trials.len() >= finished.len());
    }
}
