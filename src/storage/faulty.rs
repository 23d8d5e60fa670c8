//! A storage that fails on purpose: it forwards every call to another storage, except the
//! N-th call of one write method, which fails. Tests use it to prove that a storage failure in
//! any phase of a run ends the run with the error, without hanging and without losing data.
//!
//! In-process: [`FaultyStorage::new`]. Through the CLI: the environment variable
//! `TUNE_FAULT=storage.<method>:<n>[:locked]` (see [`crate::fault`]) wraps whatever storage
//! `--storage` opens. `locked` fails with [`StorageError::Locked`] (a problem the user fixes,
//! exit 2); the default is a plain [`StorageError::Sql`] (exit 1).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{Result, Storage, StorageError, StudySummary};
use crate::distribution::Distribution;
use crate::frozen::{Direction, FrozenTrial, TrialState};

/// The write methods of [`Storage`], by name: those a [`FaultyStorage`] can fail.
pub const WRITE_METHODS: &[&str] = &[
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "create_new_trial",
    "start_next_trial",
    "set_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_intermediate_values",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "record_heartbeat",
    "fail_stale_trials",
];

/// The error a failing call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// A plain storage error (not the user's to fix: exit 1).
    Error,
    /// The database stayed locked (the user's to fix: exit 2).
    Locked,
}

/// Forwards to `inner`, failing the `nth` call (1-based) of `method`.
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    method: &'static str,
    nth: u64,
    kind: FaultKind,
    calls: AtomicU64,
}

impl FaultyStorage {
    /// Wraps `inner` so that the `nth` call of `method` (one of [`WRITE_METHODS`]) fails.
    pub fn new(inner: Arc<dyn Storage>, method: &str, nth: u64, kind: FaultKind) -> std::result::Result<Self, String> {
        let method = WRITE_METHODS
            .iter()
            .find(|m| **m == method)
            .ok_or_else(|| format!("`{method}` is not a storage write method; one of: {}", WRITE_METHODS.join(", ")))?;
        Ok(FaultyStorage { inner, method, nth, kind, calls: AtomicU64::new(0) })
    }

    /// How many calls of the chosen method were seen so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn check(&self, method: &str) -> Result<()> {
        if method != self.method || self.calls.fetch_add(1, Ordering::SeqCst) + 1 != self.nth {
            return Ok(());
        }
        Err(match self.kind {
            FaultKind::Error => StorageError::Sql(format!("injected fault: call {} of {method} failed", self.nth)),
            FaultKind::Locked => StorageError::Locked { path: format!("(injected fault in {method})"), secs: 0 },
        })
    }
}

impl Storage for FaultyStorage {
    fn create_new_study(&self, name: &str, direction: Direction) -> Result<i64> {
        self.check("create_new_study")?;
        self.inner.create_new_study(name, direction)
    }
    fn get_study_id_from_name(&self, name: &str) -> Result<Option<i64>> {
        self.inner.get_study_id_from_name(name)
    }
    fn get_study_direction(&self, study_id: i64) -> Result<Direction> {
        self.inner.get_study_direction(study_id)
    }
    fn get_all_studies(&self) -> Result<Vec<StudySummary>> {
        self.inner.get_all_studies()
    }
    fn delete_study(&self, study_id: i64) -> Result<()> {
        self.check("delete_study")?;
        self.inner.delete_study(study_id)
    }
    fn set_study_user_attr(&self, study_id: i64, key: &str, value: &Value) -> Result<()> {
        self.check("set_study_user_attr")?;
        self.inner.set_study_user_attr(study_id, key, value)
    }
    fn set_study_system_attr(&self, study_id: i64, key: &str, value: &Value) -> Result<()> {
        self.check("set_study_system_attr")?;
        self.inner.set_study_system_attr(study_id, key, value)
    }
    fn get_study_user_attrs(&self, study_id: i64) -> Result<BTreeMap<String, Value>> {
        self.inner.get_study_user_attrs(study_id)
    }
    fn get_study_system_attrs(&self, study_id: i64) -> Result<BTreeMap<String, Value>> {
        self.inner.get_study_system_attrs(study_id)
    }
    fn create_new_trial(
        &self,
        study_id: i64,
        state: TrialState,
        system_attrs: &BTreeMap<String, Value>,
    ) -> Result<FrozenTrial> {
        self.check("create_new_trial")?;
        self.inner.create_new_trial(study_id, state, system_attrs)
    }
    fn start_next_trial(&self, study_id: i64, budget: Option<u64>) -> Result<Option<FrozenTrial>> {
        self.check("start_next_trial")?;
        self.inner.start_next_trial(study_id, budget)
    }
    fn set_trial_param(&self, trial_id: i64, name: &str, internal: f64, dist: &Distribution) -> Result<()> {
        self.check("set_trial_param")?;
        self.inner.set_trial_param(trial_id, name, internal, dist)
    }
    fn set_trial_state_values(&self, trial_id: i64, state: TrialState, value: Option<f64>) -> Result<bool> {
        self.check("set_trial_state_values")?;
        self.inner.set_trial_state_values(trial_id, state, value)
    }
    fn set_trial_intermediate_value(&self, trial_id: i64, step: i64, value: f64) -> Result<()> {
        self.check("set_trial_intermediate_value")?;
        self.inner.set_trial_intermediate_value(trial_id, step, value)
    }
    fn set_trial_intermediate_values(&self, trial_id: i64, values: &[(i64, f64)]) -> Result<()> {
        self.check("set_trial_intermediate_values")?;
        self.inner.set_trial_intermediate_values(trial_id, values)
    }
    fn set_trial_user_attr(&self, trial_id: i64, key: &str, value: &Value) -> Result<()> {
        self.check("set_trial_user_attr")?;
        self.inner.set_trial_user_attr(trial_id, key, value)
    }
    fn set_trial_system_attr(&self, trial_id: i64, key: &str, value: &Value) -> Result<()> {
        self.check("set_trial_system_attr")?;
        self.inner.set_trial_system_attr(trial_id, key, value)
    }
    fn get_trial(&self, trial_id: i64) -> Result<FrozenTrial> {
        self.inner.get_trial(trial_id)
    }
    fn get_all_trials(&self, study_id: i64, states: Option<&[TrialState]>) -> Result<Vec<Arc<FrozenTrial>>> {
        self.inner.get_all_trials(study_id, states)
    }
    fn record_heartbeat(&self, trial_id: i64) -> Result<()> {
        self.check("record_heartbeat")?;
        self.inner.record_heartbeat(trial_id)
    }
    fn fail_stale_trials(&self, study_id: i64, grace: Duration) -> Result<Vec<FrozenTrial>> {
        self.check("fail_stale_trials")?;
        self.inner.fail_stale_trials(study_id, grace)
    }
    fn count_trials(&self, study_id: i64) -> Result<BTreeMap<TrialState, usize>> {
        self.inner.count_trials(study_id)
    }
    fn get_best_trial(&self, study_id: i64) -> Result<Option<FrozenTrial>> {
        self.inner.get_best_trial(study_id)
    }
}
