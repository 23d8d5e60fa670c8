//! Tests of the TPE sampler: Parzen numbers against Optuna, the split, determinism, and search
//! quality on a small problem.

// Reference values are pasted as printed by Python.
#![allow(clippy::approx_constant)]

use super::history::Group;
use super::parzen::ConstantCache;
use super::*;
use crate::frozen::Direction;
use proptest::prelude::*;
use serde_json::json;

const OPTUNA_DEFAULTS: ParzenParams =
    ParzenParams { prior_weight: 1.0, consider_magic_clip: true, consider_endpoints: false };

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= tol * w.abs().max(1.0), "{what}:\n got  {got:?}\n want {want:?}");
    }
}

fn trial(number: i64, state: TrialState, value: Option<f64>, params: &[(&str, f64, &Distribution)]) -> FrozenTrial {
    let mut t = FrozenTrial::new(number, number, state);
    t.value = value;
    for (name, x, d) in params {
        t.params.insert(name.to_string(), *x);
        t.distributions.insert(name.to_string(), (*d).clone());
    }
    t
}

/// Plays a sequential study the way `Study::ask` and `Trial::suggest` drive a sampler: the
/// relative sample first, a parameter taking it when the relative space's distribution is
/// compatible and contains the value, `sample_independent` otherwise.
fn play(
    sampler: &dyn Sampler,
    direction: Direction,
    space: &[(&str, Distribution)],
    n: usize,
    f: impl Fn(&BTreeMap<String, f64>) -> f64,
) -> Vec<FrozenTrial> {
    let mut trials: Vec<FrozenTrial> = Vec::new();
    for number in 0..n as i64 {
        trials.push(FrozenTrial::new(number, number, TrialState::Running));
        let mut t = trials.last().unwrap().clone();
        let view = StudyView { direction, trials: &crate::sampler::shared(&trials) };
        let rel_space = sampler.infer_relative_search_space(&view, &t);
        let rel = if rel_space.is_empty() { BTreeMap::new() } else { sampler.sample_relative(&view, &t, &rel_space) };
        for (name, d) in space {
            let x = match (rel.get(*name), rel_space.get(*name)) {
                (Some(&x), Some(rd)) if rd.compatible(d) && d.contains(x) => x,
                _ => sampler.sample_independent(&view, &t, name, d),
            };
            assert!(d.contains(x), "{name} = {x} outside {d:?}");
            t.params.insert(name.to_string(), x);
            t.distributions.insert(name.to_string(), d.clone());
        }
        t.value = Some(f(&t.params));
        t.state = TrialState::Complete;
        *trials.last_mut().unwrap() = t;
    }
    trials
}

/// The observation columns of `dims` (raw internal values) over the trials that have them all.
fn observations(trials: &[&FrozenTrial], dims: &[(&str, &Distribution)]) -> Vec<Vec<f64>> {
    let owned: Vec<(String, Distribution)> = dims.iter().map(|(n, d)| (n.to_string(), (*d).clone())).collect();
    let no_log = vec![false; dims.len()];
    let mut row = vec![0.0; dims.len()];
    let mut cols = vec![Vec::new(); dims.len()];
    for t in trials {
        if history::extract_row(t, &owned, &no_log, &mut row) {
            cols.iter_mut().zip(&row).for_each(|(c, &v)| c.push(v));
        }
    }
    cols
}

// ---------------------------------------------------------------------------------------------
// (a) Parzen estimator numbers against Optuna 5.0.0. Produced by running
// `optuna.samplers._tpe.parzen_estimator._ParzenEstimator(observations, search_space,
// _ParzenEstimatorParameters(prior_weight=1.0, consider_magic_clip=True,
// consider_endpoints=False, weights=default_weights, multivariate=True))` in the project's
// .venv (optuna 5.0.0, numpy) and printing `_mixture_distribution.weights`, each batched
// distribution's `mu`/`sigma` (or categorical `weights`), and `log_pdf(points)`.
// ---------------------------------------------------------------------------------------------

#[test]
fn parzen_matches_optuna_on_a_mixed_space() {
    let dists = [
        Distribution::categorical(vec![json!("a"), json!("b"), json!("c")]).unwrap(),
        Distribution::int(0, 10, false, 2).unwrap(),
        Distribution::float(1e-4, 1.0, true, None).unwrap(),
        Distribution::int(1, 64, true, 1).unwrap(),
        Distribution::float(0.0, 1.0, false, Some(0.25)).unwrap(),
        Distribution::float(-5.0, 5.0, false, None).unwrap(),
    ];
    let space: Vec<&Distribution> = dists.iter().collect();
    let obs = vec![
        vec![0.0, 2.0, 2.0, 1.0, 0.0],
        vec![0.0, 4.0, 10.0, 4.0, 6.0],
        vec![1e-3, 0.5, 2e-4, 1e-2, 1e-3],
        vec![1.0, 7.0, 64.0, 16.0, 2.0],
        vec![0.25, 0.0, 1.0, 0.5, 0.75],
        vec![-4.0, 1.5, 0.3, 4.9, -0.2],
    ];
    let pe = ParzenEstimator::new(&space, &obs, &default_weights(5), &OPTUNA_DEFAULTS);
    assert_close("weights", pe.weights(), &[1.0 / 6.0; 6], 1e-15);
    #[rustfmt::skip]
    assert_close("c", &pe.choice_probs(0).unwrap(), &[
        0.7777777777777777, 0.11111111111111109, 0.11111111111111109, 0.1111111111111111, 0.1111111111111111,
        0.7777777777777778, 0.1111111111111111, 0.1111111111111111, 0.7777777777777778, 0.11111111111111109,
        0.7777777777777777, 0.11111111111111109, 0.7777777777777777, 0.11111111111111109, 0.11111111111111109,
        0.3333333333333333, 0.3333333333333333, 0.3333333333333333,
    ], 1e-15);
    #[rustfmt::skip]
    let want: [(&[f64], &[f64]); 5] = [
        (&[0.0, 4.0, 10.0, 4.0, 6.0, 5.0], &[4.0, 4.0, 4.0, 2.0, 4.0, 12.0]),
        (&[-6.907755278982137, -0.6931471805599453, -8.517193191416238, -4.605170185988091, -6.907755278982137, -4.605170185988091],
         &[1.6094379124341014, 3.9120230054281455, 1.6094379124341014, 3.9120230054281455, 2.302585092994046, 9.210340371976182]),
        (&[0.0, 1.9459101490553132, 4.1588830833596715, 2.772588722239781, 0.6931471805599453, 1.7367590216208906],
         &[0.6942589149088103, 1.252762968495368, 1.3862943611198904, 1.3862943611198904, 1.252762968495368, 4.859812404361672]),
        (&[0.25, 0.0, 1.0, 0.5, 0.75, 0.5], &[0.25, 0.25, 0.25, 0.25, 0.25, 1.25]),
        (&[-4.0, 1.5, 0.3, 4.9, -0.2, 0.0], &[3.8, 3.4000000000000004, 1.4285714285714286, 3.4000000000000004, 3.8, 10.0]),
    ];
    for (d, (mu, sigma)) in want.iter().enumerate() {
        let (m, s) = pe.mus_sigmas(d + 1).unwrap();
        assert_close(&format!("mu {d}"), m, mu, 1e-14);
        assert_close(&format!("sigma {d}"), s, sigma, 1e-14);
    }
    let points = vec![
        vec![0.0, 1.0, 2.0, 2.0],
        vec![0.0, 4.0, 8.0, 10.0],
        vec![1e-3, 1e-4, 0.3, 1.0],
        vec![1.0, 5.0, 30.0, 64.0],
        vec![0.25, 0.0, 0.5, 1.0],
        vec![-4.0, 0.0, 2.2, 5.0],
    ];
    assert_close(
        "log_pdf",
        &pe.log_pdf(&points),
        &[-7.478591911281594, -13.076493199739776, -14.621620853317014, -16.88397304045026],
        1e-12,
    );
}

#[test]
fn parzen_matches_optuna_with_ramped_weights_and_magic_clip() {
    // numpy.random.RandomState(0).uniform(-2, 3, size=30), rounded to 6 decimals.
    #[rustfmt::skip]
    let xs = vec![
        0.744068, 1.575947, 1.013817, 0.724416, 0.118274, 1.229471, 0.187936, 2.458865, 2.818314, -0.082792,
        1.958625, 0.644475, 0.840223, 2.627983, -1.64482, -1.564354, -1.898908, 2.163099, 1.890784, 2.350061,
        2.893092, 1.995793, 0.307397, 1.902646, -1.408628, 1.199605, -1.283234, 2.723345, 0.609242, 0.07331,
    ];
    let d = Distribution::float(-2.0, 3.0, false, None).unwrap();
    let pe = ParzenEstimator::new(&[&d], std::slice::from_ref(&xs), &default_weights(30), &OPTUNA_DEFAULTS);
    let mut weights = vec![0.0011661807580174927, 0.009620991253644314, 0.018075801749271137, 0.026530612244897955];
    weights.resize(31, 0.034985422740524776);
    assert_close("weights", pe.weights(), &weights, 1e-14);
    #[rustfmt::skip]
    let sigma = [
        0.15625, 0.346476, 0.18578800000000006, 0.15625, 0.15625, 0.346476, 0.15625, 0.1691180000000001, 0.15625,
        1.200442, 0.15625, 0.15625, 0.17359399999999992, 0.1691180000000001, 0.2540880000000001, 0.15625,
        0.2540880000000001, 0.1869620000000003, 0.31483700000000003, 0.1869620000000003, 0.15625,
        0.16730599999999995, 0.301845, 0.15625, 0.15625, 0.18578800000000006, 1.200442, 0.15625, 0.301845,
        0.15625, 5.0,
    ];
    let (mu, s) = pe.mus_sigmas(0).unwrap();
    assert_close("mu", &mu[..30], &xs, 0.0);
    assert_eq!(mu[30], 0.5);
    assert_close("sigma", s, &sigma, 1e-13);
    assert_close(
        "log_pdf",
        &pe.log_pdf(&[vec![-2.0, -0.5, 0.0, 1.7, 3.0]]),
        &[-2.077456746591244, -3.4034563921712775, -1.3754028839135277, -1.8344402955710997, -1.7140362821383794],
        1e-12,
    );
}

#[test]
fn parzen_matches_optuna_with_only_the_prior() {
    let n = Distribution::int(1, 100, true, 1).unwrap();
    let c = Distribution::categorical(vec![json!(1), json!(2), json!(3), json!(4)]).unwrap();
    let pe = ParzenEstimator::new(&[&n, &c], &[vec![], vec![]], &[], &OPTUNA_DEFAULTS);
    assert_eq!(pe.weights(), &[1.0]);
    let (mu, sigma) = pe.mus_sigmas(0).unwrap();
    assert_close("mu", mu, &[1.9585052734695925], 1e-15);
    assert_close("sigma", sigma, &[5.303304908059076], 1e-15);
    assert_eq!(pe.choice_probs(1).unwrap(), vec![0.25; 4]);
    assert_close(
        "log_pdf",
        &pe.log_pdf(&[vec![1.0, 10.0, 100.0], vec![0.0, 1.0, 3.0]]),
        &[-2.9996803088582817, -5.317501827914624, -7.74333775458652],
        1e-12,
    );
}

/// The log-density by the plain definition: every kernel, every term, no shortcuts.
fn brute_log_pdf(pe: &ParzenEstimator, dists: &[Distribution], point: &[f64]) -> f64 {
    let terms: Vec<f64> = (0..pe.n_kernels())
        .map(|k| {
            let mut v = pe.weights()[k].ln();
            for (d, (dist, &x)) in dists.iter().zip(point).enumerate() {
                let (low, high, log, step) = match *dist {
                    Distribution::Float { low, high, log, step } => (low, high, log, step),
                    Distribution::Int { low, high, log, step } => (low as f64, high as f64, log, Some(step as f64)),
                    Distribution::Categorical { ref choices } => {
                        v += pe.choice_probs(d).unwrap()[k * choices.len() + x as usize].ln();
                        continue;
                    }
                };
                let t = |y: f64| if log { y.ln() } else { y };
                let half = step.unwrap_or(0.0) / 2.0;
                let (lo, hi) = (t(low - half), t(high + half));
                let (mu, sigma) = pe.mus_sigmas(d).unwrap();
                let (m, s) = (mu[k], sigma[k]);
                v -= truncnorm::log_gauss_mass((lo - m) / s, (hi - m) / s);
                v += match step {
                    Some(st) => truncnorm::log_gauss_mass((t(x - st / 2.0) - m) / s, (t(x + st / 2.0) - m) / s),
                    None => -0.5 * ((t(x) - m) / s).powi(2) - s.ln() - truncnorm::LN_SQRT_2PI,
                };
            }
            v
        })
        .collect();
    let m = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    m + terms.iter().map(|t| (t - m).exp()).sum::<f64>().ln()
}

#[test]
fn lazy_log_pdf_agrees_with_the_full_sum() {
    // The log-density skips kernels that cannot matter; compare with the plain sum over every
    // kernel, on large observation sets over every kind of dimension.
    let all = [
        Distribution::float(-3.0, 3.0, false, None).unwrap(),
        Distribution::int(1, 1000, true, 1).unwrap(),
        Distribution::categorical(vec![json!(0), json!(1), json!(2), json!(3)]).unwrap(),
        Distribution::float(1e-4, 1.0, true, None).unwrap(),
        Distribution::int(-5, 5, false, 1).unwrap(),
        Distribution::float(0.0, 1.0, false, Some(0.1)).unwrap(),
    ];
    for (dims, n) in
        [(&all[..], 400), (&all[..2], 300), (&all[1..2], 200), (&all[2..3], 50), (&all[4..], 100), (&all[..1], 0)]
    {
        let space: Vec<&Distribution> = dims.iter().collect();
        let mut rng = trial_rng(9, n as i64, "obs");
        let obs: Vec<Vec<f64>> =
            dims.iter().map(|d| (0..n).map(|_| super::super::random::sample_uniform(d, &mut rng)).collect()).collect();
        let pe = ParzenEstimator::new(&space, &obs, &default_weights(n), &OPTUNA_DEFAULTS);
        let mut pts = pe.sample(&mut rng, 30);
        // Points anywhere in the space too, not only where the model puts them.
        for (col, d) in pts.iter_mut().zip(dims) {
            col.extend((0..10).map(|_| super::super::random::sample_uniform(d, &mut rng)));
        }
        let fast = pe.log_pdf(&pts);
        for (i, f) in fast.iter().enumerate() {
            let point: Vec<f64> = pts.iter().map(|c| c[i]).collect();
            let full = brute_log_pdf(&pe, dims, &point);
            assert!((f - full).abs() < 1e-12 * full.abs().max(1.0), "{dims:?} at {point:?}: {f} vs {full}");
        }
    }
}

// (b) gamma and weights, against Optuna's `default_gamma` and `default_weights`.

#[test]
fn gamma_and_weights_follow_optuna() {
    let ns = [0, 1, 9, 10, 11, 30, 100, 249, 250, 251, 1000];
    let want = [0, 1, 1, 1, 2, 3, 10, 25, 25, 25, 25];
    assert_eq!(ns.map(gamma), want);
    assert_eq!(default_weights(0), Vec::<f64>::new());
    assert_eq!(default_weights(24), vec![1.0; 24]);
    assert_eq!(default_weights(25), vec![1.0; 25]);
    let mut w27 = vec![0.037037037037037035];
    w27.resize(27, 1.0);
    assert_close("w27", &default_weights(27), &w27, 1e-15);
    let mut w30 = vec![0.03333333333333333, 0.275, 0.5166666666666667, 0.7583333333333333, 1.0];
    w30.resize(30, 1.0);
    assert_close("w30", &default_weights(30), &w30, 1e-15);
}

// (c) the split.

fn numbers(ts: &[&FrozenTrial]) -> Vec<i64> {
    ts.iter().map(|t| t.number).collect()
}

#[test]
fn split_ranks_complete_trials_by_direction() {
    let ts: Vec<FrozenTrial> = [3.0, 1.0, 2.0, 1.0]
        .iter()
        .enumerate()
        .map(|(i, &v)| trial(i as i64, TrialState::Complete, Some(v), &[]))
        .collect();
    let cur = FrozenTrial::new(9, 9, TrialState::Running);
    let ts = crate::sampler::shared(&ts);
    let (b, a) = split_trials(&StudyView { direction: Direction::Minimize, trials: &ts }, &cur, true);
    // gamma(4) = 1; the tie at 1.0 goes to the earlier trial.
    assert_eq!((numbers(&b), numbers(&a)), (vec![1], vec![0, 2, 3]));
    let (b, a) = split_trials(&StudyView { direction: Direction::Maximize, trials: &ts }, &cur, true);
    assert_eq!((numbers(&b), numbers(&a)), (vec![0], vec![1, 2, 3]));
}

#[test]
fn split_fills_good_slots_with_the_furthest_pruned_trials() {
    let mut ts = vec![trial(0, TrialState::Complete, Some(5.0), &[])];
    for i in 1..=20 {
        let mut t = trial(i, TrialState::Pruned, Some(i as f64), &[]);
        match i {
            7 => t.intermediate_values.extend([(0, 1.0), (5, 9.0)]),
            12 => t.intermediate_values.extend([(0, 1.0), (5, 4.0)]),
            15 => t.intermediate_values.extend([(5, f64::NAN)]),
            3 => {}
            _ => t.intermediate_values.extend([(1, i as f64)]),
        }
        ts.push(t);
    }
    ts.push(trial(21, TrialState::Running, None, &[]));
    ts.push(trial(22, TrialState::Running, None, &[]));
    ts.push(trial(23, TrialState::Fail, None, &[]));
    ts.push(trial(24, TrialState::Waiting, None, &[]));
    let current = ts[22].clone();

    // n = 21 finished, gamma = 3: the one COMPLETE trial, then the two pruned at step 5 with
    // the best values (NaN last).
    let view = StudyView { direction: Direction::Minimize, trials: &crate::sampler::shared(&ts) };
    let (b, a) = split_trials(&view, &current, true);
    assert_eq!(numbers(&b), vec![0, 7, 12]);
    let mut want_above: Vec<i64> = (1..=21).filter(|i| ![7, 12].contains(i)).collect();
    assert_eq!(numbers(&a), want_above);

    // Maximising reverses the values but not the step ranking.
    let view = StudyView { direction: Direction::Maximize, trials: &crate::sampler::shared(&ts) };
    let (b, _) = split_trials(&view, &current, true);
    assert_eq!(numbers(&b), vec![0, 7, 12]);
    ts[12].intermediate_values.insert(5, 10.0);
    let view = StudyView { direction: Direction::Maximize, trials: &crate::sampler::shared(&ts) };
    assert_eq!(numbers(&split_trials(&view, &current, true).0), vec![0, 7, 12]);
    ts[15].intermediate_values.insert(5, 11.0);
    let view = StudyView { direction: Direction::Maximize, trials: &crate::sampler::shared(&ts) };
    assert_eq!(numbers(&split_trials(&view, &current, true).0), vec![0, 12, 15]);

    // Without the constant liar, RUNNING trials are left out entirely.
    let view = StudyView { direction: Direction::Minimize, trials: &crate::sampler::shared(&ts) };
    let (_, a) = split_trials(&view, &current, false);
    want_above.retain(|&i| i != 21);
    assert_eq!(numbers(&a), want_above);
}

#[test]
fn running_trials_become_bad_observations_under_the_constant_liar() {
    let x = Distribution::float(0.0, 1.0, false, None).unwrap();
    let mut ts: Vec<FrozenTrial> =
        (0..12).map(|i| trial(i, TrialState::Complete, Some(i as f64), &[("x", i as f64 / 12.0, &x)])).collect();
    ts.push(trial(12, TrialState::Running, None, &[("x", 0.01, &x)]));
    ts.push(trial(13, TrialState::Running, None, &[]));
    let current = ts[13].clone();
    let view = StudyView { direction: Direction::Minimize, trials: &crate::sampler::shared(&ts) };
    let (_, above) = split_trials(&view, &current, true);
    assert_eq!(observations(&above, &[("x", &x)])[0].len(), 12 - 2 + 1);
    // The lie raises the bad model's density where the running trial sits, so TPE shies away.
    let g = |trials: &[&FrozenTrial]| {
        let obs = observations(trials, &[("x", &x)]);
        let pe = ParzenEstimator::new(&[&x], &obs, &default_weights(obs[0].len()), &OPTUNA_DEFAULTS);
        pe.log_pdf(&[vec![0.01]])[0]
    };
    let (_, honest) = split_trials(&view, &current, false);
    assert!(g(&above) > g(&honest) + 0.5, "{} vs {}", g(&above), g(&honest));
}

// The incremental history gives exactly what a fresh computation gives.

/// A study of `finals.len()` trials over a float, a log int and a categorical, where trial `i`
/// is RUNNING until step `finish[i]` and then takes its final state; some lack a parameter.
fn evolving_study(finals: &[(u8, f64, [f64; 3], u8)], at: usize) -> Vec<FrozenTrial> {
    let dists = history_dims();
    let mut ts: Vec<FrozenTrial> = Vec::new();
    for (i, &(state, value, ref xs, finish)) in finals.iter().enumerate().take(at + 1) {
        let mut t = FrozenTrial::new(i as i64, i as i64, TrialState::Running);
        if i == at {
            ts.push(t);
            break;
        }
        for (j, (name, d)) in dists.iter().enumerate() {
            if (i + j) % 11 != 5 {
                t.params.insert(name.to_string(), xs[j]);
                t.distributions.insert(name.to_string(), d.clone());
            }
        }
        if i + finish as usize % 6 < at {
            t.state =
                [TrialState::Complete, TrialState::Pruned, TrialState::Fail, TrialState::Complete][state as usize % 4];
            match t.state {
                TrialState::Complete => t.value = Some(value),
                TrialState::Pruned => {
                    t.intermediate_values.insert((value.abs() * 3.0) as i64 % 3, value);
                    t.value = Some(value);
                }
                _ => {}
            }
        }
        ts.push(t);
    }
    ts
}

fn history_dims() -> Vec<(&'static str, Distribution)> {
    vec![
        ("a", Distribution::float(-1.0, 1.0, false, None).unwrap()),
        ("b", Distribution::int(1, 64, true, 1).unwrap()),
        ("c", Distribution::categorical(vec![json!(0), json!(1), json!(2)]).unwrap()),
    ]
}

/// What a pair of groups observes (their cache ids aside).
#[allow(clippy::type_complexity)]
fn observed((below, above): (Group, Group)) -> [(Vec<Vec<f64>>, Vec<Vec<u32>>); 2] {
    [(below.mus, below.orders), (above.mus, above.orders)]
}

/// The groups by the plain definition: `split_trials`, then the trials having every parameter.
fn reference_groups(view: &StudyView, current: &FrozenTrial, liar: bool) -> (Group, Group) {
    let dims = history_dims();
    let refs: Vec<(&str, &Distribution)> = dims.iter().map(|(n, d)| (*n, d)).collect();
    let (below, above) = split_trials(view, current, liar);
    let group = |ts: &[&FrozenTrial]| {
        let obs = observations(ts, &refs);
        let mus: Vec<Vec<f64>> = refs.iter().zip(&obs).map(|((_, d), col)| parzen::transform(d, col)).collect();
        let orders = refs
            .iter()
            .zip(&mus)
            .map(|((_, d), mu)| if parzen::is_numeric(d) { parzen::sorted_order(mu) } else { Vec::new() })
            .collect();
        Group { mus, orders, ids: Vec::new() }
    };
    (group(&below), group(&above))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn history_matches_a_fresh_split(
        finals in proptest::collection::vec(
            (0u8..4, -3.0f64..3.0, (-1.0f64..1.0, 1u32..65, 0u32..3).prop_map(|(a, b, c)| [a, b as f64, c as f64]), 0u8..6),
            0..70,
        ),
        liar in any::<bool>(),
        maximize in any::<bool>(),
    ) {
        let direction = if maximize { Direction::Maximize } else { Direction::Minimize };
        let dims = history_dims();
        let refs: Vec<(&str, &Distribution)> = dims.iter().map(|(n, d)| (*n, d)).collect();
        let mut incremental = History::new(&refs, direction);
        for at in 0..finals.len() {
            let ts = evolving_study(&finals, at);
            let view = StudyView { direction, trials: &crate::sampler::shared(&ts) };
            let current = &ts[at];
            incremental.update(&crate::sampler::shared(&ts));
            let mut fresh = History::new(&refs, direction);
            fresh.update(&crate::sampler::shared(&ts));
            let want = reference_groups(&view, current, liar);
            prop_assert_eq!(observed(fresh.groups(&crate::sampler::shared(&ts), current, liar)), observed(want.clone()));
            prop_assert_eq!(observed(incremental.groups(&crate::sampler::shared(&ts), current, liar)), observed(want));
        }
    }
}

/// Runs a sequential study of `n` random COMPLETE trials and checks, at every ask, that the bad
/// model extended from the previous ask is the one built afresh.
fn check_extension(n: usize, params: ParzenParams, seed: u64) {
    let dims = history_dims();
    let refs: Vec<(&str, &Distribution)> = dims.iter().map(|(n, d)| (*n, d)).collect();
    let space: Vec<&Distribution> = dims.iter().map(|(_, d)| d).collect();
    let random = RandomSampler::new(seed);
    let mut ts: Vec<FrozenTrial> = Vec::new();
    let mut history = History::new(&refs, Direction::Minimize);
    let mut model: Option<(ParzenEstimator, Vec<u32>)> = None;
    let mut cache = ConstantCache::default();
    let mut extended = 0;
    for number in 0..n as i64 {
        ts.push(FrozenTrial::new(number, number, TrialState::Running));
        history.update(&crate::sampler::shared(&ts));
        let split = history.split(&crate::sampler::shared(&ts), &ts[number as usize], true);
        let weights = default_weights(split.above.len());
        let above = history.above_group(&split);
        let fresh = ParzenEstimator::from_transformed(
            &space,
            above.mus,
            above.orders,
            &weights,
            &params,
            Some((&mut ConstantCache::default(), &above.ids[..])),
        );
        let next = match model.take() {
            Some((mut g, rows)) if split.above.starts_with(&rows) => {
                let new = &split.above[rows.len()..];
                if g.extend(&history.values(new), new, &weights, &params, &mut cache) {
                    extended += 1;
                    assert_eq!(g, fresh, "ask {number}");
                    g
                } else {
                    fresh.clone()
                }
            }
            _ => fresh.clone(),
        };
        model = Some((next, split.above));
        let t = ts.last_mut().unwrap();
        let view = StudyView { direction: Direction::Minimize, trials: &[] };
        for (name, d) in &dims {
            let x = random.sample_independent(&view, t, name, d);
            t.params.insert(name.to_string(), x);
            t.distributions.insert(name.to_string(), d.clone());
        }
        t.value = Some(t.params["a"].powi(2) + t.params["b"].ln());
        t.state = TrialState::Complete;
    }
    assert!(extended > n / 3, "only {extended} extensions in {n} asks");
}

#[test]
fn extended_bad_model_equals_a_fresh_one() {
    check_extension(260, OPTUNA_DEFAULTS, 1);
    check_extension(120, ParzenParams { consider_magic_clip: false, consider_endpoints: true, ..OPTUNA_DEFAULTS }, 2);
}

#[test]
fn history_resets_for_another_study() {
    let dims = history_dims();
    let refs: Vec<(&str, &Distribution)> = dims.iter().map(|(n, d)| (*n, d)).collect();
    let finals: Vec<(u8, f64, [f64; 3], u8)> = (0..30).map(|i| (0, i as f64, [0.5, 3.0, 1.0], 0)).collect();
    let mut h = History::new(&refs, Direction::Minimize);
    let ts = evolving_study(&finals, 29);
    h.update(&crate::sampler::shared(&ts));
    // Same length, other trials (ids), other values.
    let finals: Vec<(u8, f64, [f64; 3], u8)> = (0..30).map(|i| (0, -i as f64, [-0.5, 9.0, 2.0], 0)).collect();
    let mut other = evolving_study(&finals, 29);
    for t in other.iter_mut() {
        t.trial_id += 1000;
    }
    h.update(&crate::sampler::shared(&other));
    let view = StudyView { direction: Direction::Minimize, trials: &crate::sampler::shared(&other) };
    assert_eq!(
        observed(h.groups(&crate::sampler::shared(&other), &other[29], true)),
        observed(reference_groups(&view, &other[29], true))
    );
}

// (d) determinism.

fn quadratic_space() -> Vec<(&'static str, Distribution)> {
    vec![
        ("x", Distribution::float(-10.0, 10.0, false, None).unwrap()),
        ("y", Distribution::float(-10.0, 10.0, false, None).unwrap()),
    ]
}

fn quadratic(p: &BTreeMap<String, f64>) -> f64 {
    (p["x"] - 1.0).powi(2) + (p["y"] + 2.0).powi(2)
}

#[test]
fn same_seed_and_history_give_the_same_suggestions() {
    let space = quadratic_space();
    let a = play(&TpeSampler::new(TpeConfig::default(), 11), Direction::Minimize, &space, 30, quadratic);
    let b = play(&TpeSampler::new(TpeConfig::default(), 11), Direction::Minimize, &space, 30, quadratic);
    let c = play(&TpeSampler::new(TpeConfig::default(), 12), Direction::Minimize, &space, 30, quadratic);
    assert_eq!(a, b);
    assert_ne!(a[20].params, c[20].params);

    // No hidden state: asking for trial 30 twice, or after another trial's ask, gives the same.
    let s = TpeSampler::new(TpeConfig::default(), 11);
    let mut ts = a.clone();
    ts.push(FrozenTrial::new(30, 30, TrialState::Running));
    let view = StudyView { direction: Direction::Minimize, trials: &crate::sampler::shared(&ts) };
    let sp = s.infer_relative_search_space(&view, &ts[30]);
    let first = s.sample_relative(&view, &ts[30], &sp);
    let _ = s.sample_relative(&view, &ts[5], &sp);
    assert_eq!(first, s.sample_relative(&view, &ts[30], &sp));
    assert_eq!(first.len(), 2);
}

// (e) random before startup.

#[test]
fn random_until_enough_trials_finished() {
    let x = Distribution::float(0.0, 1.0, false, None).unwrap();
    let mut ts: Vec<FrozenTrial> =
        (0..9).map(|i| trial(i, TrialState::Complete, Some(i as f64), &[("x", i as f64 / 9.0, &x)])).collect();
    ts.push(trial(9, TrialState::Fail, None, &[("x", 0.5, &x)]));
    ts.push(trial(10, TrialState::Running, None, &[]));
    let cur = ts[10].clone();
    let tpe = TpeSampler::new(TpeConfig::default(), 5);
    let random = RandomSampler::new(5);
    let view = StudyView { direction: Direction::Minimize, trials: &crate::sampler::shared(&ts) };
    let space = tpe.infer_relative_search_space(&view, &cur);
    assert_eq!(space.len(), 1);
    assert!(tpe.sample_relative(&view, &cur, &space).is_empty());
    assert_eq!(tpe.sample_independent(&view, &cur, "x", &x), random.sample_independent(&view, &cur, "x", &x));
    // A tenth finished trial (PRUNED counts) switches TPE on.
    ts[9].state = TrialState::Pruned;
    let view = StudyView { direction: Direction::Minimize, trials: &crate::sampler::shared(&ts) };
    assert_eq!(tpe.sample_relative(&view, &cur, &space).len(), 1);
}

// Search space.

#[test]
fn intersection_keeps_params_shared_with_equal_distributions() {
    let a = Distribution::float(0.0, 1.0, false, None).unwrap();
    let a2 = Distribution::float(0.0, 2.0, false, None).unwrap();
    let b = Distribution::int(1, 8, false, 1).unwrap();
    let c = Distribution::categorical(vec![json!("x"), json!("y")]).unwrap();
    let single = Distribution::int(3, 3, false, 1).unwrap();
    let ts = vec![
        trial(
            0,
            TrialState::Complete,
            Some(1.0),
            &[("a", 0.5, &a), ("b", 2.0, &b), ("c", 0.0, &c), ("s", 3.0, &single)],
        ),
        trial(1, TrialState::Pruned, Some(1.0), &[("a", 0.5, &a), ("b", 3.0, &b), ("c", 1.0, &c), ("s", 3.0, &single)]),
        trial(2, TrialState::Fail, None, &[("c", 1.0, &c)]),
        trial(3, TrialState::Running, None, &[("b", 1.0, &b)]),
        trial(
            4,
            TrialState::Complete,
            Some(2.0),
            &[("a", 1.5, &a2), ("b", 4.0, &b), ("c", 1.0, &c), ("s", 3.0, &single)],
        ),
    ];
    let space = intersection_search_space(&crate::sampler::shared(&ts));
    assert_eq!(space.keys().collect::<Vec<_>>(), vec!["b", "c", "s"]);
    let view = StudyView { direction: Direction::Minimize, trials: &crate::sampler::shared(&ts) };
    let tpe = TpeSampler::new(TpeConfig::default(), 0);
    // Single-valued distributions are left to the trial.
    assert_eq!(tpe.infer_relative_search_space(&view, &ts[3]).keys().collect::<Vec<_>>(), vec!["b", "c"]);
    let uni = TpeSampler::new(TpeConfig { multivariate: false, ..TpeConfig::default() }, 0);
    assert!(uni.infer_relative_search_space(&view, &ts[3]).is_empty());
}

// (g) search quality.

#[test]
fn tpe_beats_random_on_a_quadratic() {
    let space = quadratic_space();
    let best = |s: &dyn Sampler| -> f64 {
        play(s, Direction::Minimize, &space, 60, quadratic)
            .iter()
            .map(|t| t.value.unwrap())
            .fold(f64::INFINITY, f64::min)
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let seeds = 0..7u64;
    let tpe = median(seeds.clone().map(|s| best(&TpeSampler::new(TpeConfig::default(), s))).collect());
    let rnd = median(seeds.map(|s| best(&RandomSampler::new(s))).collect());
    assert!(tpe < rnd / 3.0, "TPE median best {tpe} vs random {rnd}");
}

#[test]
fn univariate_tpe_and_maximisation_also_improve_on_random() {
    let space = quadratic_space();
    let neg = |p: &BTreeMap<String, f64>| -quadratic(p);
    let cfg = TpeConfig { multivariate: false, ..TpeConfig::default() };
    let mut tpe = Vec::new();
    let mut rnd = Vec::new();
    for s in 0..5 {
        let best = |ts: Vec<FrozenTrial>| ts.iter().map(|t| t.value.unwrap()).fold(f64::NEG_INFINITY, f64::max);
        tpe.push(best(play(&TpeSampler::new(cfg.clone(), s), Direction::Maximize, &space, 50, neg)));
        rnd.push(best(play(&RandomSampler::new(s), Direction::Maximize, &space, 50, neg)));
    }
    tpe.sort_by(f64::total_cmp);
    rnd.sort_by(f64::total_cmp);
    assert!(tpe[2] > rnd[2], "TPE median best {} vs random {}", tpe[2], rnd[2]);
}

// (h) suggestions always lie in their distribution.

fn any_distribution() -> impl Strategy<Value = Distribution> {
    prop_oneof![
        (-100.0f64..100.0, 0.0f64..50.0).prop_map(|(l, s)| Distribution::float(l, l + s, false, None).unwrap()),
        (1e-6f64..10.0, 1.0f64..1e4).prop_map(|(l, f)| Distribution::float(l, l * f, true, None).unwrap()),
        (-10.0f64..10.0, 0.0f64..10.0, 0.01f64..3.0).prop_map(|(l, s, st)| Distribution::float(
            l,
            l + s,
            false,
            Some(st)
        )
        .unwrap()),
        (-50i64..50, 0i64..100, 1i64..7).prop_map(|(l, s, st)| Distribution::int(l, l + s, false, st).unwrap()),
        (1i64..50, 0i64..5000).prop_map(|(l, s)| Distribution::int(l, l + s, true, 1).unwrap()),
        (1usize..6).prop_map(|n| Distribution::categorical((0..n).map(|i| json!(i)).collect()).unwrap()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn suggestions_lie_in_their_distribution(
        dists in proptest::collection::vec(any_distribution(), 1..5),
        n in 0usize..40,
        seed in 0u64..1000,
        maximize in any::<bool>(),
    ) {
        let names = ["a", "b", "c", "d", "e"];
        let space: Vec<(&str, Distribution)> = names.iter().copied().zip(dists).collect();
        let direction = if maximize { Direction::Maximize } else { Direction::Minimize };
        // A history from random search, with some trials pruned, failed or still running.
        let mut ts = play(&RandomSampler::new(seed), direction, &space, n, |p| p.values().map(|v| v.sin()).sum());
        for t in ts.iter_mut() {
            match t.number % 7 {
                3 => { t.state = TrialState::Pruned; t.intermediate_values.insert(t.number % 3, t.value.unwrap()); }
                5 => t.state = TrialState::Running,
                6 => t.state = TrialState::Fail,
                _ => {}
            }
        }
        ts.push(FrozenTrial::new(n as i64, n as i64, TrialState::Running));
        let cur = ts[n].clone();
        let view = StudyView { direction, trials: &crate::sampler::shared(&ts) };
        for tpe in [
            TpeSampler::new(TpeConfig { n_startup_trials: 3, ..TpeConfig::default() }, seed),
            TpeSampler::new(TpeConfig { n_startup_trials: 3, multivariate: false, consider_endpoints: true, ..TpeConfig::default() }, seed),
        ] {
            let rel_space = tpe.infer_relative_search_space(&view, &cur);
            for (name, x) in tpe.sample_relative(&view, &cur, &rel_space) {
                prop_assert!(rel_space[&name].contains(x), "{} = {} outside {:?}", name, x, rel_space[&name]);
            }
            for (name, d) in &space {
                let x = tpe.sample_independent(&view, &cur, name, d);
                prop_assert!(d.contains(x), "{} = {} outside {:?}", name, x, d);
            }
        }
    }
}
