//! Rust half of the TPE step-by-step comparison with Optuna (see `scripts/tpe_compare.py`,
//! which writes the input). First checks that the sampler's memo is a pure cache (replaying the
//! file's history with one sampler gives what a fresh sampler gives at every trial); then, at
//! each trial count of the file, prints whether our split equals Optuna's, the largest
//! differences of the Parzen estimators' means, widths and weights and of the log-densities at
//! Optuna's candidates, and compares the distribution of the next suggestion (our sampler with
//! DRAWS seeds against Optuna's draws): means and spreads per parameter, and the chance that
//! our next objective value is below Optuna's (0.5 when they behave alike).
//!
//! Run: `cargo run --release --example tpe_compare -- FILE [DRAWS]`.

use std::collections::BTreeMap;

use serde_json::Value;
use tune::objective::functions::FunctionName;
use tune::sampler::tpe::{default_weights, split_trials, ParzenEstimator, ParzenParams};
use tune::sampler::{shared, Sampler, StudyView, TpeConfig, TpeSampler};
use tune::{Direction, Distribution, FrozenTrial, TrialState};

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("an array").iter().map(|x| x.as_f64().expect("a number")).collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// The median (NumPy's `nanpercentile` at 50, as the pruners use it).
fn median(v: Vec<f64>) -> f64 {
    tune::pruner::nan_percentile(v, 50.0)
}

/// P(a < b) over all pairs, ties counting half.
fn prob_less(a: &[f64], b: &[f64]) -> f64 {
    let mut b = b.to_vec();
    b.sort_by(f64::total_cmp);
    let wins: f64 = a
        .iter()
        .map(|x| {
            let above = b.len() - b.partition_point(|y| y <= x);
            let ties = b.partition_point(|y| y <= x) - b.partition_point(|y| y < x);
            above as f64 + 0.5 * ties as f64
        })
        .sum();
    wins / (a.len() * b.len()) as f64
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let file = args.first().expect("usage: tpe_compare FILE [DRAWS]");
    let data: Value = serde_json::from_str(&std::fs::read_to_string(file).expect("readable")).expect("JSON");
    let function: FunctionName =
        serde_json::from_value(data["function"].clone()).expect("a function name known to tune");
    let bounds: Vec<(f64, f64)> =
        data["bounds"].as_array().unwrap().iter().map(|b| (b[0].as_f64().unwrap(), b[1].as_f64().unwrap())).collect();
    let names: Vec<String> =
        data["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect();
    let dists: Vec<Distribution> =
        bounds.iter().map(|&(lo, hi)| Distribution::float(lo, hi, false, None).unwrap()).collect();
    let history: Vec<FrozenTrial> = data["history"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let mut t = FrozenTrial::new(i as i64, i as i64, TrialState::Complete);
            t.value = h["value"].as_f64();
            for ((n, d), x) in names.iter().zip(&dists).zip(floats(&h["params"])) {
                t.params.insert(n.clone(), x);
                t.distributions.insert(n.clone(), d.clone());
            }
            t
        })
        .collect();
    let params = ParzenParams { prior_weight: 1.0, consider_magic_clip: true, consider_endpoints: false };
    let space: Vec<&Distribution> = dists.iter().collect();

    // The sampler's memo is a pure cache: replaying the history with one sampler (warm memo, as
    // in a running study) must give exactly what a fresh sampler gives at every trial.
    let warm = TpeSampler::new(TpeConfig::default(), 3);
    let mut mismatches = 0;
    for at in 0..history.len() {
        let mut trials: Vec<FrozenTrial> = history[..at].to_vec();
        trials.push(FrozenTrial::new(at as i64, at as i64, TrialState::Running));
        let arcs = shared(&trials);
        let view = StudyView { direction: Direction::Minimize, trials: &arcs };
        let cold = TpeSampler::new(TpeConfig::default(), 3);
        let (sw, sc) = (
            warm.infer_relative_search_space(&view, &trials[at]),
            cold.infer_relative_search_space(&view, &trials[at]),
        );
        if sw != sc || warm.sample_relative(&view, &trials[at], &sw) != cold.sample_relative(&view, &trials[at], &sc) {
            mismatches += 1;
        }
    }
    println!("warm memo vs fresh sampler over {} asks: {mismatches} differ", history.len());

    for point in data["points"].as_array().unwrap() {
        let at = point["at"].as_u64().unwrap() as usize;
        let mut trials: Vec<FrozenTrial> = history[..at].to_vec();
        trials.push(FrozenTrial::new(at as i64, at as i64, TrialState::Running));
        let arcs = shared(&trials);
        let view = StudyView { direction: Direction::Minimize, trials: &arcs };
        let current = &trials[at];
        let (below, above) = split_trials(&view, current, true);
        let numbers = |ts: &[&FrozenTrial]| ts.iter().map(|t| t.number as f64).collect::<Vec<_>>();
        let split_same = numbers(&below) == floats(&point["below"]) && numbers(&above) == floats(&point["above"]);
        let estimator = |ts: &[&FrozenTrial]| {
            let obs: Vec<Vec<f64>> = names.iter().map(|n| ts.iter().map(|t| t.params[n]).collect()).collect();
            ParzenEstimator::new(&space, &obs, &default_weights(ts.len()), &params)
        };
        let (l, g) = (estimator(&below), estimator(&above));
        let mut worst: BTreeMap<&str, f64> = BTreeMap::new();
        for (name, pe, theirs) in [("l", &l, &point["l"]), ("g", &g, &point["g"])] {
            let w = max_diff(pe.weights(), &floats(&theirs["weights"]));
            let mut m: f64 = 0.0;
            let mut s: f64 = 0.0;
            for d in 0..names.len() {
                let (mu, sigma) = pe.mus_sigmas(d).unwrap();
                m = m.max(max_diff(mu, &floats(&theirs["mus"][d])));
                s = s.max(max_diff(sigma, &floats(&theirs["sigmas"][d])));
            }
            worst.insert(if name == "l" { "l.weights" } else { "g.weights" }, w);
            worst.insert(if name == "l" { "l.mus" } else { "g.mus" }, m);
            worst.insert(if name == "l" { "l.sigmas" } else { "g.sigmas" }, s);
        }
        let cands: Vec<Vec<f64>> = point["candidates"].as_array().unwrap().iter().map(floats).collect();
        let (ll, lg) = (l.log_pdf(&cands), g.log_pdf(&cands));
        let dl = max_diff(&ll, &floats(&point["log_l"]));
        let dg = max_diff(&lg, &floats(&point["log_g"]));

        // The next suggestion, with as many sampler seeds as Optuna's draws.
        let n_draws = args.get(1).map_or(point["draws"].as_array().unwrap().len(), |d| d.parse().unwrap());
        let rel_space = TpeSampler::new(TpeConfig::default(), 0).infer_relative_search_space(&view, current);
        let ours: Vec<Vec<f64>> = (0..n_draws as u64)
            .map(|seed| {
                let s = TpeSampler::new(TpeConfig::default(), 1000 + seed);
                let x = s.sample_relative(&view, current, &rel_space);
                names.iter().map(|n| x[n]).collect()
            })
            .collect();
        let our_values: Vec<f64> = ours.iter().map(|x| function.eval(x)).collect();
        let their_values = floats(&point["draw_values"]);
        println!(
            "at {at:>3}: split {} | max |diff| {} | log l {dl:.1e} log g {dg:.1e}",
            if split_same { "same" } else { "DIFFERENT" },
            worst.iter().map(|(k, v)| format!("{k} {v:.1e}")).collect::<Vec<_>>().join(", ")
        );
        println!(
            "         next value: optuna mean {:.4} median {:.4} | tune mean {:.4} median {:.4} | P(tune<optuna) {:.3}",
            their_values.iter().sum::<f64>() / their_values.len() as f64,
            median(their_values.clone()),
            our_values.iter().sum::<f64>() / our_values.len() as f64,
            median(our_values.clone()),
            prob_less(&our_values, &their_values)
        );
        let theirs: Vec<Vec<f64>> = point["draws"].as_array().unwrap().iter().map(floats).collect();
        for d in 0..names.len() {
            let stats = |xs: &[Vec<f64>]| {
                let v: Vec<f64> = xs.iter().map(|x| x[d]).collect();
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                let sd = (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64).sqrt();
                (mean, sd)
            };
            let ((om, os), (tm, ts)) = (stats(&theirs), stats(&ours));
            println!("         {}: optuna mean {om:+.4} sd {os:.4} | tune mean {tm:+.4} sd {ts:.4}", names[d]);
        }
    }
}
