//! Grid search (Optuna's `GridSampler`): every trial takes a point of the Cartesian product of
//! the listed values that no other trial of the study holds yet, chosen at random so that a
//! study cut short still spreads over the grid. Parameters outside the grid are random.

use std::collections::BTreeMap;

use rand::Rng;
use serde_json::Value;

use super::{trial_rng, RandomSampler, Sampler, SearchSpace, StudyView};
use crate::distribution::Distribution;
use crate::frozen::{FrozenTrial, TrialState};

/// Samples the points of a grid, each once, in a seeded random order.
#[derive(Debug, Clone)]
pub struct GridSampler {
    space: SearchSpace,
    /// Grid parameter names, in the (sorted) order of `space`.
    names: Vec<String>,
    /// Internal grid values of each parameter, duplicates removed.
    values: Vec<Vec<f64>>,
    len: usize,
    seed: u64,
    random: RandomSampler,
}

impl GridSampler {
    /// A grid over `values` (user-facing values per parameter), each parameter drawn from its
    /// distribution in `space`. Every value must lie in its distribution; a value listed twice
    /// counts once.
    pub fn new(space: SearchSpace, values: BTreeMap<String, Vec<Value>>, seed: u64) -> Result<GridSampler, String> {
        if let Some(name) = values.keys().find(|n| !space.contains_key(*n)) {
            return Err(format!("grid parameter `{name}` has values but no distribution"));
        }
        let mut names = Vec::with_capacity(space.len());
        let mut internal = Vec::with_capacity(space.len());
        let mut len: usize = 1;
        for (name, dist) in &space {
            let listed = values
                .get(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("grid parameter `{name}` lists no values"))?;
            let mut xs: Vec<f64> = Vec::with_capacity(listed.len());
            for v in listed {
                let x = dist.to_internal(v).map_err(|e| format!("grid value {v} of `{name}`: {e}"))?;
                if !dist.contains(x) {
                    return Err(format!(
                        "grid value {v} of `{name}` lies outside its distribution {}",
                        dist.to_optuna_json()["attributes"]
                    ));
                }
                if !xs.contains(&x) {
                    xs.push(x);
                }
            }
            len = len
                .checked_mul(xs.len())
                .ok_or_else(|| "the grid has more points than can be counted; list fewer values".to_string())?;
            names.push(name.clone());
            internal.push(xs);
        }
        Ok(GridSampler { space, names, values: internal, len, seed, random: RandomSampler::new(seed) })
    }

    /// The number of grid points.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the grid has no points (never, for a grid that was built).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The grid point a trial holds, if its parameters are one (mixed-radix index, first
    /// parameter most significant).
    fn grid_id(&self, params: &BTreeMap<String, f64>) -> Option<usize> {
        let mut id = 0;
        for (name, xs) in self.names.iter().zip(&self.values) {
            let v = params.get(name)?;
            id = id * xs.len() + xs.iter().position(|x| x == v)?;
        }
        Some(id)
    }

    /// The parameter values of grid point `id`.
    fn point(&self, mut id: usize) -> BTreeMap<String, f64> {
        let mut point = BTreeMap::new();
        for (name, xs) in self.names.iter().zip(&self.values).rev() {
            point.insert(name.clone(), xs[id % xs.len()]);
            id /= xs.len();
        }
        point
    }
}

/// The `r`-th id (0-based) of `0..len` that is not in `taken` (sorted, deduplicated).
fn nth_free(r: usize, taken: &[usize]) -> usize {
    let mut id = r;
    for &t in taken {
        if t <= id {
            id += 1;
        } else {
            break;
        }
    }
    id
}

impl Sampler for GridSampler {
    fn sees_whole_study(&self) -> bool {
        true
    }

    fn infer_relative_search_space(&self, _study: &StudyView, _trial: &FrozenTrial) -> SearchSpace {
        self.space.clone()
    }

    fn sample_relative(&self, study: &StudyView, trial: &FrozenTrial, _space: &SearchSpace) -> BTreeMap<String, f64> {
        if self.space.is_empty() {
            return BTreeMap::new();
        }
        // Points held by running or finished trials; FAIL trials give theirs back for a retry.
        let mut taken = Vec::new();
        let mut finished = Vec::new();
        for t in study.trials {
            if t.number == trial.number {
                continue;
            }
            if !matches!(t.state, TrialState::Running | TrialState::Complete | TrialState::Pruned) {
                continue;
            }
            if let Some(id) = self.grid_id(&t.params) {
                taken.push(id);
                if t.state != TrialState::Running {
                    finished.push(id);
                }
            }
        }
        for ids in [&mut taken, &mut finished] {
            ids.sort_unstable();
            ids.dedup();
        }
        let mut rng = trial_rng(self.seed, trial.number, "grid");
        // Prefer free points; then points only running elsewhere (their worker may die);
        // then, with the grid exhausted, any point (Optuna re-evaluates in that case too).
        let id = if taken.len() < self.len {
            nth_free(rng.random_range(0..self.len - taken.len()), &taken)
        } else if finished.len() < self.len {
            nth_free(rng.random_range(0..self.len - finished.len()), &finished)
        } else {
            rng.random_range(0..self.len)
        };
        self.point(id)
    }

    fn sample_independent(&self, study: &StudyView, trial: &FrozenTrial, name: &str, dist: &Distribution) -> f64 {
        self.random.sample_independent(study, trial, name, dist)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frozen::Direction;
    use serde_json::json;

    fn grid() -> GridSampler {
        let mut space = SearchSpace::new();
        space.insert("lr".into(), Distribution::float(1e-4, 1e-1, true, None).unwrap());
        space.insert("layers".into(), Distribution::int(1, 4, false, 1).unwrap());
        space.insert("opt".into(), Distribution::categorical(vec![json!("adam"), json!("sgd")]).unwrap());
        let mut values = BTreeMap::new();
        values.insert("lr".into(), vec![json!(1e-3), json!(1e-2), json!(0.1)]);
        values.insert("layers".into(), vec![json!(1), json!(2), json!(4), json!(2)]);
        values.insert("opt".into(), vec![json!("sgd"), json!("adam")]);
        GridSampler::new(space, values, 5).unwrap()
    }

    /// Runs `n` sequential trials, each taking the relative sample as its parameters.
    fn run(g: &GridSampler, n: usize, state: TrialState) -> Vec<FrozenTrial> {
        let mut trials: Vec<FrozenTrial> = Vec::new();
        for number in 0..n as i64 {
            let mut t = FrozenTrial::new(number, number, TrialState::Running);
            let view = StudyView { direction: Direction::Minimize, trials: &crate::sampler::shared(&trials) };
            let space = g.infer_relative_search_space(&view, &t);
            let params = g.sample_relative(&view, &t, &space);
            for (name, x) in params {
                assert!(space[&name].contains(x));
                t.distributions.insert(name.clone(), space[&name].clone());
                t.params.insert(name, x);
            }
            t.state = state;
            trials.push(t);
        }
        trials
    }

    #[test]
    fn visits_every_point_once_in_len_trials() {
        let g = grid();
        assert_eq!(g.len(), 3 * 3 * 2);
        for state in [TrialState::Complete, TrialState::Running] {
            let trials = run(&g, g.len(), state);
            let mut ids: Vec<usize> = trials.iter().map(|t| g.grid_id(&t.params).unwrap()).collect();
            ids.sort_unstable();
            assert_eq!(ids, (0..g.len()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn failed_points_are_offered_again() {
        let g = grid();
        let mut trials = run(&g, g.len(), TrialState::Complete);
        trials[4].state = TrialState::Fail;
        let lost = g.grid_id(&trials[4].params);
        let t = FrozenTrial::new(99, 99, TrialState::Running);
        let view = StudyView { direction: Direction::Minimize, trials: &crate::sampler::shared(&trials) };
        assert_eq!(g.grid_id(&g.sample_relative(&view, &t, &g.space)), lost);
    }

    #[test]
    fn seed_sets_the_order() {
        let g = grid();
        let order = |g: &GridSampler| -> Vec<usize> {
            run(g, g.len(), TrialState::Complete).iter().map(|t| g.grid_id(&t.params).unwrap()).collect()
        };
        let mut other = grid();
        assert_eq!(order(&g), order(&other));
        other.seed = 6;
        assert_ne!(order(&g), order(&other));
    }

    #[test]
    fn bad_grids_name_the_parameter_and_value() {
        let mut space = SearchSpace::new();
        space.insert("x".into(), Distribution::int(0, 10, false, 2).unwrap());
        let with = |v: Vec<Value>| GridSampler::new(space.clone(), BTreeMap::from([("x".to_string(), v)]), 0);
        let e = with(vec![json!(3)]).unwrap_err();
        assert!(e.contains("`x`") && e.contains('3'), "{e}");
        let e = with(vec![json!("a")]).unwrap_err();
        assert!(e.contains("`x`") && e.contains("\"a\""), "{e}");
        assert!(with(vec![]).unwrap_err().contains("no values"));
        let e = GridSampler::new(space.clone(), BTreeMap::from([("y".to_string(), vec![json!(1)])]), 0).unwrap_err();
        assert!(e.contains("`y`"), "{e}");
    }

    #[test]
    fn nth_free_skips_taken_ids() {
        assert_eq!(nth_free(0, &[0, 1, 3]), 2);
        assert_eq!(nth_free(1, &[0, 1, 3]), 4);
        assert_eq!(nth_free(2, &[5]), 2);
    }
}
