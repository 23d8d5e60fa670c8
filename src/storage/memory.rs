//! In-memory storage: the same contract as the SQLite backend, kept in mutex-protected maps for
//! one process (tests, `storage: memory` studies, and Optuna's `InMemoryStorage` use case).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::NaiveDateTime;
use serde_json::Value;

use super::{Result, Storage, StorageError, StudySummary};
use crate::distribution::Distribution;
use crate::frozen::{Direction, FrozenTrial, TrialState, FAIL_REASON_KEY, INTERRUPTED_KEY};

/// The current time as naive UTC, truncated to the microseconds Optuna's datetime text keeps,
/// so that a trial reads back the same from every backend.
pub(super) fn now() -> NaiveDateTime {
    let t = chrono::Utc::now().naive_utc() + clock_offset();
    let micros = t.and_utc().timestamp_micros();
    chrono::DateTime::from_timestamp_micros(micros).map(|d| d.naive_utc()).unwrap_or(t)
}

/// A test hook: `TUNE_TEST_CLOCK_OFFSET_S` shifts this process's idea of "now" (the SQLite and
/// in-memory backends' clock), to show that the PostgreSQL backend never uses it.
fn clock_offset() -> chrono::Duration {
    static OFFSET: std::sync::OnceLock<chrono::Duration> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::env::var("TUNE_TEST_CLOCK_OFFSET_S")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .map(|s| chrono::Duration::milliseconds((s * 1000.0) as i64))
            .unwrap_or_else(chrono::Duration::zero)
    })
}

/// The `fail_reason` written on a trial whose worker stopped sending heartbeats.
pub(super) fn stale_reason(last: NaiveDateTime, grace: Duration) -> String {
    format!(
        "the worker stopped sending heartbeats (last sign of life {last} UTC, grace period {} s); \
         the trial will be retried",
        grace.as_secs_f64()
    )
}

/// True when the trial last seen alive at `last` is older than `grace` at `now`.
pub(super) fn is_stale(last: NaiveDateTime, now: NaiveDateTime, grace: Duration) -> bool {
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    now.signed_duration_since(last) > grace
}

/// Whether a trial in `from` may move to `to` (Optuna's rule: finished trials never change, and
/// only a WAITING trial can be started).
pub(super) fn transition_allowed(from: TrialState, to: TrialState) -> bool {
    !from.is_finished() && (to != TrialState::Running || from == TrialState::Waiting)
}

/// A study's trials, attributes and the distribution each parameter name has in it.
struct MemStudy {
    name: String,
    direction: Direction,
    user_attrs: BTreeMap<String, Value>,
    system_attrs: BTreeMap<String, Value>,
    /// Trial ids in number order (numbers are the positions).
    trial_ids: Vec<i64>,
    /// The distribution each parameter name was first used with.
    dists: HashMap<String, Distribution>,
    /// How many trials were ever created WAITING (enqueued): while none were, starting a trial
    /// need not look for one.
    n_enqueued: usize,
}

/// A trial with the bookkeeping that is not part of its snapshot.
struct MemTrial {
    study_id: i64,
    /// Shared with readers; copied on write only while a reader still holds it.
    frozen: Arc<FrozenTrial>,
    heartbeat: Option<NaiveDateTime>,
}

impl MemTrial {
    fn frozen_mut(&mut self) -> &mut FrozenTrial {
        Arc::make_mut(&mut self.frozen)
    }
}

/// Trials by id. Ids are handed out 1, 2, 3, ..., so a trial sits at index `id - 1`: every
/// access is an index, where a hash map would hash each of the thousands of ids a snapshot of
/// a large study reads.
#[derive(Default)]
struct TrialTable(Vec<Option<MemTrial>>);

impl TrialTable {
    fn slot(trial_id: i64) -> Option<usize> {
        usize::try_from(trial_id).ok()?.checked_sub(1)
    }

    fn get(&self, trial_id: &i64) -> Option<&MemTrial> {
        self.0.get(Self::slot(*trial_id)?)?.as_ref()
    }

    fn get_mut(&mut self, trial_id: &i64) -> Option<&mut MemTrial> {
        self.0.get_mut(Self::slot(*trial_id)?)?.as_mut()
    }

    fn insert(&mut self, trial_id: i64, t: MemTrial) {
        let i = Self::slot(trial_id).expect("trial ids start at 1");
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i] = Some(t);
    }

    fn remove(&mut self, trial_id: &i64) {
        if let Some(slot) = Self::slot(*trial_id).and_then(|i| self.0.get_mut(i)) {
            *slot = None;
        }
    }
}

impl std::ops::Index<&i64> for TrialTable {
    type Output = MemTrial;

    fn index(&self, trial_id: &i64) -> &MemTrial {
        self.get(trial_id).expect("listed trial exists")
    }
}

#[derive(Default)]
struct Inner {
    next_study_id: i64,
    next_trial_id: i64,
    studies: BTreeMap<i64, MemStudy>,
    trials: TrialTable,
}

impl Inner {
    fn study(&self, study_id: i64) -> Result<&MemStudy> {
        self.studies.get(&study_id).ok_or_else(|| StorageError::StudyNotFound(format!("#{study_id}")))
    }

    fn study_mut(&mut self, study_id: i64) -> Result<&mut MemStudy> {
        self.studies.get_mut(&study_id).ok_or_else(|| StorageError::StudyNotFound(format!("#{study_id}")))
    }

    fn trial(&self, trial_id: i64) -> Result<&MemTrial> {
        self.trials.get(&trial_id).ok_or(StorageError::TrialNotFound(trial_id))
    }

    /// The trial, if it can still be written to.
    fn updatable(&mut self, trial_id: i64) -> Result<&mut MemTrial> {
        let t = self.trials.get_mut(&trial_id).ok_or(StorageError::TrialNotFound(trial_id))?;
        if t.frozen.state.is_finished() {
            return Err(StorageError::TrialFinished { number: t.frozen.number, state: t.frozen.state });
        }
        Ok(t)
    }

    fn new_trial(&mut self, study_id: i64, state: TrialState, system_attrs: &BTreeMap<String, Value>) -> Result<i64> {
        let number = self.study(study_id)?.trial_ids.len() as i64;
        self.next_trial_id += 1;
        let trial_id = self.next_trial_id;
        let mut frozen = FrozenTrial::new(trial_id, number, state);
        frozen.system_attrs = system_attrs.clone();
        let t = now();
        let mut heartbeat = None;
        if state == TrialState::Running {
            frozen.datetime_start = Some(t);
            heartbeat = Some(t);
        }
        if state.is_finished() {
            frozen.datetime_complete = Some(t);
        }
        let s = self.study_mut(study_id)?;
        s.trial_ids.push(trial_id);
        if state == TrialState::Waiting {
            s.n_enqueued += 1;
        }
        self.trials.insert(trial_id, MemTrial { study_id, frozen: Arc::new(frozen), heartbeat });
        Ok(trial_id)
    }
}

/// Studies and trials held in this process only; lost when it exits.
#[derive(Default)]
pub struct InMemoryStorage {
    inner: Mutex<Inner>,
}

impl InMemoryStorage {
    /// An empty storage.
    pub fn new() -> Self {
        InMemoryStorage::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every method leaves the maps consistent before it can panic, so a poisoned lock is
        // still safe to use.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Storage for InMemoryStorage {
    fn create_new_study(&self, name: &str, direction: Direction) -> Result<i64> {
        let mut g = self.lock();
        if g.studies.values().any(|s| s.name == name) {
            return Err(StorageError::DuplicateStudy(name.to_string()));
        }
        g.next_study_id += 1;
        let id = g.next_study_id;
        g.studies.insert(
            id,
            MemStudy {
                name: name.to_string(),
                direction,
                user_attrs: BTreeMap::new(),
                system_attrs: BTreeMap::new(),
                trial_ids: Vec::new(),
                dists: HashMap::new(),
                n_enqueued: 0,
            },
        );
        Ok(id)
    }

    fn get_study_id_from_name(&self, name: &str) -> Result<Option<i64>> {
        Ok(self.lock().studies.iter().find(|(_, s)| s.name == name).map(|(&id, _)| id))
    }

    fn get_study_direction(&self, study_id: i64) -> Result<Direction> {
        Ok(self.lock().study(study_id)?.direction)
    }

    fn get_all_studies(&self) -> Result<Vec<StudySummary>> {
        let g = self.lock();
        let mut out = Vec::with_capacity(g.studies.len());
        for (&study_id, s) in &g.studies {
            let mut counts = BTreeMap::new();
            let mut best_value: Option<f64> = None;
            let mut datetime_start: Option<NaiveDateTime> = None;
            for id in &s.trial_ids {
                let t = &g.trials[id].frozen;
                *counts.entry(t.state).or_insert(0) += 1;
                if t.state == TrialState::Complete {
                    if let Some(v) = t.value {
                        if best_value.is_none_or(|b| s.direction.better(v, b)) {
                            best_value = Some(v);
                        }
                    }
                }
                if let Some(d) = t.datetime_start {
                    if datetime_start.is_none_or(|e| d < e) {
                        datetime_start = Some(d);
                    }
                }
            }
            out.push(StudySummary {
                study_id,
                name: s.name.clone(),
                direction: s.direction,
                counts,
                best_value,
                datetime_start,
            });
        }
        Ok(out)
    }

    fn delete_study(&self, study_id: i64) -> Result<()> {
        let mut g = self.lock();
        let s = g.studies.remove(&study_id).ok_or_else(|| StorageError::StudyNotFound(format!("#{study_id}")))?;
        for id in s.trial_ids {
            g.trials.remove(&id);
        }
        Ok(())
    }

    fn set_study_user_attr(&self, study_id: i64, key: &str, value: &Value) -> Result<()> {
        self.lock().study_mut(study_id)?.user_attrs.insert(key.to_string(), value.clone());
        Ok(())
    }

    fn set_study_system_attr(&self, study_id: i64, key: &str, value: &Value) -> Result<()> {
        self.lock().study_mut(study_id)?.system_attrs.insert(key.to_string(), value.clone());
        Ok(())
    }

    fn get_study_user_attrs(&self, study_id: i64) -> Result<BTreeMap<String, Value>> {
        Ok(self.lock().study(study_id)?.user_attrs.clone())
    }

    fn get_study_system_attrs(&self, study_id: i64) -> Result<BTreeMap<String, Value>> {
        Ok(self.lock().study(study_id)?.system_attrs.clone())
    }

    fn create_new_trial(
        &self,
        study_id: i64,
        state: TrialState,
        system_attrs: &BTreeMap<String, Value>,
    ) -> Result<FrozenTrial> {
        let mut g = self.lock();
        let id = g.new_trial(study_id, state, system_attrs)?;
        Ok((*g.trials[&id].frozen).clone())
    }

    fn start_next_trial(&self, study_id: i64, budget: Option<u64>) -> Result<Option<FrozenTrial>> {
        let mut g = self.lock();
        let s = g.study(study_id)?;
        if let Some(budget) = budget {
            let used = s
                .trial_ids
                .iter()
                .map(|id| &g.trials[id].frozen)
                .filter(|t| t.state != TrialState::Waiting && !(t.state == TrialState::Fail && t.interrupted()))
                .count() as u64;
            if used >= budget {
                return Ok(None);
            }
        }
        // Trial ids grow with creation, so the smallest WAITING id is the oldest enqueued trial.
        let waiting = if s.n_enqueued == 0 {
            None
        } else {
            s.trial_ids.iter().copied().filter(|id| g.trials[id].frozen.state == TrialState::Waiting).min()
        };
        let id = match waiting {
            Some(id) => {
                let t = g.trials.get_mut(&id).expect("listed trial exists");
                let start = now();
                Arc::make_mut(&mut t.frozen).state = TrialState::Running;
                Arc::make_mut(&mut t.frozen).datetime_start = Some(start);
                t.heartbeat = Some(start);
                id
            }
            None => g.new_trial(study_id, TrialState::Running, &BTreeMap::new())?,
        };
        Ok(Some((*g.trials[&id].frozen).clone()))
    }

    fn set_trial_param(&self, trial_id: i64, name: &str, internal: f64, dist: &Distribution) -> Result<()> {
        let mut g = self.lock();
        let study_id = g.updatable(trial_id)?.study_id;
        let s = g.study_mut(study_id)?;
        StorageError::check_distribution(name, s.dists.get(name), dist)?;
        s.dists.entry(name.to_string()).or_insert_with(|| dist.clone());
        let t = Arc::make_mut(&mut g.trials.get_mut(&trial_id).expect("checked above").frozen);
        t.params.insert(name.to_string(), internal);
        t.distributions.insert(name.to_string(), dist.clone());
        Ok(())
    }

    fn set_trial_state_values(&self, trial_id: i64, state: TrialState, value: Option<f64>) -> Result<bool> {
        let mut g = self.lock();
        let t = g.trials.get_mut(&trial_id).ok_or(StorageError::TrialNotFound(trial_id))?;
        if !transition_allowed(t.frozen.state, state) {
            return Ok(false);
        }
        let stamp = now();
        Arc::make_mut(&mut t.frozen).state = state;
        if state == TrialState::Running {
            Arc::make_mut(&mut t.frozen).datetime_start = Some(stamp);
            t.heartbeat = Some(stamp);
        }
        if state.is_finished() {
            Arc::make_mut(&mut t.frozen).datetime_complete = Some(stamp);
        }
        // SQLite cannot hold a NaN value (it becomes NULL), so neither backend keeps one.
        if let Some(v) = value.filter(|v| !v.is_nan()) {
            Arc::make_mut(&mut t.frozen).value = Some(v);
        }
        Ok(true)
    }

    fn set_trial_intermediate_value(&self, trial_id: i64, step: i64, value: f64) -> Result<()> {
        self.lock().updatable(trial_id)?.frozen_mut().intermediate_values.insert(step, value);
        Ok(())
    }

    fn set_trial_intermediate_values(&self, trial_id: i64, values: &[(i64, f64)]) -> Result<()> {
        self.lock().updatable(trial_id)?.frozen_mut().intermediate_values.extend(values.iter().copied());
        Ok(())
    }

    fn set_trial_user_attr(&self, trial_id: i64, key: &str, value: &Value) -> Result<()> {
        self.lock().updatable(trial_id)?.frozen_mut().user_attrs.insert(key.to_string(), value.clone());
        Ok(())
    }

    fn set_trial_system_attr(&self, trial_id: i64, key: &str, value: &Value) -> Result<()> {
        self.lock().updatable(trial_id)?.frozen_mut().system_attrs.insert(key.to_string(), value.clone());
        Ok(())
    }

    fn get_trial(&self, trial_id: i64) -> Result<FrozenTrial> {
        Ok((*self.lock().trial(trial_id)?.frozen).clone())
    }

    fn get_all_trials(&self, study_id: i64, states: Option<&[TrialState]>) -> Result<Vec<Arc<FrozenTrial>>> {
        let g = self.lock();
        let s = g.study(study_id)?;
        Ok(s.trial_ids
            .iter()
            .map(|id| &g.trials[id].frozen)
            .filter(|t| states.is_none_or(|st| st.contains(&t.state)))
            .map(Arc::clone)
            .collect())
    }

    fn record_heartbeat(&self, trial_id: i64) -> Result<()> {
        let mut g = self.lock();
        let t = g.trials.get_mut(&trial_id).ok_or(StorageError::TrialNotFound(trial_id))?;
        t.heartbeat = Some(now());
        Ok(())
    }

    fn fail_stale_trials(&self, study_id: i64, grace: Duration) -> Result<Vec<FrozenTrial>> {
        let mut g = self.lock();
        let ids = g.study(study_id)?.trial_ids.clone();
        let stamp = now();
        let mut out = Vec::new();
        for id in ids {
            let t = g.trials.get_mut(&id).expect("listed trial exists");
            if t.frozen.state != TrialState::Running {
                continue;
            }
            let Some(last) = t.heartbeat.or(t.frozen.datetime_start) else { continue };
            if !is_stale(last, stamp, grace) {
                continue;
            }
            Arc::make_mut(&mut t.frozen).state = TrialState::Fail;
            Arc::make_mut(&mut t.frozen).datetime_complete = Some(stamp);
            Arc::make_mut(&mut t.frozen).system_attrs.insert(INTERRUPTED_KEY.to_string(), Value::Bool(true));
            Arc::make_mut(&mut t.frozen)
                .system_attrs
                .insert(FAIL_REASON_KEY.to_string(), Value::from(stale_reason(last, grace)));
            out.push((*t.frozen).clone());
        }
        Ok(out)
    }

    fn count_trials(&self, study_id: i64) -> Result<BTreeMap<TrialState, usize>> {
        let g = self.lock();
        let mut counts = BTreeMap::new();
        for id in &g.study(study_id)?.trial_ids {
            *counts.entry(g.trials[id].frozen.state).or_insert(0) += 1;
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract() {
        super::super::contract::run_all(&|| std::sync::Arc::new(InMemoryStorage::new()));
    }
}
