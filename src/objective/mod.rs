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

    /// Runs trials asked together (`parallelism.batch`), given with each one's resolved config
    /// or the error resolving it, and tells `feed` each one's value or error as it ends; it may
    /// ask `feed` for more. By default one after the other; the `rl` objective trains
    /// compatible ones as one batched learner and gives the slots of ended trials to new ones.
    fn run_batch(&self, batch: Vec<(Trial, anyhow::Result<Value>)>, feed: &mut dyn BatchFeed) {
        for (mut trial, config) in batch {
            let result = config.and_then(|c| {
                if trial.interrupted() {
                    // The run is stopping: trials not started yet go back to the queue.
                    return Err(crate::error::Interrupted.into());
                }
                // A panic fails its own trial only.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(&c, &mut trial))).unwrap_or_else(
                    |p| Err(anyhow::anyhow!("the objective panicked: {}", crate::error::panic_message(p.as_ref()))),
                )
            });
            feed.tell(trial, result);
        }
    }
}

/// Where [`Objective::run_batch`] gets more trials and tells their outcomes (the executor's
/// [`crate::executor::TrialFeed`], with each new trial's config resolved).
pub trait BatchFeed {
    /// One more trial with its resolved config (or the error resolving it); `None` once the
    /// budget is taken or the run is stopping.
    fn more(&mut self) -> Option<(Trial, anyhow::Result<Value>)>;

    /// Records `trial`'s outcome now.
    fn tell(&mut self, trial: Trial, result: anyhow::Result<f64>);
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
