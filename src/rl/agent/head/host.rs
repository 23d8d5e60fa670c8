//! The C51 and QR-DQN targets, losses and gradients of [`super::Head`] computed on host slices,
//! for CPU training: the same equations (see the parent module), without libtorch's
//! per-operation overhead, which at DQN sizes costs more than the arithmetic (FACTS.md §6). The
//! C51 projection is Algorithm 1's `l = floor(b_j)`, `u = ceil(b_j)` split, `O(K)` per row; the
//! quantile Huber loss is a branch-free loop over the `N x N` pairs of each row (from 100
//! quantiles, an `O(N log N)` form on sorted targets). Munchausen's mixture and IQN's sampled
//! fractions stay on the tensor path.
//!
//! The loops are written once over `pulp`'s [`Simd`] lanes and run on the instruction set the
//! CPU has, picked at run time ([`Arch::new`]): AVX2 with FMA (8 lanes) on x86-64 machines from
//! 2013 on, NEON on aarch64, scalar code elsewhere. The default x86-64 target stops at SSE2, where a fixed-width
//! vector type compiles to 4-lane halves without FMA; dispatching at run time keeps one binary
//! for every machine. Softmax uses its own `exp` (a polynomial that vectorises, where libm's
//! `expf` is one scalar call per element), and explicit lanes let the sums vectorise, which
//! strict float ordering forbids the compiler to do by itself. A C51 update takes some 10,000
//! exponentials and a 32-quantile QR-DQN update 65,000 Huber terms, so this is most of the
//! head's cost.
//!
//! `every_head_matches_the_pytorch_reference` checks both paths against the PyTorch reference.

use pulp::{Arch, Simd, WithSimd};

use super::HeadSpec;

/// `exp(x)` for `x <= 0`, as softmax needs it (`x` a logit less the largest): Cephes' `expf`
/// (Moshier), `x = n ln 2 + r` with `|r| <= ln 2 / 2`, `e^r` by its degree-7 minimax polynomial,
/// `2^n` written into the exponent bits; relative error below `2 f32::EPSILON`. It skips what a
/// general `exp` does for large and special inputs: inputs below -87 give `e^-87` (so that `2^n`
/// stays a normal number, as flushed denormals need), and NaN stays NaN.
#[inline(always)]
fn exp_nonpositive<S: Simd>(s: S, x: S::f32s) -> S::f32s {
    // 1.5 * 2^23: adding it rounds to an integer, left in the low bits of the mantissa.
    const ROUND: f32 = 12_582_912.0;
    let c = s.max_f32s(x, s.splat_f32s(-87.0));
    let t = s.mul_add_e_f32s(c, s.splat_f32s(std::f32::consts::LOG2_E), s.splat_f32s(ROUND));
    let n = s.sub_f32s(t, s.splat_f32s(ROUND));
    let r = s.mul_add_e_f32s(n, s.splat_f32s(-0.693_359_4), c);
    let r = s.mul_add_e_f32s(n, s.splat_f32s(2.121_944_4e-4), r);
    let mut p = s.splat_f32s(1.987_569_1e-4);
    for coef in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = s.mul_add_e_f32s(p, r, s.splat_f32s(coef));
    }
    let e = s.add_f32s(s.mul_add_e_f32s(p, s.mul_f32s(r, r), r), s.splat_f32s(1.0));
    // 2^n: the integer in `t`'s low bits, biased and shifted into the exponent (the bits of
    // ROUND itself shift out).
    let bits = s.add_u32s(s.transmute_u32s_f32s(t), s.splat_u32s(127));
    let scale = s.transmute_f32s_u32s(s.wrapping_dyn_shl_u32s(bits, s.splat_u32s(23)));
    s.select_f32s_m32s(s.equal_f32s(x, x), s.mul_f32s(e, scale), x)
}

/// `max_i x_i`. With NaN among the values the result is unspecified (lanes and scalar `max`
/// treat it differently), but the softmax it shifts then has a NaN sum either way.
#[inline(always)]
fn max<S: Simd>(s: S, x: &[f32]) -> f32 {
    let (head, tail) = S::as_simd_f32s(x);
    let mut m = s.splat_f32s(f32::NEG_INFINITY);
    for &v in head {
        m = s.max_f32s(m, v);
    }
    let mut m = s.reduce_max_f32s(m);
    for &v in tail {
        m = m.max(v);
    }
    m
}

/// `out_i = exp(x_i - shift)`; returns `sum_i out_i`.
#[inline(always)]
fn exp_shifted<S: Simd>(s: S, x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    let (head, tail) = S::as_simd_f32s(x);
    let (out_head, out_tail) = S::as_mut_simd_f32s(out);
    let shift = s.splat_f32s(shift);
    let mut sum = s.splat_f32s(0.0);
    for (o, &v) in out_head.iter_mut().zip(head) {
        *o = exp_nonpositive(s, s.sub_f32s(v, shift));
        sum = s.add_f32s(sum, *o);
    }
    let mut total = s.reduce_sum_f32s(sum);
    if !tail.is_empty() {
        s.partial_store_f32s(out_tail, exp_nonpositive(s, s.sub_f32s(s.partial_load_f32s(tail), shift)));
        total += out_tail.iter().sum::<f32>();
    }
    total
}

/// `sum_i a_i b_i`.
#[inline(always)]
pub(in crate::rl::agent) fn dot<S: Simd>(s: S, a: &[f32], b: &[f32]) -> f32 {
    let (ha, ta) = S::as_simd_f32s(a);
    let (hb, tb) = S::as_simd_f32s(b);
    let mut acc = s.splat_f32s(0.0);
    for (&x, &y) in ha.iter().zip(hb) {
        acc = s.mul_add_e_f32s(x, y, acc);
    }
    let mut total = s.reduce_sum_f32s(acc);
    for (&x, &y) in ta.iter().zip(tb) {
        total += x * y;
    }
    total
}

/// `sum_i x_i`.
#[inline(always)]
fn sum<S: Simd>(s: S, x: &[f32]) -> f32 {
    let (head, tail) = S::as_simd_f32s(x);
    let mut acc = s.splat_f32s(0.0);
    for &v in head {
        acc = s.add_f32s(acc, v);
    }
    s.reduce_sum_f32s(acc) + tail.iter().sum::<f32>()
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
    place: Places,
    /// `exp(x - max)` of every action's logits in the chooser row, and their sums (C51).
    exps: Vec<f32>,
    sums: Vec<f32>,
    /// The instruction set the lane helpers run on (AVX2 and FMA where the CPU has them).
    arch: Arch,
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
            place: Places::default(),
            exps: Vec::new(),
            sums: Vec::new(),
            arch: Arch::new(),
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
        let arch = self.arch;
        arch.dispatch(Loss { head: self, b, n_actions, rows, grad });
    }

    /// [`HostHead::loss`] on the instruction set `s`.
    #[inline(always)]
    fn loss_with<S: Simd>(&mut self, s: S, b: &HostBatch<'_>, n_actions: usize, rows: &mut [f32], grad: &mut [f32]) {
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
            let best = self.greedy(s, chooser, n_actions);
            let a = b.actions[r] as usize;
            let chosen = &out[a * k..(a + 1) * k];
            let g = &mut grad[span][a * k..(a + 1) * k];
            let (ret, disc) = (b.returns[r], b.bootstrap[r]);
            rows[r] = match &self.kind {
                // Min and max may drop a NaN (lanes differ in which operand wins): a NaN return or
                // discount could be clamped to the support and vanish, so the row's loss is NaN
                // here (training stops as diverged, as on the tensor path).
                Kind::C51 { .. } if !(ret.is_finite() && disc.is_finite()) => f32::NAN,
                Kind::C51 { z, v_min, v_max, dz } => {
                    if same {
                        // The chooser's exponentials of a* are p(s', a*) unnormalised.
                        let inv = 1.0 / self.sums[best];
                        for (p, &e) in self.row.iter_mut().zip(&self.exps[best * k..(best + 1) * k]) {
                            *p = e * inv;
                        }
                    } else {
                        softmax(s, &next[best * k..(best + 1) * k], &mut self.row);
                    }
                    project(
                        s,
                        Support { z, v_min: *v_min, v_max: *v_max, dz: *dz },
                        ret,
                        disc,
                        &self.row,
                        &mut self.place,
                    );
                    // Algorithm 1: atom j's mass goes to the neighbours l <= b_j <= u of its shifted
                    // place. The lower and upper shares go to two arrays (`m` and `upper`, one
                    // longer than the support, so that `l + 1` needs no branch): consecutive atoms
                    // land on neighbouring places, and one array would make each addition wait for
                    // the store of the one before.
                    self.m.fill(0.0);
                    self.upper.fill(0.0);
                    let (m, upper) = (&mut self.m[..k], &mut self.upper[..k + 1]);
                    for (&l, (&lo, &up)) in self.place.floor.iter().zip(self.place.lower.iter().zip(&self.place.upper))
                    {
                        // `l` lies in [0, K - 1]: `project` clamps its place there (a NaN place
                        // would give garbage bits, which `min` keeps in bounds).
                        let l = (l as usize).min(k - 1);
                        m[l] += lo;
                        upper[l + 1] += up;
                    }
                    for (mi, &ui) in m.iter_mut().zip(upper.iter()) {
                        *mi += ui;
                    }
                    // -sum_i m_i log softmax_i, whose gradient is softmax - m.
                    let max = max(s, chosen);
                    let sum_e = exp_shifted(s, chosen, max, g);
                    let lse = max + sum_e.ln();
                    let inv = 1.0 / sum_e;
                    for (gi, &mi) in g.iter_mut().zip(m.iter()) {
                        *gi = *gi * inv - mi;
                    }
                    lse * sum(s, m) - dot(s, m, chosen)
                }
                Kind::Qr { taus, kappa } => {
                    for (t, &x) in self.row.iter_mut().zip(&next[best * k..(best + 1) * k]) {
                        *t = ret + disc * x;
                    }
                    if k >= SORTED_FROM {
                        self.sorted.prepare(&self.row);
                        self.sorted.loss(chosen, taus, *kappa, g)
                    } else {
                        quantile_huber_row(s, chosen, &self.row, taus, *kappa, g)
                    }
                }
            };
            let scale = b.weights.map_or(1.0, |w| w[r]) / batch as f32;
            g.iter_mut().for_each(|x| *x *= scale);
        }
    }

    /// `argmax_a Q(s, a)` of one row of outputs (C51: the mean of each action's softmax, whose
    /// exponentials and sums are kept in `exps` and `sums`).
    #[inline(always)]
    fn greedy<S: Simd>(&mut self, s: S, row: &[f32], n_actions: usize) -> usize {
        let k = self.k;
        let (mut best, mut best_v) = (0, f32::NEG_INFINITY);
        for a in 0..n_actions {
            let x = &row[a * k..(a + 1) * k];
            let v = match &self.kind {
                Kind::C51 { z, .. } => {
                    let exps = &mut self.exps[a * k..(a + 1) * k];
                    let sum_e = exp_shifted(s, x, max(s, x), exps);
                    self.sums[a] = sum_e;
                    dot(s, exps, z) / sum_e
                }
                Kind::Qr { .. } => sum(s, x) / k as f32,
            };
            // The first of equal maxima, as libtorch's argmax.
            if a == 0 || v > best_v {
                (best, best_v) = (a, v);
            }
        }
        best
    }
}

/// [`HostHead::loss`]'s arguments, run by [`Arch::dispatch`] on the best instruction set.
struct Loss<'a, 'b> {
    head: &'a mut HostHead,
    b: &'a HostBatch<'b>,
    n_actions: usize,
    rows: &'a mut [f32],
    grad: &'a mut [f32],
}

impl WithSimd for Loss<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) -> Self::Output {
        self.head.loss_with(s, self.b, self.n_actions, self.rows, self.grad)
    }
}

#[inline(always)]
fn softmax<S: Simd>(s: S, x: &[f32], out: &mut [f32]) {
    let inv = 1.0 / exp_shifted(s, x, max(s, x), out);
    out.iter_mut().for_each(|o| *o *= inv);
}

/// C51's support `z_i = v_min + i dz`.
#[derive(Clone, Copy)]
struct Support<'a> {
    z: &'a [f32],
    v_min: f32,
    v_max: f32,
    dz: f32,
}

/// Per atom of the bootstrap row: the lower neighbour `floor(b_j)` of its shifted place and the
/// shares of `p_j` its two neighbours get.
#[derive(Debug, Default)]
struct Places {
    floor: Vec<u32>,
    lower: Vec<f32>,
    upper: Vec<f32>,
}

/// Algorithm 1's places: `b_j = (clamp(ret + disc z_j, v_min, v_max) - v_min) / dz`, clamped to
/// `[0, K - 1]` against rounding, `l = floor(b_j)`, shares `p_j (1 - (b_j - l))` and
/// `p_j (b_j - l)` (at `l == u` the fraction is 0 and the whole mass stays at `l`).
#[inline(always)]
fn project<S: Simd>(s: S, sup: Support<'_>, ret: f32, disc: f32, p: &[f32], out: &mut Places) {
    // 1.5 * 2^23: adding it rounds a float in [0, 2^22) to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let k = p.len();
    out.floor.resize(k, 0);
    out.lower.resize(k, 0.0);
    out.upper.resize(k, 0.0);
    let (lv, uv, inv) = (s.splat_f32s(sup.v_min), s.splat_f32s(sup.v_max), s.splat_f32s(1.0 / sup.dz));
    let (rv, dv, top, zero) = (s.splat_f32s(ret), s.splat_f32s(disc), s.splat_f32s((k - 1) as f32), s.splat_f32s(0.0));
    let round = s.splat_f32s(ROUND);
    #[inline(always)]
    fn lane<S: Simd>(s: S, c: [S::f32s; 8], z: S::f32s, pj: S::f32s) -> (S::u32s, S::f32s, S::f32s) {
        let [lv, uv, inv, rv, dv, top, zero, round] = c;
        let tz = s.min_f32s(s.max_f32s(s.mul_add_e_f32s(dv, z, rv), lv), uv);
        let b = s.min_f32s(s.max_f32s(s.mul_f32s(s.sub_f32s(tz, lv), inv), zero), top);
        let near = s.sub_f32s(s.add_f32s(b, round), round);
        let l = s.sub_f32s(near, s.select_f32s_m32s(s.greater_than_f32s(near, b), s.splat_f32s(1.0), zero));
        let up = s.mul_f32s(pj, s.sub_f32s(b, l));
        // The integer `l` from the low mantissa bits of `l + ROUND`.
        let bits = s.sub_u32s(s.transmute_u32s_f32s(s.add_f32s(l, round)), s.splat_u32s(ROUND.to_bits()));
        (bits, s.sub_f32s(pj, up), up)
    }
    let c = [lv, uv, inv, rv, dv, top, zero, round];
    let (zh, zt) = S::as_simd_f32s(sup.z);
    let (ph, pt) = S::as_simd_f32s(p);
    let (fh, ft) = S::as_mut_simd_u32s(&mut out.floor);
    let (lh, lt) = S::as_mut_simd_f32s(&mut out.lower);
    let (uh, ut) = S::as_mut_simd_f32s(&mut out.upper);
    for ((((&z, &pj), f), lo), up) in zh.iter().zip(ph).zip(fh).zip(lh).zip(uh) {
        (*f, *lo, *up) = lane(s, c, z, pj);
    }
    if !zt.is_empty() {
        let (f, lo, up) = lane(s, c, s.partial_load_f32s(zt), s.partial_load_f32s(pt));
        s.partial_store_u32s(ft, f);
        s.partial_store_f32s(lt, lo);
        s.partial_store_f32s(ut, up);
    }
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
#[inline(always)]
fn quantile_huber_row<S: Simd>(s: S, theta: &[f32], t: &[f32], taus: &[f32], kappa: f32, grad: &mut [f32]) -> f32 {
    let inv_m = 1.0 / t.len() as f32;
    let (head, rest) = S::as_simd_f32s(t);
    let (zero, one) = (s.splat_f32s(0.0), s.splat_f32s(1.0));
    let mut loss = 0.0;
    for ((g, &th), &tau) in grad.iter_mut().zip(theta).zip(taus) {
        let (thv, tauv) = (s.splat_f32s(th), s.splat_f32s(tau));
        let (mut l, mut d) = (zero, zero);
        let (mut l_rest, mut d_rest) = (0.0f32, 0.0f32);
        if kappa > 0.0 {
            let (lo, hi, half) = (s.splat_f32s(-kappa), s.splat_f32s(kappa), s.splat_f32s(0.5));
            for &v in head {
                let u = s.sub_f32s(v, thv);
                let w = s.abs_f32s(s.sub_f32s(tauv, s.select_f32s_m32s(s.less_than_f32s(u, zero), one, zero)));
                let c = s.min_f32s(s.max_f32s(u, lo), hi);
                let wc = s.mul_f32s(w, c);
                l = s.mul_add_e_f32s(wc, s.sub_f32s(u, s.mul_f32s(half, c)), l);
                d = s.add_f32s(d, wc);
            }
            for &tj in rest {
                let u = tj - th;
                let w = (tau - if u < 0.0 { 1.0 } else { 0.0 }).abs();
                let c = u.clamp(-kappa, kappa);
                l_rest += w * c * (u - 0.5 * c);
                d_rest += w * c;
            }
            l_rest = (s.reduce_sum_f32s(l) + l_rest) / kappa;
            d_rest = (s.reduce_sum_f32s(d) + d_rest) / kappa;
        } else {
            for &v in head {
                let u = s.sub_f32s(v, thv);
                let slope = s.sub_f32s(tauv, s.select_f32s_m32s(s.less_than_f32s(u, zero), one, zero));
                l = s.mul_add_e_f32s(u, slope, l);
                d = s.add_f32s(d, slope);
            }
            for &tj in rest {
                let u = tj - th;
                let slope = tau - if u < 0.0 { 1.0 } else { 0.0 };
                l_rest += u * slope;
                d_rest += slope;
            }
            l_rest += s.reduce_sum_f32s(l);
            d_rest += s.reduce_sum_f32s(d);
        }
        loss += l_rest * inv_m;
        *g = -d_rest * inv_m;
    }
    loss
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `check` on scalar lanes and, where the CPU has them, on AVX2 lanes.
    fn on_every_arch(check: impl Fn(&dyn Fn(&[f32]) -> Vec<f32>, &str)) {
        struct Exp<'a>(&'a [f32]);
        impl WithSimd for Exp<'_> {
            type Output = Vec<f32>;
            fn with_simd<S: Simd>(self, s: S) -> Vec<f32> {
                self.0.iter().map(|&x| s.reduce_max_f32s(exp_nonpositive(s, s.splat_f32s(x)))).collect()
            }
        }
        check(&|x| Exp(x).with_simd(pulp::Scalar), "scalar");
        check(&|x| Arch::new().dispatch(Exp(x)), "detected");
    }

    #[test]
    fn exp_is_within_two_epsilon_and_keeps_nan() {
        on_every_arch(|exp, arch| {
            let xs: Vec<f32> = (0..=1_000_000).map(|i| -87.0 * i as f32 / 1_000_000.0).collect();
            let worst = exp(&xs)
                .iter()
                .zip(&xs)
                .map(|(&got, &x)| (got as f64 - (x as f64).exp()).abs() / (x as f64).exp())
                .fold(0.0, f64::max);
            assert!(worst < 2.0 * f32::EPSILON as f64, "{arch}: relative error {worst}");
            let special = exp(&[-1000.0, f32::NAN]);
            assert!(special[0] > 0.0 && special[0] <= (-87.0f32).exp() * 1.000001, "{arch}: {}", special[0]);
            assert!(special[1].is_nan(), "{arch}");
        });
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
                let l1 = quantile_huber_row(pulp::Scalar, &theta, &t, &taus, kappa, &mut g1);
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

    struct Helpers(usize);

    impl WithSimd for Helpers {
        type Output = ();

        fn with_simd<S: Simd>(self, s: S) {
            let n = self.0;
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 23) as f32 * 0.37 - 4.0).collect();
            let y: Vec<f32> = (0..n).map(|i| ((i * 104729) % 19) as f32 * 0.11 - 1.0).collect();
            let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(s, &x), m, "n = {n}");
            let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
            assert!(close(sum(s, &x), x.iter().sum()), "n = {n}");
            assert!(close(dot(s, &x, &y), x.iter().zip(&y).map(|(a, b)| a * b).sum()), "n = {n}");
            let mut out = vec![f32::NAN; n];
            let total = exp_shifted(s, &x, m, &mut out);
            let want: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
            assert!(out.iter().zip(&want).all(|(a, b)| close(*a, *b)), "n = {n}: {out:?} vs {want:?}");
            assert!(close(total, want.iter().sum()), "n = {n}");
            // The quantile loss on these lanes against its scalar form.
            let taus: Vec<f32> = (0..n).map(|i| (2 * i + 1) as f32 / (2 * n) as f32).collect();
            for kappa in [0.0f32, 1.0] {
                let (mut g1, mut g2) = (vec![0.0; n], vec![0.0; n]);
                let l1 = quantile_huber_row(pulp::Scalar, &x, &y, &taus, kappa, &mut g1);
                let l2 = quantile_huber_row(s, &x, &y, &taus, kappa, &mut g2);
                assert!(close(l2, l1) && g1.iter().zip(&g2).all(|(a, b)| close(*b, *a)), "n = {n}, kappa {kappa}");
            }
        }
    }

    #[test]
    fn lane_helpers_match_plain_loops_at_every_length() {
        for n in 1..=40usize {
            Helpers(n).with_simd(pulp::Scalar);
            Arch::new().dispatch(Helpers(n));
        }
    }

    #[test]
    fn c51_places_split_each_atom_between_its_neighbours() {
        // Support 0, 1, ..., 10 (dz 1); r + disc z lands between atoms, on them, and past both ends.
        let z: Vec<f32> = (0..11).map(|i| i as f32).collect();
        let sup = Support { z: &z, v_min: 0.0, v_max: 10.0, dz: 1.0 };
        let p = vec![1.0 / 11.0; 11];
        for (ret, disc) in [(0.25f32, 0.9f32), (1.0, 1.0), (-3.0, 0.5), (8.0, 0.99), (0.0, 0.0)] {
            let mut places = Places::default();
            struct Run<'a>(Support<'a>, f32, f32, &'a [f32], &'a mut Places);
            impl WithSimd for Run<'_> {
                type Output = ();
                fn with_simd<S: Simd>(self, s: S) {
                    project(s, self.0, self.1, self.2, self.3, self.4)
                }
            }
            let mut scalar = Places::default();
            Run(sup, ret, disc, &p, &mut scalar).with_simd(pulp::Scalar);
            Arch::new().dispatch(Run(sup, ret, disc, &p, &mut places));
            assert_eq!(scalar.floor, places.floor, "ret {ret}, disc {disc}");
            for j in 0..11 {
                let b = ((ret + disc * z[j]).clamp(0.0, 10.0) - 0.0) / 1.0;
                let l = b.floor();
                assert_eq!(places.floor[j] as f32, l, "ret {ret}, disc {disc}, atom {j}");
                let (lo, up) = (p[j] * (1.0 - (b - l)), p[j] * (b - l));
                assert!((places.lower[j] - lo).abs() < 1e-6 && (places.upper[j] - up).abs() < 1e-6, "atom {j}");
            }
        }
    }

    #[test]
    fn the_loss_is_the_same_on_scalar_and_detected_lanes() {
        // 5 rows, 3 actions; odd widths so that every lane loop has a tail.
        let (rows, n_actions) = (5usize, 3usize);
        let specs = [
            HeadSpec::C51 { atoms: 11, v_min: -2.0, v_max: 3.0 },
            HeadSpec::Qr { quantiles: 7, kappa: 1.0 },
            HeadSpec::Qr { quantiles: 7, kappa: 0.0 },
        ];
        for spec in specs {
            let k = match spec {
                HeadSpec::C51 { atoms, .. } => atoms,
                HeadSpec::Qr { quantiles, .. } => quantiles,
                _ => unreachable!(),
            };
            let w = rows * n_actions * k;
            let value = |i: usize, m: usize| ((i * m) % 29) as f32 * 0.21 - 3.0;
            let next: Vec<f32> = (0..w).map(|i| value(i, 7919)).collect();
            let chooser: Vec<f32> = (0..w).map(|i| value(i, 104_729)).collect();
            let out: Vec<f32> = (0..w).map(|i| value(i, 31)).collect();
            let actions = [0i64, 2, 1, 1, 0];
            let returns = [1.0f32, -0.5, 0.25, 2.0, 0.0];
            let bootstrap = [0.99f32, 0.0, 0.9, 0.5, 0.99];
            let weights = [1.0f32, 0.5, 2.0, 1.0, 0.25];
            for (chooser, weights) in [(&next, None), (&chooser, Some(&weights[..]))] {
                let batch = HostBatch {
                    next: &next,
                    chooser,
                    out: &out,
                    actions: &actions,
                    returns: &returns,
                    bootstrap: &bootstrap,
                    weights,
                };
                let run = |scalar: bool| {
                    let mut head = HostHead::new(&spec).unwrap();
                    let (mut r, mut g) = (vec![0.0; rows], vec![0.0; w]);
                    let op = Loss { head: &mut head, b: &batch, n_actions, rows: &mut r, grad: &mut g };
                    if scalar {
                        op.with_simd(pulp::Scalar);
                    } else {
                        Arch::new().dispatch(op);
                    }
                    (r, g)
                };
                let ((r1, g1), (r2, g2)) = (run(true), run(false));
                let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
                assert!(r1.iter().zip(&r2).all(|(a, b)| close(*b, *a)), "{spec:?}: {r2:?} vs {r1:?}");
                assert!(g1.iter().zip(&g2).all(|(a, b)| close(*b, *a)), "{spec:?}: {g2:?} vs {g1:?}");
                assert!(r1.iter().all(|v| v.is_finite()) && g1.iter().any(|v| *v != 0.0));
            }
        }
    }
}
