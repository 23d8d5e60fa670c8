//! Where studies and trials live: one contract (Optuna's `BaseStorage`, verb_noun methods) with
//! an in-memory backend and an SQLite backend that uses Optuna's own schema.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

use crate::distribution::Distribution;
use crate::frozen::{Direction, FrozenTrial, TrialState};

pub mod contract;
pub mod faulty;
mod memory;
mod optuna_schema;
pub mod postgres;
mod sqlite;

pub use faulty::{FaultKind, FaultyStorage};
pub use memory::InMemoryStorage;
pub use postgres::PostgresStorage;
pub use sqlite::SqliteStorage;

/// Storage failures. `is_user_fixable` ones exit with code 2.
#[derive(Debug, Error)]
pub enum StorageError {
    /// No study of that name.
    #[error("no study named `{0}` in this storage; `tune ls` lists the studies it holds")]
    StudyNotFound(String),
    /// A study with that name exists already (on create).
    #[error("a study named `{0}` already exists")]
    DuplicateStudy(String),
    /// No trial with that id.
    #[error("no trial with id {0}")]
    TrialNotFound(i64),
    /// Writing to a trial that has already finished.
    #[error("trial {number} is already {state} and can no longer be changed")]
    TrialFinished {
        /// The trial's number.
        number: i64,
        /// Its finished state.
        state: TrialState,
    },
    /// A parameter was suggested with a distribution other than the one it has in the study.
    #[error("parameter `{name}` was already used with another distribution in this study ({old}); a parameter keeps one distribution")]
    IncompatibleDistribution {
        /// Parameter name.
        name: String,
        /// The distribution it already has, as Optuna JSON.
        old: String,
    },
    /// The file is not an SQLite database, or is damaged.
    #[error(
        "{path} is not a usable SQLite database ({detail}); point `storage` at another file, or move this one away"
    )]
    Corrupt {
        /// The file.
        path: String,
        /// What SQLite said.
        detail: String,
    },
    /// The file is an SQLite database, but not an Optuna/tune one of a schema we read.
    #[error("{path} is an SQLite database but not an Optuna storage we can use ({detail})")]
    Incompatible {
        /// The file.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Another process held the lock for longer than the busy timeout.
    #[error(
        "{path} stayed locked by another process for {secs} s; is another program holding a write transaction on it?"
    )]
    Locked {
        /// The file.
        path: String,
        /// How long we waited.
        secs: u64,
    },
    /// A storage URL we do not understand.
    #[error("unsupported storage `{0}`: use `sqlite:///PATH` (relative), `sqlite:////ABS/PATH`, a plain file path, `postgresql://USER@HOST:PORT/DATABASE`, or `memory`")]
    BadUrl(String),
    /// The database server could not be reached for the whole of the storage's wait.
    #[error(
        "cannot reach the PostgreSQL server of {url} ({detail}); waited {secs} s. Check that the server runs and that host and port are right, or wait longer with TUNE_STORAGE_WAIT=SECONDS"
    )]
    Unreachable {
        /// The URL, without password.
        url: String,
        /// How long we kept trying.
        secs: f64,
        /// The last error.
        detail: String,
    },
    /// The server refused the connection for a reason the user fixes (login, missing database).
    #[error("the PostgreSQL server of {url} refused the connection ({detail}); {fix}")]
    Refused {
        /// The URL, without password.
        url: String,
        /// What the server said.
        detail: String,
        /// What to do.
        fix: String,
    },
    /// Any other SQLite error.
    #[error("SQLite error: {0}")]
    Sql(String),
    /// Any other PostgreSQL error.
    #[error("PostgreSQL error: {0}")]
    Postgres(String),
}

impl StorageError {
    /// `IncompatibleDistribution` when `name` already has `old` in the study and `new` is not
    /// compatible with it (the check every backend makes before storing a parameter).
    pub fn check_distribution(
        name: &str,
        old: Option<&Distribution>,
        new: &Distribution,
    ) -> std::result::Result<(), Self> {
        match old {
            Some(old) if !old.compatible(new) => Err(StorageError::IncompatibleDistribution {
                name: name.to_string(),
                old: old.to_optuna_json().to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// True for errors the user fixes by changing their input (exit code 2).
    pub fn is_user_fixable(&self) -> bool {
        matches!(
            self,
            StorageError::StudyNotFound(_)
                | StorageError::Corrupt { .. }
                | StorageError::Incompatible { .. }
                | StorageError::Locked { .. }
                | StorageError::BadUrl(_)
                | StorageError::IncompatibleDistribution { .. }
                | StorageError::Unreachable { .. }
                | StorageError::Refused { .. }
        )
    }
}

/// Result type of storage methods.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// One line of `tune ls`.
#[derive(Debug, Clone, PartialEq)]
pub struct StudySummary {
    /// Storage-wide id.
    pub study_id: i64,
    /// Unique name.
    pub name: String,
    /// Optimisation direction.
    pub direction: Direction,
    /// Number of trials in each state.
    pub counts: BTreeMap<TrialState, usize>,
    /// Best COMPLETE value, if any.
    pub best_value: Option<f64>,
    /// Start of the earliest trial.
    pub datetime_start: Option<chrono::NaiveDateTime>,
}

/// The storage contract. All methods are atomic; several processes may share one SQLite file.
pub trait Storage: Send + Sync {
    /// Creates a study; fails with `DuplicateStudy` if the name is taken.
    fn create_new_study(&self, name: &str, direction: Direction) -> Result<i64>;
    /// The id of the study with that name, if it exists.
    fn get_study_id_from_name(&self, name: &str) -> Result<Option<i64>>;
    /// The study's direction.
    fn get_study_direction(&self, study_id: i64) -> Result<Direction>;
    /// All studies with their trial counts.
    fn get_all_studies(&self) -> Result<Vec<StudySummary>>;
    /// Deletes a study and all its trials.
    fn delete_study(&self, study_id: i64) -> Result<()>;
    /// Sets a study user attribute (JSON).
    fn set_study_user_attr(&self, study_id: i64, key: &str, value: &Value) -> Result<()>;
    /// Sets a study system attribute (JSON).
    fn set_study_system_attr(&self, study_id: i64, key: &str, value: &Value) -> Result<()>;
    /// The study's user attributes.
    fn get_study_user_attrs(&self, study_id: i64) -> Result<BTreeMap<String, Value>>;
    /// The study's system attributes.
    fn get_study_system_attrs(&self, study_id: i64) -> Result<BTreeMap<String, Value>>;

    /// Creates a trial in `state` (RUNNING or WAITING), numbered as the count of earlier trials
    /// of the study, inside one transaction. RUNNING trials get `datetime_start` = now and a
    /// heartbeat. `system_attrs` are written in the same transaction (e.g. `fixed_params`).
    fn create_new_trial(
        &self,
        study_id: i64,
        state: TrialState,
        system_attrs: &BTreeMap<String, Value>,
    ) -> Result<FrozenTrial>;

    /// Atomically starts the next trial of a study under a budget: returns `None` when
    /// `budget` is `Some(n)` and the study already has `n` trials that are RUNNING or finished
    /// (FAIL trials marked interrupted excluded). Otherwise takes the oldest WAITING trial, or
    /// else creates a new one, and returns it RUNNING with `datetime_start` and a heartbeat.
    fn start_next_trial(&self, study_id: i64, budget: Option<u64>) -> Result<Option<FrozenTrial>>;

    /// Records a parameter value (internal representation) with its distribution. Fails with
    /// `IncompatibleDistribution` if the study used that name with another kind of
    /// distribution, and with `TrialFinished` on a finished trial.
    fn set_trial_param(&self, trial_id: i64, name: &str, internal: f64, dist: &Distribution) -> Result<()>;
    /// Records several parameters and user attributes of one trial, as
    /// [`Storage::set_trial_param`] and [`Storage::set_trial_user_attr`] do each, in order (a
    /// name given twice keeps its last value). A networked backend writes them in one
    /// transaction (all or none); the default writes them one by one.
    fn set_trial_params_and_attrs(
        &self,
        trial_id: i64,
        params: &[(String, f64, Distribution)],
        user_attrs: &[(String, Value)],
    ) -> Result<()> {
        params.iter().try_for_each(|(name, internal, dist)| self.set_trial_param(trial_id, name, *internal, dist))?;
        user_attrs.iter().try_for_each(|(key, value)| self.set_trial_user_attr(trial_id, key, value))
    }
    /// Moves a trial to `state`, with its value for COMPLETE/PRUNED; sets `datetime_complete`
    /// on finished states. Returns false (changing nothing) if the trial has already finished.
    fn set_trial_state_values(&self, trial_id: i64, state: TrialState, value: Option<f64>) -> Result<bool>;
    /// Records an intermediate value (NaN and infinities allowed) at a step.
    fn set_trial_intermediate_value(&self, trial_id: i64, step: i64, value: f64) -> Result<()>;
    /// Records several intermediate values, in order (a later one wins at a repeated step), all
    /// or none: on an error nothing is written. Backends with transactions store them in one.
    fn set_trial_intermediate_values(&self, trial_id: i64, values: &[(i64, f64)]) -> Result<()>;
    /// Sets a trial user attribute (JSON).
    fn set_trial_user_attr(&self, trial_id: i64, key: &str, value: &Value) -> Result<()>;
    /// Sets a trial system attribute (JSON).
    fn set_trial_system_attr(&self, trial_id: i64, key: &str, value: &Value) -> Result<()>;
    /// One trial.
    fn get_trial(&self, trial_id: i64) -> Result<FrozenTrial>;
    /// All trials of a study ordered by number, optionally only those in `states`.
    /// Trials are shared snapshots (`Arc`), so listing a large study copies pointers, not
    /// trials: `Study::ask` and `Trial::should_prune` list the study on every call.
    fn get_all_trials(&self, study_id: i64, states: Option<&[TrialState]>) -> Result<Vec<Arc<FrozenTrial>>>;

    /// Records that the worker running this trial is alive (now).
    fn record_heartbeat(&self, trial_id: i64) -> Result<()>;
    /// Atomically marks as FAIL every RUNNING trial of the study whose last heartbeat (or start,
    /// without one) is older than `grace`, setting the `tune:interrupted` and `fail_reason`
    /// system attributes, and returns them as they are now.
    fn fail_stale_trials(&self, study_id: i64, grace: Duration) -> Result<Vec<FrozenTrial>>;

    /// Number of trials per state (derived).
    fn count_trials(&self, study_id: i64) -> Result<BTreeMap<TrialState, usize>> {
        let mut counts = BTreeMap::new();
        for t in self.get_all_trials(study_id, None)? {
            *counts.entry(t.state).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// The best COMPLETE trial (derived); ties go to the earlier trial.
    fn get_best_trial(&self, study_id: i64) -> Result<Option<FrozenTrial>> {
        let direction = self.get_study_direction(study_id)?;
        let mut best: Option<Arc<FrozenTrial>> = None;
        for t in self.get_all_trials(study_id, Some(&[TrialState::Complete]))? {
            let v = match t.value {
                Some(v) => v,
                None => continue,
            };
            if best.as_ref().is_none_or(|b| direction.better(v, b.value.unwrap())) {
                best = Some(t);
            }
        }
        Ok(best.map(|b| (*b).clone()))
    }
}

/// Opens a storage from a URL: `memory`, `sqlite:///relative.db`, `sqlite:////abs.db`, a
/// plain path to a `.db` file, or `postgresql://user@host:port/database` (also
/// `postgresql+psycopg2://`, as Optuna writes it). With `TUNE_FAULT` naming storage points (tests), the storage is
/// wrapped in a [`FaultyStorage`] for each.
pub fn open(url: &str) -> Result<Arc<dyn Storage>> {
    let mut storage = open_backend(url)?;
    for p in crate::fault::points() {
        if let Some(method) = p.name.strip_prefix("storage.") {
            storage = Arc::new(FaultyStorage::new(storage, method, p.nth, p.kind).map_err(StorageError::Sql)?);
        }
    }
    Ok(storage)
}

fn open_backend(url: &str) -> Result<Arc<dyn Storage>> {
    if url == "memory" || url == ":memory:" {
        return Ok(Arc::new(InMemoryStorage::new()));
    }
    if postgres::is_postgres_url(url) {
        return Ok(Arc::new(PostgresStorage::open(url, true)?));
    }
    let path = if let Some(rest) = url.strip_prefix("sqlite:///") {
        rest.to_string()
    } else if url.contains("://") {
        return Err(StorageError::BadUrl(url.to_string()));
    } else {
        url.to_string()
    };
    if path.is_empty() {
        return Err(StorageError::BadUrl(url.to_string()));
    }
    Ok(Arc::new(SqliteStorage::open(std::path::Path::new(&path))?))
}
