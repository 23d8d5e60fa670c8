//! `Study` (ask/tell, enqueue, optimize) and `Trial`, the handle an objective uses to suggest
//! parameters and report intermediate values (Optuna's `Study` and `Trial`).
//!
//! The trial, not the sampler, writes to storage: `suggest` checks "already suggested? fixed by
//! enqueue? relative value available?" before asking the sampler (Optuna's `Trial._suggest`).
//!
//! ```
//! use std::sync::Arc;
//! use tune::{Direction, Study};
//! use tune::sampler::{TpeConfig, TpeSampler};
//!
//! let sampler = Arc::new(TpeSampler::new(TpeConfig::default(), 42));
//! let study = Study::in_memory("quadratic", Direction::Minimize, sampler)?;
//! study.optimize(30, |trial| {
//!     let x = trial.suggest_float("x", -10.0, 10.0)?;
//!     let n = trial.suggest_int("n", 1, 5)?;
//!     Ok((x - 2.0).powi(2) + n as f64)
//! })?;
//! let best = study.best_trial()?.expect("a trial completed");
//! assert!(best.value.unwrap() < 10.0);
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::distribution::Distribution;
use crate::error::{InputError, TrialPruned};
use crate::frozen::{Direction, FrozenTrial, TrialState, FAIL_REASON_KEY, FIXED_PARAMS_KEY, INTERRUPTED_KEY};
use crate::pruner::{NopPruner, Pruner};
use crate::sampler::{Sampler, SearchSpace, StudyView};
use crate::storage::{InMemoryStorage, Storage, StorageError};

/// User attribute holding the trial's seed (derived from the study seed and its number).
pub const SEED_ATTR: &str = "seed";

/// How long `Trial::report` may hold intermediate values in memory before it stores them (in
/// one transaction). The trial's own pruning checks see every value at once; other readers
/// (dashboards, `tune show`, ASHA in other workers) see them at most this late. `tell`, Ctrl-C
/// and dropping the trial store what is pending first.
pub const REPORT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How a trial ended, given to `Study::tell`.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Finished with this value (NaN makes the trial FAIL, as in Optuna).
    Complete(f64),
    /// Stopped by the pruner; the value becomes the last finite intermediate value.
    Pruned,
    /// The objective failed, with the reason.
    Fail(String),
}

/// What a study shares with its trials.
struct Shared {
    study_id: i64,
    name: String,
    direction: Direction,
    seed: u64,
    storage: Arc<dyn Storage>,
    sampler: Arc<dyn Sampler>,
    pruner: Arc<dyn Pruner>,
    stop: Arc<AtomicBool>,
}

/// A study: a named optimisation in a storage, with its sampler and pruner.
#[derive(Clone)]
pub struct Study {
    shared: Arc<Shared>,
}

impl Study {
    /// Loads the study `name` from `storage`, or creates it with `direction`. Loading a study
    /// created with the other direction is an input error.
    pub fn create_or_load(
        storage: Arc<dyn Storage>,
        name: &str,
        direction: Direction,
        sampler: Arc<dyn Sampler>,
        pruner: Arc<dyn Pruner>,
        seed: u64,
    ) -> anyhow::Result<Study> {
        let study_id = match storage.get_study_id_from_name(name)? {
            Some(id) => {
                let stored = storage.get_study_direction(id)?;
                if stored != direction {
                    return Err(InputError::new(format!(
                        "study `{name}` exists with direction {}, but {} was asked; use another study name or the stored direction",
                        stored.as_str().to_lowercase(),
                        direction.as_str().to_lowercase()
                    ))
                    .into());
                }
                id
            }
            None => match storage.create_new_study(name, direction) {
                Ok(id) => id,
                // Another process created it between our lookup and our insert.
                Err(crate::storage::StorageError::DuplicateStudy(_)) => {
                    storage.get_study_id_from_name(name)?.context("study vanished while being created")?
                }
                Err(e) => return Err(e.into()),
            },
        };
        Ok(Study {
            shared: Arc::new(Shared {
                study_id,
                name: name.to_string(),
                direction,
                seed,
                storage,
                sampler,
                pruner,
                stop: Arc::new(AtomicBool::new(false)),
            }),
        })
    }

    /// Loads an existing study (for `show`, `best`, `export`): its direction comes from storage.
    pub fn load(
        storage: Arc<dyn Storage>,
        name: &str,
        sampler: Arc<dyn Sampler>,
        pruner: Arc<dyn Pruner>,
        seed: u64,
    ) -> anyhow::Result<Study> {
        let id = storage
            .get_study_id_from_name(name)?
            .ok_or_else(|| crate::storage::StorageError::StudyNotFound(name.to_string()))?;
        let direction = storage.get_study_direction(id)?;
        Study::create_or_load(storage, name, direction, sampler, pruner, seed)
    }

    /// A study in a fresh in-memory storage, without pruning.
    pub fn in_memory(name: &str, direction: Direction, sampler: Arc<dyn Sampler>) -> anyhow::Result<Study> {
        Study::create_or_load(Arc::new(InMemoryStorage::new()), name, direction, sampler, Arc::new(NopPruner), 0)
    }

    /// The study's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The study's id in its storage.
    pub fn study_id(&self) -> i64 {
        self.shared.study_id
    }

    /// Minimise or maximise.
    pub fn direction(&self) -> Direction {
        self.shared.direction
    }

    /// The storage the study lives in.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.shared.storage
    }

    /// The flag that, once set, makes `Trial::should_prune` answer true and
    /// `Trial::interrupted` report it (Ctrl-C).
    pub fn stop_flag(&self) -> &Arc<AtomicBool> {
        &self.shared.stop
    }

    /// All trials, ordered by number (shared snapshots).
    pub fn trials(&self) -> anyhow::Result<Vec<Arc<FrozenTrial>>> {
        Ok(self.shared.storage.get_all_trials(self.shared.study_id, None)?)
    }

    /// The best COMPLETE trial.
    pub fn best_trial(&self) -> anyhow::Result<Option<FrozenTrial>> {
        Ok(self.shared.storage.get_best_trial(self.shared.study_id)?)
    }

    /// Adds a WAITING trial whose parameters are fixed to `params` (user-facing values); it
    /// runs before any newly sampled trial.
    pub fn enqueue(&self, params: &BTreeMap<String, Value>) -> anyhow::Result<FrozenTrial> {
        self.enqueue_with(params, &[])
    }

    /// [`Study::enqueue`] with more system attributes, written with the trial in one
    /// transaction (a scheduler's plan for it, such as PBT's segment).
    pub fn enqueue_with(
        &self,
        params: &BTreeMap<String, Value>,
        extra: &[(&str, Value)],
    ) -> anyhow::Result<FrozenTrial> {
        let mut attrs = BTreeMap::new();
        attrs.insert(FIXED_PARAMS_KEY.to_string(), serde_json::to_value(params)?);
        for (k, v) in extra {
            attrs.insert(k.to_string(), v.clone());
        }
        Ok(self.shared.storage.create_new_trial(self.shared.study_id, TrialState::Waiting, &attrs)?)
    }

    /// Best effort after `ask_within` failed on a trial it had started: the trial is failed as
    /// interrupted (so it does not count against the budget) and, if it was enqueued, its
    /// parameters are enqueued again. Errors are ignored: the storage may be the problem.
    fn give_back(&self, frozen: &FrozenTrial, e: &dyn std::fmt::Display) {
        let st = &self.shared.storage;
        let reason = Value::from(format!("interrupted: starting the trial failed ({e:#})"));
        let ok = st.set_trial_system_attr(frozen.trial_id, INTERRUPTED_KEY, &Value::Bool(true)).is_ok()
            && st.set_trial_system_attr(frozen.trial_id, FAIL_REASON_KEY, &reason).is_ok()
            && st.set_trial_state_values(frozen.trial_id, TrialState::Fail, None).is_ok();
        if let (true, Some(fixed)) = (ok, frozen.system_attrs.get(FIXED_PARAMS_KEY)) {
            let mut attrs = BTreeMap::new();
            attrs.insert(FIXED_PARAMS_KEY.to_string(), fixed.clone());
            attrs.extend(carried(frozen).into_iter().map(|(k, v)| (k.to_string(), v)));
            let _ = st.create_new_trial(self.shared.study_id, TrialState::Waiting, &attrs);
        }
    }

    /// Starts a trial: the oldest WAITING one, else a new one. Its `seed` user attribute is
    /// stored with its first write (`Trial::flush`, `report`, `tell`), not here.
    pub fn ask(&self) -> anyhow::Result<Trial> {
        Ok(self.ask_within(None)?.expect("no budget means a trial is always started"))
    }

    /// Starts a trial unless the study already has `budget` trials that are running or
    /// finished (interrupted ones excluded); `None` then.
    pub fn ask_within(&self, budget: Option<u64>) -> anyhow::Result<Option<Trial>> {
        let s = &self.shared;
        let Some(frozen) = s.storage.start_next_trial(s.study_id, budget)? else {
            return Ok(None);
        };
        let seed = derive_seed(s.seed, frozen.number);
        let fixed: BTreeMap<String, Value> = match frozen.system_attrs.get(FIXED_PARAMS_KEY) {
            Some(v) => serde_json::from_value(v.clone()).context("reading an enqueued trial's fixed_params"),
            None => Ok(BTreeMap::new()),
        }
        .inspect_err(|e| self.give_back(&frozen, e))?;
        let snapshot = s.storage.get_all_trials(s.study_id, None).inspect_err(|e| self.give_back(&frozen, e))?;
        let mut me = match snapshot.iter().find(|t| t.trial_id == frozen.trial_id) {
            Some(t) => (**t).clone(),
            None => frozen,
        };
        // Stored with the trial's parameters (or at its first flush): one write fewer per trial.
        me.user_attrs.insert(SEED_ATTR.to_string(), Value::from(seed));
        let view = StudyView { direction: s.direction, trials: &snapshot };
        // Hyperband shows the sampler only the trial's bracket.
        let narrowed = if s.sampler.sees_whole_study() { None } else { s.pruner.sampler_trials(&view, &me) };
        let snapshot = narrowed.unwrap_or(snapshot);
        let view = StudyView { direction: s.direction, trials: &snapshot };
        let relative_space = s.sampler.infer_relative_search_space(&view, &me);
        let relative = if relative_space.is_empty() {
            BTreeMap::new()
        } else {
            s.sampler.sample_relative(&view, &me, &relative_space)
        };
        Ok(Some(Trial {
            shared: self.shared.clone(),
            frozen: me,
            snapshot,
            relative_space,
            relative,
            fixed,
            seed,
            device: None,
            pending: Vec::new(),
            pending_params: Vec::new(),
            pending_attrs: vec![(SEED_ATTR.to_string(), Value::from(seed))],
            last_flush: Instant::now(),
            flush_failed: false,
        }))
    }

    /// Finishes a trial. A `Complete` value that is NaN becomes FAIL; a pruned trial takes its
    /// last finite intermediate value. Returns the trial as stored.
    pub fn tell(&self, mut trial: Trial, outcome: Outcome) -> anyhow::Result<FrozenTrial> {
        trial.flush()?;
        self.tell_id(trial.frozen.trial_id, outcome)
    }

    /// `tell` by trial id (for executors that no longer hold the `Trial`).
    pub fn tell_id(&self, trial_id: i64, outcome: Outcome) -> anyhow::Result<FrozenTrial> {
        self.record(trial_id, outcome, None)?;
        Ok(self.shared.storage.get_trial(trial_id)?)
    }

    /// `tell`, returning the trial as this process knows it instead of reading it back (a
    /// round trip to a database server): state, value and `fail_reason` as stored, everything
    /// else as the trial held it; `datetime_complete` is left unset (the stored one is the
    /// database's clock). For executors, which only show the outcome.
    pub fn tell_known(&self, mut trial: Trial, outcome: Outcome) -> anyhow::Result<FrozenTrial> {
        trial.flush()?;
        let mut t = trial.frozen.clone();
        let (state, value, reason) = self.record(t.trial_id, outcome, Some(&t))?;
        t.state = state;
        t.value = value;
        if let Some(reason) = reason {
            t.system_attrs.insert(FAIL_REASON_KEY.to_string(), reason);
        }
        Ok(t)
    }

    /// Stores a trial's outcome: its state, value and, on failure, `fail_reason` (also
    /// returned). A pruned trial's value is its last finite intermediate value, from `known` (the
    /// trial as held, its values stored) or else read from the storage.
    fn record(
        &self,
        trial_id: i64,
        outcome: Outcome,
        known: Option<&FrozenTrial>,
    ) -> anyhow::Result<(TrialState, Option<f64>, Option<Value>)> {
        let st = &self.shared.storage;
        let mut reason = None;
        let (state, value) = match outcome {
            Outcome::Complete(v) if v.is_nan() => {
                reason = Some(Value::from("the objective returned NaN"));
                (TrialState::Fail, None)
            }
            Outcome::Complete(v) => (TrialState::Complete, Some(v)),
            Outcome::Pruned => {
                let last = |t: &FrozenTrial| t.intermediate_values.values().rev().find(|v| v.is_finite()).copied();
                let value = match known {
                    Some(t) => last(t),
                    None => last(&st.get_trial(trial_id)?),
                };
                (TrialState::Pruned, value)
            }
            Outcome::Fail(r) => {
                reason = Some(Value::from(r));
                (TrialState::Fail, None)
            }
        };
        if let Some(r) = &reason {
            st.set_trial_system_attr(trial_id, FAIL_REASON_KEY, r)?;
        }
        if !st.set_trial_state_values(trial_id, state, value)? {
            // Finished elsewhere meanwhile (failed as stale by another worker): refused, so
            // that this late result never overwrites the new attempt.
            let now = st.get_trial(trial_id)?;
            return Err(StorageError::TrialFinished { number: now.number, state: now.state }.into());
        }
        Ok((state, value, reason))
    }

    /// Runs `n_trials` trials one after another with `objective`, which returns the value or
    /// `Err(TrialPruned)`. A failing objective makes its trial FAIL; the study goes on.
    pub fn optimize<F>(&self, n_trials: usize, objective: F) -> anyhow::Result<()>
    where
        F: Fn(&mut Trial) -> anyhow::Result<f64>,
    {
        for _ in 0..n_trials {
            let mut trial = self.ask()?;
            let outcome = outcome_of(objective(&mut trial));
            self.tell(trial, outcome)?;
        }
        Ok(())
    }
}

/// System attributes an enqueued trial's retry inherits besides its fixed parameters: a
/// scheduler's plan for it (PBT's segment).
pub const CARRIED_KEYS: &[&str] = &[crate::pbt::SEGMENT_KEY];

/// The [`CARRIED_KEYS`] attributes trial `t` has, for the trial that retries it.
pub fn carried(t: &FrozenTrial) -> Vec<(&'static str, Value)> {
    CARRIED_KEYS.iter().filter_map(|k| t.system_attrs.get(*k).map(|v| (*k, v.clone()))).collect()
}

/// Maps an objective's result to an `Outcome` (`TrialPruned` anywhere in the chain: pruned).
pub fn outcome_of(result: anyhow::Result<f64>) -> Outcome {
    match result {
        Ok(v) => Outcome::Complete(v),
        Err(e) if e.chain().any(|c| c.is::<TrialPruned>()) => Outcome::Pruned,
        Err(e) => Outcome::Fail(format!("{e:#}")),
    }
}

/// The seed of trial `number` in a study seeded with `study_seed`.
pub fn derive_seed(study_seed: u64, number: i64) -> u64 {
    use rand::Rng;
    crate::sampler::trial_rng(study_seed, number, "trial-seed").random::<u64>() >> 1
}

/// A running trial, handed to the objective.
pub struct Trial {
    shared: Arc<Shared>,
    frozen: FrozenTrial,
    snapshot: Vec<Arc<FrozenTrial>>,
    relative_space: SearchSpace,
    relative: BTreeMap<String, f64>,
    fixed: BTreeMap<String, Value>,
    seed: u64,
    device: Option<String>,
    /// Reported intermediate values not stored yet, in report order.
    pending: Vec<(i64, f64)>,
    /// Parameters from `suggest_deferred` not stored yet, in suggestion order, and user
    /// attributes (the seed) stored with them.
    pending_params: Vec<(String, f64, Distribution)>,
    pending_attrs: Vec<(String, Value)>,
    last_flush: Instant,
    /// A flush failed (the storage gave up after its own retries): dropping the trial does not
    /// wait on the storage once more.
    flush_failed: bool,
}

impl Trial {
    /// 0-based number in the study.
    pub fn number(&self) -> i64 {
        self.frozen.number
    }

    /// Storage-wide id.
    pub fn trial_id(&self) -> i64 {
        self.frozen.trial_id
    }

    /// This trial's seed: derived from the study seed and the trial number.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The device the executor placed this trial on (`parallelism.devices`), if any: objectives
    /// that train on a device use it instead of their config's.
    pub fn device(&self) -> Option<&str> {
        self.device.as_deref()
    }

    /// Places this trial on `device` (`None`: the objective's config decides).
    pub fn place_on(&mut self, device: Option<&str>) {
        self.device = device.map(str::to_string);
    }

    /// The name of the study this trial belongs to.
    pub fn study_name(&self) -> &str {
        &self.shared.name
    }

    /// The trial as known so far (parameters suggested, values reported).
    pub fn frozen(&self) -> &FrozenTrial {
        &self.frozen
    }

    /// Suggests a value for `name` from `dist`, returned in its user-facing form. The same
    /// name asked twice gives the same value.
    pub fn suggest(&mut self, name: &str, dist: &Distribution) -> anyhow::Result<Value> {
        self.suggest_with(name, dist, false)
    }

    /// [`Trial::suggest`], keeping the value for the next [`Trial::flush`], which stores all
    /// such values in one write: a search space's parameters cost one transaction, not one
    /// each (on PostgreSQL, a round trip to the server each). Flush before the objective runs,
    /// so that other workers' samplers see the trial's parameters. Stored parameters keep the
    /// order of their writes: an immediate `suggest` between deferred ones is stored first.
    pub fn suggest_deferred(&mut self, name: &str, dist: &Distribution) -> anyhow::Result<Value> {
        self.suggest_with(name, dist, true)
    }

    fn suggest_with(&mut self, name: &str, dist: &Distribution, defer: bool) -> anyhow::Result<Value> {
        if let Some(&x) = self.frozen.params.get(name) {
            let old = &self.frozen.distributions[name];
            if !old.compatible(dist) {
                bail!("parameter `{name}` was suggested twice in trial {} with different distributions", self.number());
            }
            return Ok(old.to_external(x));
        }
        let internal = if let Some(v) = self.fixed.get(name) {
            let x = dist.to_internal(v).map_err(|e| InputError::new(format!("enqueued value for `{name}`: {e}")))?;
            if !dist.contains(x) {
                // Optuna keeps an out-of-range fixed value with a warning; we do the same.
                eprintln!("warning: enqueued value {v} for `{name}` lies outside its distribution");
            }
            x
        } else if dist.single() {
            match dist {
                Distribution::Float { low, .. } => *low,
                Distribution::Int { low, .. } => *low as f64,
                Distribution::Categorical { .. } => 0.0,
            }
        } else if let Some(x) = self.relative_value(name, dist) {
            x
        } else {
            let view = StudyView { direction: self.shared.direction, trials: &self.snapshot };
            self.shared.sampler.sample_independent(&view, &self.frozen, name, dist)
        };
        if defer {
            self.pending_params.push((name.to_string(), internal, dist.clone()));
        } else {
            self.shared.storage.set_trial_param(self.frozen.trial_id, name, internal, dist)?;
        }
        self.frozen.params.insert(name.to_string(), internal);
        self.frozen.distributions.insert(name.to_string(), dist.clone());
        Ok(dist.to_external(internal))
    }

    /// The jointly sampled value for `name`, if the sampler gave one that fits `dist`.
    fn relative_value(&self, name: &str, dist: &Distribution) -> Option<f64> {
        let x = *self.relative.get(name)?;
        let space = self.relative_space.get(name)?;
        (space.compatible(dist) && dist.contains(x)).then_some(x)
    }

    /// A float in `[low, high]`.
    pub fn suggest_float(&mut self, name: &str, low: f64, high: f64) -> anyhow::Result<f64> {
        self.suggest_number(name, Distribution::float(low, high, false, None))
    }

    /// A float in `[low, high]` sampled in log space.
    pub fn suggest_float_log(&mut self, name: &str, low: f64, high: f64) -> anyhow::Result<f64> {
        self.suggest_number(name, Distribution::float(low, high, true, None))
    }

    /// An integer in `[low, high]`.
    pub fn suggest_int(&mut self, name: &str, low: i64, high: i64) -> anyhow::Result<i64> {
        let d = Distribution::int(low, high, false, 1).map_err(|e| InputError::new(format!("`{name}`: {e}")))?;
        Ok(self.suggest(name, &d)?.as_i64().expect("int distribution gives ints"))
    }

    /// One of `choices`.
    pub fn suggest_categorical(&mut self, name: &str, choices: &[Value]) -> anyhow::Result<Value> {
        let d = Distribution::categorical(choices.to_vec()).map_err(|e| InputError::new(format!("`{name}`: {e}")))?;
        self.suggest(name, &d)
    }

    fn suggest_number(&mut self, name: &str, d: Result<Distribution, String>) -> anyhow::Result<f64> {
        let d = d.map_err(|e| InputError::new(format!("`{name}`: {e}")))?;
        Ok(self.suggest(name, &d)?.as_f64().expect("float distribution gives floats"))
    }

    /// Reports an intermediate value at `step` (e.g. an evaluation's mean return).
    /// Values reported within `REPORT_FLUSH_INTERVAL` of the last write are stored together, in
    /// one transaction, by a later `report`, `flush`, `Study::tell` or `Study::tell_known`, or when the trial is
    /// dropped: one commit per value would bound a fast objective by the file's commit rate.
    pub fn report(&mut self, step: i64, value: f64) -> anyhow::Result<()> {
        self.frozen.intermediate_values.insert(step, value);
        self.pending.push((step, value));
        if self.last_flush.elapsed() >= REPORT_FLUSH_INTERVAL {
            self.flush()?;
        }
        Ok(())
    }

    /// Stores the parameters `suggest_deferred`, the seed attribute and the intermediate values
    /// `report` hold. On an error they stay pending, for the next try.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        let r = self.store_pending();
        self.flush_failed = r.is_err();
        r
    }

    fn store_pending(&mut self) -> anyhow::Result<()> {
        if !self.pending_params.is_empty() || !self.pending_attrs.is_empty() {
            self.shared.storage.set_trial_params_and_attrs(
                self.frozen.trial_id,
                &self.pending_params,
                &self.pending_attrs,
            )?;
            self.pending_params.clear();
            self.pending_attrs.clear();
        }
        if !self.pending.is_empty() {
            self.shared.storage.set_trial_intermediate_values(self.frozen.trial_id, &self.pending)?;
            self.pending.clear();
        }
        self.last_flush = Instant::now();
        Ok(())
    }

    /// True when the pruner says this trial should stop, or the run is being interrupted.
    pub fn should_prune(&mut self) -> anyhow::Result<bool> {
        if self.interrupted() {
            return Ok(true);
        }
        let s = &self.shared;
        let trials = s.storage.get_all_trials(s.study_id, None)?;
        let view = StudyView { direction: s.direction, trials: &trials };
        Ok(s.pruner.prune(&view, &self.frozen))
    }

    /// True once the run was asked to stop (Ctrl-C): the objective should return soon.
    pub fn interrupted(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    /// Stores a user attribute (JSON).
    pub fn set_user_attr(&mut self, key: &str, value: Value) -> anyhow::Result<()> {
        self.shared.storage.set_trial_user_attr(self.frozen.trial_id, key, &value)?;
        self.frozen.user_attrs.insert(key.to_string(), value);
        Ok(())
    }

    /// Stores a system attribute (JSON).
    pub fn set_system_attr(&mut self, key: &str, value: Value) -> anyhow::Result<()> {
        self.shared.storage.set_trial_system_attr(self.frozen.trial_id, key, &value)?;
        self.frozen.system_attrs.insert(key.to_string(), value);
        Ok(())
    }
}

impl Drop for Trial {
    /// Stores what `report` and `suggest_deferred` still hold, and the seed attribute (a trial
    /// left without `tell`: a panic, an executor that finishes it by id), unless the last flush
    /// failed: the storage has already given up on it.
    fn drop(&mut self) {
        if self.flush_failed {
            return;
        }
        if let Err(e) = self.flush() {
            eprintln!(
                "warning: trial {}: its last parameters or intermediate values were not stored: {e:#}",
                self.frozen.number
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::RandomSampler;

    fn study() -> Study {
        Study::in_memory("s", Direction::Minimize, Arc::new(RandomSampler::new(0))).unwrap()
    }

    #[test]
    fn reported_values_are_stored_by_tell_and_by_drop() {
        let study = study();
        let storage = study.storage();
        let mut t = study.ask().unwrap();
        let id = t.trial_id();
        for step in 0..50 {
            t.report(step, step as f64).unwrap();
            // The trial's own view (what its pruner sees) has every value at once.
            assert_eq!(t.frozen().intermediate_values.len(), step as usize + 1);
        }
        study.tell(t, Outcome::Pruned).unwrap();
        let got = storage.get_trial(id).unwrap();
        assert_eq!(got.intermediate_values.len(), 50);
        assert_eq!((got.state, got.value), (TrialState::Pruned, Some(49.0)));

        let mut t = study.ask().unwrap();
        let id = t.trial_id();
        t.report(0, 1.0).unwrap();
        t.report(1, 2.0).unwrap();
        drop(t);
        assert_eq!(storage.get_trial(id).unwrap().intermediate_values, BTreeMap::from([(0, 1.0), (1, 2.0)]));
        study.tell_id(id, Outcome::Pruned).unwrap();
        assert_eq!(storage.get_trial(id).unwrap().value, Some(2.0));
    }

    #[test]
    fn a_report_after_the_flush_interval_stores_what_is_pending() {
        let study = study();
        let mut t = study.ask().unwrap();
        t.report(0, 1.0).unwrap();
        std::thread::sleep(REPORT_FLUSH_INTERVAL);
        t.report(1, 2.0).unwrap();
        let stored = study.storage().get_trial(t.trial_id()).unwrap().intermediate_values;
        assert_eq!(stored, BTreeMap::from([(0, 1.0), (1, 2.0)]));
    }
}
