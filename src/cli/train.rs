//! `tune train CONFIG.yaml`: train one agent and write a run folder (see [`crate::rl::record`]).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::rl::agent::Agent;
use crate::rl::record::RunWriter;
use crate::rl::train::{train, Control, EpisodeRecord, Evaluation, Observer, TrainConfig};

/// Arguments of `tune train`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The trainer config (YAML; `tune export` writes one from a study's best trial).
    config: PathBuf,
    /// Seed, overriding the config's `seed`.
    #[arg(long)]
    seed: Option<u64>,
    /// Run folder to write (default: runs/<config name>-seed<S>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Device (cpu, cuda, cuda:N), overriding the config's `device`.
    #[arg(long)]
    device: Option<String>,
    /// Print evaluations only, no progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// Shows progress and forwards events to the run folder.
struct Display {
    writer: RunWriter,
    bar: Option<ProgressBar>,
    start: Instant,
    last_return: f64,
}

impl Observer for Display {
    fn episode(&mut self, r: &EpisodeRecord) -> anyhow::Result<()> {
        self.writer.episode(r)?;
        self.last_return = r.ret;
        if let Some(bar) = &self.bar {
            let rate = r.step as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(r.step);
            bar.set_message(format!(
                "episode {} | return {:.1} | epsilon {:.3} | {:.0} steps/s",
                r.episode + 1,
                r.ret,
                r.epsilon,
                rate
            ));
        }
        Ok(())
    }

    fn evaluation(&mut self, e: &Evaluation, agent: &dyn Agent) -> anyhow::Result<Control> {
        self.writer.evaluation(e, agent)?;
        let line = format!(
            "step {:>8}  episode {:>6}  eval return {:.2} ± {:.2} over {} episodes",
            e.step,
            e.episode,
            e.mean,
            e.std,
            e.returns.len()
        );
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
        Ok(Control::Continue)
    }
}

/// Runs the subcommand.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let mut cfg = TrainConfig::load(&a.config)?;
    if let Some(seed) = a.seed {
        cfg.seed = seed;
    }
    if let Some(device) = a.device {
        cfg.device = device;
    }
    cfg.validate().map_err(|e| crate::input_err!("{}: {e}", a.config.display()))?;
    cfg.resolve_paths(&crate::spec::folder_of(&a.config));
    let stem = a.config.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "run".into());
    let out = a.out.unwrap_or_else(|| PathBuf::from("runs").join(format!("{stem}-seed{}", cfg.seed)));
    let writer = RunWriter::create(&out, &cfg)?;
    let bar = (!a.quiet && std::io::stderr().is_terminal()).then(|| {
        let total = cfg.budget.steps.unwrap_or(0);
        let bar = ProgressBar::new(total);
        let template = if total > 0 {
            "{elapsed_precise} [{bar:30}] {pos}/{len} steps | {msg}"
        } else {
            "{elapsed_precise} {pos} steps | {msg}"
        };
        bar.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
        bar
    });
    let mut display = Display { writer, bar, start: Instant::now(), last_return: 0.0 };
    let outcome = train(&cfg, &mut display)?;
    if let Some(bar) = &display.bar {
        bar.finish_and_clear();
    }
    let weights = display.writer.finish(&outcome)?;
    let last = outcome.evaluations.last().expect("training ends with an evaluation");
    println!(
        "trained {} steps ({} episodes) in {:.1} s, {:.0} steps/s; last evaluation {:.2} ± {:.2}",
        outcome.steps,
        outcome.episodes,
        outcome.wall_s,
        outcome.steps as f64 / outcome.wall_s.max(1e-9),
        last.mean,
        last.std
    );
    println!("wrote {} (weights: {})", out.display(), weights.display());
    println!("evaluate with: tune eval {}", out.display());
    Ok(0)
}
