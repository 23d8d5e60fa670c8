//! The study file (`tune run studies/x.yaml`): its types, defaults and validation, dotted-path
//! config overrides and conditional parameters. A file that loads is runnable: every error a
//! user can make in it is found here, before anything is written, and reported with the file,
//! the YAML path, the line and what is allowed (exit code 2).
//!
//! ```yaml
//! name: sphere-tpe            # required: the study's name in the storage
//! direction: minimize         # required: minimize | maximize
//! storage: sqlite:///tune.db  # optional; --storage overrides; default sqlite:///tune.db
//! n_trials: 100               # finished trials to reach, across resumes
//! timeout: 600                # seconds; at least one of n_trials / timeout
//! seed: 42                    # optional
//! sampler: {type: tpe, n_startup_trials: 10}   # tpe (default) | random | grid
//! pruner: {type: median, n_warmup_steps: 5}    # median (default) | percentile | successive_halving | threshold | patient | none
//! parallelism: {jobs: 2, devices: [cuda:0], trials_per_device: 1, batch: 1}
//! heartbeat: {interval: 10, grace: 60, retries: 1}
//! objective: {type: function, name: sphere, dim: 3}
//! search_space:               # dotted path into the objective's base config -> parameter
//!   x.0: {type: float, low: -5, high: 5}
//!   x.1: {type: float, low: 1e-5, high: 1, log: true}
//!   x.2: {type: categorical, choices: [-1, 0, 1]}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_norway::Value as Yaml;

use crate::distribution::Distribution;
use crate::frozen::Direction;
use crate::objective::{BuildContext, ObjectiveSpec};
use crate::pruner::{
    HyperbandConfig, MedianConfig, NopPruner, PatientConfig, PercentileConfig, Pruner, SuccessiveHalvingConfig,
    ThresholdConfig,
};
use crate::sampler::{GpConfig, GpSampler, GridSampler, RandomSampler, Sampler, TpeConfig, TpeSampler};
use crate::storage::Storage;

pub mod path;
pub mod search_space;
pub mod yaml;

pub use search_space::{edge_cases, grid_values, sample_config, search_space, Condition, EdgeCase, ParamSpec};
pub use yaml::{parse_yaml, Doc, YamlPath};

/// Sampler types a study file may name.
pub const SAMPLER_TYPES: &[&str] = &["tpe", "gp", "random", "grid"];
/// Pruner types a study file may name.
pub const PRUNER_TYPES: &[&str] =
    &["none", "median", "percentile", "successive_halving", "hyperband", "threshold", "patient"];
/// Scheduler types a study file may name.
pub const SCHEDULER_TYPES: &[&str] = &["pbt"];
/// Longest duration a file may give, in seconds (about 31 years): beyond it no timer can be
/// set, and no study runs that long.
pub const MAX_SECONDS: f64 = 1.0e9;
/// Most trials one process runs at once (`jobs`, `trials_per_device`): each is a thread.
pub const MAX_JOBS: usize = 1024;
/// Longest study name Optuna's schema stores (`studies.study_name VARCHAR(512)`).
pub const MAX_NAME_LEN: usize = 512;

/// A validated study file.
#[derive(Debug, Clone)]
pub struct StudySpec {
    /// The file it was loaded from; relative paths of the objective resolve against its folder.
    pub path: PathBuf,
    /// `name`: the study's name in the storage; runs of the same name resume one study.
    pub name: String,
    /// `direction`: `minimize` or `maximize` the objective's value.
    pub direction: Direction,
    /// `storage`: where trials are kept (`sqlite:///tune.db`); `None` lets the CLI decide.
    pub storage: Option<String>,
    /// `n_trials`: finished trials the study should have, counted across resumes.
    pub n_trials: Option<u64>,
    /// `timeout`: seconds after which this run starts no new trial.
    pub timeout: Option<f64>,
    /// `seed`: makes sampling reproducible; `None` picks one (stored with the study).
    pub seed: Option<u64>,
    /// `sampler`: how parameters are proposed.
    pub sampler: SamplerSpec,
    /// `pruner`: when running trials are stopped early.
    pub pruner: PrunerSpec,
    /// `parallelism`: how many trials run at once, and on which devices.
    pub parallelism: Parallelism,
    /// `heartbeat`: how trials of dead workers are detected and retried.
    pub heartbeat: Heartbeat,
    /// `objective`: what a trial evaluates (`{type: function, ...}`, `{type: command, ...}`).
    pub objective: ObjectiveSpec,
    /// `search_space`: the parameters, in file order.
    pub params: Vec<ParamSpec>,
    /// `scheduler`: Population-Based Training instead of independent trials.
    pub scheduler: Option<crate::pbt::PbtConfig>,
    /// The file's text, for the line numbers of later messages.
    text: String,
}

/// The `sampler:` section, tagged by `type`.
#[derive(Debug, Clone)]
pub enum SamplerSpec {
    /// `{type: tpe, ...}`: the Tree-structured Parzen Estimator, settings as Optuna's.
    Tpe(TpeConfig),
    /// `{type: gp, ...}`: Gaussian-process Bayesian optimisation, settings as Optuna's.
    Gp(GpConfig),
    /// `{type: random}`: every parameter uniform over its range.
    Random,
    /// `{type: grid}`: every combination of the parameters' finite value sets, once each.
    Grid,
}

impl Default for SamplerSpec {
    fn default() -> Self {
        SamplerSpec::Tpe(TpeConfig::default())
    }
}

/// The `pruner:` section, tagged by `type`.
#[derive(Debug, Clone)]
pub enum PrunerSpec {
    /// `{type: none}`: never prune.
    None,
    /// `{type: median, ...}`: stop trials worse than the median at the same step.
    Median(MedianConfig),
    /// `{type: percentile, ...}`: stop trials outside the best `percentile`% at the same step.
    Percentile(PercentileConfig),
    /// `{type: successive_halving, ...}`: keep the best `1/reduction_factor` at each rung.
    SuccessiveHalving(SuccessiveHalvingConfig),
    /// `{type: hyperband, ...}`: successive halving in brackets that cut early or late, each
    /// trial's bracket fixed by its number.
    Hyperband(HyperbandConfig),
    /// `{type: threshold, lower, upper, ...}`: stop trials whose latest value leaves a range or is NaN.
    Threshold(ThresholdConfig),
    /// `{type: patient, patience, min_delta, wrapped: {...}}`: ask `wrapped` (or prune) only
    /// once a trial's last `patience + 1` reports are all worse than its earlier best.
    Patient {
        /// Patience and minimum improvement.
        config: PatientConfig,
        /// The pruner consulted once the trial stalls; `None` prunes it then.
        wrapped: Option<Box<PrunerSpec>>,
    },
}

impl PrunerSpec {
    /// Builds the pruner of study `study_name` (settings were validated when the file was
    /// read; Hyperband's brackets depend on the name).
    pub fn build(&self, study_name: &str) -> Result<Box<dyn Pruner>, String> {
        Ok(match self {
            PrunerSpec::None => Box::new(NopPruner),
            PrunerSpec::Median(c) => Box::new(c.build()?),
            PrunerSpec::Percentile(c) => Box::new(c.build()?),
            PrunerSpec::SuccessiveHalving(c) => Box::new(c.build()?),
            PrunerSpec::Hyperband(c) => Box::new(c.build(study_name)?),
            PrunerSpec::Threshold(c) => Box::new(c.build()?),
            PrunerSpec::Patient { config, wrapped } => {
                let inner = wrapped.as_ref().map(|w| w.build(study_name)).transpose()?;
                Box::new(config.build(inner)?)
            }
        })
    }
}

impl Default for PrunerSpec {
    fn default() -> Self {
        PrunerSpec::Median(MedianConfig::default())
    }
}

/// The `parallelism:` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Parallelism {
    /// Trials evaluated at once by one `tune run` (at least 1; `--jobs` overrides).
    pub jobs: usize,
    /// Devices trials are spread over (`cpu`, `cuda`, `cuda:0`, `mps`); empty: no placement.
    /// A listed GPU runs `trials_per_device` trials at once; a listed `cpu` runs `jobs`.
    pub devices: Vec<String>,
    /// Trials sharing one (non-CPU) device at a time (at least 1).
    pub trials_per_device: usize,
    /// Trials each worker asks for at once and trains together (the `rl` objective trains
    /// compatible ones as one batched learner); 1: one at a time.
    pub batch: usize,
}

impl Default for Parallelism {
    fn default() -> Self {
        Parallelism { jobs: 1, devices: Vec::new(), trials_per_device: 1, batch: 1 }
    }
}

impl Parallelism {
    /// The device of each worker of a run with `jobs` CPU trials at once: with no `devices`,
    /// `jobs` workers that leave placement to the objective's config; otherwise
    /// `trials_per_device` workers per listed device, plus `jobs` CPU workers when `cpu` is listed.
    pub fn slots(&self, jobs: usize) -> Vec<Option<String>> {
        if self.devices.is_empty() {
            return vec![None; jobs];
        }
        self.devices
            .iter()
            .flat_map(|d| {
                let n = if d == "cpu" { jobs } else { self.trials_per_device };
                std::iter::repeat_n(Some(d.clone()), n)
            })
            .collect()
    }
}

/// The `heartbeat:` section: running trials record a heartbeat every `interval` seconds; one
/// silent for `grace` seconds belongs to a dead worker and is failed, and its parameters are
/// retried up to `retries` times.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Heartbeat {
    /// Seconds between heartbeats of a running trial (> 0).
    pub interval: f64,
    /// Seconds without a heartbeat after which a RUNNING trial is taken as dead (> interval).
    pub grace: f64,
    /// How many times the parameters of a trial that died are tried again.
    pub retries: u32,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat { interval: 10.0, grace: 60.0, retries: 1 }
    }
}

/// The file as written, before validation; sections with a `type` tag stay raw so that their
/// errors keep full YAML paths.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStudy {
    /// The study's name.
    name: String,
    /// minimize | maximize.
    direction: Direction,
    /// Storage URL.
    #[serde(default)]
    storage: Option<String>,
    /// Finished-trial budget.
    #[serde(default)]
    n_trials: Option<u64>,
    /// Seconds.
    #[serde(default)]
    timeout: Option<f64>,
    /// Sampling seed.
    #[serde(default)]
    seed: Option<u64>,
    /// `{type: ..., ...}` or a bare type.
    #[serde(default)]
    sampler: Option<Yaml>,
    /// `{type: ..., ...}` or a bare type.
    #[serde(default)]
    pruner: Option<Yaml>,
    /// Workers and devices.
    #[serde(default)]
    parallelism: Parallelism,
    /// Dead-worker detection.
    #[serde(default)]
    heartbeat: Heartbeat,
    /// `{type: ..., ...}`.
    objective: Yaml,
    /// Dotted path -> parameter.
    #[serde(default)]
    search_space: Yaml,
    /// `{type: pbt, ...}`.
    #[serde(default)]
    scheduler: Option<Yaml>,
}

impl StudySpec {
    /// Reads and validates a study file, building its objective once to check that every
    /// search-space path exists in the base config. Every failure is an
    /// [`InputError`](crate::InputError).
    pub fn load(path: &Path) -> anyhow::Result<StudySpec> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| crate::input_err!("cannot read study file {}: {e}", path.display()))?;
        Self::parse(path, &text)
    }

    /// Validates the text of a study file; `path` names it in messages and anchors the
    /// objective's relative paths.
    pub fn parse(path: &Path, text: &str) -> anyhow::Result<StudySpec> {
        let doc = Doc::new(path, text);
        let root = YamlPath::root();
        let value = doc.value()?;
        if value.is_null() {
            return Err(doc.error(
                &root,
                "the file is empty; a study needs at least `name`, `direction`, `objective`, `search_space` and `n_trials` or `timeout`",
            ));
        }
        let raw: RawStudy = doc.parse(value, &root)?;

        if raw.name.trim().is_empty() {
            return Err(doc.error(&root.key("name"), "the study name must not be empty"));
        }
        if raw.name.chars().count() > MAX_NAME_LEN {
            return Err(
                doc.error(&root.key("name"), format!("the study name is longer than {MAX_NAME_LEN} characters"))
            );
        }
        if raw.storage.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return Err(doc.error(
                &root.key("storage"),
                "the storage URL is empty; write e.g. `sqlite:///tune.db`, or leave `storage` out",
            ));
        }
        if raw.n_trials == Some(0) {
            return Err(doc.error(&root.key("n_trials"), "n_trials must be at least 1"));
        }
        if let Some(t) = raw.timeout {
            if !(t > 0.0 && t <= MAX_SECONDS) {
                return Err(doc.error(
                    &root.key("timeout"),
                    format!("timeout must be a positive number of seconds, at most {MAX_SECONDS:e} (got {t})"),
                ));
            }
        }
        if raw.n_trials.is_none() && raw.timeout.is_none() && raw.scheduler.is_none() {
            return Err(doc.error(
                &root,
                "the study has no budget: set `n_trials` (finished trials to reach), `timeout` (seconds) or both",
            ));
        }
        let scheduler = match raw.scheduler.clone() {
            None => None,
            Some(v) => Some(parse_scheduler(&doc, v, &raw)?),
        };
        let sampler = parse_sampler(&doc, raw.sampler)?;
        let pruner = if scheduler.is_some() { PrunerSpec::None } else { parse_pruner(&doc, raw.pruner)? };
        check_parallelism(&doc, &raw.parallelism)?;
        check_heartbeat(&doc, &raw.heartbeat)?;
        let params = search_space::parse(&doc, raw.search_space, &root.key("search_space"))?;
        let objective: ObjectiveSpec = doc.parse_tagged(raw.objective, &root.key("objective"), Some("objective"))?;

        let base_dir = folder_of(path);
        // Building must not write anything; the log folder given here is never used.
        let ctx = BuildContext { base_dir, log_dir: std::env::temp_dir().join("tune-logs").join(&raw.name) };
        let built = objective.build(&ctx).map_err(|e| objective_error(&doc, e))?;
        let base = built.base_config();
        for p in &params {
            if let Err(e) = path::settable(base, &p.name) {
                return Err(doc.error(
                    &root.key("search_space").key(p.name.clone()),
                    format!("`{}` does not exist in the objective's base config: {e}", p.name),
                ));
            }
        }
        // Every trial config the space can produce at its edges must be one the objective
        // takes: found now, not after the budget is spent on failing trials.
        for case in edge_cases(&params) {
            let at = root.key("search_space").key(params[case.param].name.clone());
            let problem = case.config(base).and_then(|config| built.check(&config));
            if let Err(rule) = problem {
                return Err(doc.error(
                    &at,
                    format!(
                        "{} gives a trial config the objective refuses: {rule}; narrow the range or change the choices",
                        case.describe(&params)
                    ),
                ));
            }
        }

        if let Some(pbt) = &scheduler {
            check_pbt(&doc, pbt, &objective, built.as_ref(), &params)?;
        }
        let spec = StudySpec {
            path: path.to_path_buf(),
            name: raw.name,
            direction: raw.direction,
            storage: raw.storage,
            n_trials: raw.n_trials,
            timeout: raw.timeout,
            seed: raw.seed,
            sampler,
            pruner,
            parallelism: raw.parallelism,
            heartbeat: raw.heartbeat,
            objective,
            params,
            scheduler,
            text: text.to_string(),
        };
        if matches!(spec.sampler, SamplerSpec::Grid) {
            let values =
                grid_values(&spec.params).map_err(|(name, msg)| doc.error(&root.key("search_space").key(name), msg))?;
            GridSampler::new(search_space(&spec.params), values, 0).map_err(|e| doc.error(&root.key("sampler"), e))?;
        }
        Ok(spec)
    }

    /// The sampler of the study, seeded with `seed`.
    pub fn build_sampler(&self, seed: u64) -> anyhow::Result<Arc<dyn Sampler>> {
        Ok(match &self.sampler {
            SamplerSpec::Tpe(c) => {
                c.validate().map_err(|e| self.error("sampler", e))?;
                Arc::new(TpeSampler::new(c.clone(), seed))
            }
            SamplerSpec::Gp(c) => Arc::new(GpSampler::new(c.clone(), seed)),
            SamplerSpec::Random => Arc::new(RandomSampler::new(seed)),
            SamplerSpec::Grid => {
                let values = grid_values(&self.params)
                    .map_err(|(name, msg)| self.error(&format!("search_space.{name}"), msg))?;
                let grid =
                    GridSampler::new(search_space(&self.params), values, seed).map_err(|e| self.error("sampler", e))?;
                Arc::new(grid)
            }
        })
    }

    /// The pruner of the study.
    pub fn build_pruner(&self) -> anyhow::Result<Arc<dyn Pruner>> {
        Ok(Arc::from(self.pruner.build(&self.name).map_err(|e| self.error("pruner", e))?))
    }

    /// The folder of the study file, against which the objective's relative paths resolve.
    pub fn base_dir(&self) -> PathBuf {
        folder_of(&self.path)
    }

    /// Refuses a search space that the study of this name in `storage`, if there is one,
    /// cannot take under Optuna's rule (a parameter keeps its type, its log setting and its
    /// choices; its range may move): every new trial would fail on it. Nothing is written.
    pub fn check_against(&self, storage: &dyn Storage) -> anyhow::Result<()> {
        let Some(id) = storage.get_study_id_from_name(&self.name)? else { return Ok(()) };
        let mut stored: BTreeMap<&str, (i64, &Distribution)> = BTreeMap::new();
        let trials = storage.get_all_trials(id, None)?;
        for t in &trials {
            for (name, d) in &t.distributions {
                stored.insert(name, (t.number, d));
            }
        }
        let doc = Doc::new(&self.path, &self.text);
        for p in &self.params {
            let Some((number, old)) = stored.get(p.name.as_str()) else { continue };
            if let Some(rule) = old.incompatibility(&p.distribution) {
                return Err(doc.error(
                    &YamlPath::root().key("search_space").key(p.name.clone()),
                    format!(
                        "study `{}` already has trials (the last #{number}) where `{}` is {}, but the file now says {}; {rule} within a study, as in Optuna. Give the study a new `name:` to search this space, or put the stored distribution back",
                        self.name,
                        p.name,
                        old.describe(),
                        p.distribution.describe()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// An input error about this (already loaded) file, without a line number.
    fn error(&self, at: &str, msg: impl std::fmt::Display) -> anyhow::Error {
        crate::input_err!("{}: {at}: {msg}", self.path.display())
    }
}

/// The folder a file named by `path` lies in, `.` for a bare file name (`Path::parent` gives an
/// empty path there, which cannot be made absolute or joined meaningfully).
pub fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Reads the `scheduler:` section, refusing the study-file keys PBT decides itself.
fn parse_scheduler(doc: &Doc, value: Yaml, raw: &RawStudy) -> anyhow::Result<crate::pbt::PbtConfig> {
    let at = YamlPath::root().key("scheduler");
    let (_, rest) = doc.tagged(value, &at, "scheduler", SCHEDULER_TYPES, false)?;
    let c: crate::pbt::PbtConfig = doc.parse(rest, &at)?;
    c.validate().map_err(|e| doc.error(&at.join(&blame(&e)), e))?;
    let root = YamlPath::root();
    if raw.n_trials.is_some() {
        return Err(doc.error(
            &root.key("n_trials"),
            "a PBT study's budget is its population times its generations (the trainer's budget over `interval`); remove n_trials",
        ));
    }
    if raw.sampler.is_some() {
        return Err(doc.error(
            &root.key("sampler"),
            "PBT draws its first population uniformly from the search space and explores from there; remove `sampler`",
        ));
    }
    if raw.pruner.is_some() {
        return Err(doc.error(
            &root.key("pruner"),
            "PBT replaces the bottom of the population at every interval instead of pruning; remove `pruner`",
        ));
    }
    Ok(c)
}

/// PBT's demands on the rest of the file: an `rl` objective with one seed, a step budget of
/// more than one interval, a `dqn` agent, and a search space whose every edge can take over a
/// learner's state (nothing that shapes the network, the optimizer or the replay buffer).
fn check_pbt(
    doc: &Doc,
    pbt: &crate::pbt::PbtConfig,
    objective: &ObjectiveSpec,
    built: &dyn crate::objective::Objective,
    params: &[ParamSpec],
) -> anyhow::Result<()> {
    let root = YamlPath::root();
    let ObjectiveSpec::Rl(rl) = objective else {
        return Err(doc.error(
            &root.key("scheduler"),
            "PBT trains `rl` objectives (it copies learners between members); use `objective: {type: rl, ...}`",
        ));
    };
    if rl.seeds != 1 {
        return Err(doc.error(
            &root.key("objective").key("seeds"),
            "a PBT member is one training run; the population is the replication. Remove `seeds` (or set it to 1)",
        ));
    }
    let base = crate::rl::train::TrainConfig::from_value(built.base_config())
        .map_err(|e| doc.error(&root.key("objective").key("config"), e))?;
    let Some(steps) = base.budget.steps else {
        return Err(doc.error(
            &root.key("objective").key("config"),
            "PBT needs the trainer's budget in steps (`budget: {steps: N}`)",
        ));
    };
    if pbt.interval >= steps {
        return Err(doc.error(
            &root.key("scheduler").key("interval"),
            format!(
                "interval ({}) must be below the trainer's budget of {steps} steps, or no member is ever perturbed",
                pbt.interval
            ),
        ));
    }
    if params.is_empty() {
        return Err(doc.error(&root.key("search_space"), "PBT needs at least one hyperparameter to explore"));
    }
    for p in params {
        if !p.name.starts_with("agent.") {
            return Err(doc.error(
                &root.key("search_space").key(p.name.clone()),
                "PBT changes agent hyperparameters during a run; only `agent.*` paths can be explored",
            ));
        }
        if !p.when.is_empty() {
            return Err(doc.error(
                &root.key("search_space").key(p.name.clone()).key("when"),
                "PBT explores every hyperparameter of every member; conditional parameters are not supported",
            ));
        }
    }
    for case in edge_cases(params) {
        let at = root.key("search_space").key(params[case.param].name.clone());
        let problem = case.config(built.base_config()).and_then(|config| {
            let cfg = crate::rl::train::TrainConfig::from_value(&config)?;
            base.agent.continues_as(&cfg.agent)
        });
        if let Err(rule) = problem {
            return Err(
                doc.error(&at, format!("{}: PBT cannot change this during a run: {rule}", case.describe(params)))
            );
        }
    }
    Ok(())
}

/// Reads the `sampler:` section (default: TPE with Optuna's defaults).
fn parse_sampler(doc: &Doc, value: Option<Yaml>) -> anyhow::Result<SamplerSpec> {
    let at = YamlPath::root().key("sampler");
    let Some(value) = value else { return Ok(SamplerSpec::default()) };
    let (ty, rest) = doc.tagged(value, &at, "sampler", SAMPLER_TYPES, true)?;
    Ok(match ty.as_str() {
        "tpe" => {
            let c: TpeConfig = doc.parse(rest, &at)?;
            c.validate().map_err(|e| doc.error(&at.join(&blame(&e)), e))?;
            SamplerSpec::Tpe(c)
        }
        "gp" => SamplerSpec::Gp(doc.parse(rest, &at)?),
        "random" => {
            no_settings(doc, &rest, &at, "the random sampler")?;
            SamplerSpec::Random
        }
        _ => {
            no_settings(doc, &rest, &at, "the grid sampler (each parameter's values come from the search space)")?;
            SamplerSpec::Grid
        }
    })
}

/// Reads the `pruner:` section (default: median with Optuna's defaults), checking its values.
fn parse_pruner(doc: &Doc, value: Option<Yaml>) -> anyhow::Result<PrunerSpec> {
    match value {
        None => Ok(PrunerSpec::default()),
        Some(value) => parse_pruner_at(doc, value, &YamlPath::root().key("pruner")),
    }
}

/// Reads a pruner section found at `at` (the study's, or one a `patient` pruner wraps).
fn parse_pruner_at(doc: &Doc, value: Yaml, at: &YamlPath) -> anyhow::Result<PrunerSpec> {
    let at = at.clone();
    let (ty, mut rest) = doc.tagged(value, &at, "pruner", PRUNER_TYPES, true)?;
    let bad = |e: String| doc.error(&at.join(&blame(&e)), e);
    Ok(match ty.as_str() {
        "none" => {
            no_settings(doc, &rest, &at, "`pruner: none`")?;
            PrunerSpec::None
        }
        "median" => {
            let c: MedianConfig = doc.parse(rest, &at)?;
            c.build().map_err(bad)?;
            PrunerSpec::Median(c)
        }
        "percentile" => {
            let c: PercentileConfig = doc.parse(rest, &at)?;
            c.build().map_err(bad)?;
            PrunerSpec::Percentile(c)
        }
        "successive_halving" => {
            let c: SuccessiveHalvingConfig = doc.parse(rest, &at)?;
            c.build().map_err(bad)?;
            PrunerSpec::SuccessiveHalving(c)
        }
        "hyperband" => {
            let c: HyperbandConfig = doc.parse(rest, &at)?;
            c.build("").map_err(bad)?;
            PrunerSpec::Hyperband(c)
        }
        "threshold" => {
            let c: ThresholdConfig = doc.parse(rest, &at)?;
            c.build().map_err(bad)?;
            PrunerSpec::Threshold(c)
        }
        _ => {
            let wrapped = match rest.as_mapping_mut().and_then(|m| m.remove("wrapped")) {
                None | Some(Yaml::Null) => None,
                Some(w) => Some(Box::new(parse_pruner_at(doc, w, &at.key("wrapped"))?)),
            };
            let config: PatientConfig = doc.parse(rest, &at)?;
            config.build(None).map_err(bad)?;
            PrunerSpec::Patient { config, wrapped }
        }
    })
}

/// The key a config's validation message is about: its first word if that is a
/// `snake_case` name (the messages read "`n_warmup_steps` must be >= 0" or
/// "prior_weight must be ..."), else the section itself.
fn blame(msg: &str) -> YamlPath {
    let word = msg.trim_start_matches('`').split(['`', ' ', ':']).next().unwrap_or("");
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        YamlPath::root().key(word)
    } else {
        YamlPath::root()
    }
}

/// Refuses settings on a section type that takes none.
fn no_settings(doc: &Doc, rest: &Yaml, at: &YamlPath, what: &str) -> anyhow::Result<()> {
    if let Some((k, _)) = rest.as_mapping().and_then(|m| m.iter().next()) {
        let key = k.as_str().map(str::to_string).unwrap_or_else(|| yaml::describe(k));
        return Err(
            doc.error(&at.key(key.clone()), format!("unknown key `{key}`; {what} takes no settings besides `type`"))
        );
    }
    Ok(())
}

fn check_parallelism(doc: &Doc, p: &Parallelism) -> anyhow::Result<()> {
    let at = YamlPath::root().key("parallelism");
    if !(1..=MAX_JOBS).contains(&p.jobs) {
        return Err(doc.error(&at.key("jobs"), format!("jobs must be from 1 to {MAX_JOBS} (got {})", p.jobs)));
    }
    if !(1..=MAX_JOBS).contains(&p.batch) {
        return Err(doc.error(&at.key("batch"), format!("batch must be from 1 to {MAX_JOBS} (got {})", p.batch)));
    }
    if !(1..=MAX_JOBS).contains(&p.trials_per_device) {
        return Err(doc.error(
            &at.key("trials_per_device"),
            format!("trials_per_device must be from 1 to {MAX_JOBS} (got {})", p.trials_per_device),
        ));
    }
    for (i, d) in p.devices.iter().enumerate() {
        let ok = match d.split_once(':') {
            None => matches!(d.as_str(), "cpu" | "cuda" | "mps"),
            Some((kind, n)) => kind == "cuda" && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()),
        };
        if !ok {
            return Err(doc.error(
                &at.key("devices").index(i),
                format!("unknown device `{d}`; expected cpu, cuda, cuda:<index> (e.g. cuda:0) or mps"),
            ));
        }
        if p.devices[..i].contains(d) {
            return Err(doc.error(
                &at.key("devices").index(i),
                format!("device `{d}` is listed twice; use trials_per_device to share a device"),
            ));
        }
    }
    Ok(())
}

fn check_heartbeat(doc: &Doc, h: &Heartbeat) -> anyhow::Result<()> {
    let at = YamlPath::root().key("heartbeat");
    if !(h.interval > 0.0 && h.interval <= MAX_SECONDS) {
        return Err(doc.error(
            &at.key("interval"),
            format!("interval must be a positive number of seconds, at most {MAX_SECONDS:e} (got {})", h.interval),
        ));
    }
    if h.grace > MAX_SECONDS {
        return Err(
            doc.error(&at.key("grace"), format!("grace must be at most {MAX_SECONDS:e} seconds (got {})", h.grace))
        );
    }
    if !(h.grace > h.interval && h.grace.is_finite()) {
        return Err(doc.error(
            &at.key("grace"),
            format!(
                "grace ({}) must be longer than interval ({}): a live trial must get a chance to beat before it is taken as dead",
                h.grace, h.interval
            ),
        ));
    }
    Ok(())
}

/// An objective build failure as an error at its YAML path: objectives name the key at the
/// start of their messages (`objective.dim: ...`).
fn objective_error(doc: &Doc, e: anyhow::Error) -> anyhow::Error {
    let msg = format!("{e:#}");
    if let Some((head, rest)) = msg.split_once(": ") {
        if head.starts_with("objective") && !head.contains(char::is_whitespace) {
            let mut at = YamlPath::root();
            for part in head.split('.') {
                let mut pieces = part.split('[');
                at = at.key(pieces.next().unwrap_or_default());
                for idx in pieces {
                    if let Ok(i) = idx.trim_end_matches(']').parse() {
                        at = at.index(i);
                    }
                }
            }
            return doc.error(&at, rest);
        }
    }
    doc.error(&YamlPath::root().key("objective"), msg)
}

#[cfg(test)]
mod tests;
