//! The C51 and QR-DQN targets, losses and gradients of [`super::Head`] computed on host slices,
//! for CPU training: the same equations (see the parent module), without libtorch's
//! per-operation overhead, which at DQN sizes costs more than the arithmetic (FACTS.md §6). The
//! C51 projection is Algorithm 1's `l = floor(b_j)`, `u = ceil(b_j)` split, `O(K)` per row; the
//! quantile Huber loss is a branch-free loop over the `N x N` pairs of each row. Munchausen's
//! mixture and IQN's sampled fractions stay on the tensor path.
//!
//! `every_head_matches_the_pytorch_reference` checks both paths against the PyTorch reference.

use super::HeadSpec;

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
        Some(HostHead { kind, k, row: vec![0.0; k], m: vec![0.0; k], exps: Vec::new(), sums: Vec::new() })
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
                    // Algorithm 1: atom j's mass goes to the neighbours l <= b_j <= u of its shifted place.
                    self.m.fill(0.0);
                    for (&zj, &pj) in z.iter().zip(&self.row) {
                        let bj = ((ret + disc * zj).clamp(*v_min, *v_max) - v_min) / dz;
                        let bj = bj.clamp(0.0, (k - 1) as f32);
                        // floor and ceil of b_j >= 0 (truncation is floor there, and cheaper).
                        let l = bj as usize;
                        let frac = bj - l as f32;
                        if frac == 0.0 {
                            self.m[l] += pj;
                        } else {
                            self.m[l] += pj * (1.0 - frac);
                            self.m[l + 1] += pj * frac;
                        }
                    }
                    // -sum_i m_i log softmax_i, whose gradient is softmax - m.
                    let max = chosen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut s = 0.0;
                    for (gi, &xi) in g.iter_mut().zip(chosen) {
                        *gi = (xi - max).exp();
                        s += *gi;
                    }
                    let lse = max + s.ln();
                    let mut loss = 0.0;
                    for ((gi, &xi), &mi) in g.iter_mut().zip(chosen).zip(&self.m) {
                        loss -= mi * (xi - lse);
                        *gi = *gi / s - mi;
                    }
                    loss
                }
                Kind::Qr { taus, kappa } => {
                    for (t, &x) in self.row.iter_mut().zip(&next[best * k..(best + 1) * k]) {
                        *t = ret + disc * x;
                    }
                    quantile_huber_row(chosen, &self.row, taus, *kappa, g)
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
                    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let (mut s, mut e) = (0.0, 0.0);
                    for ((p, &xi), &zi) in self.exps[a * k..(a + 1) * k].iter_mut().zip(x).zip(z) {
                        *p = (xi - max).exp();
                        s += *p;
                        e += *p * zi;
                    }
                    self.sums[a] = s;
                    e / s
                }
                Kind::Qr { .. } => x.iter().sum::<f32>() / k as f32,
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
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v - max).exp();
        s += *o;
    }
    out.iter_mut().for_each(|o| *o /= s);
}

/// `sum_i mean_j rho^kappa_{tau_i}(t_j - theta_i)` for one row, its gradient with respect to
/// `theta` written into `grad`. With `c = clamp(u, -kappa, kappa)`, the Huber loss is
/// `c (u - c / 2)` and its derivative `c`, so the loop has no branch.
fn quantile_huber_row(theta: &[f32], t: &[f32], taus: &[f32], kappa: f32, grad: &mut [f32]) -> f32 {
    let inv_m = 1.0 / t.len() as f32;
    let mut loss = 0.0;
    for ((g, &th), &tau) in grad.iter_mut().zip(theta).zip(taus) {
        let (mut l, mut d) = (0.0f32, 0.0f32);
        if kappa > 0.0 {
            for &tj in t {
                let u = tj - th;
                let w = (tau - if u < 0.0 { 1.0 } else { 0.0 }).abs();
                let c = u.clamp(-kappa, kappa);
                l += w * c * (u - 0.5 * c);
                d += w * c;
            }
            l /= kappa;
            d /= kappa;
        } else {
            for &tj in t {
                let u = tj - th;
                let slope = tau - if u < 0.0 { 1.0 } else { 0.0 };
                l += u * slope;
                d += slope;
            }
        }
        loss += l * inv_m;
        *g = -d * inv_m;
    }
    loss
}
