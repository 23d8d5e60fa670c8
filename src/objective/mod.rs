//! Objectives: what a trial evaluates. Built-ins need no RL: test functions (with a synthetic
//! learning curve for pruning) and `command`, any external program.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::study::Trial;

pub mod command;
pub mod functions;
pub mod rl;

/// Something a trial can evaluate from its resolved config.
pub trait Objective: Send + Sync {
    /// The base config that sampled parameters are written into; every dotted path of the
    /// search space must exist in it.
    fn base_config(&self) -> &Value;

    /// Runs one trial with its resolved config and returns its value. Intermediate values go
    /// through `trial.report`; return `Err(TrialPruned)` when `trial.should_prune()` says so.
    fn run(&self, config: &Value, trial: &mut Trial) -> anyhow::Result<f64>;

    /// Checks a trial config as `run` would read it, without running anything; `Err` names the
    /// rule it breaks. The study loader calls it on the search space's edges.
    fn check(&self, config: &Value) -> Result<(), String>;

    /// Runs trials asked together (`parallelism.batch`), given each one's resolved config or
    /// the error resolving it, and returns each one's value or error, in order. By default one
    /// after the other; the `rl` objective trains compatible ones as one batched learner.
    fn run_batch(&self, configs: Vec<anyhow::Result<Value>>, trials: &mut [Trial]) -> Vec<anyhow::Result<f64>> {
        let run_one = |c: anyhow::Result<Value>, t: &mut Trial| {
            let c = c?;
            if t.interrupted() {
                // The run is stopping: trials not started yet go back to the queue.
                return Err(crate::error::Interrupted.into());
            }
            // A panic fails its own trial only.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(&c, t))).unwrap_or_else(|p| {
                Err(anyhow::anyhow!("the objective panicked: {}", crate::error::panic_message(p.as_ref())))
            })
        };
        configs.into_iter().zip(trials.iter_mut()).map(|(c, t)| run_one(c, t)).collect()
    }
}

/// Where an objective may read and write files.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// Folder of the study file: relative paths in the objective resolve against it.
    pub base_dir: PathBuf,
    /// Folder for per-trial logs and files (`tune-logs/<study>/`).
    pub log_dir: PathBuf,
}

/// The `objective:` section of a study file, tagged by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ObjectiveSpec {
    /// A built-in test function.
    Function(functions::FunctionSpec),
    /// An external program run once per trial.
    Command(command::CommandSpec),
    /// Train a DQN-family (or tabular) agent from a trainer config.
    Rl(rl::RlSpec),
}

impl ObjectiveSpec {
    /// Builds the objective.
    pub fn build(&self, ctx: &BuildContext) -> anyhow::Result<Box<dyn Objective>> {
        match self {
            ObjectiveSpec::Function(s) => Ok(Box::new(functions::FunctionObjective::new(s)?)),
            ObjectiveSpec::Command(s) => Ok(Box::new(command::CommandObjective::new(s, ctx)?)),
            ObjectiveSpec::Rl(s) => Ok(Box::new(rl::RlObjective::new(s, ctx)?)),
        }
    }
}
