//! Parameter importances as Optuna's `FanovaImportanceEvaluator` computes them: a random forest
//! fitted on the COMPLETE trials (numbers as they are, categoricals one-hot), then fANOVA on its
//! trees, normalised to sum 1 (`optuna.importance.get_param_importances`).

use std::borrow::Borrow;
use std::collections::BTreeMap;

use crate::distribution::Distribution;
use crate::frozen::{FrozenTrial, TrialState};

use super::fanova;
use super::forest::{fit_forest, ForestConfig};

/// Each parameter's share of the objective's variance, most important first.
#[derive(Debug, Clone, PartialEq)]
pub struct Importances {
    /// `(parameter, importance)`, sorted by decreasing importance (then by name); the
    /// importances sum to 1.
    pub params: Vec<(String, f64)>,
    /// How many COMPLETE trials the forest was fitted on.
    pub n_trials: usize,
}

/// The parameters suggested with the same distribution in every COMPLETE trial, by name
/// (Optuna's `intersection_search_space`): conditional parameters drop out.
pub fn intersection_search_space(trials: &[impl Borrow<FrozenTrial>]) -> BTreeMap<String, Distribution> {
    let mut space: Option<BTreeMap<String, Distribution>> = None;
    for t in trials.iter().map(Borrow::borrow).filter(|t| t.state == TrialState::Complete) {
        space = Some(match space {
            None => t.distributions.clone(),
            Some(s) => s.into_iter().filter(|(k, d)| t.distributions.get(k) == Some(d)).collect(),
        });
    }
    space.unwrap_or_default()
}

/// fANOVA importances of the parameters every COMPLETE trial has (see the module doc), or why
/// they cannot be assessed (fewer than two usable trials, no parameter, no variance).
pub fn param_importances(trials: &[impl Borrow<FrozenTrial>], config: &ForestConfig) -> Result<Importances, String> {
    let space = intersection_search_space(trials);
    if space.is_empty() {
        return Err("no parameter was suggested with the same distribution in every COMPLETE trial".into());
    }
    let (varying, fixed): (Vec<_>, Vec<_>) = space.iter().partition(|(_, d)| !d.single());
    let used: Vec<&FrozenTrial> = trials
        .iter()
        .map(Borrow::borrow)
        .filter(|t| t.state == TrialState::Complete)
        .filter(|t| t.value.is_some_and(f64::is_finite))
        .filter(|t| space.keys().all(|k| t.params.contains_key(k)))
        .collect();
    if varying.is_empty() {
        return Err("every parameter has a single possible value".into());
    }
    if used.len() < 2 {
        return Err(format!("needs at least 2 COMPLETE trials with a finite value, the study has {}", used.len()));
    }

    // Columns: a number is one column over [low, high]; a categorical one 0/1 column per choice.
    let mut bounds = Vec::new();
    let mut groups = Vec::new();
    for (_, d) in &varying {
        let start = bounds.len();
        match d {
            Distribution::Float { low, high, .. } => bounds.push((*low, *high)),
            Distribution::Int { low, high, .. } => bounds.push((*low as f64, *high as f64)),
            Distribution::Categorical { choices } => bounds.extend(std::iter::repeat_n((0.0, 1.0), choices.len())),
        }
        groups.push((start..bounds.len()).collect::<Vec<usize>>());
    }
    let x: Vec<Vec<f64>> = used
        .iter()
        .map(|t| {
            let mut row = vec![0.0; bounds.len()];
            for ((name, d), g) in varying.iter().zip(&groups) {
                let v = t.params[*name];
                match d {
                    Distribution::Categorical { .. } => row[g[0] + v as usize] = 1.0,
                    _ => row[g[0]] = v,
                }
            }
            row
        })
        .collect();
    let y: Vec<f64> = used.iter().map(|t| t.value.expect("filtered on finite values")).collect();

    let trees = fit_forest(&x, &y, config);
    let raw = fanova::importances(&trees, &bounds, &groups)
        .ok_or("the forest explains no variance (the COMPLETE trials' values barely differ)")?;
    let total: f64 = raw.iter().sum();
    let n = space.len() as f64;
    let mut params: Vec<(String, f64)> = varying
        .iter()
        .zip(&raw)
        .map(|((name, _), &v)| ((*name).clone(), if total > 0.0 { v / total } else { 1.0 / n }))
        .chain(fixed.iter().map(|(name, _)| ((*name).clone(), if total > 0.0 { 0.0 } else { 1.0 / n })))
        .collect();
    params.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(Importances { params, n_trials: used.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A COMPLETE trial with float params `x` (in [0, 1]), `z` (in [0, 1]) and categorical `c`.
    fn trial(number: i64, x: f64, z: f64, c: usize, value: f64) -> FrozenTrial {
        let mut t = FrozenTrial::new(number, number, TrialState::Complete);
        t.value = Some(value);
        let unit = Distribution::float(0.0, 1.0, false, None).unwrap();
        let cat = Distribution::categorical(vec![json!("a"), json!("b"), json!("c")]).unwrap();
        for (k, v, d) in [("x", x, &unit), ("z", z, &unit), ("c", c as f64, &cat)] {
            t.params.insert(k.into(), v);
            t.distributions.insert(k.into(), d.clone());
        }
        t
    }

    /// Deterministic pseudo-random numbers in [0, 1).
    fn u(i: usize, salt: f64) -> f64 {
        ((i as f64 + 1.0) * (12.9898 + salt)).sin().abs() * 43758.5453 % 1.0
    }

    #[test]
    fn the_parameter_that_drives_the_value_ranks_first_and_noise_last() {
        let trials: Vec<FrozenTrial> = (0..60)
            .map(|i| {
                let (x, z, c) = (u(i, 0.0), u(i, 1.7), i % 3);
                trial(i as i64, x, z, c, 10.0 * x + [0.0, 1.0, 2.0][c])
            })
            .collect();
        let imp = param_importances(&trials, &ForestConfig::default()).unwrap();
        let names: Vec<&str> = imp.params.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x", "c", "z"], "{imp:?}");
        assert!((imp.params.iter().map(|p| p.1).sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(imp.params[0].1 > 0.8 && imp.params[2].1 < 0.05, "{imp:?}");
        assert_eq!(imp.n_trials, 60);
        // Seeded: the same importances every time.
        assert_eq!(param_importances(&trials, &ForestConfig::default()).unwrap(), imp);
    }

    #[test]
    fn a_categorical_alone_gets_all_the_importance() {
        let trials: Vec<FrozenTrial> =
            (0..30).map(|i| trial(i as i64, u(i, 0.3), u(i, 2.1), i % 3, [0.0, 5.0, -5.0][i % 3])).collect();
        let imp = param_importances(&trials, &ForestConfig::default()).unwrap();
        assert_eq!(imp.params[0].0, "c");
        assert!(imp.params[0].1 > 0.99, "{imp:?}");
    }

    #[test]
    fn too_few_trials_or_no_variance_is_explained() {
        let one = vec![trial(0, 0.5, 0.5, 0, 1.0)];
        assert!(param_importances(&one, &ForestConfig::default()).unwrap_err().contains("at least 2"));
        let flat: Vec<FrozenTrial> = (0..5).map(|i| trial(i, u(i as usize, 0.0), 0.5, 0, 1.0)).collect();
        assert!(param_importances(&flat, &ForestConfig::default()).unwrap_err().contains("no variance"));
        let none: Vec<FrozenTrial> = Vec::new();
        assert!(param_importances(&none, &ForestConfig::default()).is_err());
    }

    #[test]
    fn conditional_and_single_valued_parameters() {
        let mut trials: Vec<FrozenTrial> =
            (0..20).map(|i| trial(i as i64, u(i, 0.0), u(i, 0.9), 0, 10.0 * u(i, 0.0))).collect();
        // `m` only in some trials: out of the intersection.
        trials[3].params.insert("m".into(), 0.2);
        trials[3].distributions.insert("m".into(), Distribution::float(0.0, 1.0, false, None).unwrap());
        // `s` in all, single-valued: importance 0.
        for t in &mut trials {
            t.params.insert("s".into(), 4.0);
            t.distributions.insert("s".into(), Distribution::int(4, 4, false, 1).unwrap());
        }
        let space = intersection_search_space(&trials);
        assert_eq!(space.keys().collect::<Vec<_>>(), ["c", "s", "x", "z"]);
        let imp = param_importances(&trials, &ForestConfig::default()).unwrap();
        assert_eq!(imp.params[0].0, "x");
        let s = imp.params.iter().find(|p| p.0 == "s").unwrap();
        assert_eq!(s.1, 0.0);
    }
}
