//! Built-in test functions, so studies, samplers and pruners can be exercised without RL:
//! the standard benchmark functions (definitions, domains and optima as in Surjanovic &
//! Bingham's "Virtual Library of Simulation Experiments", sfu.ca/~ssurjano) and
//! `learning_curve`, a synthetic training curve that reports every step for pruning tests.
//!
//! A study searches the vector `x` of the base config by its dotted paths `x.0`, `x.1`, ...:
//!
//! ```yaml
//! objective: {type: function, name: rosenbrock, dim: 3}
//! search_space:
//!   x.0: {type: float, low: -5, high: 10}
//! ```

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::Objective;
use crate::error::{InputError, TrialPruned};
use crate::study::Trial;

/// `sum x_i^2`; minimum 0 at the origin.
pub fn sphere(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum()
}

/// `sum 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2`; minimum 0 at `(1, ..., 1)`.
pub fn rosenbrock(x: &[f64]) -> f64 {
    x.windows(2).map(|w| 100.0 * (w[1] - w[0] * w[0]).powi(2) + (1.0 - w[0]).powi(2)).sum()
}

/// `10 n + sum x_i^2 - 10 cos(2 pi x_i)`; minimum 0 at the origin, a local minimum at every
/// integer point.
pub fn rastrigin(x: &[f64]) -> f64 {
    let tau = 2.0 * std::f64::consts::PI;
    10.0 * x.len() as f64 + x.iter().map(|v| v * v - 10.0 * (tau * v).cos()).sum::<f64>()
}

/// Ackley's function with `a = 20, b = 0.2, c = 2 pi`; minimum 0 at the origin.
pub fn ackley(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    let tau = 2.0 * std::f64::consts::PI;
    let mean_sq = x.iter().map(|v| v * v).sum::<f64>() / n;
    let mean_cos = x.iter().map(|v| (tau * v).cos()).sum::<f64>() / n;
    -20.0 * (-0.2 * mean_sq.sqrt()).exp() - mean_cos.exp() + 20.0 + std::f64::consts::E
}

/// The Branin-Hoo function of `(x1, x2)` (`x1` in `[-5, 10]`, `x2` in `[0, 15]`); minimum
/// 0.397887 at `(-pi, 12.275)`, `(pi, 2.275)` and `(9.42478, 2.475)`.
pub fn branin(x: &[f64]) -> f64 {
    let pi = std::f64::consts::PI;
    let (b, c, t) = (5.1 / (4.0 * pi * pi), 5.0 / pi, 1.0 / (8.0 * pi));
    (x[1] - b * x[0] * x[0] + c * x[0] - 6.0).powi(2) + 10.0 * (1.0 - t) * x[0].cos() + 10.0
}

/// The 6-dimensional Hartmann function on `[0, 1]^6`; minimum -3.32237 at
/// `(0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573)`.
pub fn hartmann6(x: &[f64]) -> f64 {
    const ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];
    const A: [[f64; 6]; 4] = [
        [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
        [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
        [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
        [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
    ];
    const P: [[f64; 6]; 4] = [
        [1312.0, 1696.0, 5569.0, 124.0, 8283.0, 5886.0],
        [2329.0, 4135.0, 8307.0, 3736.0, 1004.0, 9991.0],
        [2348.0, 1451.0, 3522.0, 2883.0, 3047.0, 6650.0],
        [4047.0, 8828.0, 8732.0, 5743.0, 1091.0, 381.0],
    ];
    -(0..4)
        .map(|i| {
            let inner: f64 = (0..6).map(|j| A[i][j] * (x[j] - 1e-4 * P[i][j]).powi(2)).sum();
            ALPHA[i] * (-inner).exp()
        })
        .sum::<f64>()
}

/// The built-in functions, by their YAML name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FunctionName {
    /// [`sphere`], any dimension.
    Sphere,
    /// [`rosenbrock`], dimension >= 2.
    Rosenbrock,
    /// [`rastrigin`], any dimension.
    Rastrigin,
    /// [`ackley`], any dimension.
    Ackley,
    /// [`branin`], 2-D.
    Branin,
    /// [`hartmann6`], 6-D.
    Hartmann6,
    /// A synthetic training curve (see [`learning_curve_value`]), any dimension.
    LearningCurve,
}

impl FunctionName {
    /// The YAML name.
    pub fn as_str(self) -> &'static str {
        match self {
            FunctionName::Sphere => "sphere",
            FunctionName::Rosenbrock => "rosenbrock",
            FunctionName::Rastrigin => "rastrigin",
            FunctionName::Ackley => "ackley",
            FunctionName::Branin => "branin",
            FunctionName::Hartmann6 => "hartmann6",
            FunctionName::LearningCurve => "learning_curve",
        }
    }

    /// The dimension of a fixed-dimension function; `None` for n-dimensional ones.
    pub fn fixed_dim(self) -> Option<usize> {
        match self {
            FunctionName::Branin => Some(2),
            FunctionName::Hartmann6 => Some(6),
            _ => None,
        }
    }

    /// The smallest dimension the function is defined for.
    pub fn min_dim(self) -> usize {
        match self {
            FunctionName::Rosenbrock => 2,
            other => other.fixed_dim().unwrap_or(1),
        }
    }

    /// The standard search domain of each coordinate, `(low, high)`.
    pub fn bounds(self, dim: usize) -> Vec<(f64, f64)> {
        match self {
            FunctionName::Sphere | FunctionName::Rastrigin | FunctionName::LearningCurve => vec![(-5.12, 5.12); dim],
            FunctionName::Rosenbrock => vec![(-5.0, 10.0); dim],
            FunctionName::Ackley => vec![(-32.768, 32.768); dim],
            FunctionName::Branin => vec![(-5.0, 10.0), (0.0, 15.0)],
            FunctionName::Hartmann6 => vec![(0.0, 1.0); 6],
        }
    }

    /// The global minimum value.
    pub fn optimum(self) -> f64 {
        match self {
            FunctionName::Branin => 0.397887,
            FunctionName::Hartmann6 => -3.32237,
            FunctionName::LearningCurve => learning_curve_value(0.0, 1.0),
            _ => 0.0,
        }
    }

    /// Evaluates the function at `x` (of a valid dimension); for `learning_curve`, the value
    /// at the end of training with the default learning rate.
    pub fn eval(self, x: &[f64]) -> f64 {
        match self {
            FunctionName::Sphere => sphere(x),
            FunctionName::Rosenbrock => rosenbrock(x),
            FunctionName::Rastrigin => rastrigin(x),
            FunctionName::Ackley => ackley(x),
            FunctionName::Branin => branin(x),
            FunctionName::Hartmann6 => hartmann6(x),
            FunctionName::LearningCurve => learning_curve_value(sphere(x), 1.0),
        }
    }
}

/// The `learning_curve` loss after a fraction `progress` in `(0, 1]` of training, for a
/// configuration of quality `q >= 0` (0 is ideal): `q + (1 + q) e^(-5 progress)`. Better
/// configurations are better at every step, as the percentile pruner assumes.
pub fn learning_curve_value(q: f64, progress: f64) -> f64 {
    q + (1.0 + q) * (-5.0 * progress).exp()
}

/// The `objective:` section for a built-in function:
/// `{type: function, name: sphere, dim: 3, config: {...}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// Which function.
    pub name: FunctionName,
    /// Dimension of an n-dimensional function (default 2, or the length of `config.x`);
    /// not allowed to differ for `branin` (2) and `hartmann6` (6).
    #[serde(default)]
    pub dim: Option<usize>,
    /// Entries overriding the base config, e.g. `{x: [1, 2], steps: 50}` or, for
    /// `learning_curve`, `{lr, steps, noise, step_sleep_ms}`. Other keys are kept and ignored
    /// by the function, so a study can also search dummy parameters.
    #[serde(default)]
    pub config: Option<Value>,
}

/// A built-in function as an [`Objective`] (minimise it).
#[derive(Debug, Clone)]
pub struct FunctionObjective {
    name: FunctionName,
    dim: usize,
    base: Value,
}

/// Most dimensions a test function takes (each is a search-space parameter).
pub const MAX_DIM: usize = 100_000;

/// The defaults of `learning_curve` besides `x`.
fn learning_curve_defaults() -> Value {
    json!({"lr": 0.01, "steps": 30, "noise": 0.0, "step_sleep_ms": 0})
}

impl FunctionObjective {
    /// Checks the spec and builds the base config: `{"x": [0.0; dim]}` (plus `lr`, `steps`,
    /// `noise` and `step_sleep_ms` for `learning_curve`), then the `config` overrides.
    pub fn new(spec: &FunctionSpec) -> anyhow::Result<Self> {
        let name = spec.name;
        let overrides = match &spec.config {
            None => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                return Err(InputError::new(format!(
                    "objective.config must be a mapping of config entries, got {other}"
                ))
                .into())
            }
        };
        let x_len = overrides.get("x").and_then(Value::as_array).map(Vec::len);
        let dim = match (name.fixed_dim(), spec.dim) {
            (Some(fixed), Some(d)) if d != fixed => {
                return Err(InputError::new(format!(
                    "objective.dim: {} is {fixed}-dimensional (got dim: {d}); remove `dim`",
                    name.as_str()
                ))
                .into())
            }
            (Some(fixed), _) => fixed,
            (None, Some(d)) => d,
            (None, None) => x_len.unwrap_or(2),
        };
        if dim > MAX_DIM {
            return Err(InputError::new(format!("objective.dim: at most {MAX_DIM} dimensions (got {dim})")).into());
        }
        if dim < name.min_dim() {
            return Err(InputError::new(format!(
                "objective.dim: {} needs at least {} dimension(s) (got {dim})",
                name.as_str(),
                name.min_dim()
            ))
            .into());
        }
        let mut base = Map::new();
        base.insert("x".into(), json!(vec![0.0; dim]));
        if name == FunctionName::LearningCurve {
            if let Value::Object(d) = learning_curve_defaults() {
                base.extend(d);
            }
        }
        base.extend(overrides);
        let objective = FunctionObjective { name, dim, base: Value::Object(base) };
        // The base config must itself be runnable: catches `x: [1, "a"]` or `steps: -1` now.
        objective.read_x(&objective.base).map_err(|e| InputError::new(format!("objective.config: {e}")))?;
        if name == FunctionName::LearningCurve {
            CurveSettings::read(&objective.base).map_err(|e| InputError::new(format!("objective.config: {e}")))?;
        }
        Ok(objective)
    }

    /// Which function this is.
    pub fn name(&self) -> FunctionName {
        self.name
    }

    /// The length of `x`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Reads `config["x"]` as `dim` numbers.
    fn read_x(&self, config: &Value) -> Result<Vec<f64>, String> {
        let arr = config["x"].as_array().ok_or_else(|| format!("`x` must be a list of {} numbers", self.dim))?;
        if arr.len() != self.dim {
            return Err(format!("`x` must have {} entries for {} (got {})", self.dim, self.name.as_str(), arr.len()));
        }
        arr.iter()
            .enumerate()
            .map(|(i, v)| v.as_f64().ok_or_else(|| format!("`x.{i}` must be a number (got {v})")))
            .collect()
    }

    /// Runs `learning_curve`: one report per step, pruning checked after each.
    fn run_curve(&self, x: &[f64], config: &Value, trial: &mut Trial) -> anyhow::Result<f64> {
        let s = CurveSettings::read(config).map_err(anyhow::Error::msg)?;
        // Quality: distance of x from the origin and of lr from 0.01 in decades.
        let q = sphere(x) + (s.lr.log10() + 2.0).powi(2);
        let mut rng = StdRng::seed_from_u64(trial.seed() ^ 0x6c63_7276_6521_u64);
        let mut value = f64::NAN;
        for step in 0..s.steps {
            if s.step_sleep_ms > 0 {
                std::thread::sleep(Duration::from_millis(s.step_sleep_ms));
            }
            value = learning_curve_value(q, (step + 1) as f64 / s.steps as f64);
            if s.noise > 0.0 {
                value += s.noise * standard_normal(&mut rng);
            }
            trial.report(step as i64, value)?;
            if trial.should_prune()? {
                return Err(TrialPruned.into());
            }
        }
        Ok(value)
    }
}

/// The settings of `learning_curve`, read from a resolved config.
struct CurveSettings {
    lr: f64,
    steps: u64,
    noise: f64,
    step_sleep_ms: u64,
}

impl CurveSettings {
    fn read(config: &Value) -> Result<Self, String> {
        let lr = config["lr"]
            .as_f64()
            .filter(|v| *v > 0.0)
            .ok_or_else(|| format!("`lr` must be a number > 0 (got {})", config["lr"]))?;
        let steps = config["steps"]
            .as_u64()
            .filter(|v| *v > 0)
            .ok_or_else(|| format!("`steps` must be an integer >= 1 (got {})", config["steps"]))?;
        let noise = config["noise"]
            .as_f64()
            .filter(|v| *v >= 0.0)
            .ok_or_else(|| format!("`noise` must be a number >= 0 (got {})", config["noise"]))?;
        let step_sleep_ms = config["step_sleep_ms"]
            .as_u64()
            .ok_or_else(|| format!("`step_sleep_ms` must be an integer >= 0 (got {})", config["step_sleep_ms"]))?;
        Ok(CurveSettings { lr, steps, noise, step_sleep_ms })
    }
}

/// One draw from N(0, 1) (Box-Muller), to keep the noise reproducible from the trial seed.
fn standard_normal(rng: &mut StdRng) -> f64 {
    // 1 - u lies in (0, 1], so the logarithm is finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

impl Objective for FunctionObjective {
    fn base_config(&self) -> &Value {
        &self.base
    }

    fn check(&self, config: &Value) -> Result<(), String> {
        self.read_x(config)?;
        if self.name == FunctionName::LearningCurve {
            CurveSettings::read(config)?;
        }
        Ok(())
    }

    fn run(&self, config: &Value, trial: &mut Trial) -> anyhow::Result<f64> {
        let x = self.read_x(config).map_err(anyhow::Error::msg)?;
        match self.name {
            FunctionName::LearningCurve => self.run_curve(&x, config, trial),
            name => Ok(name.eval(&x)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::distribution::Distribution;
    use crate::frozen::{Direction, FrozenTrial, TrialState};
    use crate::objective::ObjectiveSpec;
    use crate::pruner::{PercentilePruner, Pruner};
    use crate::sampler::{trial_rng, Sampler, StudyView};
    use crate::storage::InMemoryStorage;
    use crate::study::{outcome_of, Study};

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn known_optima() {
        let pi = std::f64::consts::PI;
        assert_eq!(sphere(&[0.0; 5]), 0.0);
        assert_eq!(sphere(&[1.0, -2.0]), 5.0);
        assert_eq!(rosenbrock(&[1.0; 4]), 0.0);
        assert_eq!(rosenbrock(&[0.0, 0.0]), 1.0);
        assert_eq!(rastrigin(&[0.0; 3]), 0.0);
        assert!(close(rastrigin(&[1.0, 0.0]), 1.0, 1e-12), "a local minimum near every integer point");
        assert!(close(ackley(&[0.0; 4]), 0.0, 1e-12));
        for p in [[-pi, 12.275], [pi, 2.275], [9.42478, 2.475]] {
            assert!(close(branin(&p), 0.397887, 1e-6), "branin{p:?} = {}", branin(&p));
        }
        let h = hartmann6(&[0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573]);
        assert!(close(h, -3.32237, 1e-5), "hartmann6 = {h}");
        // Reference values away from the optimum, from the textbook formulas in NumPy.
        assert!(close(branin(&[0.0, 0.0]), 55.602112642270264, 1e-9));
        assert!(close(hartmann6(&[0.5; 6]), -0.5053149917022333, 1e-12), "{}", hartmann6(&[0.5; 6]));
    }

    #[test]
    fn optima_lie_inside_the_bounds_and_no_sample_beats_them() {
        for name in [
            FunctionName::Sphere,
            FunctionName::Rosenbrock,
            FunctionName::Rastrigin,
            FunctionName::Ackley,
            FunctionName::Branin,
            FunctionName::Hartmann6,
        ] {
            let dim = name.fixed_dim().unwrap_or(3);
            let bounds = name.bounds(dim);
            assert_eq!(bounds.len(), dim);
            let mut rng = StdRng::seed_from_u64(7);
            for _ in 0..2000 {
                let x: Vec<f64> = bounds.iter().map(|&(lo, hi)| rng.random_range(lo..=hi)).collect();
                assert!(name.eval(&x) >= name.optimum() - 1e-6, "{name:?} at {x:?}");
            }
        }
    }

    fn spec(yaml: &str) -> anyhow::Result<FunctionObjective> {
        let s: ObjectiveSpec = serde_norway::from_str(yaml)?;
        match s {
            ObjectiveSpec::Function(f) => FunctionObjective::new(&f),
            _ => panic!("not a function spec"),
        }
    }

    fn input_error(r: anyhow::Result<FunctionObjective>) -> String {
        let e = r.expect_err("should be rejected");
        assert!(e.downcast_ref::<InputError>().is_some(), "not an InputError: {e:#}");
        e.to_string()
    }

    #[test]
    fn spec_parses_and_builds_base_configs() {
        let o = spec("type: function\nname: sphere").unwrap();
        assert_eq!(o.base_config(), &json!({"x": [0.0, 0.0]}));
        let o = spec("type: function\nname: rastrigin\ndim: 4").unwrap();
        assert_eq!(o.dim(), 4);
        let o = spec("type: function\nname: hartmann6").unwrap();
        assert_eq!(o.base_config()["x"].as_array().unwrap().len(), 6);
        let o = spec("type: function\nname: sphere\nconfig: {x: [1, 2, 3], extra: adam}").unwrap();
        assert_eq!(o.dim(), 3);
        assert_eq!(o.base_config(), &json!({"x": [1, 2, 3], "extra": "adam"}));
        let o = spec("type: function\nname: learning_curve\nconfig: {steps: 5}").unwrap();
        assert_eq!(
            o.base_config(),
            &json!({"x": [0.0, 0.0], "lr": 0.01, "steps": 5, "noise": 0.0, "step_sleep_ms": 0})
        );
    }

    #[test]
    fn bad_specs_are_input_errors_that_say_what_to_fix() {
        assert!(input_error(spec("type: function\nname: branin\ndim: 3")).contains("remove `dim`"));
        assert!(spec("type: function\nname: branin\ndim: 2").is_ok());
        assert!(input_error(spec("type: function\nname: rosenbrock\ndim: 1")).contains("at least 2"));
        assert!(input_error(spec("type: function\nname: sphere\ndim: 0")).contains("at least 1"));
        assert!(input_error(spec("type: function\nname: sphere\ndim: 3\nconfig: {x: [1, 2]}")).contains("3 entries"));
        assert!(input_error(spec("type: function\nname: sphere\nconfig: {x: [1, a]}")).contains("x.1"));
        assert!(input_error(spec("type: function\nname: sphere\nconfig: [1]")).contains("mapping"));
        assert!(input_error(spec("type: function\nname: learning_curve\nconfig: {steps: 0}")).contains("steps"));
        assert!(input_error(spec("type: function\nname: learning_curve\nconfig: {lr: -1}")).contains("lr"));
        // Unknown names and fields are caught by serde, naming the allowed values.
        let e = serde_norway::from_str::<ObjectiveSpec>("type: function\nname: himmelblau").unwrap_err();
        assert!(e.to_string().contains("sphere"), "{e}");
        assert!(serde_norway::from_str::<ObjectiveSpec>("type: function\nname: sphere\ndims: 3").is_err());
    }

    /// Samples floats uniformly, reproducibly from the trial number (a test stand-in for the
    /// real samplers).
    struct Uniform;

    impl Sampler for Uniform {
        fn sample_independent(&self, _s: &StudyView, t: &FrozenTrial, name: &str, d: &Distribution) -> f64 {
            match d {
                Distribution::Float { low, high, log: true, .. } => {
                    trial_rng(1, t.number, name).random_range(low.ln()..=high.ln()).exp()
                }
                Distribution::Float { low, high, .. } => trial_rng(1, t.number, name).random_range(*low..=*high),
                _ => unreachable!("only floats are sampled here"),
            }
        }
    }

    /// Runs `n` trials of `objective`, searching `x.*` in `[-1, 1]` and `lr` log in `[1e-4, 1]`
    /// when the base config has it, writing the values into the config as the engine does.
    fn run_study(objective: &FunctionObjective, pruner: Arc<dyn Pruner>, n: usize) -> Study {
        let storage = Arc::new(InMemoryStorage::new());
        let study = Study::create_or_load(storage, "f", Direction::Minimize, Arc::new(Uniform), pruner, 3).unwrap();
        for _ in 0..n {
            let mut trial = study.ask().unwrap();
            let mut config = objective.base_config().clone();
            for i in 0..objective.dim() {
                config["x"][i] = json!(trial.suggest_float(&format!("x.{i}"), -1.0, 1.0).unwrap());
            }
            if config.get("lr").is_some() {
                config["lr"] = json!(trial.suggest_float_log("lr", 1e-4, 1.0).unwrap());
            }
            let outcome = outcome_of(objective.run(&config, &mut trial));
            study.tell(trial, outcome).unwrap();
        }
        study
    }

    #[test]
    fn function_objective_evaluates_the_sampled_x() {
        let o = spec("type: function\nname: rosenbrock\ndim: 3").unwrap();
        let study = run_study(&o, Arc::new(crate::pruner::NopPruner), 5);
        for t in study.trials().unwrap() {
            assert_eq!(t.state, TrialState::Complete);
            let x: Vec<f64> = (0..3).map(|i| t.params[&format!("x.{i}")]).collect();
            assert_eq!(t.value, Some(rosenbrock(&x)));
        }
    }

    #[test]
    fn learning_curve_reports_each_step_and_gets_pruned() {
        let o = spec("type: function\nname: learning_curve\nconfig: {steps: 10}").unwrap();
        let study = run_study(&o, Arc::new(PercentilePruner::median()), 30);
        let trials = study.trials().unwrap();
        let count = |s| trials.iter().filter(|t| t.state == s).count();
        assert_eq!(count(TrialState::Complete) + count(TrialState::Pruned), 30);
        assert!(count(TrialState::Pruned) >= 5, "the median pruner should stop some bad curves");
        for t in &trials {
            let steps: Vec<i64> = t.intermediate_values.keys().copied().collect();
            assert_eq!(steps, (0..steps.len() as i64).collect::<Vec<_>>());
            if t.state == TrialState::Complete {
                assert_eq!(steps.len(), 10);
                let x: Vec<f64> = (0..2).map(|i| t.params[&format!("x.{i}")]).collect();
                let q = sphere(&x) + (t.params["lr"].log10() + 2.0).powi(2);
                assert!(close(t.value.unwrap(), learning_curve_value(q, 1.0), 1e-12));
            }
        }
    }

    #[test]
    fn learning_curve_is_better_for_better_params_and_deterministic_with_noise() {
        // Noise-free: good params give a lower curve at every step.
        assert!(learning_curve_value(0.1, 0.3) < learning_curve_value(0.5, 0.3));
        assert!(learning_curve_value(0.0, 1.0) < learning_curve_value(0.0, 0.5));
        let o = spec("type: function\nname: learning_curve\nconfig: {steps: 6, noise: 0.1}").unwrap();
        let curves = |study: Study| -> Vec<BTreeMap<i64, f64>> {
            study.trials().unwrap().into_iter().map(|t| t.intermediate_values.clone()).collect()
        };
        let a = curves(run_study(&o, Arc::new(crate::pruner::NopPruner), 3));
        let b = curves(run_study(&o, Arc::new(crate::pruner::NopPruner), 3));
        assert_eq!(a, b, "same study seed, same noisy curves");
        assert_ne!(a[0], a[1]);
    }
}
