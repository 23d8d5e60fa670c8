//! A run folder: what `tune train` writes and `tune eval` reads.
//!
//! - `config.yaml`: the resolved config, seed included (`tune train DIR/config.yaml` reruns it);
//! - `episodes.csv`: `step,episode,return,length,epsilon,lr,loss` per training episode;
//! - `evals.csv`: `step,episode,mean,std,returns` per evaluation (returns joined by `;`);
//! - `weights.safetensors` (networks) or `q_table.json` (tabular agents) at the end of training,
//!   and `best_weights.safetensors` / `best_q_table.json` as of the best evaluation (DQN's
//!   evaluation return oscillates: the best policy is often not the last);
//! - `summary.json`: steps, episodes, wall time, steps/s and the last evaluation.
//!
//! The CSV files hold no timings, so the same config and seed give identical files on CPU.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;

use super::agent::Agent;
use super::train::{Control, EpisodeRecord, Evaluation, Observer, TrainConfig, TrainOutcome};

/// Writes a run folder as training goes.
pub struct RunWriter {
    dir: PathBuf,
    best: Option<f64>,
    episodes: BufWriter<File>,
    evals: BufWriter<File>,
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v}")).unwrap_or_default()
}

impl RunWriter {
    /// Creates `dir` (and parents) and writes `config.yaml` and the CSV headers.
    pub fn create(dir: &Path, cfg: &TrainConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the run folder {}", dir.display()))?;
        let yaml = serde_norway::to_string(cfg)?;
        write_atomic(&dir.join("config.yaml"), yaml.as_bytes())?;
        let create = |name: &str, header: &str| -> anyhow::Result<BufWriter<File>> {
            let path = dir.join(name);
            let mut w =
                BufWriter::new(File::create(&path).with_context(|| format!("cannot write {}", path.display()))?);
            writeln!(w, "{header}")?;
            Ok(w)
        };
        Ok(RunWriter {
            dir: dir.to_path_buf(),
            best: None,
            episodes: create("episodes.csv", "step,episode,return,length,epsilon,lr,loss")?,
            evals: create("evals.csv", "step,episode,mean,std,returns")?,
        })
    }

    /// Saves the weights and `summary.json`.
    pub fn finish(mut self, outcome: &TrainOutcome) -> anyhow::Result<PathBuf> {
        self.episodes.flush()?;
        self.evals.flush()?;
        let weights = self.dir.join(outcome.agent.weights_file());
        outcome.agent.save(&weights)?;
        let last = outcome.evaluations.last();
        let summary = json!({
            "steps": outcome.steps,
            "episodes": outcome.episodes,
            "wall_s": outcome.wall_s,
            "steps_per_s": outcome.steps as f64 / outcome.wall_s.max(1e-9),
            "stopped_early": outcome.stopped,
            "last_eval_mean": last.map(|e| e.mean),
            "last_eval_std": last.map(|e| e.std),
            "best_eval_mean": outcome.evaluations.iter().map(|e| e.mean).fold(None, |b: Option<f64>, m| Some(b.map_or(m, |b| b.max(m)))),
        });
        write_atomic(&self.dir.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
        Ok(weights)
    }
}

impl Observer for RunWriter {
    fn episode(&mut self, r: &EpisodeRecord) -> anyhow::Result<()> {
        writeln!(
            self.episodes,
            "{},{},{},{},{},{},{}",
            r.step,
            r.episode,
            r.ret,
            r.length,
            r.epsilon,
            opt(r.lr),
            opt(r.loss)
        )?;
        Ok(())
    }

    fn evaluation(&mut self, e: &Evaluation, agent: &dyn Agent) -> anyhow::Result<Control> {
        if self.best.is_none_or(|b| e.mean > b) {
            self.best = Some(e.mean);
            let path = self.dir.join(best_file(agent));
            let tmp = self.dir.join(format!("tmp_{}", best_file(agent)));
            agent.save(&tmp)?;
            std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        }
        let returns: Vec<String> = e.returns.iter().map(|r| r.to_string()).collect();
        writeln!(self.evals, "{},{},{},{},{}", e.step, e.episode, e.mean, e.std, returns.join(";"))?;
        self.evals.flush()?;
        self.episodes.flush()?;
        Ok(Control::Continue)
    }
}

/// File name of the best evaluation's weights.
pub fn best_file(agent: &dyn Agent) -> String {
    format!("best_{}", agent.weights_file())
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash never leaves a
/// half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
