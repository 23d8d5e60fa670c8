//! The config that reproduces a trial: the objective's base config (stored by `tune run`) with
//! the trial's parameters written at their dotted paths. Used by `tune export` and `tune report`.

use serde_json::Value;

use crate::cli::BASE_CONFIG_ATTR;
use crate::frozen::FrozenTrial;
use crate::spec::path;
use crate::study::Study;

/// The objective's base config the study was run with, or `None` when the study was not
/// created by `tune run` (for example by Optuna or through the library).
pub fn base_config(study: &Study) -> anyhow::Result<Option<Value>> {
    let attrs = study.storage().get_study_system_attrs(study.study_id())?;
    Ok(attrs.get(BASE_CONFIG_ATTR).cloned())
}

/// `base` with each of the trial's parameters set at its dotted path. A parameter whose path is
/// not in the config is an input error naming it.
///
/// For `rl` trials (which record the seeds they trained with), the trainer config's `seed` is set
/// to the trial's first seed, so that `tune train` on the result reproduces the trial's run.
pub fn trial_config(mut base: Value, trial: &FrozenTrial) -> anyhow::Result<Value> {
    for (name, value) in trial.external_params() {
        path::set(&mut base, &name, value).map_err(|e| crate::input_err!("parameter `{name}`: {e}"))?;
    }
    let first_seed = trial.user_attrs.get("seeds").and_then(|s| s.get(0)).cloned();
    if let (Some(seed), Some(map)) = (first_seed, base.as_object_mut()) {
        if map.contains_key("seed") {
            map.insert("seed".into(), seed);
        }
    }
    Ok(base)
}
