//! TPE search quality against Optuna 5.0's TPE (acceptance: on the built-in test functions,
//! 2 to 6 dimensions, 10 seeds of 100 trials each, our median best value must not be worse
//! than Optuna's on most functions).
//!
//! Run the reference first, then this bench, which prints both medians side by side:
//!
//! ```text
//! .venv/bin/python scripts/tpe_quality.py          # writes target/tpe_quality_optuna.json
//! cargo bench --bench tpe_quality                  # or: -- --optuna FILE --seeds N --trials N
//!                                                  #     --first-seed S (seeds S..S+N)
//!                                                  #     --dump FILE (our values per seed)
//! ```
//!
//! Columns: each side's median best value, which is lower, P(tune<optuna) (the chance that one
//! of our studies ends better than one of Optuna's, over all pairs of seeds: 0.5 means no
//! difference, and it is steadier than a median of 10), its distance from 0.5 in standard
//! errors (z; below -1.64 ours is worse at the 5% level), and seconds per study. With 10
//! seeds the medians mostly measure seed luck: Optuna's own seeds 10-19, 20-29, ... beat its
//! seeds 0-9 on at least 4 of the 7 functions in only 4 of 19 such blocks. Without the
//! reference file it prints our column only. The functions, dimensions and domains
//! are those of `scripts/tpe_quality.py`, evaluated by `tune::objective::functions`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use quality::{median, prob_better, reference, z_score};
use serde_json::Value;
use tune::objective::functions::FunctionName;
use tune::sampler::{TpeConfig, TpeSampler};

#[path = "common/quality.rs"]
mod quality;

/// The functions and dimensions compared (the same list as the Python script).
const CASES: [(FunctionName, usize); 7] = [
    (FunctionName::Sphere, 2),
    (FunctionName::Sphere, 5),
    (FunctionName::Rosenbrock, 2),
    (FunctionName::Rastrigin, 3),
    (FunctionName::Ackley, 4),
    (FunctionName::Branin, 2),
    (FunctionName::Hartmann6, 6),
];

struct Args {
    optuna: PathBuf,
    /// Where to write our best value per seed (the reference file's format), if anywhere.
    dump: Option<PathBuf>,
    first_seed: u64,
    seeds: u64,
    trials: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        optuna: PathBuf::from("target/tpe_quality_optuna.json"),
        dump: None,
        first_seed: 0,
        seeds: 10,
        trials: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match a.as_str() {
            "--optuna" => args.optuna = PathBuf::from(value("--optuna")),
            "--dump" => args.dump = Some(PathBuf::from(value("--dump"))),
            "--seeds" => args.seeds = value("--seeds").parse().expect("--seeds takes an integer"),
            "--first-seed" => args.first_seed = value("--first-seed").parse().expect("--first-seed takes an integer"),
            "--trials" => args.trials = value("--trials").parse().expect("--trials takes an integer"),
            // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing we need.
            _ => {}
        }
    }
    args
}

/// The best value of one TPE study on `name` in `dim` dimensions.
fn tpe_best(name: FunctionName, dim: usize, seed: u64, n_trials: usize) -> f64 {
    quality::best_value(name, dim, Arc::new(TpeSampler::new(TpeConfig::default(), seed)), n_trials)
}

fn main() {
    let args = parse_args();
    let optuna: Option<Value> = quality::read_reference(&args.optuna, "tpe_quality.py");
    if let Some(o) = &optuna {
        if o["n_trials"].as_u64() != Some(args.trials as u64)
            || o["seeds"].as_array().map(|s| s.iter().filter_map(Value::as_u64).collect::<Vec<u64>>())
                != Some((args.first_seed..args.first_seed + args.seeds).collect())
        {
            eprintln!(
                "warning: the reference used {} trials and seeds {}; comparing anyway",
                o["n_trials"], o["seeds"]
            );
        }
    }
    println!(
        "TPE search quality: median best value over {} seeds (from {}) x {} trials (lower is better)",
        args.seeds, args.first_seed, args.trials
    );
    println!(
        "{:<11} {:>4} {:>12} {:>12} {:>7} {:>14} {:>6} {:>9} {:>9}",
        "function", "dims", "optuna", "tune", "better", "P(tune<optuna)", "z", "optuna s", "tune s"
    );
    let (mut ours_better_or_tied, mut compared, mut significantly_worse) = (0, 0, 0);
    let mut dumped = Vec::new();
    for (name, dim) in CASES {
        let start = Instant::now();
        let seeds = args.first_seed..args.first_seed + args.seeds;
        let bests: Vec<f64> = seeds.map(|seed| tpe_best(name, dim, seed, args.trials)).collect();
        let secs = start.elapsed().as_secs_f64() / args.seeds as f64;
        let ours = median(bests.clone());
        dumped.push(serde_json::json!({"function": name.as_str(), "dim": dim, "median_best": ours,
            "best_per_seed": bests, "secs_per_study": secs}));
        let theirs = reference(&optuna, name, dim);
        let verdict = match &theirs {
            None => "-",
            Some((t, _, _)) if (ours - t).abs() <= 1e-12 * t.abs().max(1.0) => "tie",
            Some((t, _, _)) if ours < *t => "tune",
            Some(_) => "optuna",
        };
        if theirs.is_some() {
            compared += 1;
            if verdict != "optuna" {
                ours_better_or_tied += 1;
            }
        }
        let (their_median, p, z, their_secs) = match &theirs {
            Some((t, per_seed, s)) => {
                let p = prob_better(&bests, per_seed);
                let z = z_score(p, bests.len(), per_seed.len());
                significantly_worse += usize::from(z < -1.64);
                (format!("{t:.6}"), format!("{p:.2}"), format!("{z:+.1}"), format!("{s:.3}"))
            }
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<11} {:>4} {:>12} {:>12.6} {:>7} {:>14} {:>6} {:>9} {:>9.3}",
            name.as_str(),
            dim,
            their_median,
            ours,
            verdict,
            p,
            z,
            their_secs,
            secs
        );
    }
    if compared > 0 {
        println!("tune's median is not worse on {ours_better_or_tied} of {compared} functions");
        println!("tune is significantly worse (one-sided 5%, z < -1.64) on {significantly_worse} of {compared}");
    }
    if let Some(path) = &args.dump {
        let seeds: Vec<u64> = (args.first_seed..args.first_seed + args.seeds).collect();
        let doc = serde_json::json!({"sampler": "tune TpeSampler, defaults", "n_trials": args.trials,
            "seeds": seeds, "results": dumped});
        std::fs::write(path, serde_json::to_string_pretty(&doc).expect("JSON")).expect("writing --dump");
        println!("wrote {}", path.display());
    }
}
