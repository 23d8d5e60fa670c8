//! Immutable trial snapshots and the enums around them (Optuna's `FrozenTrial`, `TrialState`,
//! `StudyDirection`). Samplers and pruners see only these, never the storage.

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use serde_json::Value;

use crate::distribution::Distribution;

/// The life-cycle state of a trial, stored as Optuna's strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrialState {
    /// Being evaluated by some worker.
    Running,
    /// Finished with a value.
    Complete,
    /// Stopped early by the pruner.
    Pruned,
    /// The objective failed, returned NaN, or the worker died.
    Fail,
    /// Enqueued with fixed parameters, waiting for a worker.
    Waiting,
}

impl TrialState {
    /// Optuna's storage string.
    pub fn as_str(self) -> &'static str {
        match self {
            TrialState::Running => "RUNNING",
            TrialState::Complete => "COMPLETE",
            TrialState::Pruned => "PRUNED",
            TrialState::Fail => "FAIL",
            TrialState::Waiting => "WAITING",
        }
    }

    /// Parses Optuna's storage string.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RUNNING" => TrialState::Running,
            "COMPLETE" => TrialState::Complete,
            "PRUNED" => TrialState::Pruned,
            "FAIL" => TrialState::Fail,
            "WAITING" => TrialState::Waiting,
            _ => return None,
        })
    }

    /// COMPLETE, PRUNED or FAIL.
    pub fn is_finished(self) -> bool {
        matches!(self, TrialState::Complete | TrialState::Pruned | TrialState::Fail)
    }
}

impl std::fmt::Display for TrialState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the study minimises or maximises its objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Smaller is better.
    Minimize,
    /// Larger is better.
    Maximize,
}

impl Direction {
    /// Optuna's storage string.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Minimize => "MINIMIZE",
            Direction::Maximize => "MAXIMIZE",
        }
    }

    /// Parses Optuna's storage string.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "MINIMIZE" => Some(Direction::Minimize),
            "MAXIMIZE" => Some(Direction::Maximize),
            _ => None,
        }
    }

    /// True when `a` is strictly better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Direction::Minimize => a < b,
            Direction::Maximize => a > b,
        }
    }

    /// Converts a value so that smaller is always better (used by samplers and pruners).
    pub fn to_loss(self, v: f64) -> f64 {
        match self {
            Direction::Minimize => v,
            Direction::Maximize => -v,
        }
    }
}

/// System attribute holding an enqueued trial's fixed parameters (Optuna's key).
pub const FIXED_PARAMS_KEY: &str = "fixed_params";
/// System attribute set on trials failed because their worker died or was interrupted; such
/// trials do not count towards `n_trials` and are retried.
pub const INTERRUPTED_KEY: &str = "tune:interrupted";
/// System attribute with the reason a trial failed.
pub const FAIL_REASON_KEY: &str = "fail_reason";
/// System attribute: how many times these parameters were retried after an interruption.
pub const RETRY_KEY: &str = "tune:retry";

/// A read-only snapshot of one trial.
#[derive(Debug, Clone, PartialEq)]
pub struct FrozenTrial {
    /// Storage-wide id.
    pub trial_id: i64,
    /// 0-based number within the study.
    pub number: i64,
    /// Life-cycle state.
    pub state: TrialState,
    /// Final value (COMPLETE, or PRUNED with its last intermediate value).
    pub value: Option<f64>,
    /// When a worker started it (naive UTC).
    pub datetime_start: Option<NaiveDateTime>,
    /// When it finished (naive UTC).
    pub datetime_complete: Option<NaiveDateTime>,
    /// Parameters in their internal representation (categorical: index).
    pub params: BTreeMap<String, f64>,
    /// The distribution of each parameter.
    pub distributions: BTreeMap<String, Distribution>,
    /// User attributes (JSON).
    pub user_attrs: BTreeMap<String, Value>,
    /// System attributes (JSON).
    pub system_attrs: BTreeMap<String, Value>,
    /// Reported intermediate values by step (NaN allowed).
    pub intermediate_values: BTreeMap<i64, f64>,
}

impl FrozenTrial {
    /// An empty RUNNING trial, used by storages when creating one.
    pub fn new(trial_id: i64, number: i64, state: TrialState) -> Self {
        FrozenTrial {
            trial_id,
            number,
            state,
            value: None,
            datetime_start: None,
            datetime_complete: None,
            params: BTreeMap::new(),
            distributions: BTreeMap::new(),
            user_attrs: BTreeMap::new(),
            system_attrs: BTreeMap::new(),
            intermediate_values: BTreeMap::new(),
        }
    }

    /// The user-facing value of a parameter.
    pub fn param(&self, name: &str) -> Option<Value> {
        Some(self.distributions.get(name)?.to_external(*self.params.get(name)?))
    }

    /// All parameters in their user-facing representation.
    pub fn external_params(&self) -> BTreeMap<String, Value> {
        self.params.iter().map(|(k, &v)| (k.clone(), self.distributions[k].to_external(v))).collect()
    }

    /// The last step at which a value was reported.
    pub fn last_step(&self) -> Option<i64> {
        self.intermediate_values.keys().next_back().copied()
    }

    /// Wall time from start to completion, in seconds.
    pub fn duration_secs(&self) -> Option<f64> {
        let d = self.datetime_complete? - self.datetime_start?;
        Some(d.num_microseconds()? as f64 / 1e6)
    }

    /// True when the trial was failed by an interruption (and should be retried).
    pub fn interrupted(&self) -> bool {
        self.system_attrs.get(INTERRUPTED_KEY).and_then(Value::as_bool).unwrap_or(false)
    }
}
