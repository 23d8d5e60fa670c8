//! The GP sampler against Optuna 5.0's `GPSampler` (issue 16, item 5): on built-in test
//! functions of 2 to 6 dimensions, 20 seeds of 60 trials each, tune's median best value next
//! to Optuna's with a one-sided test, and tune's TPE on the same seeds; then the sampler's
//! time per trial at 100 and 300 trials next to Optuna's.
//!
//! ```text
//! .venv/bin/python scripts/gp_quality.py          # writes target/gp_quality_optuna.json (~20 min)
//! cargo bench --bench gp_quality                  # or: -- --optuna FILE --seeds N --trials N
//!                                                 #     --first-seed S --overhead 100,300
//! cargo bench --bench gp_quality -- --seeds 0 --time-optuna   # overhead only, both timed now
//! ```
//!
//! With `--time-optuna` the bench runs Optuna's overhead study itself (through
//! `scripts/gp_quality.py --seeds 0`) right before its own, so the ratio compares two
//! measurements of one run on this shared machine rather than two moments.
//!
//! Columns: each side's median best value, P(tune<optuna) (the chance that one of our GP
//! studies ends better than one of Optuna's, over all pairs of seeds; 0.5 means no
//! difference) and its z (below -1.64 ours is worse at the 5% level, one-sided), then tune's
//! TPE median and P(gp<tpe) with its z, and seconds per study. The overhead lines time a Branin
//! study (the objective costs nothing): the mean seconds per trial over the 10 trials before
//! each count, and the ratios to Optuna's with greenlet (its batched acquisition search, Optuna
//! at its best) and without (what `pip install optuna` alone gives).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use quality::{median, prob_better, reference, z_score};
use serde_json::Value;
use tune::objective::functions::FunctionName;
use tune::sampler::{GpConfig, GpSampler, TpeConfig, TpeSampler};

#[path = "common/quality.rs"]
mod quality;

/// The functions compared (the list of `scripts/gp_quality.py`).
const CASES: [(FunctionName, usize); 5] = [
    (FunctionName::Branin, 2),
    (FunctionName::Rosenbrock, 2),
    (FunctionName::Rastrigin, 3),
    (FunctionName::Ackley, 4),
    (FunctionName::Hartmann6, 6),
];

struct Args {
    optuna: PathBuf,
    first_seed: u64,
    seeds: u64,
    trials: usize,
    overhead: Vec<usize>,
    time_optuna: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        optuna: PathBuf::from("target/gp_quality_optuna.json"),
        first_seed: 0,
        seeds: 20,
        trials: 60,
        overhead: vec![100, 300],
        time_optuna: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match a.as_str() {
            "--optuna" => args.optuna = PathBuf::from(value("--optuna")),
            "--seeds" => args.seeds = value("--seeds").parse().expect("--seeds takes an integer"),
            "--first-seed" => args.first_seed = value("--first-seed").parse().expect("--first-seed takes an integer"),
            "--trials" => args.trials = value("--trials").parse().expect("--trials takes an integer"),
            "--overhead" => {
                args.overhead = value("--overhead")
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().expect("--overhead takes counts like 100,300"))
                    .collect()
            }
            "--time-optuna" => args.time_optuna = true,
            // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing we need.
            _ => {}
        }
    }
    args
}

fn gp(seed: u64) -> Arc<GpSampler> {
    Arc::new(GpSampler::new(GpConfig::default(), seed))
}

/// Mean seconds per trial over the 10 trials before each count, on a Branin study; the
/// median of 5 studies (a 10-trial window of ours lasts 0.1 s, short enough for this shared
/// machine's hiccups to move a single study's figure by half).
fn overhead(counts: &[usize]) -> Vec<(usize, f64)> {
    let Some(&last) = counts.iter().max() else { return vec![] };
    let runs: Vec<Vec<Instant>> = (0..5)
        .map(|_| {
            let mut stamps = vec![];
            quality::study_of(FunctionName::Branin, 2, gp(0), last, |_| stamps.push(Instant::now()));
            stamps
        })
        .collect();
    counts
        .iter()
        .filter(|&&n| n >= 11)
        .map(|&n| {
            let per_run: Vec<f64> =
                runs.iter().map(|s| s[n - 1].duration_since(s[n - 11]).as_secs_f64() / 10.0).collect();
            (n, median(per_run))
        })
        .collect()
}

/// Optuna's overhead, timed now by `scripts/gp_quality.py --seeds 0`.
fn time_optuna(counts: &[usize]) -> Option<Value> {
    let out = std::env::temp_dir().join(format!("gp_overhead_optuna_{}.json", std::process::id()));
    let list: Vec<String> = counts.iter().map(|c| c.to_string()).collect();
    println!("timing Optuna's GPSampler at {} trials ...", list.join(", "));
    let status = std::process::Command::new(".venv/bin/python")
        .args(["scripts/gp_quality.py", "--seeds", "0", "--overhead", &list.join(","), "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => serde_json::from_str(&std::fs::read_to_string(&out).ok()?).ok(),
        _ => {
            eprintln!("could not run scripts/gp_quality.py with .venv/bin/python; using the reference file");
            None
        }
    }
}

fn main() {
    let args = parse_args();
    // `cargo test --benches` runs this as a smoke test: keep it short there.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (seeds, trials) = if smoke { (1, 15) } else { (args.seeds, args.trials) };
    let optuna = if smoke { None } else { quality::read_reference(&args.optuna, "gp_quality.py") };
    println!(
        "GP search quality: median best value over {seeds} seeds (from {}) x {trials} trials (lower is better)",
        args.first_seed
    );
    println!(
        "{:<11} {:>4} {:>12} {:>12} {:>9} {:>6} {:>12} {:>9} {:>6} {:>9} {:>9}",
        "function", "dims", "optuna gp", "tune gp", "P(<opt)", "z", "tune tpe", "P(<tpe)", "z", "optuna s", "tune s"
    );
    let mut worse = 0;
    for (name, dim) in if seeds > 0 { &CASES[..] } else { &[] } {
        let (name, dim) = (*name, *dim);
        let seeds = args.first_seed..args.first_seed + seeds;
        let start = Instant::now();
        let ours: Vec<f64> = seeds.clone().map(|s| quality::best_value(name, dim, gp(s), trials)).collect();
        let secs = start.elapsed().as_secs_f64() / ours.len() as f64;
        let tpe: Vec<f64> = seeds
            .map(|s| quality::best_value(name, dim, Arc::new(TpeSampler::new(TpeConfig::default(), s)), trials))
            .collect();
        let p_tpe = prob_better(&ours, &tpe);
        let z_tpe = z_score(p_tpe, ours.len(), tpe.len());
        let (their_median, p, z, their_secs) = match reference(&optuna, name, dim) {
            Some((t, per_seed, s)) => {
                let p = prob_better(&ours, &per_seed);
                let z = z_score(p, ours.len(), per_seed.len());
                worse += usize::from(z < -1.64);
                (format!("{t:.6}"), format!("{p:.2}"), format!("{z:+.1}"), format!("{s:.2}"))
            }
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<11} {:>4} {:>12} {:>12.6} {:>9} {:>6} {:>12.6} {:>9.2} {:>6} {:>9} {:>9.3}",
            name.as_str(),
            dim,
            their_median,
            median(ours.clone()),
            p,
            z,
            median(tpe),
            p_tpe,
            format!("{z_tpe:+.1}"),
            their_secs,
            secs
        );
    }
    if optuna.is_some() {
        println!(
            "tune's GP is significantly worse than Optuna's (one-sided 5%, z < -1.64) on {worse} of {}",
            CASES.len()
        );
    }
    let counts = if smoke { vec![20] } else { args.overhead.clone() };
    let timed = if args.time_optuna && !smoke { time_optuna(&counts) } else { None };
    for (n, s) in overhead(&counts) {
        let source = timed.as_ref().or(optuna.as_ref());
        let at = |key: &str| source.and_then(|o: &Value| o[key][n.to_string()].as_f64());
        let mut line = format!("sampler time per trial at {n} trials: tune {:.2} ms", s * 1e3);
        if let Some(t) = at("secs_per_trial_at") {
            line += &format!("; optuna {:.1} ms ({:.0}x)", t * 1e3, t / s);
        }
        if let Some(t) = at("secs_per_trial_without_greenlet_at") {
            line += &format!("; optuna without greenlet {:.1} ms ({:.0}x)", t * 1e3, t / s);
        }
        println!("{line}");
    }
}
