//! `tune eval DIR`: evaluate the agent a `tune train` run folder holds, optionally saving a GIF.

use std::path::PathBuf;

use crate::rl::env::GifWriter;
use crate::rl::train::{build, evaluate, mean_std, ObsBuf, TrainConfig};

/// Arguments of `tune eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run folder written by `tune train`.
    dir: PathBuf,
    /// Episodes to run.
    #[arg(long, default_value_t = 100)]
    episodes: u32,
    /// Exploration while evaluating (default: the config's eval.epsilon).
    #[arg(long)]
    epsilon: Option<f64>,
    /// Seed of the first episode (default: the config's seed + 1000).
    #[arg(long)]
    seed: Option<u64>,
    /// Save one episode as an animated GIF.
    #[arg(long)]
    gif: Option<PathBuf>,
    /// Evaluate the weights at the end of training instead of those of the best evaluation.
    #[arg(long = "final")]
    last: bool,
    /// Device (cpu, cuda, cuda:N), overriding the config's.
    #[arg(long)]
    device: Option<String>,
}

/// Runs the subcommand.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let config_path = a.dir.join("config.yaml");
    if !config_path.exists() {
        return Err(crate::input_err!(
            "{} has no config.yaml; pass a run folder written by `tune train` (e.g. runs/per_cartpole-seed0)",
            a.dir.display()
        ));
    }
    let mut cfg = TrainConfig::load(&config_path)?;
    if let Some(device) = a.device {
        cfg.device = device;
    }
    if a.episodes == 0 {
        return Err(crate::input_err!("--episodes must be at least 1"));
    }
    let epsilon = a.epsilon.unwrap_or(cfg.eval.epsilon);
    if !(0.0..=1.0).contains(&epsilon) {
        return Err(crate::input_err!("--epsilon must be in [0, 1], got {epsilon}"));
    }
    let (mut env, mut agent) = build(&cfg)?;
    let best = a.dir.join(crate::rl::record::best_file(agent.as_ref()));
    let weights = if a.last || !best.exists() { a.dir.join(agent.weights_file()) } else { best };
    if !weights.exists() {
        return Err(crate::input_err!(
            "{} is missing; the run did not finish — train again with `tune train {}`",
            weights.display(),
            config_path.display()
        ));
    }
    agent.load(&weights)?;
    let seed = a.seed.unwrap_or(cfg.seed + 1000);
    let results = evaluate(agent.as_mut(), env.as_mut(), a.episodes, epsilon, seed);
    let returns: Vec<f64> = results.iter().map(|r| r.0).collect();
    let lengths: Vec<f64> = results.iter().map(|r| r.1 as f64).collect();
    let (mean, std) = mean_std(&returns);
    let (len_mean, _) = mean_std(&lengths);
    println!("weights: {}", weights.display());
    println!(
        "{}: mean return {mean:.2} ± {std:.2} over {} episodes (min {:.1}, max {:.1}, mean length {len_mean:.1}, epsilon {epsilon})",
        cfg.env.id,
        a.episodes,
        returns.iter().copied().fold(f64::INFINITY, f64::min),
        returns.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    if let Some(gif) = a.gif {
        let mut rng = rand::SeedableRng::seed_from_u64(seed);
        let mut obs = ObsBuf::new(&env.observation_space());
        obs.set(env.reset(Some(seed)));
        let frame = env.render();
        let mut writer = GifWriter::create(&gif, frame.width, frame.height, 30.0)?;
        writer.add(frame)?;
        let (mut ret, mut len) = (0.0, 0);
        loop {
            let action = agent.act_eval(obs.as_obs(), epsilon, &mut rng);
            let step = env.step(action);
            ret += step.reward;
            len += 1;
            let done = step.done();
            if !done {
                obs.set(step.obs);
            }
            writer.add(env.render())?;
            if done {
                break;
            }
        }
        writer.finish()?;
        println!("saved {} ({len} steps, return {ret:.1})", gif.display());
    }
    Ok(0)
}
