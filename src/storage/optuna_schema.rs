//! What the SQLite and PostgreSQL backends share about Optuna 5.0's RDB schema: its version
//! rows, its tables, the stored form of values, and the order trials are listed in.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::frozen::{FrozenTrial, TrialState};

/// The alembic revision of Optuna 5.0's schema; `load_study` refuses any other.
pub(super) const ALEMBIC_VERSION: &str = "v3.2.0.a";
/// `version_info.schema_version` written by Optuna 5.0.
pub(super) const SCHEMA_VERSION: i32 = 12;
/// `version_info.library_version`: the Optuna release whose schema we write (Optuna only
/// shows it in messages).
pub(super) const LIBRARY_VERSION: &str = "5.0.0";
/// Optuna's tables; a database lacking any of them is not an Optuna storage.
pub(super) const TABLES: [&str; 13] = [
    "studies",
    "version_info",
    "study_directions",
    "study_user_attributes",
    "study_system_attributes",
    "trials",
    "trial_user_attributes",
    "trial_system_attributes",
    "trial_params",
    "trial_values",
    "trial_intermediate_values",
    "trial_heartbeats",
    "alembic_version",
];
/// The tables whose rows belong to a trial (deleted with its study, before `trials`).
pub(super) const TRIAL_TABLES: [&str; 6] = [
    "trial_params",
    "trial_values",
    "trial_intermediate_values",
    "trial_user_attributes",
    "trial_system_attributes",
    "trial_heartbeats",
];
/// The tables whose rows belong to a study, `studies` last.
pub(super) const STUDY_TABLES: [&str; 5] =
    ["trials", "study_user_attributes", "study_system_attributes", "study_directions", "studies"];

/// The tables of `TABLES` missing from `present`.
pub(super) fn missing_tables(present: &[String]) -> Vec<&'static str> {
    TABLES.iter().copied().filter(|t| !present.iter().any(|x| x == t)).collect()
}

/// Optuna's stored form of a value: `(value, value_type)`, NULL unless finite.
pub(super) fn value_repr(v: f64) -> (Option<f64>, &'static str) {
    if v.is_nan() {
        (None, "NAN")
    } else if v == f64::INFINITY {
        (None, "INF_POS")
    } else if v == f64::NEG_INFINITY {
        (None, "INF_NEG")
    } else {
        (Some(v), "FINITE")
    }
}

/// The value a stored `(value, value_type)` pair means; `None` for a malformed pair.
pub(super) fn value_from_repr(v: Option<f64>, kind: &str) -> Option<f64> {
    match kind {
        "FINITE" => v,
        "INF_POS" => Some(f64::INFINITY),
        "INF_NEG" => Some(f64::NEG_INFINITY),
        "NAN" => Some(f64::NAN),
        _ => None,
    }
}

/// A study's trials in number order, optionally only those in `states`: the cached finished
/// ones (keyed by `(number, trial_id)`) merged with the freshly read unfinished ones (sorted
/// the same way).
pub(super) fn merge_in_order(
    finished: &BTreeMap<(i64, i64), Arc<FrozenTrial>>,
    unfinished: Vec<Arc<FrozenTrial>>,
    states: Option<&[TrialState]>,
) -> Vec<Arc<FrozenTrial>> {
    let keep = |t: &FrozenTrial| states.is_none_or(|s| s.contains(&t.state));
    let mut out = Vec::with_capacity(finished.len() + unfinished.len());
    let mut rest = unfinished.into_iter().peekable();
    for ((number, id), t) in finished {
        while let Some(u) = rest.next_if(|u| (u.number, u.trial_id) < (*number, *id)) {
            if keep(&u) {
                out.push(u);
            }
        }
        if keep(t) {
            out.push(Arc::clone(t));
        }
    }
    out.extend(rest.filter(|u| keep(u)));
    out
}
