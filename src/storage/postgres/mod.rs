//! PostgreSQL storage in Optuna 5.0's own schema, so that `tune` workers on many machines,
//! Python Optuna workers (`RDBStorage`) and optuna-dashboard share one database.
//!
//! Concurrency follows Optuna's RDBStorage on PostgreSQL: a new trial's number is counted under
//! a row lock of its study (`SELECT ... FOR UPDATE`), which also makes the shared budget exact; a
//! WAITING trial is taken with `FOR UPDATE SKIP LOCKED`, so exactly one worker gets it; a trial
//! is finished under its own row lock, so a late `tell` finds it finished instead of
//! overwriting. Every timestamp comes from the server (`LOCALTIMESTAMP`, which is also what
//! Optuna's heartbeats store), so workers whose clocks disagree never judge each other's trials.
//!
//! Failures: serialization failures and deadlocks are retried with jittered backoff; a lost
//! connection is retried with backoff until the storage's wait runs out (`TUNE_STORAGE_WAIT`
//! seconds, default 120), then the call fails with `Unreachable`, which exits with code 2.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{IsolationLevel, NoTls, Row, Statement, Transaction};
use serde_json::Value;

use super::memory::transition_allowed;
use super::optuna_schema::{
    merge_in_order, missing_tables, value_from_repr, value_repr, ALEMBIC_VERSION, LIBRARY_VERSION, SCHEMA_VERSION,
    STUDY_TABLES, TRIAL_TABLES,
};
use super::{Result, Storage, StorageError, StudySummary};
use crate::distribution::Distribution;
use crate::frozen::{Direction, FrozenTrial, TrialState, FAIL_REASON_KEY, INTERRUPTED_KEY};

mod target;
pub mod testing;

pub use target::{is_postgres_url, mask, Env, Target};

/// Optuna's DDL for PostgreSQL, statement for statement.
const SCHEMA: &str = include_str!("../schema_postgres.sql");
/// Key of the advisory lock under which a worker checks for and creates the schema: workers
/// started at the same moment on an empty database create it once (Optuna #1092, #4621).
const SCHEMA_LOCK_KEY: i64 = 0x7475_6e65_5f73_6368; // "tune_sch" in ASCII
/// Default of `TUNE_STORAGE_WAIT`: how long calls keep retrying an unreachable server.
const DEFAULT_WAIT: Duration = Duration::from_secs(120);
/// Retries of a serialization failure or deadlock before giving up.
const MAX_CONFLICT_RETRIES: u32 = 12;
/// Connections per process at most (opened lazily: one per thread that uses the storage).
const POOL_SIZE: u32 = 16;
/// How long the server lets one of our sessions sit idle inside a transaction before it ends
/// the session (`idle_in_transaction_session_timeout`, set on every pooled connection). Our
/// transactions never wait on anything between statements, so only a worker frozen in the
/// middle of one (a paused VM, SIGSTOP, a cut network) reaches it; without it, the row locks
/// of its open transaction would block every other worker's write to those rows for as long
/// as it stays frozen. When it comes back, its next statement fails as a lost connection and
/// the transaction is rerun on a new one.
pub(super) const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(5);

const TRIAL_COLUMNS: &str = "trial_id, study_id, number, state::text, datetime_start, datetime_complete";

/// An error inside a transaction: the server's, or one of ours.
#[derive(Debug)]
enum Fail {
    Pg(postgres::Error),
    Pool(String),
    Storage(StorageError),
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<StorageError> for Fail {
    fn from(e: StorageError) -> Self {
        Fail::Storage(e)
    }
}

type FResult<T> = std::result::Result<T, Fail>;

/// A statement's parameters, of mixed types.
macro_rules! args {
    ($($e:expr),* $(,)?) => {
        &[$(&$e as &(dyn postgres::types::ToSql + Sync)),*]
    };
}

/// What to do about a server error.
#[derive(Debug, PartialEq)]
enum ErrorKind {
    /// The connection is gone or the server is not (yet) accepting: wait and reconnect.
    Connection,
    /// Serialization failure or deadlock: run the transaction again.
    Conflict,
    /// The login was refused.
    Auth,
    /// The database does not exist.
    NoDatabase,
    /// A statement this connection prepared is gone (a pooler such as PgBouncer in transaction
    /// mode) or no longer fits the schema: prepare again and rerun.
    StaleStatement,
    /// Anything else.
    Other,
}

fn classify(e: &postgres::Error) -> ErrorKind {
    if let Some(code) = e.code() {
        return match code {
            c if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED => {
                ErrorKind::Conflict
            }
            c if *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                ErrorKind::Auth
            }
            c if *c == SqlState::INVALID_CATALOG_NAME => ErrorKind::NoDatabase,
            c if *c == SqlState::INVALID_SQL_STATEMENT_NAME
                || (*c == SqlState::FEATURE_NOT_SUPPORTED
                    && e.as_db_error().is_some_and(|d| d.message().contains("cached plan"))) =>
            {
                ErrorKind::StaleStatement
            }
            c if c.code().starts_with("08")
                || *c == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::TOO_MANY_CONNECTIONS =>
            {
                ErrorKind::Connection
            }
            _ => ErrorKind::Other,
        };
    }
    let text = e.to_string();
    if text.contains("password missing") {
        return ErrorKind::Auth;
    }
    if e.is_closed()
        || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        || text.contains("timed out")
    {
        return ErrorKind::Connection;
    }
    ErrorKind::Other
}

/// The server's message with its detail, as one line.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => match std::error::Error::source(e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    }
}

/// Finished trials of one study known to this process: they never change, so a sync reads only
/// trials that were unfinished last time or created since.
#[derive(Default)]
struct StudyCache {
    finished: BTreeMap<(i64, i64), Arc<FrozenTrial>>,
    finished_id_sum: i64,
    pending: Vec<i64>,
    max_id: i64,
}

#[derive(Default)]
struct Cache {
    studies: HashMap<i64, StudyCache>,
    /// Finished trial id -> (study id, number).
    index: HashMap<i64, (i64, i64)>,
    /// The distribution each parameter name has in each study.
    dists: HashMap<(i64, String), Distribution>,
    /// Parsed `distribution_json` strings (a study uses a handful of distinct ones).
    parsed: HashMap<String, Distribution>,
}

impl Cache {
    fn forget_study(&mut self, study_id: i64) {
        if let Some(c) = self.studies.remove(&study_id) {
            for (_, id) in c.finished.keys() {
                self.index.remove(id);
            }
        }
        self.dists.retain(|(s, _), _| *s != study_id);
    }

    fn add_finished(&mut self, study_id: i64, t: FrozenTrial) {
        if self.index.contains_key(&t.trial_id) {
            return;
        }
        let c = self.studies.entry(study_id).or_default();
        c.finished_id_sum += t.trial_id;
        self.index.insert(t.trial_id, (study_id, t.number));
        c.finished.insert((t.number, t.trial_id), Arc::new(t));
    }

    fn finished(&self, trial_id: i64) -> Option<&Arc<FrozenTrial>> {
        let &(study_id, number) = self.index.get(&trial_id)?;
        self.studies.get(&study_id)?.finished.get(&(number, trial_id))
    }
}

/// A pooled connection and the statements prepared on it.
struct Conn {
    client: postgres::Client,
    statements: HashMap<String, Statement>,
}

/// Opens [`Conn`]s for the pool; a connection whose socket closed (a server restart) is
/// dropped, and its statements with it.
struct Manager(postgres::Config);

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = postgres::Error;

    fn connect(&self) -> std::result::Result<Conn, postgres::Error> {
        let mut client = self.0.connect(NoTls)?;
        client.batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = {}",
            IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
        ))?;
        Ok(Conn { client, statements: HashMap::new() })
    }

    fn is_valid(&self, conn: &mut Conn) -> std::result::Result<(), postgres::Error> {
        conn.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.client.is_closed()
    }
}

type Pool = r2d2::Pool<Manager>;

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A transaction whose statements are prepared once per connection and then only bound and
/// executed: one round trip a statement instead of two (parse and describe, then bind and
/// execute), and no parsing or planning on the server. Every statement of this module goes
/// through it.
struct Tx<'a> {
    tx: Transaction<'a>,
    statements: &'a mut HashMap<String, Statement>,
}

impl Tx<'_> {
    fn prepare(&mut self, sql: &str) -> std::result::Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql)?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    fn query(&mut self, sql: &str, params: Params<'_>) -> std::result::Result<Vec<Row>, postgres::Error> {
        let s = self.prepare(sql)?;
        self.tx.query(&s, params)
    }

    fn query_one(&mut self, sql: &str, params: Params<'_>) -> std::result::Result<Row, postgres::Error> {
        let s = self.prepare(sql)?;
        self.tx.query_one(&s, params)
    }

    fn query_opt(&mut self, sql: &str, params: Params<'_>) -> std::result::Result<Option<Row>, postgres::Error> {
        let s = self.prepare(sql)?;
        self.tx.query_opt(&s, params)
    }

    fn execute(&mut self, sql: &str, params: Params<'_>) -> std::result::Result<u64, postgres::Error> {
        let s = self.prepare(sql)?;
        self.tx.execute(&s, params)
    }
}

/// One Optuna study database on a PostgreSQL server, shared by any number of processes.
pub struct PostgresStorage {
    shown: String,
    pool: Pool,
    wait: Duration,
    cache: Mutex<Cache>,
}

/// How long to keep retrying an unreachable server: `TUNE_STORAGE_WAIT` seconds.
fn wait_from_env() -> Result<Duration> {
    match std::env::var("TUNE_STORAGE_WAIT") {
        Err(_) => Ok(DEFAULT_WAIT),
        Ok(s) => match s.trim().parse::<f64>() {
            Ok(v) if (0.0..=86_400.0).contains(&v) => Ok(Duration::from_secs_f64(v)),
            _ => {
                Err(StorageError::BadUrl(format!("TUNE_STORAGE_WAIT=`{s}`: write a number of seconds from 0 to 86400")))
            }
        },
    }
}

fn backoff(attempt: u32) -> Duration {
    let base = 0.05 * 2f64.powi(attempt.min(6) as i32);
    Duration::from_secs_f64(base.min(2.0) * (0.5 + rand::random::<f64>()))
}

impl PostgresStorage {
    /// Connects to the database of `url` and checks it. An empty database gets Optuna's schema
    /// when `create` is true; a database holding other tables, or another schema revision, is
    /// `Incompatible` and left alone.
    pub fn open(url: &str, create: bool) -> Result<PostgresStorage> {
        let target = Target::resolve(url, &Env::process())?;
        let wait = wait_from_env()?;
        let shown = target.shown.clone();
        // One direct connection first: a wrong password or a missing database is told at once,
        // an unreachable server is waited for (with backoff) up to `wait`.
        let deadline = Instant::now() + wait;
        let mut attempt = 0;
        let mut client = loop {
            match target.config.connect(NoTls) {
                Ok(c) => break c,
                Err(e) => match classify(&e) {
                    ErrorKind::Connection if Instant::now() < deadline => {
                        if attempt == 0 {
                            eprintln!("waiting for PostgreSQL at {shown} ({})...", describe(&e));
                        }
                        std::thread::sleep(backoff(attempt).min(deadline.saturating_duration_since(Instant::now())));
                        attempt += 1;
                    }
                    kind => return Err(login_error(kind, &e, &target, wait)),
                },
            }
        };
        Self::init(&mut client, &shown, create).map_err(|f| into_storage(f, &shown, wait))?;
        drop(client);
        let manager = Manager(target.config.clone());
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(0))
            .test_on_check_out(false)
            .idle_timeout(Some(Duration::from_secs(60)))
            .connection_timeout(wait.max(Duration::from_millis(100)))
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(manager);
        Ok(PostgresStorage { shown, pool, wait, cache: Mutex::new(Cache::default()) })
    }

    /// The URL as shown in messages (no password).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn init(client: &mut postgres::Client, shown: &str, create: bool) -> FResult<()> {
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", args![SCHEMA_LOCK_KEY])?;
        let tables: Vec<String> = tx
            .query("SELECT tablename::text FROM pg_catalog.pg_tables WHERE schemaname = current_schema()", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let incompatible =
            |detail: String| Fail::Storage(StorageError::Incompatible { path: shown.to_string(), detail });
        if tables.is_empty() {
            if !create {
                return Err(incompatible(
                    "the database holds no study yet; run a study into it first (`tune run FILE.yaml --storage URL`)"
                        .into(),
                ));
            }
            tx.batch_execute(SCHEMA)?;
            tx.execute(
                "INSERT INTO version_info (version_info_id, schema_version, library_version) VALUES (1, $1, $2)",
                args![SCHEMA_VERSION, LIBRARY_VERSION],
            )?;
            tx.execute("INSERT INTO alembic_version (version_num) VALUES ($1)", args![ALEMBIC_VERSION])?;
        } else {
            let missing = missing_tables(&tables);
            if !missing.is_empty() {
                return Err(incompatible(format!(
                    "the database holds other tables and lacks Optuna's {}; give tune a database of its own (`createdb`)",
                    missing.join(", ")
                )));
            }
            let versions: Vec<String> =
                tx.query("SELECT version_num::text FROM alembic_version", &[])?.iter().map(|r| r.get(0)).collect();
            if versions != [ALEMBIC_VERSION] {
                return Err(incompatible(format!(
                    "its schema revision is {versions:?}, tune reads Optuna 5's {ALEMBIC_VERSION}; \
                     run `optuna storage upgrade --storage URL` with optuna 5, or use another database"
                )));
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn lock_cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in one transaction, again after a conflict or a lost connection (`f` is told
    /// which attempt it is). Read transactions see one snapshot (REPEATABLE READ, read only);
    /// write transactions are READ COMMITTED with explicit row locks, as Optuna's.
    fn txn<T>(&self, read: bool, mut f: impl FnMut(&mut Tx<'_>, u32) -> FResult<T>) -> Result<T> {
        let deadline = Instant::now() + self.wait;
        let mut conflicts = 0;
        let mut attempt = 0;
        let mut reprepared = false;
        loop {
            let r = (|| -> FResult<T> {
                let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
                let mut conn = self.pool.get_timeout(remaining).map_err(|e| Fail::Pool(e.to_string()))?;
                let Conn { client, statements } = &mut *conn;
                let tx = if read {
                    client
                        .build_transaction()
                        .isolation_level(IsolationLevel::RepeatableRead)
                        .read_only(true)
                        .start()?
                } else {
                    client.transaction()?
                };
                let mut tx = Tx { tx, statements };
                let v = match f(&mut tx, attempt) {
                    Err(Fail::Pg(e)) if classify(&e) == ErrorKind::StaleStatement => {
                        drop(tx);
                        statements.clear();
                        return Err(Fail::Pg(e));
                    }
                    r => r?,
                };
                tx.tx.commit()?;
                Ok(v)
            })();
            let e = match r {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            attempt += 1;
            match &e {
                Fail::Pg(pg) => match classify(pg) {
                    // The connection's statements were dropped: once more, prepared anew.
                    ErrorKind::StaleStatement if !reprepared => {
                        reprepared = true;
                        continue;
                    }
                    ErrorKind::Conflict if conflicts < MAX_CONFLICT_RETRIES => {
                        conflicts += 1;
                        std::thread::sleep(backoff(conflicts));
                        continue;
                    }
                    ErrorKind::Connection if Instant::now() < deadline => {
                        std::thread::sleep(backoff(attempt).min(deadline.saturating_duration_since(Instant::now())));
                        continue;
                    }
                    _ => {}
                },
                Fail::Pool(_) if Instant::now() < deadline => continue,
                _ => {}
            }
            return Err(into_storage(e, &self.shown, self.wait));
        }
    }

    fn read<T>(&self, f: impl FnMut(&mut Tx<'_>, u32) -> FResult<T>) -> Result<T> {
        self.txn(true, f)
    }

    fn write<T>(&self, f: impl FnMut(&mut Tx<'_>, u32) -> FResult<T>) -> Result<T> {
        self.txn(false, f)
    }
}

fn login_error(kind: ErrorKind, e: &postgres::Error, t: &Target, wait: Duration) -> StorageError {
    let detail = describe(e);
    match kind {
        ErrorKind::Auth => StorageError::Refused {
            url: t.shown.clone(),
            detail,
            fix: format!(
                "set the password of role `{}` in PGPASSWORD or in ~/.pgpass (host:port:database:user:password), not on the command line",
                t.user
            ),
        },
        ErrorKind::NoDatabase => StorageError::Refused {
            url: t.shown.clone(),
            detail,
            fix: format!("create it first: `createdb -h {} -p {} -U {} {}`", t.host, t.port, t.user, t.dbname),
        },
        ErrorKind::Connection => {
            StorageError::Unreachable { url: t.shown.clone(), secs: wait.as_secs_f64(), detail }
        }
        _ => StorageError::Postgres(format!("{}: {detail}", t.shown)),
    }
}

fn into_storage(f: Fail, shown: &str, wait: Duration) -> StorageError {
    match f {
        Fail::Storage(e) => e,
        Fail::Pool(detail) => StorageError::Unreachable { url: shown.to_string(), secs: wait.as_secs_f64(), detail },
        Fail::Pg(e) => match classify(&e) {
            ErrorKind::Connection => {
                StorageError::Unreachable { url: shown.to_string(), secs: wait.as_secs_f64(), detail: describe(&e) }
            }
            _ => StorageError::Postgres(format!("{shown}: {}", describe(&e))),
        },
    }
}

fn bad_data(what: String) -> Fail {
    Fail::Storage(StorageError::Postgres(what))
}

fn int(r: &Row, i: usize) -> i64 {
    r.get::<_, i32>(i) as i64
}

/// A trial or study id as the schema's `integer`; ids beyond it cannot exist.
fn id32(id: i64) -> Option<i32> {
    i32::try_from(id).ok()
}

fn parse_state(s: &str) -> FResult<TrialState> {
    TrialState::parse(s).ok_or_else(|| bad_data(format!("unknown trial state `{s}` in the database")))
}

fn parse_json(s: &str) -> FResult<Value> {
    serde_json::from_str(s).map_err(|e| bad_data(format!("unreadable JSON `{s}` in the database: {e}")))
}

fn json_text(v: &Value) -> String {
    serde_json::to_string(v).expect("JSON values serialize")
}

struct TrialRow {
    trial_id: i64,
    study_id: i64,
    number: i64,
    state: TrialState,
    start: Option<NaiveDateTime>,
    complete: Option<NaiveDateTime>,
}

fn trial_row(r: &Row) -> FResult<TrialRow> {
    Ok(TrialRow {
        trial_id: int(r, 0),
        study_id: r.get::<_, Option<i32>>(1).map(i64::from).unwrap_or(-1),
        number: r.get::<_, Option<i32>>(2).map(i64::from).unwrap_or(-1),
        state: parse_state(r.get(3))?,
        start: r.get(4),
        complete: r.get(5),
    })
}

fn study_exists(tx: &mut Tx<'_>, study_id: i64) -> FResult<()> {
    let found = match id32(study_id) {
        Some(id) => tx.query_opt("SELECT 1 FROM studies WHERE study_id = $1", args![id])?.is_some(),
        None => false,
    };
    if found {
        Ok(())
    } else {
        Err(StorageError::StudyNotFound(format!("#{study_id}")).into())
    }
}

/// Locks the study's row: trial creation and budget checks of all workers queue here.
fn lock_study(tx: &mut Tx<'_>, study_id: i64) -> FResult<i32> {
    let id = id32(study_id).ok_or_else(|| StorageError::StudyNotFound(format!("#{study_id}")))?;
    tx.query_opt("SELECT 1 FROM studies WHERE study_id = $1 FOR UPDATE", args![id])?
        .ok_or_else(|| StorageError::StudyNotFound(format!("#{study_id}")))?;
    Ok(id)
}

/// The trial's study id if it exists and is unfinished, holding a share lock on its row until
/// the transaction ends, so that finishing it (which takes an update lock) waits for this write.
fn updatable(tx: &mut Tx<'_>, trial_id: i64) -> FResult<i32> {
    let id = id32(trial_id).ok_or(StorageError::TrialNotFound(trial_id))?;
    let row = tx
        .query_opt("SELECT study_id, number, state::text FROM trials WHERE trial_id = $1 FOR SHARE", args![id])?
        .ok_or(StorageError::TrialNotFound(trial_id))?;
    let state = parse_state(row.get(2))?;
    if state.is_finished() {
        return Err(StorageError::TrialFinished { number: int(&row, 1), state }.into());
    }
    Ok(row.get(0))
}

fn upsert_attr(tx: &mut Tx<'_>, table: &str, owner: i32, key: &str, value: &Value) -> FResult<()> {
    let owner_col = if table.starts_with("study") { "study_id" } else { "trial_id" };
    let sql = format!(
        "INSERT INTO {table} ({owner_col}, key, value_json) VALUES ($1, $2, $3) \
         ON CONFLICT ({owner_col}, key) DO UPDATE SET value_json = excluded.value_json"
    );
    tx.execute(sql.as_str(), args![owner, key, json_text(value)])?;
    Ok(())
}

fn upsert_heartbeat(tx: &mut Tx<'_>, trial_id: i32) -> FResult<u64> {
    Ok(tx.execute(
        "INSERT INTO trial_heartbeats (trial_id, heartbeat) SELECT $1, LOCALTIMESTAMP \
         WHERE EXISTS (SELECT 1 FROM trials WHERE trial_id = $1) \
         ON CONFLICT (trial_id) DO UPDATE SET heartbeat = excluded.heartbeat",
        args![trial_id],
    )?)
}

/// Inserts a trial numbered as the count of the study's earlier trials (the caller holds the
/// study's lock; `count` when it has just counted them), with start time and heartbeat when
/// RUNNING, in one statement.
fn insert_trial(
    tx: &mut Tx<'_>,
    study_id: i32,
    state: TrialState,
    system_attrs: &BTreeMap<String, Value>,
    count: Option<i64>,
) -> FResult<FrozenTrial> {
    let row = tx.query_one(
        "WITH t AS (INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) \
         VALUES (COALESCE($4::int8, (SELECT count(*) FROM trials WHERE study_id = $1))::int4, $1, $2::text::trialstate, \
                 CASE WHEN $2 = 'RUNNING' THEN LOCALTIMESTAMP END, CASE WHEN $3 THEN LOCALTIMESTAMP END) \
         RETURNING trial_id, number, datetime_start, datetime_complete), \
         h AS (INSERT INTO trial_heartbeats (trial_id, heartbeat) SELECT trial_id, LOCALTIMESTAMP FROM t WHERE $2 = 'RUNNING') \
         SELECT trial_id, number, datetime_start, datetime_complete FROM t",
        args![study_id, state.as_str(), state.is_finished(), count],
    )?;
    let trial_id: i32 = row.get(0);
    for (k, v) in system_attrs {
        upsert_attr(tx, "trial_system_attributes", trial_id, k, v)?;
    }
    let mut t = FrozenTrial::new(trial_id as i64, int(&row, 1), state);
    t.datetime_start = row.get(2);
    t.datetime_complete = row.get(3);
    t.system_attrs = system_attrs.clone();
    Ok(t)
}

/// Loads the given trials completely, keyed by id, in six queries whatever their number.
fn load_trials(
    tx: &mut Tx<'_>,
    ids: &[i64],
    dists: &mut HashMap<String, Distribution>,
) -> FResult<HashMap<i64, (i64, FrozenTrial)>> {
    let mut out = HashMap::with_capacity(ids.len());
    let ids: Vec<i32> = ids.iter().filter_map(|&i| id32(i)).collect();
    if ids.is_empty() {
        return Ok(out);
    }
    for r in tx.query(&format!("SELECT {TRIAL_COLUMNS} FROM trials WHERE trial_id = ANY($1)"), args![ids])? {
        let row = trial_row(&r)?;
        let mut t = FrozenTrial::new(row.trial_id, row.number, row.state);
        t.datetime_start = row.start;
        t.datetime_complete = row.complete;
        out.insert(row.trial_id, (row.study_id, t));
    }
    for r in tx.query(
        "SELECT trial_id, param_name, param_value, distribution_json FROM trial_params \
         WHERE trial_id = ANY($1) ORDER BY param_id",
        args![ids],
    )? {
        let json: String = r.get(3);
        let d = match dists.get(&json) {
            Some(d) => d.clone(),
            None => {
                let d = Distribution::from_optuna_json(&parse_json(&json)?)
                    .map_err(|e| bad_data(format!("unreadable distribution_json `{json}`: {e}")))?;
                dists.insert(json, d.clone());
                d
            }
        };
        if let Some((_, t)) = out.get_mut(&int(&r, 0)) {
            let name: String = r.get(1);
            t.params.insert(name.clone(), r.get::<_, Option<f64>>(2).unwrap_or(f64::NAN));
            t.distributions.insert(name, d);
        }
    }
    for r in tx.query(
        "SELECT trial_id, value, value_type::text FROM trial_values WHERE objective = 0 AND trial_id = ANY($1)",
        args![ids],
    )? {
        if let Some((_, t)) = out.get_mut(&int(&r, 0)) {
            t.value = value_from_repr(r.get(1), r.get(2)).filter(|v| !v.is_nan());
        }
    }
    for r in tx.query(
        "SELECT trial_id, step, intermediate_value, intermediate_value_type::text FROM trial_intermediate_values \
         WHERE trial_id = ANY($1)",
        args![ids],
    )? {
        if let (Some((_, t)), Some(v)) = (out.get_mut(&int(&r, 0)), value_from_repr(r.get(2), r.get(3))) {
            t.intermediate_values.insert(int(&r, 1), v);
        }
    }
    for (table, user) in [("trial_user_attributes", true), ("trial_system_attributes", false)] {
        for r in
            tx.query(&format!("SELECT trial_id, key, value_json FROM {table} WHERE trial_id = ANY($1)"), args![ids])?
        {
            if let Some((_, t)) = out.get_mut(&int(&r, 0)) {
                let key: Option<String> = r.get(1);
                let json: Option<String> = r.get(2);
                let v = parse_json(json.as_deref().unwrap_or("null"))?;
                let key = key.unwrap_or_default();
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

/// Brings the study's cache up to date inside a read transaction and returns its unfinished
/// trials, loaded, in number order. Only trials unfinished at the last sync, or created since,
/// can have changed; the count and id sum of the study's trials catch a study deleted and
/// recreated under the same id by another process.
fn sync(tx: &mut Tx<'_>, cache: &mut Cache, study_id: i64) -> FResult<Vec<FrozenTrial>> {
    let id = id32(study_id).ok_or_else(|| StorageError::StudyNotFound(format!("#{study_id}")))?;
    let r =
        tx.query_one("SELECT count(*), COALESCE(sum(trial_id), 0)::int8 FROM trials WHERE study_id = $1", args![id])?;
    let (count, id_sum): (i64, i64) = (r.get(0), r.get(1));
    if count == 0 {
        study_exists(tx, study_id)?;
    }
    for _attempt in 0..2 {
        let (max_id, pending) = {
            let c = cache.studies.entry(study_id).or_default();
            (c.max_id, c.pending.iter().filter_map(|&p| id32(p)).collect::<Vec<i32>>())
        };
        let max32 = id32(max_id).unwrap_or(i32::MAX);
        let rows = tx.query(
            "SELECT trial_id, state::text FROM trials WHERE study_id = $1 AND (trial_id > $2 OR trial_id = ANY($3))",
            args![id, max32, pending],
        )?;
        let mut new_max = max_id;
        let mut to_load = Vec::new();
        for r in &rows {
            let tid = int(r, 0);
            new_max = new_max.max(tid);
            let state = parse_state(r.get(1))?;
            if !state.is_finished() || !cache.index.contains_key(&tid) {
                to_load.push(tid);
            }
        }
        let mut unfinished = Vec::new();
        for (sid, t) in load_trials(tx, &to_load, &mut cache.parsed)?.into_values() {
            if sid != study_id {
                continue;
            }
            if t.state.is_finished() {
                cache.add_finished(study_id, t);
            } else {
                unfinished.push(t);
            }
        }
        unfinished.sort_by_key(|t| (t.number, t.trial_id));
        let c = cache.studies.entry(study_id).or_default();
        c.pending = unfinished.iter().map(|t| t.trial_id).collect();
        c.max_id = new_max;
        let known = c.finished.len() as i64 + unfinished.len() as i64;
        let known_sum = c.finished_id_sum + c.pending.iter().sum::<i64>();
        if (known, known_sum) == (count, id_sum) {
            return Ok(unfinished);
        }
        cache.forget_study(study_id);
    }
    Err(bad_data(format!("the trials of study #{study_id} changed while being read")))
}

fn direction(tx: &mut Tx<'_>, study_id: i64) -> FResult<Direction> {
    let id = id32(study_id).ok_or_else(|| StorageError::StudyNotFound(format!("#{study_id}")))?;
    match tx
        .query_opt("SELECT direction::text FROM study_directions WHERE study_id = $1 AND objective = 0", args![id])?
    {
        Some(r) => {
            let d: String = r.get(0);
            Direction::parse(&d).ok_or_else(|| bad_data(format!("unknown study direction `{d}`")))
        }
        None => {
            study_exists(tx, study_id)?;
            Err(bad_data(format!("study #{study_id} has no direction in the database")))
        }
    }
}

fn study_attrs(tx: &mut Tx<'_>, table: &str, study_id: i64) -> FResult<BTreeMap<String, Value>> {
    study_exists(tx, study_id)?;
    let id = id32(study_id).expect("study exists");
    let mut out = BTreeMap::new();
    for r in tx.query(&format!("SELECT key, value_json FROM {table} WHERE study_id = $1"), args![id])? {
        let key: Option<String> = r.get(0);
        let json: Option<String> = r.get(1);
        out.insert(key.unwrap_or_default(), parse_json(json.as_deref().unwrap_or("null"))?);
    }
    Ok(out)
}

/// The `fail_reason` of a trial failed for missing heartbeats (times are the server's).
fn stale_reason(last: NaiveDateTime, grace: Duration) -> String {
    format!(
        "the worker stopped sending heartbeats (last sign of life {last}, database server time; grace period {} s); \
         the trial will be retried",
        grace.as_secs_f64()
    )
}

impl Storage for PostgresStorage {
    fn create_new_study(&self, name: &str, direction: Direction) -> Result<i64> {
        let id = self.write(|tx, _| {
            let row = tx.query_opt(
                "INSERT INTO studies (study_name) VALUES ($1) ON CONFLICT (study_name) DO NOTHING RETURNING study_id",
                args![name],
            )?;
            let Some(row) = row else { return Err(StorageError::DuplicateStudy(name.to_string()).into()) };
            let id: i32 = row.get(0);
            tx.execute(
                "INSERT INTO study_directions (direction, study_id, objective) VALUES ($1::text::studydirection, $2, 0)",
                args![direction.as_str(), id],
            )?;
            Ok(id as i64)
        })?;
        self.lock_cache().forget_study(id);
        Ok(id)
    }

    fn get_study_id_from_name(&self, name: &str) -> Result<Option<i64>> {
        self.read(|tx, _| {
            Ok(tx.query_opt("SELECT study_id FROM studies WHERE study_name = $1", args![name])?.map(|r| int(&r, 0)))
        })
    }

    fn get_study_direction(&self, study_id: i64) -> Result<Direction> {
        self.read(|tx, _| direction(tx, study_id))
    }

    fn get_all_studies(&self) -> Result<Vec<StudySummary>> {
        self.read(|tx, _| {
            let mut out = Vec::new();
            for r in tx.query(
                "SELECT s.study_id, s.study_name, d.direction::text FROM studies s \
                 LEFT JOIN study_directions d ON d.study_id = s.study_id AND d.objective = 0 ORDER BY s.study_id",
                &[],
            )? {
                let d: Option<String> = r.get(2);
                out.push(StudySummary {
                    study_id: int(&r, 0),
                    name: r.get(1),
                    direction: d.as_deref().and_then(Direction::parse).unwrap_or(Direction::Minimize),
                    counts: BTreeMap::new(),
                    best_value: None,
                    datetime_start: None,
                });
            }
            let index: HashMap<i64, usize> = out.iter().enumerate().map(|(i, s)| (s.study_id, i)).collect();
            for r in tx.query(
                "SELECT study_id, state::text, count(*), min(datetime_start) FROM trials GROUP BY study_id, state",
                &[],
            )? {
                let Some(sid) = r.get::<_, Option<i32>>(0) else { continue };
                let Some(&i) = index.get(&(sid as i64)) else { continue };
                let s = &mut out[i];
                s.counts.insert(parse_state(r.get(1))?, r.get::<_, i64>(2) as usize);
                if let Some(t) = r.get::<_, Option<NaiveDateTime>>(3) {
                    if s.datetime_start.is_none_or(|e| t < e) {
                        s.datetime_start = Some(t);
                    }
                }
            }
            for r in tx.query(
                "SELECT t.study_id, v.value, v.value_type::text FROM trial_values v JOIN trials t ON t.trial_id = v.trial_id \
                 WHERE t.state = 'COMPLETE' AND v.objective = 0",
                &[],
            )? {
                let Some(sid) = r.get::<_, Option<i32>>(0) else { continue };
                let (Some(&i), Some(v)) = (index.get(&(sid as i64)), value_from_repr(r.get(1), r.get(2))) else { continue };
                let s = &mut out[i];
                if !v.is_nan() && s.best_value.is_none_or(|b| s.direction.better(v, b)) {
                    s.best_value = Some(v);
                }
            }
            Ok(out)
        })
    }

    fn delete_study(&self, study_id: i64) -> Result<()> {
        self.write(|tx, _| {
            study_exists(tx, study_id)?;
            let id = id32(study_id).expect("study exists");
            for table in TRIAL_TABLES {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE trial_id IN (SELECT trial_id FROM trials WHERE study_id = $1)"),
                    args![id],
                )?;
            }
            for table in STUDY_TABLES {
                tx.execute(&format!("DELETE FROM {table} WHERE study_id = $1"), args![id])?;
            }
            Ok(())
        })?;
        self.lock_cache().forget_study(study_id);
        Ok(())
    }

    fn set_study_user_attr(&self, study_id: i64, key: &str, value: &Value) -> Result<()> {
        self.write(|tx, _| {
            study_exists(tx, study_id)?;
            upsert_attr(tx, "study_user_attributes", study_id as i32, key, value)
        })
    }

    fn set_study_system_attr(&self, study_id: i64, key: &str, value: &Value) -> Result<()> {
        self.write(|tx, _| {
            study_exists(tx, study_id)?;
            upsert_attr(tx, "study_system_attributes", study_id as i32, key, value)
        })
    }

    fn get_study_user_attrs(&self, study_id: i64) -> Result<BTreeMap<String, Value>> {
        self.read(|tx, _| study_attrs(tx, "study_user_attributes", study_id))
    }

    fn get_study_system_attrs(&self, study_id: i64) -> Result<BTreeMap<String, Value>> {
        self.read(|tx, _| study_attrs(tx, "study_system_attributes", study_id))
    }

    fn create_new_trial(
        &self,
        study_id: i64,
        state: TrialState,
        system_attrs: &BTreeMap<String, Value>,
    ) -> Result<FrozenTrial> {
        self.write(|tx, _| {
            let id = lock_study(tx, study_id)?;
            insert_trial(tx, id, state, system_attrs, None)
        })
    }

    fn start_next_trial(&self, study_id: i64, budget: Option<u64>) -> Result<Option<FrozenTrial>> {
        self.write(|tx, _| {
            let id = lock_study(tx, study_id)?;
            let mut count = None;
            if let Some(budget) = budget {
                // Under the study's lock, so the budget is exact across every worker; the same
                // scan counts all the study's trials, the number of a new one.
                let r = tx.query_one(
                    "SELECT count(*) FILTER (WHERE t.state <> 'WAITING' \
                     AND NOT (t.state = 'FAIL' AND EXISTS (SELECT 1 FROM trial_system_attributes a \
                     WHERE a.trial_id = t.trial_id AND a.key = $2 AND a.value_json = 'true'))), count(*) \
                     FROM trials t WHERE t.study_id = $1",
                    args![id, INTERRUPTED_KEY],
                )?;
                let used: i64 = r.get(0);
                if used as u64 >= budget {
                    return Ok(None);
                }
                count = Some(r.get::<_, i64>(1));
            }
            // The oldest WAITING trial, taken by exactly one worker (an Optuna worker may hold it).
            let taken = tx.query_opt(
                "UPDATE trials SET state = 'RUNNING', datetime_start = LOCALTIMESTAMP WHERE trial_id = \
                 (SELECT trial_id FROM trials WHERE study_id = $1 AND state = 'WAITING' ORDER BY trial_id \
                  LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING trial_id",
                args![id],
            )?;
            match taken {
                Some(r) => {
                    let trial_id: i32 = r.get(0);
                    upsert_heartbeat(tx, trial_id)?;
                    let mut dists = HashMap::new();
                    let t = load_trials(tx, &[trial_id as i64], &mut dists)?.remove(&(trial_id as i64));
                    t.map(|(_, t)| Some(t)).ok_or_else(|| StorageError::TrialNotFound(trial_id as i64).into())
                }
                None => insert_trial(tx, id, TrialState::Running, &BTreeMap::new(), count).map(Some),
            }
        })
    }

    fn set_trial_param(&self, trial_id: i64, name: &str, internal: f64, dist: &Distribution) -> Result<()> {
        self.set_trial_params_and_attrs(trial_id, &[(name.to_string(), internal, dist.clone())], &[])
    }

    fn set_trial_params_and_attrs(
        &self,
        trial_id: i64,
        params: &[(String, f64, Distribution)],
        user_attrs: &[(String, Value)],
    ) -> Result<()> {
        // Looked up before taking a connection: the cache's lock is never awaited holding one.
        let known: HashMap<(i64, String), Distribution> = {
            let c = self.lock_cache();
            c.dists
                .iter()
                .filter(|((_, n), _)| params.iter().any(|(p, ..)| p == n))
                .map(|(k, d)| (k.clone(), d.clone()))
                .collect()
        };
        let study_id = self.write(|tx, _| {
            let study_id = updatable(tx, trial_id)?;
            for (name, _, dist) in params {
                let old = match known.get(&(study_id as i64, name.clone())).cloned() {
                    Some(d) => Some(d),
                    None => match tx.query_opt(
                        "SELECT p.distribution_json FROM trial_params p JOIN trials t ON t.trial_id = p.trial_id \
                         WHERE t.study_id = $1 AND p.param_name = $2 LIMIT 1",
                        args![study_id, name],
                    )? {
                        Some(r) => {
                            let text: String = r.get(0);
                            Some(
                                Distribution::from_optuna_json(&parse_json(&text)?)
                                    .map_err(|e| bad_data(format!("unreadable distribution_json `{text}`: {e}")))?,
                            )
                        }
                        None => None,
                    },
                };
                StorageError::check_distribution(name, old.as_ref(), dist)?;
            }
            // One statement for all of them, in order (param_id keeps the order, as Optuna's);
            // a name given twice keeps its last value.
            let mut rows: Vec<(&str, f64, String)> = Vec::with_capacity(params.len());
            for (name, internal, dist) in params {
                rows.retain(|(n, ..)| *n != name.as_str());
                rows.push((name, *internal, dist.to_optuna_json().to_string()));
            }
            if !rows.is_empty() {
                let names: Vec<&str> = rows.iter().map(|r| r.0).collect();
                let values: Vec<f64> = rows.iter().map(|r| r.1).collect();
                let dists: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
                tx.execute(
                    "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) \
                     SELECT $1, u.n, u.v, u.d FROM unnest($2::text[], $3::float8[], $4::text[]) WITH ORDINALITY \
                     AS u(n, v, d, i) ORDER BY u.i \
                     ON CONFLICT (trial_id, param_name) DO UPDATE SET param_value = excluded.param_value, \
                     distribution_json = excluded.distribution_json",
                    args![(trial_id as i32), names, values, dists],
                )?;
            }
            for (key, value) in user_attrs {
                upsert_attr(tx, "trial_user_attributes", trial_id as i32, key, value)?;
            }
            Ok(study_id)
        })?;
        let mut c = self.lock_cache();
        for (name, _, dist) in params {
            c.dists.entry((study_id as i64, name.clone())).or_insert_with(|| dist.clone());
        }
        Ok(())
    }

    fn set_trial_state_values(&self, trial_id: i64, state: TrialState, value: Option<f64>) -> Result<bool> {
        if self.lock_cache().index.contains_key(&trial_id) {
            return Ok(false);
        }
        self.write(|tx, attempt| {
            let id = id32(trial_id).ok_or(StorageError::TrialNotFound(trial_id))?;
            let row = tx
                .query_opt("SELECT state::text FROM trials WHERE trial_id = $1 FOR UPDATE", args![id])?
                .ok_or(StorageError::TrialNotFound(trial_id))?;
            let from = parse_state(row.get(0))?;
            if !transition_allowed(from, state) {
                // A retry after a connection lost while committing finds its own write done.
                return Ok(attempt > 0 && from == state);
            }
            if state == TrialState::Running {
                tx.execute(
                    "UPDATE trials SET state = $2::text::trialstate, datetime_start = LOCALTIMESTAMP WHERE trial_id = $1",
                    args![id, state.as_str()],
                )?;
                upsert_heartbeat(tx, id)?;
            } else if state.is_finished() {
                tx.execute(
                    "UPDATE trials SET state = $2::text::trialstate, datetime_complete = LOCALTIMESTAMP WHERE trial_id = $1",
                    args![id, state.as_str()],
                )?;
            } else {
                tx.execute("UPDATE trials SET state = $2::text::trialstate WHERE trial_id = $1", args![id, state.as_str()])?;
            }
            // Optuna's trialvaluetype has no NAN: a NaN trial value is not kept.
            if let Some(v) = value.filter(|v| !v.is_nan()) {
                let (v, kind) = value_repr(v);
                tx.execute(
                    "INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES ($1, 0, $2, $3::text::trialvaluetype) \
                     ON CONFLICT (trial_id, objective) DO UPDATE SET value = excluded.value, value_type = excluded.value_type",
                    args![id, v, kind],
                )?;
            }
            Ok(true)
        })
    }

    fn set_trial_intermediate_value(&self, trial_id: i64, step: i64, value: f64) -> Result<()> {
        self.set_trial_intermediate_values(trial_id, &[(step, value)])
    }

    fn set_trial_intermediate_values(&self, trial_id: i64, values: &[(i64, f64)]) -> Result<()> {
        self.write(|tx, _| {
            updatable(tx, trial_id)?;
            const INSERT: &str = "INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, intermediate_value_type) \
                 VALUES ($1, $2, $3, $4::text::trialintermediatevaluetype) ON CONFLICT (trial_id, step) DO UPDATE SET \
                 intermediate_value = excluded.intermediate_value, intermediate_value_type = excluded.intermediate_value_type";
            for &(step, value) in values {
                let step = i32::try_from(step)
                    .map_err(|_| bad_data(format!("step {step} does not fit Optuna's integer step column")))?;
                let (v, kind) = value_repr(value);
                tx.execute(INSERT, args![(trial_id as i32), step, v, kind])?;
            }
            Ok(())
        })
    }

    fn set_trial_user_attr(&self, trial_id: i64, key: &str, value: &Value) -> Result<()> {
        self.write(|tx, _| {
            updatable(tx, trial_id)?;
            upsert_attr(tx, "trial_user_attributes", trial_id as i32, key, value)
        })
    }

    fn set_trial_system_attr(&self, trial_id: i64, key: &str, value: &Value) -> Result<()> {
        self.write(|tx, _| {
            updatable(tx, trial_id)?;
            upsert_attr(tx, "trial_system_attributes", trial_id as i32, key, value)
        })
    }

    fn get_trial(&self, trial_id: i64) -> Result<FrozenTrial> {
        if let Some(t) = self.lock_cache().finished(trial_id) {
            return Ok((**t).clone());
        }
        let (study_id, t) = self.read(|tx, _| {
            let mut dists = HashMap::new();
            load_trials(tx, &[trial_id], &mut dists)?
                .remove(&trial_id)
                .ok_or(StorageError::TrialNotFound(trial_id).into())
        })?;
        if t.state.is_finished() {
            let mut c = self.lock_cache();
            if c.studies.contains_key(&study_id) {
                c.add_finished(study_id, t.clone());
            }
        }
        Ok(t)
    }

    fn get_all_trials(&self, study_id: i64, states: Option<&[TrialState]>) -> Result<Vec<Arc<FrozenTrial>>> {
        // The cache's lock is held across the read; no path takes it while holding a connection.
        let mut cache = self.lock_cache();
        let unfinished = self.read(|tx, _| sync(tx, &mut cache, study_id))?;
        let unfinished = unfinished.into_iter().map(Arc::new).collect();
        Ok(merge_in_order(&cache.studies[&study_id].finished, unfinished, states))
    }

    fn record_heartbeat(&self, trial_id: i64) -> Result<()> {
        self.write(|tx, _| {
            let id = id32(trial_id).ok_or(StorageError::TrialNotFound(trial_id))?;
            if upsert_heartbeat(tx, id)? == 0 {
                return Err(StorageError::TrialNotFound(trial_id).into());
            }
            Ok(())
        })
    }

    fn fail_stale_trials(&self, study_id: i64, grace: Duration) -> Result<Vec<FrozenTrial>> {
        let failed = self.write(|tx, _| {
            let id = id32(study_id).ok_or_else(|| StorageError::StudyNotFound(format!("#{study_id}")))?;
            study_exists(tx, study_id)?;
            // Judged by the server's clock alone. A trial without a heartbeat row (an Optuna
            // worker run without heartbeats) is never stale, as in Optuna.
            let rows = tx.query(
                "UPDATE trials t SET state = 'FAIL', datetime_complete = LOCALTIMESTAMP FROM trial_heartbeats h \
                 WHERE h.trial_id = t.trial_id AND t.study_id = $1 AND t.state = 'RUNNING' \
                 AND h.heartbeat < LOCALTIMESTAMP - make_interval(secs => $2) RETURNING t.trial_id, h.heartbeat",
                args![id, grace.as_secs_f64()],
            )?;
            let mut failed = Vec::with_capacity(rows.len());
            for r in rows {
                let tid: i32 = r.get(0);
                let last: NaiveDateTime = r.get(1);
                upsert_attr(tx, "trial_system_attributes", tid, INTERRUPTED_KEY, &Value::Bool(true))?;
                upsert_attr(
                    tx,
                    "trial_system_attributes",
                    tid,
                    FAIL_REASON_KEY,
                    &Value::from(stale_reason(last, grace)),
                )?;
                failed.push(tid as i64);
            }
            failed.sort_unstable();
            let mut dists = HashMap::new();
            let mut loaded = load_trials(tx, &failed, &mut dists)?;
            Ok(failed.iter().filter_map(|id| loaded.remove(id).map(|(_, t)| t)).collect::<Vec<_>>())
        })?;
        Ok(failed)
    }

    fn count_trials(&self, study_id: i64) -> Result<BTreeMap<TrialState, usize>> {
        self.read(|tx, _| {
            let id = id32(study_id).ok_or_else(|| StorageError::StudyNotFound(format!("#{study_id}")))?;
            study_exists(tx, study_id)?;
            let mut out = BTreeMap::new();
            for r in
                tx.query("SELECT state::text, count(*) FROM trials WHERE study_id = $1 GROUP BY state", args![id])?
            {
                out.insert(parse_state(r.get(0))?, r.get::<_, i64>(1) as usize);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests;
