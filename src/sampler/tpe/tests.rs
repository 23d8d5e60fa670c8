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
fn parzen_matches_optuna_on_a_large_log_int_model() {
    // 300 observations of a log-scale int and a float: numpy.random.RandomState(3),
    // b = choice(arange(1, 1025), 300, replace=False) (distinct: Optuna breaks ties in kernel
    // order with numpy's unstable argsort, we by trial number), x = round(uniform(-1, 1), 6);
    // log_pdf at values 1 to 1024 (wide and narrow rounding intervals in log space, masses by the
    // CDF difference and by the midpoint series) as printed by Optuna 5.0.0's `_ParzenEstimator`.
    #[rustfmt::skip]
    let b = vec![
        1022.0, 640.0, 951.0, 457.0, 662.0, 786.0, 716.0, 451.0, 410.0, 870.0, 754.0, 466.0, 417.0, 776.0,
        822.0, 885.0, 1012.0, 289.0, 156.0, 679.0, 618.0, 1017.0, 747.0, 862.0, 845.0, 1010.0, 711.0, 58.0,
        753.0, 181.0, 832.0, 59.0, 412.0, 954.0, 657.0, 795.0, 579.0, 950.0, 793.0, 816.0, 480.0, 667.0,
        647.0, 631.0, 233.0, 469.0, 908.0, 453.0, 809.0, 540.0, 707.0, 294.0, 88.0, 959.0, 146.0, 337.0,
        690.0, 556.0, 438.0, 66.0, 212.0, 200.0, 703.0, 100.0, 195.0, 593.0, 193.0, 784.0, 669.0, 264.0,
        882.0, 725.0, 74.0, 551.0, 944.0, 129.0, 587.0, 807.0, 84.0, 440.0, 488.0, 1013.0, 82.0, 781.0,
        194.0, 877.0, 86.0, 265.0, 804.0, 302.0, 701.0, 446.0, 566.0, 912.0, 355.0, 785.0, 176.0, 1015.0,
        416.0, 29.0, 270.0, 28.0, 49.0, 534.0, 720.0, 788.0, 122.0, 31.0, 377.0, 752.0, 848.0, 239.0,
        247.0, 62.0, 348.0, 823.0, 190.0, 304.0, 601.0, 387.0, 52.0, 774.0, 325.0, 553.0, 580.0, 158.0,
        11.0, 592.0, 688.0, 256.0, 970.0, 757.0, 93.0, 305.0, 104.0, 322.0, 478.0, 1011.0, 148.0, 585.0,
        441.0, 839.0, 448.0, 407.0, 432.0, 236.0, 620.0, 928.0, 878.0, 702.0, 92.0, 636.0, 145.0, 629.0,
        217.0, 881.0, 909.0, 537.0, 522.0, 388.0, 1004.0, 467.0, 543.0, 965.0, 614.0, 87.0, 271.0, 624.0,
        102.0, 191.0, 40.0, 240.0, 17.0, 527.0, 430.0, 792.0, 833.0, 198.0, 178.0, 137.0, 81.0, 127.0,
        119.0, 392.0, 500.0, 861.0, 674.0, 447.0, 96.0, 450.0, 704.0, 714.0, 109.0, 775.0, 713.0, 458.0,
        718.0, 125.0, 334.0, 681.0, 42.0, 473.0, 6.0, 65.0, 248.0, 46.0, 267.0, 533.0, 4.0, 621.0,
        708.0, 699.0, 742.0, 597.0, 291.0, 196.0, 634.0, 525.0, 363.0, 641.0, 650.0, 836.0, 1009.0, 741.0,
        360.0, 244.0, 315.0, 652.0, 165.0, 805.0, 967.0, 571.0, 987.0, 79.0, 110.0, 202.0, 672.0, 112.0,
        144.0, 313.0, 207.0, 906.0, 351.0, 358.0, 894.0, 103.0, 794.0, 47.0, 5.0, 549.0, 914.0, 124.0,
        371.0, 907.0, 510.0, 228.0, 643.0, 391.0, 982.0, 529.0, 361.0, 767.0, 1019.0, 892.0, 215.0, 138.0,
        866.0, 382.0, 778.0, 135.0, 746.0, 724.0, 615.0, 147.0, 288.0, 523.0, 238.0, 530.0, 935.0, 820.0,
        402.0, 946.0, 340.0, 106.0, 164.0, 904.0, 359.0, 128.0, 722.0, 655.0, 507.0, 350.0, 996.0, 408.0,
        32.0, 819.0, 843.0, 329.0, 630.0, 113.0,
    ];
    #[rustfmt::skip]
    let x = vec![
        0.166353, -0.83284, -0.153857, -0.751294, -0.021529, 0.0844, -0.27334, -0.019409, 0.393374, -0.705887,
        -0.379957, -0.05494, 0.295358, 0.474522, -0.40199, -0.067664, -0.477992, -0.751841, -0.542171, 0.933303,
        0.638235, 0.25094, -0.456002, 0.571299, 0.936117, -0.716163, -0.822121, -0.673987, 0.792557, -0.476055,
        0.088062, 0.943682, 0.875586, 0.110493, 0.007306, -0.32153, -0.95546, -0.029225, -0.495641, -0.987672,
        -0.902504, 0.808986, -0.702881, -0.61172, 0.018352, 0.210157, -0.704729, -0.302824, 0.97021, 0.57744,
        -0.581848, 0.922741, -0.934617, -0.306796, 0.988692, 0.118082, 0.149203, 0.81541, 0.457303, 0.108819,
        0.750147, -0.869342, 0.511184, -0.053431, -0.716489, -0.005474, 0.693418, 0.431799, -0.125188, 0.467682,
        -0.508101, -0.771946, -0.885705, -0.587839, 0.899875, 0.492, 0.653051, 0.5391, -0.634013, 0.232695,
        0.482377, 0.170748, -0.320602, 0.039988, 0.6108, -0.366588, 0.138952, 0.22793, -0.653581, -0.532841,
        0.620438, 0.51381, -0.716626, 0.174194, -0.284709, -0.629245, 0.473713, 0.773139, -0.029658, -0.216697,
        -0.588583, 0.74599, -0.163167, -0.283964, -0.700315, 0.377609, 0.139114, -0.047838, 0.007133, 0.793725,
        -0.213366, 0.924686, 0.319643, -0.583568, 0.534877, -0.066898, -0.223858, -0.119454, -0.078089, 0.865901,
        -0.078839, -0.480498, 0.77202, 0.569867, 0.188391, -0.076717, 0.390401, 0.798513, -0.580562, 0.548015,
        0.221267, 0.110775, 0.721975, 0.993153, 0.220761, -0.951415, 0.286063, 0.221328, -0.692817, 0.604888,
        -0.220043, -0.898527, -0.531085, -0.618027, 0.679753, 0.199465, -0.181458, -0.387209, -0.329583, -0.811999,
        -0.947137, 0.52938, 0.478901, -0.180891, -0.977991, 0.425865, 0.85067, 0.823375, -0.767994, -0.344896,
        -0.474239, 0.35782, -0.003444, 0.288695, 0.821437, 0.08863, -0.583345, 0.409033, -0.224966, 0.419726,
        -0.636557, -0.088965, -0.600815, 0.100857, 0.908652, -0.673838, -0.370799, -0.483866, -0.161173, 0.118371,
        0.20874, 0.368674, -0.326428, 0.282738, -0.129481, -0.945616, 0.385217, 0.390766, -0.370128, 0.629223,
        -0.484685, 0.143633, -0.180674, 0.168271, 0.238758, -0.763555, -0.917675, 0.44805, -0.576289, -0.893972,
        0.716171, -0.616129, 0.738355, -0.586942, -0.849072, -0.955321, 0.660081, 0.475877, 0.807967, 0.373009,
        -0.524101, -0.82512, 0.57252, -0.696552, 0.776785, 0.133305, -0.411505, 0.508648, 0.551071, 0.766341,
        -0.736924, 0.241622, -0.165612, 0.433652, -0.084787, 0.76426, 0.851038, -0.916908, -0.682539, 0.238044,
        -0.478714, 0.251796, -0.124083, -0.15849, -0.95198, 0.961695, -0.975693, -0.451891, -0.639159, 0.038443,
        -0.999209, -0.569007, -0.121976, 0.895589, 0.347551, -0.76545, 0.643644, 0.500014, 0.199945, 0.400878,
        0.718103, 0.214341, -0.054108, -0.9333, 0.856969, -0.359821, -0.955618, -0.873638, -0.220071, 0.916616,
        -0.46203, -0.723342, 0.05111, -0.724417, 0.164631, -0.49595, 0.192314, -0.028141, 0.140321, 0.110096,
        0.875804, -0.545639, 0.37127, -0.281666, -0.648636, -0.343552, -0.69763, -0.57112, 0.075896, -0.664574,
        0.942013, 0.765751, -0.268996, -0.620843, -0.385549, 0.489997, -0.533791, 0.418071, -0.604282, 0.595425,
        -0.929625, 0.152857, -0.494659, -0.851188, 0.697333, -0.732929, 0.422364, -0.795254, 0.312382, 0.835473,
    ];
    let (bd, xd) = (Distribution::int(1, 1024, true, 1).unwrap(), Distribution::float(-1.0, 1.0, false, None).unwrap());
    let pe = ParzenEstimator::new(&[&bd, &xd], &[b, x], &default_weights(300), &OPTUNA_DEFAULTS);
    let points = vec![
        vec![1.0, 2.0, 3.0, 17.0, 100.0, 511.0, 700.0, 1000.0, 1024.0, 64.0, 5.0, 300.0],
        vec![0.0, -0.99, 0.5, 0.123, -0.3, 0.77, 0.05, -0.5, 1.0, 0.2, 0.9, -0.05],
    ];
    #[rustfmt::skip]
    let want = [
        -7.7404840477362145, -8.588636405754745, -8.898421179479074, -10.57777517695001,
        -7.444450857350338, -9.51067303834816, -9.186128338728476, -6.402319714032673,
        -14.208266286623592, -9.758777311753997, -9.462668709031297, -9.026600988097528,
    ];
    assert_close("log_pdf", &pe.log_pdf(&points), &want, 1e-12);
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
    let (mut extended, mut interior) = (0, 0);
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
        let next = match model.take().and_then(|(g, rows)| Some((g, insertions(&rows, &split.above)?))) {
            Some((mut g, at)) => {
                let new: Vec<u32> = at.iter().map(|&k| split.above[k]).collect();
                if g.insert(&history.values(&new), &new, &at, &weights, &params, &mut cache) {
                    extended += 1;
                    interior += usize::from(at.first().is_some_and(|&k| k + 1 < split.above.len()));
                    assert_eq!(g, fresh, "ask {number}");
                    g
                } else {
                    fresh.clone()
                }
            }
            None => fresh.clone(),
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
    // Trials pushed out of the good group go back among the bad ones, not at the end.
    eprintln!("{extended} extensions, {interior} with insertions before the end");
    assert!(interior > 0, "no insertion before the end in {n} asks");
}

#[test]
fn insertions_find_what_was_added() {
    assert_eq!(insertions(&[3, 5, 9], &[3, 4, 5, 9, 11]), Some(vec![1, 4]));
    assert_eq!(insertions(&[3, 5], &[3, 5]), Some(vec![]));
    assert_eq!(insertions(&[], &[7, 8]), Some(vec![0, 1]));
    // Something removed or reordered: not an insertion.
    assert_eq!(insertions(&[3, 5, 9], &[3, 9, 11]), None);
    assert_eq!(insertions(&[3, 5], &[5, 3]), None);
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
