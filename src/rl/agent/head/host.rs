//! The C51 and QR-DQN targets, losses and gradients of [`super::Head`] computed on host slices,
//! for CPU training: the same equations (see the parent module), without libtorch's
//! per-operation overhead, which at DQN sizes costs more than the arithmetic (FACTS.md §6). The
//! C51 projection is Algorithm 1's `l = floor(b_j)`, `u = ceil(b_j)` split, `O(K)` per row; the
//! quantile Huber loss is a branch-free loop over the `N x N` pairs of each row. Munchausen's
//! mixture and IQN's sampled fractions stay on the tensor path.
//!
//! The loops run on 8-lane vectors (`wide::f32x8`): its `exp` is a polynomial that vectorises
//! where libm's `expf` is one scalar call per element, and explicit lanes let the sums
//! vectorise, which strict float ordering forbids the compiler to do by itself. A C51 update
//! takes some 10,000 exponentials and a 32-quantile QR-DQN update 65,000 Huber terms, so this
//! is most of the head's cost.
//!
//! `every_head_matches_the_pytorch_reference` checks both paths against the PyTorch reference.

use wide::f32x8;

use super::HeadSpec;

const LANES: usize = 8;

/// What [`std::slice::ChunksExact`] leaves of `x`, as one vector and a mask of the lanes that
/// hold it: the last `LANES` elements (overlapping the whole lanes before them, so no copy), or
/// for a slice shorter than a lane, the elements padded with zeros.
#[inline]
fn tail(x: &[f32]) -> Option<(f32x8, f32x8)> {
    let (n, r) = (x.len(), x.len() % LANES);
    if r == 0 {
        return None;
    }
    let index = f32x8::from([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    Some(if n >= LANES {
        (load(&x[n - LANES..]), index.simd_ge(f32x8::splat((LANES - r) as f32)))
    } else {
        let mut a = [0.0; LANES];
        a[..n].copy_from_slice(x);
        (f32x8::from(a), index.simd_lt(f32x8::splat(n as f32)))
    })
}

/// `exp(x)` for `x <= 0`, as softmax needs it (`x` a logit less the largest): Cephes' `expf`
/// (Moshier), `x = n ln 2 + r` with `|r| <= ln 2 / 2`, `e^r` by its degree-7 minimax polynomial,
/// `2^n` written into the exponent bits; relative error below `2 f32::EPSILON`. It skips what wide's general
/// `exp` does for large and special inputs (30 instructions an element without AVX, this one 5):
/// inputs below -87 give `e^-87` (so that `2^n` stays a normal number, as flushed denormals
/// need), and NaN stays NaN.
#[inline]
fn exp_nonpositive(x: f32x8) -> f32x8 {
    // 1.5 * 2^23: adding it rounds to an integer, left in the low bits of the mantissa.
    const ROUND: f32 = 12_582_912.0;
    let c = x.max(f32x8::splat(-87.0));
    let t = c * f32x8::splat(std::f32::consts::LOG2_E) + f32x8::splat(ROUND);
    let n = t - f32x8::splat(ROUND);
    let r = c - n * f32x8::splat(0.693_359_4) - n * f32x8::splat(-2.121_944_4e-4);
    let mut p = f32x8::splat(1.987_569_1e-4);
    for coef in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = p * r + f32x8::splat(coef);
    }
    let e = p * (r * r) + r + f32x8::ONE;
    // 2^n: the integer in `t`'s low bits, biased and shifted into the exponent (the bits of
    // ROUND itself shift out).
    let bits: wide::i32x8 = wide::bytemuck::cast(t);
    let scale: f32x8 = wide::bytemuck::cast((bits + wide::i32x8::splat(127)) << 23u32);
    x.is_nan().select(x, e * scale)
}

#[inline]
fn load(c: &[f32]) -> f32x8 {
    f32x8::from(<[f32; LANES]>::try_from(c).expect("a whole lane"))
}

/// `max_i x_i` (NaN-ignoring, as `f32::max`).
#[inline]
fn max(x: &[f32]) -> f32 {
    let low = f32x8::splat(f32::NEG_INFINITY);
    let mut m = x.chunks_exact(LANES).fold(low, |m, c| m.max(load(c)));
    if let Some((v, keep)) = tail(x) {
        m = m.max(keep.select(v, low));
    }
    m.to_array().into_iter().fold(f32::NEG_INFINITY, f32::max)
}

/// `out_i = exp(x_i - shift)`; returns `sum_i out_i`.
#[inline]
fn exp_shifted(x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    let shift = f32x8::splat(shift);
    let mut sum = f32x8::ZERO;
    for (c, o) in x.chunks_exact(LANES).zip(out.chunks_exact_mut(LANES)) {
        let e = exp_nonpositive(load(c) - shift);
        o.copy_from_slice(&e.to_array());
        sum += e;
    }
    if let Some((v, keep)) = tail(x) {
        let e = exp_nonpositive(v - shift);
        let (n, e_lanes) = (x.len(), e.to_array());
        if n >= LANES {
            // The overlapping lanes get the values they already have.
            out[n - LANES..n].copy_from_slice(&e_lanes);
        } else {
            out[..n].copy_from_slice(&e_lanes[..n]);
        }
        sum += e & keep;
    }
    sum.reduce_add()
}

/// `sum_i a_i b_i`.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sum = a.chunks_exact(LANES).zip(b.chunks_exact(LANES)).fold(f32x8::ZERO, |s, (x, y)| s + load(x) * load(y));
    if let (Some((x, keep)), Some((y, _))) = (tail(a), tail(b)) {
        sum += (x * y) & keep;
    }
    sum.reduce_add()
}

/// `sum_i x_i`.
#[inline]
fn sum(x: &[f32]) -> f32 {
    let mut sum = x.chunks_exact(LANES).fold(f32x8::ZERO, |s, c| s + load(c));
    if let Some((v, keep)) = tail(x) {
        sum += v & keep;
    }
    sum.reduce_add()
}

/// One batch as host slices: network outputs are `[B, |A| K]`, action-major.
pub(in crate::rl::agent) struct HostBatch<'a> {
    /// The bootstrap network's outputs at `s'`.
    pub next: &'a [f32],
    /// The outputs whose mean picks `a*` at `s'` (`next` itself, or the online network's for
    /// Double DQN).
    pub chooser: &'a [f32],
    /// The online network's outputs at `s`.
    pub out: &'a [f32],
    pub actions: &'a [i64],
    pub returns: &'a [f32],
    /// `gamma^n (1 - terminated)` per row.
    pub bootstrap: &'a [f32],
    /// Importance weights (prioritized replay).
    pub weights: Option<&'a [f32]>,
}

#[derive(Debug)]
enum Kind {
    C51 { z: Vec<f32>, v_min: f32, v_max: f32, dz: f32 },
    Qr { taus: Vec<f32>, kappa: f32 },
}

/// A distributional head's host computation and its scratch rows.
#[derive(Debug)]
pub(in crate::rl::agent) struct HostHead {
    kind: Kind,
    /// Outputs per action.
    k: usize,
    /// The bootstrap row `p(s', a*)` (C51) or `T theta` (QR), and C51's projection `m`.
    row: Vec<f32>,
    m: Vec<f32>,
    /// QR-DQN's sorted targets and their prefix sums.
    sorted: SortedTargets,
    /// The upper shares of C51's projection, `K + 1` long.
    upper: Vec<f32>,
    /// Per atom of the bootstrap row: `floor(b_j)` and the shares of its two neighbours (C51).
    place: Vec<i32>,
    lower_share: Vec<f32>,
    upper_share: Vec<f32>,
    /// `exp(x - max)` of every action's logits in the chooser row, and their sums (C51).
    exps: Vec<f32>,
    sums: Vec<f32>,
}

impl HostHead {
    /// The host path of `spec`'s head, `None` for the heads it does not cover.
    pub(in crate::rl::agent) fn new(spec: &HeadSpec) -> Option<Self> {
        let (kind, k) = match *spec {
            HeadSpec::C51 { atoms, v_min, v_max } => {
                let dz = (v_max - v_min) / (atoms - 1) as f64;
                let z = (0..atoms).map(|i| (v_min + i as f64 * dz) as f32).collect();
                (Kind::C51 { z, v_min: v_min as f32, v_max: v_max as f32, dz: dz as f32 }, atoms)
            }
            HeadSpec::Qr { quantiles, kappa } => {
                let n = quantiles as f64;
                let taus = (0..quantiles).map(|i| ((2 * i + 1) as f64 / (2.0 * n)) as f32).collect();
                (Kind::Qr { taus, kappa: kappa as f32 }, quantiles)
            }
            _ => return None,
        };
        Some(HostHead {
            kind,
            k,
            row: vec![0.0; k],
            m: vec![0.0; k],
            upper: vec![0.0; k + 1],
            sorted: SortedTargets::default(),
            place: vec![0; k],
            lower_share: vec![0.0; k],
            upper_share: vec![0.0; k],
            exps: Vec::new(),
            sums: Vec::new(),
        })
    }

    /// Each row's loss into `rows` (unweighted) and `dL/d out` into `grad` (`[B, |A| K]`, zero
    /// but for the actions taken, with the importance weights and the `1 / B` of the mean in).
    pub(in crate::rl::agent) fn loss(
        &mut self,
        b: &HostBatch<'_>,
        n_actions: usize,
        rows: &mut [f32],
        grad: &mut [f32],
    ) {
        let k = self.k;
        let width = n_actions * k;
        let batch = rows.len();
        grad.fill(0.0);
        self.exps.resize(width, 0.0);
        self.sums.resize(n_actions, 0.0);
        let same = std::ptr::eq(b.next, b.chooser);
        for r in 0..batch {
            let span = r * width..(r + 1) * width;
            let (next, chooser, out) = (&b.next[span.clone()], &b.chooser[span.clone()], &b.out[span.clone()]);
            let best = self.greedy(chooser, n_actions);
            let a = b.actions[r] as usize;
            let chosen = &out[a * k..(a + 1) * k];
            let g = &mut grad[span][a * k..(a + 1) * k];
            let (ret, disc) = (b.returns[r], b.bootstrap[r]);
            rows[r] = match &self.kind {
                // The vectors' min and max pass over NaN: a NaN return or discount would be clamped
                // to the support and vanish, so the row's loss is NaN there (training stops as
                // diverged, as on the tensor path).
                Kind::C51 { .. } if !(ret.is_finite() && disc.is_finite()) => f32::NAN,
                Kind::C51 { z, v_min, v_max, dz } => {
                    if same {
                        // The chooser's exponentials of a* are p(s', a*) unnormalised.
                        let s = self.sums[best];
                        for (p, &e) in self.row.iter_mut().zip(&self.exps[best * k..(best + 1) * k]) {
                            *p = e / s;
                        }
                    } else {
                        softmax(&next[best * k..(best + 1) * k], &mut self.row);
                    }
                    // Algorithm 1: atom j's mass goes to the neighbours l <= b_j <= u of its shifted
                    // place. Places and shares are computed a lane at a time, then scattered. The
                    // lower and upper shares go to two arrays (`m` and `upper`, one longer than the
                    // support, so that `l + 1` needs no branch): consecutive atoms land on
                    // neighbouring places, and one array would make each addition wait for the
                    // store of the one before.
                    let (lv, uv, pv) = (f32x8::splat(*v_min), f32x8::splat(*v_max), f32x8::splat(*dz));
                    let (rv, dv, top) = (f32x8::splat(ret), f32x8::splat(disc), f32x8::splat((k - 1) as f32));
                    let n = k - k % LANES;
                    let place = |z: f32x8, p: f32x8| {
                        let b = ((rv + dv * z).max(lv).min(uv) - lv) / pv;
                        let b = b.max(f32x8::ZERO).min(top);
                        // floor(b_j) for b_j >= 0 is its truncation; at l == u the fraction is 0
                        // and the whole mass stays at l.
                        let l = b.trunc_int();
                        let frac = b - f32x8::from_i32x8(l);
                        (l.to_array(), (p - p * frac).to_array(), (p * frac).to_array())
                    };
                    for j in (0..n).step_by(LANES) {
                        let (l, lo, up) = place(load(&z[j..j + LANES]), load(&self.row[j..j + LANES]));
                        self.place[j..j + LANES].copy_from_slice(&l);
                        self.lower_share[j..j + LANES].copy_from_slice(&lo);
                        self.upper_share[j..j + LANES].copy_from_slice(&up);
                    }
                    if n < k {
                        let (mut zt, mut pt) = ([0.0; LANES], [0.0; LANES]);
                        zt[..k - n].copy_from_slice(&z[n..]);
                        pt[..k - n].copy_from_slice(&self.row[n..]);
                        let (l, lo, up) = place(f32x8::from(zt), f32x8::from(pt));
                        self.place[n..].copy_from_slice(&l[..k - n]);
                        self.lower_share[n..].copy_from_slice(&lo[..k - n]);
                        self.upper_share[n..].copy_from_slice(&up[..k - n]);
                    }
                    self.m.fill(0.0);
                    self.upper.fill(0.0);
                    for ((&l, &lo), &up) in self.place.iter().zip(&self.lower_share).zip(&self.upper_share) {
                        // `l` lies in [0, K - 1]: the clamps above keep it there (NaN truncates to 0
                        // or the most negative integer, which min/max would have replaced).
                        let l = (l as usize).min(k - 1);
                        self.m[l] += lo;
                        self.upper[l + 1] += up;
                    }
                    for (mi, &ui) in self.m.iter_mut().zip(&self.upper) {
                        *mi += ui;
                    }
                    // -sum_i m_i log softmax_i, whose gradient is softmax - m.
                    let max = max(chosen);
                    let s = exp_shifted(chosen, max, g);
                    let lse = max + s.ln();
                    let inv = 1.0 / s;
                    for (gi, &mi) in g.iter_mut().zip(&self.m) {
                        *gi = *gi * inv - mi;
                    }
                    lse * sum(&self.m) - dot(&self.m, chosen)
                }
                Kind::Qr { taus, kappa } => {
                    for (t, &x) in self.row.iter_mut().zip(&next[best * k..(best + 1) * k]) {
                        *t = ret + disc * x;
                    }
                    if k >= SORTED_FROM {
                        self.sorted.prepare(&self.row);
                        self.sorted.loss(chosen, taus, *kappa, g)
                    } else {
                        quantile_huber_row(chosen, &self.row, taus, *kappa, g)
                    }
                }
            };
            let scale = b.weights.map_or(1.0, |w| w[r]) / batch as f32;
            g.iter_mut().for_each(|x| *x *= scale);
        }
    }

    /// `argmax_a Q(s, a)` of one row of outputs (C51: the mean of each action's softmax, whose
    /// exponentials and sums are kept in `exps` and `sums`).
    fn greedy(&mut self, row: &[f32], n_actions: usize) -> usize {
        let k = self.k;
        let (mut best, mut best_v) = (0, f32::NEG_INFINITY);
        for a in 0..n_actions {
            let x = &row[a * k..(a + 1) * k];
            let v = match &self.kind {
                Kind::C51 { z, .. } => {
                    let exps = &mut self.exps[a * k..(a + 1) * k];
                    let s = exp_shifted(x, max(x), exps);
                    self.sums[a] = s;
                    dot(exps, z) / s
                }
                Kind::Qr { .. } => sum(x) / k as f32,
            };
            // The first of equal maxima, as libtorch's argmax.
            if a == 0 || v > best_v {
                (best, best_v) = (a, v);
            }
        }
        best
    }
}

fn softmax(x: &[f32], out: &mut [f32]) {
    let s = exp_shifted(x, max(x), out);
    out.iter_mut().for_each(|o| *o /= s);
}

/// Quantiles from which [`SortedTargets`] replaces the pairwise loop. Measured in one loaded
/// session of `cargo bench --bench dqn`: at 32 quantiles the sort and binary searches cost more
/// than the pairs save (update 269 us sorted, 213 us pairwise), at 200 they save (1.34 ms
/// against 1.89 ms).
const SORTED_FROM: usize = 100;

/// The quantile Huber loss of a row in `O(N log N)` rather than over its `N x N` pairs: with
/// the targets sorted and their prefix sums of `t` and `t^2` (in f64), the pairs of each
/// `theta_i` fall in four runs, `t < theta - kappa`, `theta - kappa <= t < theta`,
/// `theta <= t <= theta + kappa` and `t > theta + kappa`, found by binary search, over which the
/// loss (`kappa (|u| - kappa / 2)` outside, `u^2 / 2` inside) and its derivative (`-kappa`,
/// `u`, `u`, `kappa`) are sums of `1`, `u` and `u^2`: closed forms in the prefix sums. Ties at a
/// boundary give the same value on either side (the Huber loss is continuous there, and `u = 0`
/// adds nothing).
#[derive(Debug, Default)]
struct SortedTargets {
    t: Vec<f32>,
    /// `p1[j] = sum_{i < j} t_i`, `p2[j] = sum_{i < j} t_i^2`.
    p1: Vec<f64>,
    p2: Vec<f64>,
}

impl SortedTargets {
    fn prepare(&mut self, t: &[f32]) {
        self.t.clear();
        self.t.extend_from_slice(t);
        self.t.sort_unstable_by(f32::total_cmp);
        self.p1.clear();
        self.p2.clear();
        let (mut a, mut b) = (0.0f64, 0.0f64);
        self.p1.push(0.0);
        self.p2.push(0.0);
        for &x in &self.t {
            let x = x as f64;
            a += x;
            b += x * x;
            self.p1.push(a);
            self.p2.push(b);
        }
    }

    /// `(count, sum u, sum u^2)` over sorted targets `lo..hi`, `u = t - theta`.
    fn run(&self, lo: usize, hi: usize, theta: f64) -> (f64, f64, f64) {
        let n = (hi - lo) as f64;
        let s1 = self.p1[hi] - self.p1[lo];
        let s2 = self.p2[hi] - self.p2[lo];
        (n, s1 - n * theta, s2 - 2.0 * theta * s1 + n * theta * theta)
    }

    /// As [`quantile_huber_row`], on the targets last prepared.
    fn loss(&self, theta: &[f32], taus: &[f32], kappa: f32, grad: &mut [f32]) -> f32 {
        let m = self.t.len();
        let inv_m = 1.0 / m as f64;
        let below = |x: f64| self.t.partition_point(|&t| (t as f64) < x);
        let kappa = kappa as f64;
        let nan = self.t.last().is_some_and(|t| t.is_nan());
        let mut loss = 0.0f64;
        for ((g, &th), &tau) in grad.iter_mut().zip(theta).zip(taus) {
            let (th, tau) = (th as f64, tau as f64);
            let (l, d) = if kappa > 0.0 {
                let a = below(th - kappa);
                let b = below(th);
                let c = self.t.partition_point(|&t| (t as f64) <= th + kappa);
                let (na, ua, _) = self.run(0, a, th);
                let (_, ub, qb) = self.run(a, b, th);
                let (_, uc, qc) = self.run(b, c, th);
                let (nd, ud, _) = self.run(c, m, th);
                let half = 0.5 * kappa * kappa;
                let l = (1.0 - tau) * (-kappa * ua - na * half + 0.5 * qb) + tau * (0.5 * qc + kappa * ud - nd * half);
                let d = (1.0 - tau) * (-kappa * na + ub) + tau * (uc + kappa * nd);
                (l / kappa, d / kappa)
            } else {
                let b = below(th);
                let (nb, ub, _) = self.run(0, b, th);
                let (_, u_all, _) = self.run(0, m, th);
                (tau * u_all - ub, tau * m as f64 - nb)
            };
            let (l, d) = if nan || th.is_nan() { (f64::NAN, f64::NAN) } else { (l, d) };
            loss += l * inv_m;
            *g = (-d * inv_m) as f32;
        }
        loss as f32
    }
}

/// `sum_i mean_j rho^kappa_{tau_i}(t_j - theta_i)` for one row, its gradient with respect to
/// `theta` written into `grad`. With `c = clamp(u, -kappa, kappa)`, the Huber loss is
/// `c (u - c / 2)` and its derivative `c`, so the loop has no branch.
fn quantile_huber_row(theta: &[f32], t: &[f32], taus: &[f32], kappa: f32, grad: &mut [f32]) -> f32 {
    let inv_m = 1.0 / t.len() as f32;
    let chunks = t.chunks_exact(LANES);
    let rest = chunks.remainder();
    let (zero, one) = (f32x8::ZERO, f32x8::ONE);
    let mut loss = 0.0;
    for ((g, &th), &tau) in grad.iter_mut().zip(theta).zip(taus) {
        let (thv, tauv) = (f32x8::splat(th), f32x8::splat(tau));
        let (mut l, mut d) = (zero, zero);
        let (mut l_rest, mut d_rest) = (0.0f32, 0.0f32);
        if kappa > 0.0 {
            let (lo, hi, half) = (f32x8::splat(-kappa), f32x8::splat(kappa), f32x8::splat(0.5));
            for c in chunks.clone() {
                let u = load(c) - thv;
                let w = (tauv - u.simd_lt(zero).select(one, zero)).abs();
                let c = u.max(lo).min(hi);
                let wc = w * c;
                l += wc * (u - half * c);
                d += wc;
            }
            for &tj in rest {
                let u = tj - th;
                let w = (tau - if u < 0.0 { 1.0 } else { 0.0 }).abs();
                let c = u.clamp(-kappa, kappa);
                l_rest += w * c * (u - 0.5 * c);
                d_rest += w * c;
            }
            l_rest = (l.reduce_add() + l_rest) / kappa;
            d_rest = (d.reduce_add() + d_rest) / kappa;
        } else {
            for c in chunks.clone() {
                let u = load(c) - thv;
                let slope = tauv - u.simd_lt(zero).select(one, zero);
                l += u * slope;
                d += slope;
            }
            for &tj in rest {
                let u = tj - th;
                let slope = tau - if u < 0.0 { 1.0 } else { 0.0 };
                l_rest += u * slope;
                d_rest += slope;
            }
            l_rest += l.reduce_add();
            d_rest += d.reduce_add();
        }
        loss += l_rest * inv_m;
        *g = -d_rest * inv_m;
    }
    loss
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_epsilon_and_keeps_nan() {
        let mut worst = 0.0f64;
        for i in 0..=1_000_000 {
            let x = -87.0 * i as f32 / 1_000_000.0;
            let got = exp_nonpositive(f32x8::splat(x)).to_array()[0] as f64;
            let want = (x as f64).exp();
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.0 * f32::EPSILON as f64, "relative error {worst}");
        let below = exp_nonpositive(f32x8::splat(-1000.0)).to_array()[0];
        assert!(below > 0.0 && below <= (-87.0f32).exp() * 1.000001, "{below}");
        assert!(exp_nonpositive(f32x8::splat(f32::NAN)).to_array()[0].is_nan());
    }

    #[test]
    fn sorted_quantile_loss_matches_the_pairwise_one() {
        let mut sorted = SortedTargets::default();
        for n in [1usize, 2, 5, 32, 200] {
            let taus: Vec<f32> = (0..n).map(|i| (2 * i + 1) as f32 / (2 * n) as f32).collect();
            // Values on a coarse grid, so that ties and exact boundaries (u = 0, |u| = kappa) occur.
            let theta: Vec<f32> = (0..n).map(|i| ((i * 7919) % 13) as f32 * 0.5 - 3.0).collect();
            let t: Vec<f32> = (0..n).map(|i| ((i * 104_729) % 17) as f32 * 0.5 - 4.0).collect();
            for kappa in [0.0f32, 0.5, 1.0, 3.0] {
                let (mut g1, mut g2) = (vec![0.0; n], vec![0.0; n]);
                let l1 = quantile_huber_row(&theta, &t, &taus, kappa, &mut g1);
                sorted.prepare(&t);
                let l2 = sorted.loss(&theta, &taus, kappa, &mut g2);
                let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
                assert!(close(l2, l1), "n {n}, kappa {kappa}: loss {l2} vs {l1}");
                assert!(g1.iter().zip(&g2).all(|(a, b)| close(*b, *a)), "n {n}, kappa {kappa}: {g2:?} vs {g1:?}");
            }
        }
        let mut g = vec![0.0; 2];
        sorted.prepare(&[1.0, f32::NAN]);
        assert!(sorted.loss(&[0.0, 1.0], &[0.25, 0.75], 1.0, &mut g).is_nan());
    }

    #[test]
    fn lane_helpers_match_plain_loops_at_every_length() {
        for n in 1..=40usize {
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 23) as f32 * 0.37 - 4.0).collect();
            let y: Vec<f32> = (0..n).map(|i| ((i * 104729) % 19) as f32 * 0.11 - 1.0).collect();
            let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&x), m, "n = {n}");
            let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
            assert!(close(sum(&x), x.iter().sum()), "n = {n}");
            assert!(close(dot(&x, &y), x.iter().zip(&y).map(|(a, b)| a * b).sum()), "n = {n}");
            let mut out = vec![f32::NAN; n];
            let s = exp_shifted(&x, m, &mut out);
            let want: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
            assert!(out.iter().zip(&want).all(|(a, b)| close(*a, *b)), "n = {n}: {out:?} vs {want:?}");
            assert!(close(s, want.iter().sum()), "n = {n}");
        }
    }
}
