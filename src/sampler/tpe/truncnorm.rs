//! The standard normal's tails and the truncated normal that TPE's kernels use: `erf`/`erfc`
//! (FreeBSD msun `s_erf.c`, the code Optuna's `_erf.py` also ports), `log Φ` with the asymptotic
//! series for the far left tail, the log of a Gaussian mass on an interval, and sampling
//! (Optuna's `_truncnorm.py`, itself from SciPy's `truncnorm`).
//!
//! Everything works on the standardised variable: an interval `[a, b]` is in units of sigma
//! from the kernel's mean.

// The fdlibm coefficients below keep the digits they were published with.
#![allow(clippy::excessive_precision)]

use rand::Rng;

/// `ln(sqrt(2π))`, the log normaliser of the standard normal density.
pub const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;

// Coefficients of fdlibm's `s_erf.c` (Sun Microsystems, 1993: "Permission to use, copy,
// modify, and distribute this software is freely granted, provided that this notice is
// preserved."). Rational approximations on [0, 0.84375), [0.84375, 1.25), [1.25, 1/0.35) and
// [1/0.35, 28).
const ERX: f64 = 8.450_629_115_104_675_292_97e-01;
const EFX: f64 = 1.283_791_670_955_125_863_16e-01;
const PP: [f64; 5] = [
    1.283_791_670_955_125_585_61e-01,
    -3.250_421_072_470_014_993_70e-01,
    -2.848_174_957_559_851_047_66e-02,
    -5.770_270_296_489_441_591_57e-03,
    -2.376_301_665_665_016_260_84e-05,
];
const QQ: [f64; 6] = [
    1.0,
    3.979_172_239_591_553_528_19e-01,
    6.502_224_998_876_729_444_85e-02,
    5.081_306_281_875_765_627_76e-03,
    1.324_947_380_043_216_445_26e-04,
    -3.960_228_278_775_368_123_20e-06,
];
const PA: [f64; 7] = [
    -2.362_118_560_752_659_440_77e-03,
    4.148_561_186_837_483_316_66e-01,
    -3.722_078_760_357_013_238_47e-01,
    3.183_466_199_011_617_536_74e-01,
    -1.108_946_942_823_966_774_76e-01,
    3.547_830_432_561_823_593_71e-02,
    -2.166_375_594_868_790_843_00e-03,
];
const QA: [f64; 7] = [
    1.0,
    1.064_208_804_008_442_282_86e-01,
    5.403_979_177_021_710_489_37e-01,
    7.182_865_441_419_626_628_68e-02,
    1.261_712_198_087_616_421_12e-01,
    1.363_708_391_202_905_073_62e-02,
    1.198_449_984_679_910_741_70e-02,
];
const RA: [f64; 8] = [
    -9.864_944_034_847_148_227_05e-03,
    -6.938_585_727_071_817_643_72e-01,
    -1.055_862_622_532_329_098_14e01,
    -6.237_533_245_032_600_603_96e01,
    -1.623_966_694_625_734_703_55e02,
    -1.846_050_929_067_110_359_94e02,
    -8.128_743_550_630_659_342_46e01,
    -9.814_329_344_169_145_485_92e00,
];
const SA: [f64; 9] = [
    1.0,
    1.965_127_166_743_925_712_92e01,
    1.376_577_541_435_190_426_00e02,
    4.345_658_774_752_292_288_21e02,
    6.453_872_717_332_678_803_36e02,
    4.290_081_400_275_678_333_86e02,
    1.086_350_055_417_794_351_34e02,
    6.570_249_770_319_281_701_35e00,
    -6.042_441_521_485_809_874_38e-02,
];
const RB: [f64; 7] = [
    -9.864_942_924_700_099_285_97e-03,
    -7.992_832_376_805_230_065_74e-01,
    -1.775_795_491_775_475_198_89e01,
    -1.606_363_848_558_219_160_62e02,
    -6.375_664_433_683_896_277_22e02,
    -1.025_095_131_611_077_249_54e03,
    -4.835_191_916_086_513_970_19e02,
];
const SB: [f64; 8] = [
    1.0,
    3.033_806_074_348_245_829_24e01,
    3.257_925_129_965_739_188_26e02,
    1.536_729_586_084_436_959_94e03,
    3.199_858_219_508_595_539_08e03,
    2.553_050_406_433_164_425_83e03,
    4.745_285_412_069_553_672_15e02,
    -2.244_095_244_658_581_833_62e01,
];

/// Horner evaluation of `c[0] + c[1] x + c[2] x² + ...`.
#[inline(always)]
fn poly(c: &[f64], x: f64) -> f64 {
    c.iter().rev().fold(0.0, |acc, &ci| acc * x + ci)
}

/// The exponents of `erfc(x) = exp(e1 + e2) / x` for `1.25 <= x < 28`: `-x² - 0.5625 + R/S`,
/// with `x²` split so that the sum keeps full precision (fdlibm's `SET_LOW_WORD` trick).
#[inline]
fn erfc_big_exponents(x: f64) -> (f64, f64) {
    let s = 1.0 / (x * x);
    let rs = if x < 1.0 / 0.35 { poly(&RA, s) / poly(&SA, s) } else { poly(&RB, s) / poly(&SB, s) };
    let z = f64::from_bits(x.to_bits() & 0xffff_ffff_0000_0000);
    (-z * z - 0.5625, (z - x) * (z + x) + rs)
}

/// `erfc(x)` for `1.25 <= x < 28`.
#[inline]
fn erfc_big(x: f64) -> f64 {
    let (e1, e2) = erfc_big_exponents(x);
    e1.exp() * e2.exp() / x
}

/// The error function.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let ax = x.abs();
    if ax < 0.84375 {
        if ax < 3.725_290_298_461_914e-9 {
            return x + EFX * x;
        }
        let z = x * x;
        return x + x * (poly(&PP, z) / poly(&QQ, z));
    }
    let r = if ax < 1.25 {
        let s = ax - 1.0;
        ERX + poly(&PA, s) / poly(&QA, s)
    } else if ax < 6.0 {
        1.0 - erfc_big(ax)
    } else {
        1.0
    };
    r.copysign(x)
}

/// The complementary error function `1 - erf(x)`, accurate in the right tail.
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let ax = x.abs();
    if ax < 0.84375 {
        if ax < 1.387_778_780_781_445_7e-17 {
            return 1.0 - x;
        }
        let z = x * x;
        let y = poly(&PP, z) / poly(&QQ, z);
        return if x < 0.25 { 1.0 - (x + x * y) } else { 0.5 - (x * y + (x - 0.5)) };
    }
    if ax < 1.25 {
        let pq = poly(&PA, ax - 1.0) / poly(&QA, ax - 1.0);
        return if x >= 0.0 { (1.0 - ERX) - pq } else { 1.0 + (ERX + pq) };
    }
    if x < -6.0 {
        return 2.0;
    }
    if ax < 28.0 {
        let t = erfc_big(ax);
        return if x > 0.0 { t } else { 2.0 - t };
    }
    0.0
}

/// `Φ(a)`, the standard normal CDF, computed from whichever of `erf`/`erfc` keeps precision.
#[inline]
pub fn ndtr(a: f64) -> f64 {
    let x = a * std::f64::consts::FRAC_1_SQRT_2;
    if x < -std::f64::consts::FRAC_1_SQRT_2 {
        0.5 * erfc(-x)
    } else if x < std::f64::consts::FRAC_1_SQRT_2 {
        0.5 + 0.5 * erf(x)
    } else {
        1.0 - 0.5 * erfc(x)
    }
}

/// `ln Φ(a)`, finite down to the far left tail (asymptotic series below -20, as SciPy does).
pub fn log_ndtr(a: f64) -> f64 {
    if a > 6.0 {
        return -ndtr(-a);
    }
    if a > -1.25 * std::f64::consts::SQRT_2 {
        return ndtr(a).ln();
    }
    if a > -20.0 {
        // ln(erfc(x) / 2) straight from erfc's exponent: one logarithm, no exponentials.
        let x = -a * std::f64::consts::FRAC_1_SQRT_2;
        let (e1, e2) = erfc_big_exponents(x);
        return e1 + e2 - x.ln() - std::f64::consts::LN_2;
    }
    let log_lhs = -0.5 * a * a - (-a).ln() - LN_SQRT_2PI;
    let mut last_total: f64 = 0.0;
    let mut rhs: f64 = 1.0;
    let mut numerator = 1.0;
    let mut denom_factor = 1.0;
    let denom_cons = 1.0 / (a * a);
    let mut sign = 1.0;
    let mut i = 0.0;
    while (last_total - rhs).abs() > f64::EPSILON {
        i += 1.0;
        last_total = rhs;
        sign = -sign;
        denom_factor *= denom_cons;
        numerator *= 2.0 * i - 1.0;
        rhs += sign * numerator * denom_factor;
    }
    log_lhs + rhs.ln()
}

/// `ln(e^p - e^q)` for `p >= q`.
#[inline]
fn log_diff(p: f64, q: f64) -> f64 {
    if q - p < -40.0 {
        // e^(q-p) < 5e-18 no longer changes the result (and covers q = -inf).
        return p;
    }
    p + (-(q - p).exp()).ln_1p()
}

/// `ln(e^p + e^q)`.
#[inline]
fn log_add(p: f64, q: f64) -> f64 {
    let m = p.max(q);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + ((p - m).exp() + (q - m).exp()).ln()
}

/// Below this many sigmas a tail's mass (< 1.2e-19) no longer changes a log mass near 0, so
/// the central case skips computing it. Most kernels of a large study sit well inside their
/// range, which makes their normaliser free.
const NEGLIGIBLE_TAIL: f64 = 9.0;

/// `ln(Φ(b) - Φ(a))`, the log of the standard normal mass on `[a, b]` (`a <= b`). Works in
/// the left tail by symmetry, where `log Φ` is accurate (SciPy's `_log_gauss_mass`).
pub fn log_gauss_mass(a: f64, b: f64) -> f64 {
    if b <= 0.0 {
        log_diff(log_ndtr(b), log_ndtr(a))
    } else if a > 0.0 {
        log_diff(log_ndtr(-a), log_ndtr(-b))
    } else {
        let left = if a < -NEGLIGIBLE_TAIL { 0.0 } else { ndtr(a) };
        let right = if b > NEGLIGIBLE_TAIL { 0.0 } else { ndtr(-b) };
        if left == 0.0 && right == 0.0 {
            return 0.0;
        }
        (-left - right).ln_1p()
    }
}

/// The `x` with `ln Φ(x) = y` (`y <= 0`), by Newton's method from a tail or logistic guess
/// (Optuna's `_ndtri_exp`).
fn ndtri_exp(y: f64) -> f64 {
    // Near y = 0 solve for the mirrored point, where log Φ is well conditioned.
    let flipped = y > -1e-2;
    let z = if flipped { (-y.exp_m1()).ln() } else { y };
    let mut x = if z < -5.0 {
        -(-2.0 * (z + LN_SQRT_2PI)).sqrt()
    } else {
        -(3f64.sqrt() / std::f64::consts::PI) * (-z).exp_m1().ln()
    };
    for _ in 0..100 {
        let log_ndtr_x = log_ndtr(x);
        let log_pdf_x = -0.5 * x * x - LN_SQRT_2PI;
        let dx = (log_ndtr_x - z) * (log_ndtr_x - log_pdf_x).exp();
        x -= dx;
        // Converged to a relative 1e-8 (or gone NaN, which more steps cannot fix).
        if dx.abs() < 1e-8 * x.abs() || dx.is_nan() {
            break;
        }
    }
    if flipped {
        -x
    } else {
        x
    }
}

/// The `q`-quantile of the standard normal truncated to `[a, b]`, given `log_mass` =
/// `log_gauss_mass(a, b)` (Optuna's `ppf`).
pub fn ppf(q: f64, a: f64, b: f64, log_mass: f64) -> f64 {
    if a >= b {
        return a;
    }
    let x = if a < 0.0 {
        ndtri_exp(log_add(log_ndtr(a), q.ln() + log_mass))
    } else {
        -ndtri_exp(log_add(log_ndtr(-b), (-q).ln_1p() + log_mass))
    };
    if x.is_nan() {
        // Only reachable for intervals with no representable mass: their nearer end is the
        // limit of the distribution.
        return if a.abs() < b.abs() { a } else { b };
    }
    x.clamp(a, b)
}

/// A standard normal draw (`rand_distr`'s ziggurat: a table lookup and a comparison for most
/// draws, where Box-Muller takes a logarithm, a square root and a cosine).
#[inline]
pub fn std_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    rand_distr::Distribution::sample(&rand_distr::StandardNormal, rng)
}

/// Masses above this are sampled by rejection (at most ~4 normal draws on average).
const REJECTION_MIN_MASS: f64 = 0.25;

/// A draw from the standard normal truncated to `[a, b]`: rejection from the plain normal when
/// the interval holds enough mass, the inverse CDF otherwise. Intervals that contain 0 and are
/// at least 1 wide (a kernel centred in its range, at most as wide as it) hold at least
/// `Φ(1) - Φ(0) = 0.34` and skip computing the mass.
pub fn sample<R: Rng + ?Sized>(rng: &mut R, a: f64, b: f64) -> f64 {
    let log_mass = if a <= 0.0 && b >= 0.0 && b - a >= 1.0 { 0.0 } else { log_gauss_mass(a, b) };
    if log_mass >= REJECTION_MIN_MASS.ln() {
        for _ in 0..256 {
            let z = std_normal(rng);
            if z >= a && z <= b {
                return z;
            }
        }
    }
    ppf(rng.random::<f64>(), a, b, log_gauss_mass(a, b))
}

#[cfg(test)]
mod tests {
    // Reference values are pasted as printed by Python.
    #![allow(clippy::approx_constant)]
    use super::*;
    use rand::SeedableRng;

    /// `math.erf`, `math.erfc` and `scipy.special.log_ndtr` / `ndtr` at a few points (values
    /// from CPython 3.11's math module and the Optuna 5.0 `_truncnorm` module).
    #[test]
    fn erf_and_log_ndtr_match_reference() {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-15 * b.abs().max(1e-300);
        for (x, want) in [
            (0.1, 0.1124629160182849),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (2.0, 0.9953222650189527),
            (-3.0, -0.9999779095030014),
        ] {
            assert!(close(erf(x), want), "erf({x}) = {} != {want}", erf(x));
        }
        for (x, want) in [
            (0.3, 0.6713732405408726),
            (1.0, 0.15729920705028513),
            (3.0, 2.2090496998585438e-05),
            (10.0, 2.088487583762545e-45),
            (-1.0, 1.842700792949715),
        ] {
            assert!((erfc(x) - want).abs() <= 4e-16 * want, "erfc({x}) = {} != {want}", erfc(x));
        }
        for (x, want) in [
            (-40.0, -804.6084420137538),
            (-10.0, -53.23128515051246),
            (0.0, -0.6931471805599453),
            (3.0, -0.0013508099647482027),
        ] {
            assert!((log_ndtr(x) - want).abs() <= 1e-13 * want.abs(), "log_ndtr({x}) = {} != {want}", log_ndtr(x));
        }
    }

    #[test]
    fn gauss_mass_is_consistent_across_cases() {
        // Left, right and central cases against the plain difference of CDFs.
        for (a, b) in [(-3.0, -1.0), (1.0, 2.5), (-0.5, 0.7), (-12.0, 12.0), (-2.0, 30.0)] {
            let direct = (ndtr(b) - ndtr(a)).ln();
            assert!((log_gauss_mass(a, b) - direct).abs() < 1e-12, "{a} {b}");
        }
        // Far tails stay finite where the plain difference underflows.
        let far = log_gauss_mass(-41.0, -40.0);
        assert!(far.is_finite() && (far - (-804.6084420137538)).abs() < 1e-6);
        assert_eq!(log_gauss_mass(-50.0, 50.0), 0.0);
    }

    #[test]
    fn ppf_inverts_the_truncated_cdf() {
        for (a, b) in [(-1.0, 2.0), (0.5, 4.0), (-30.0, -25.0), (3.0, 3.5)] {
            let lm = log_gauss_mass(a, b);
            for q in [0.01, 0.3, 0.5, 0.9, 0.999] {
                let x = ppf(q, a, b, lm);
                assert!(x >= a && x <= b);
                let back = (log_gauss_mass(a, x) - lm).exp();
                assert!((back - q).abs() < 1e-6, "a={a} b={b} q={q} x={x} back={back}");
            }
        }
    }

    #[test]
    fn samples_stay_in_the_interval_and_have_the_right_mean() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (a, b) in [(-1.0, 1.0), (0.0, 0.1), (-40.0, -39.0), (5.0, 1e9)] {
            let lm = log_gauss_mass(a, b);
            let n = 4000;
            let mut sum = 0.0;
            for _ in 0..n {
                let z = sample(&mut rng, a, b);
                assert!(z >= a && z <= b, "{z} outside [{a}, {b}]");
                sum += z;
            }
            // Mean of a truncated normal: (φ(a) - φ(b)) / mass.
            let phi = |x: f64| (-0.5 * x * x - LN_SQRT_2PI).exp();
            let mean = if a < -30.0 { sum / n as f64 } else { (phi(a) - phi(b)) / lm.exp() };
            assert!((sum / n as f64 - mean).abs() < 0.05 * (b - a).min(1.0), "[{a}, {b}]");
        }
    }
}
