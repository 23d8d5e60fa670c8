//! Value heads: what the Q-network outputs for each action and the loss it is trained by, chosen
//! by `agent.head`:
//!
//! - `{type: expected}`: one value `Q(s, a)` per action (DQN), Huber or squared TD error.
//! - `{type: c51, atoms, v_min, v_max}` (Bellemare, Dabney and Munos 2017, "A Distributional
//!   Perspective on Reinforcement Learning", Algorithm 1): `atoms` logits per action over the fixed
//!   support `z_i = v_min + i dz`, `dz = (v_max - v_min) / (atoms - 1)`; `p_i(s, a)` their softmax
//!   and `Q(s, a) = sum_i z_i p_i(s, a)`. The target distribution puts the mass `p_j(s', a*)` of
//!   each shifted atom `Tz_j = clip(G + gamma^n z_j, v_min, v_max)` on the two nearest atoms in
//!   proportion to closeness, `m_i = sum_j p_j(s', a*) [1 - |Tz_j - z_i| / dz]_0^1` (the
//!   triangular-kernel form of the `l = floor(b_j)`, `u = ceil(b_j)` split, exact at `l == u`
//!   too), and the loss is the cross-entropy `-sum_i m_i log p_i(s, a)`.
//! - `{type: qr, quantiles, kappa}` (Dabney, Rowland, Bellemare and Munos 2018, "Distributional
//!   Reinforcement Learning with Quantile Regression", eq. 9-10): `N` quantile values
//!   `theta_i(s, a)` at the midpoints `tau_i = (2i + 1) / 2N`, `Q(s, a) = mean_i theta_i`; the
//!   target values are `T theta_j = G + gamma^n theta_j(s', a*)` and the loss is
//!   `sum_i mean_j rho^kappa_{tau_i}(T theta_j - theta_i)` with
//!   `rho^kappa_tau(u) = |tau - 1{u < 0}| L_kappa(u) / kappa`, `L_kappa` the Huber loss with
//!   threshold `kappa` (`rho^0_tau(u) = u (tau - 1{u < 0})`, the plain quantile loss).
//!
//! - `{type: iqn, n_tau, n_tau_prime, k_policy, kappa, embedding}` (Dabney, Ostrovski, Silver and
//!   Munos 2018, "Implicit Quantile Networks for Distributional Reinforcement Learning", eq. 3-4):
//!   the network maps a fraction `tau ~ U(0, 1)` to the quantile value `Z_tau(s, a)` through a
//!   cosine embedding of `tau` ([`crate::rl::net`]); each update samples `N` fractions `tau_i`
//!   for `s` and `N'` fractions `tau'_j` for `s'` per row, trains with the quantile Huber loss
//!   `sum_i mean_j rho^kappa_{tau_i}(G + gamma^n Z_{tau'_j}(s', a*) - Z_{tau_i}(s, a))` (as QR-DQN
//!   with sampled fractions), and values actions by the mean over `K` sampled fractions,
//!   `Q(s, a) = mean_k Z_{tau_k}(s, a)` (the policy, also for `a*`).
//!
//! `G` is the (n-step) return and `gamma^n` is 0 on terminal transitions. The greedy action is
//! the argmax of the mean `Q(s, a)` under every head, and `a*` is chosen by it (from the target
//! network, or the online one with `double: true`).
//!
//! Each head returns the gradient of the loss with respect to the network outputs of the actions
//! taken, so the hand-differentiated MLP and autograd train every head the same way.

mod host;

pub(super) use host::{dot, HostBatch, HostHead};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// The `agent.head:` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HeadSpec {
    /// One expected value per action (DQN).
    #[default]
    Expected,
    /// A categorical distribution on a fixed support (C51).
    C51 {
        /// Atoms of the support (51 in the paper).
        #[serde(default = "default_atoms")]
        atoms: usize,
        /// Smallest return the support represents.
        #[serde(default = "default_v_min")]
        v_min: f64,
        /// Largest return the support represents.
        #[serde(default = "default_v_max")]
        v_max: f64,
    },
    /// Quantile values at fixed fractions (QR-DQN).
    Qr {
        /// Quantiles per action (200 in the paper).
        #[serde(default = "default_quantiles")]
        quantiles: usize,
        /// Threshold of the quantile Huber loss (0: the plain quantile loss).
        #[serde(default = "default_kappa")]
        kappa: f64,
    },
    /// Quantile values at sampled fractions through a fraction embedding (IQN).
    Iqn {
        /// Fractions sampled for the online network per update (`N`, 64 in the paper).
        #[serde(default = "default_n_tau")]
        n_tau: usize,
        /// Fractions sampled for the target per update (`N'`, 64 in the paper).
        #[serde(default = "default_n_tau")]
        n_tau_prime: usize,
        /// Fractions sampled to value actions (`K`, 32 in the paper).
        #[serde(default = "default_k_policy")]
        k_policy: usize,
        /// Threshold of the quantile Huber loss (0: the plain quantile loss).
        #[serde(default = "default_kappa")]
        kappa: f64,
        /// Cosines embedding each fraction (`n`, 64 in the paper).
        #[serde(default = "default_n_tau")]
        embedding: usize,
    },
}

fn default_n_tau() -> usize {
    64
}
fn default_k_policy() -> usize {
    32
}

fn default_atoms() -> usize {
    51
}
fn default_v_min() -> f64 {
    -10.0
}
fn default_v_max() -> f64 {
    10.0
}
fn default_quantiles() -> usize {
    200
}
fn default_kappa() -> f64 {
    1.0
}

impl HeadSpec {
    /// The head's name as configs spell it.
    pub fn name(&self) -> &'static str {
        match self {
            HeadSpec::Expected => "expected",
            HeadSpec::C51 { .. } => "c51",
            HeadSpec::Qr { .. } => "qr",
            HeadSpec::Iqn { .. } => "iqn",
        }
    }

    /// Whether the head learns a distribution (and so has its own loss).
    pub fn is_distributional(&self) -> bool {
        !matches!(self, HeadSpec::Expected)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            HeadSpec::Expected => Ok(()),
            HeadSpec::C51 { atoms, v_min, v_max } => {
                if atoms < 2 {
                    return Err(format!("head.atoms must be at least 2 (51 in the paper), got {atoms}"));
                }
                if !(v_min.is_finite() && v_max.is_finite() && v_min < v_max) {
                    return Err(format!(
                        "head.v_min must be below head.v_max, both finite (the paper: -10 and 10), got {v_min} and {v_max}"
                    ));
                }
                Ok(())
            }
            HeadSpec::Qr { quantiles, kappa } => {
                if quantiles < 1 {
                    return Err(format!("head.quantiles must be at least 1 (200 in the paper), got {quantiles}"));
                }
                check_kappa(kappa)
            }
            HeadSpec::Iqn { n_tau, n_tau_prime, k_policy, kappa, embedding } => {
                for (name, v, paper) in [
                    ("n_tau", n_tau, 64),
                    ("n_tau_prime", n_tau_prime, 64),
                    ("k_policy", k_policy, 32),
                    ("embedding", embedding, 64),
                ] {
                    if v < 1 {
                        return Err(format!("head.{name} must be at least 1 ({paper} in the paper), got {v}"));
                    }
                }
                check_kappa(kappa)
            }
        }
    }

    /// IQN's `(N, N', K, embedding)`, `None` for the other heads.
    pub fn iqn_samples(&self) -> Option<(usize, usize, usize, usize)> {
        match *self {
            HeadSpec::Iqn { n_tau, n_tau_prime, k_policy, embedding, .. } => {
                Some((n_tau, n_tau_prime, k_policy, embedding))
            }
            _ => None,
        }
    }
}

fn check_kappa(kappa: f64) -> Result<(), String> {
    if !(kappa >= 0.0 && kappa.is_finite()) {
        return Err(format!(
            "head.kappa must be a finite number >= 0 (1 in the paper, 0 for the plain quantile loss), got {kappa}"
        ));
    }
    Ok(())
}

/// What [`Head::per_row`] trains towards: the TD targets `[B, 1]`, the projected distribution
/// `[B, K]`, or target quantile values `[B, M]` with their weights (`None`: `1 / M` each).
#[derive(Debug)]
pub(super) struct Target {
    pub(super) values: Tensor,
    pub(super) weights: Option<Tensor>,
    /// IQN: the fractions `[B, N]` the online outputs were computed at.
    pub(super) taus: Option<Tensor>,
}

/// A head ready to compute: its constants as tensors on the device.
#[derive(Debug)]
pub(super) enum Head {
    Expected,
    C51 {
        /// `z` as `[1, K]`.
        support: Tensor,
        /// `z` as `[1, K, 1]`, the rows of the projection kernel.
        support_col: Tensor,
        v_min: f64,
        v_max: f64,
        dz: f64,
    },
    Qr {
        /// `tau_i` as `[1, N, 1]`.
        taus: Tensor,
        kappa: f64,
    },
    Iqn {
        /// `N`: fractions per row for the online outputs.
        n_tau: i64,
        kappa: f64,
    },
}

impl Head {
    pub(super) fn new(spec: &HeadSpec, device: Device) -> Self {
        match *spec {
            HeadSpec::Expected => Head::Expected,
            HeadSpec::C51 { atoms, v_min, v_max } => {
                let dz = (v_max - v_min) / (atoms - 1) as f64;
                let z: Vec<f32> = (0..atoms).map(|i| (v_min + i as f64 * dz) as f32).collect();
                let support = Tensor::from_slice(&z).to_device(device).view([1, atoms as i64]);
                let support_col = support.view([1, atoms as i64, 1]);
                Head::C51 { support, support_col, v_min, v_max, dz }
            }
            HeadSpec::Qr { quantiles, kappa } => {
                let n = quantiles as f64;
                let taus: Vec<f32> = (0..quantiles).map(|i| ((2 * i + 1) as f64 / (2.0 * n)) as f32).collect();
                Head::Qr { taus: Tensor::from_slice(&taus).to_device(device).view([1, quantiles as i64, 1]), kappa }
            }
            HeadSpec::Iqn { n_tau, kappa, .. } => Head::Iqn { n_tau: n_tau as i64, kappa },
        }
    }

    /// Outputs per action: `K` atoms or quantiles, 1 for the expected head.
    pub(super) fn width(&self) -> i64 {
        match self {
            Head::Expected => 1,
            Head::C51 { support, .. } => support.size()[1],
            Head::Qr { taus, .. } => taus.size()[1],
            Head::Iqn { n_tau, .. } => *n_tau,
        }
    }

    /// `Q(s, a)`, `[N, |A|]`, from the network's outputs `[N, |A| K]` (for IQN, `K` is however
    /// many fractions the outputs were computed at).
    pub(super) fn q(&self, out: &Tensor, n_actions: i64) -> Tensor {
        match self {
            Head::Expected => out.shallow_clone(),
            Head::C51 { support, .. } => {
                let k = support.size()[1];
                let p = out.view([-1, n_actions, k]).softmax(-1, Kind::Float);
                (p * support.unsqueeze(0)).sum_dim_intlist(-1, false, Kind::Float)
            }
            Head::Qr { .. } | Head::Iqn { .. } => out.view([out.size()[0], n_actions, -1]).mean_dim(-1, false, None),
        }
    }

    /// What the outputs of the actions taken are trained towards, from the returns `G` and the
    /// discounts `gamma^n (1 - done)` (`[B, 1]` each) and the outputs `next` `[B, A', K]` of the
    /// bootstrap actions in `s'`: one action `a*` (`A' = 1`), or every action mixed with the
    /// weights `mix` `[B, A']` and shifted by `shift` `[B, A', 1]` (Munchausen's soft value).
    pub(super) fn target(
        &self,
        next: &Tensor,
        mix: Option<(&Tensor, &Tensor)>,
        returns: &Tensor,
        bootstrap: &Tensor,
    ) -> Target {
        let batch = next.size()[0];
        let shifted = match mix {
            Some((_, shift)) => next + shift,
            None => next.shallow_clone(),
        };
        match self {
            Head::Expected => {
                // y = G + gamma^n sum_a' pi(a') (q(s', a') + shift(a')), or G + gamma^n q(s', a*).
                let next_v = match mix {
                    Some((pi, _)) => (shifted.squeeze_dim(-1) * pi).sum_dim_intlist(-1, true, Kind::Float),
                    None => shifted.view([batch, 1]),
                };
                Target { values: returns.addcmul(bootstrap, &next_v), weights: None, taus: None }
            }
            Head::Qr { .. } | Head::Iqn { .. } => {
                let values = returns.addcmul(bootstrap, &shifted.view([batch, -1]));
                // Each of the A' M target values weighs pi(a') / M (1 / M without a mixture).
                let m = next.size()[2] as f64;
                let weights = mix.map(|(pi, _)| (pi.unsqueeze(-1) / m).expand_as(next).reshape([batch, -1]));
                Target { values, weights, taus: None }
            }
            Head::C51 { support, support_col, v_min, v_max, dz } => {
                let mut p_next = next.softmax(-1, Kind::Float);
                if let Some((pi, _)) = mix {
                    p_next = p_next * pi.unsqueeze(-1);
                }
                let z = match mix {
                    Some((_, shift)) => support.unsqueeze(0) + shift,
                    None => support.unsqueeze(0),
                };
                let tz = returns
                    .unsqueeze(-1)
                    .addcmul(&bootstrap.unsqueeze(-1), &z)
                    .clamp(*v_min, *v_max)
                    .view([batch, 1, -1]);
                // kernel[b, i, j] = [1 - |Tz_j - z_i| / dz]_0^1: the share of atom j's mass on atom i.
                let kernel = (tz - support_col).abs_().g_mul_scalar_(-1.0 / dz).g_add_scalar_(1.0).clamp_min_(0.0);
                let m = kernel.matmul(&p_next.view([batch, -1, 1])).squeeze_dim(-1);
                Target { values: m, weights: None, taus: None }
            }
        }
    }

    /// For the outputs `chosen` `[B, K]` of the actions taken and their `target`: the values the
    /// host reads per row (the TD error `Q - y` for the expected head, whose loss the agent's
    /// `loss` kind sets; the loss itself for the others), and, for the distributional heads, the
    /// gradient of each row's loss with respect to `chosen` (unweighted, not divided by `B`).
    pub(super) fn per_row(&self, chosen: &Tensor, target: &Target) -> (Tensor, Option<Tensor>) {
        let Target { values: target, weights, taus: sampled } = target;
        match self {
            Head::Expected => (chosen - target, None),
            Head::C51 { .. } => {
                let log_p = chosen.log_softmax(-1, Kind::Float);
                let loss = (target * &log_p).sum_dim_intlist(-1, false, Kind::Float).neg();
                // d/dlogits of -sum_i m_i log softmax_i = softmax - m (the m_i sum to 1).
                (loss, Some(log_p.exp() - target))
            }
            Head::Qr { taus, kappa } => quantile_huber(chosen, target, weights.as_ref(), taus, *kappa),
            Head::Iqn { kappa, .. } => {
                let taus = sampled.as_ref().expect("IQN targets carry their fractions").unsqueeze(-1);
                quantile_huber(chosen, target, weights.as_ref(), &taus, *kappa)
            }
        }
    }
}

/// The quantile Huber loss of each row, `sum_i sum_j w_j rho^kappa_{tau_i}(T theta_j - theta_i)`
/// (`w_j = 1 / M` when `weights` is `None`), and its gradient with respect to `theta` `[B, N]`;
/// `taus` is `[1 or B, N, 1]`.
fn quantile_huber(
    theta: &Tensor,
    target: &Tensor,
    weights: Option<&Tensor>,
    taus: &Tensor,
    kappa: f64,
) -> (Tensor, Option<Tensor>) {
    // u[b, i, j] = T theta_j - theta_i.
    let u = target.unsqueeze(1) - theta.unsqueeze(2);
    let below = u.lt(0.0).to_kind(Kind::Float);
    let weight = (taus - &below).abs_();
    let (rho, drho_du) = if kappa > 0.0 {
        let abs = u.abs();
        let huber = (&u * &u * 0.5).where_self(&abs.le(kappa), &((&abs - 0.5 * kappa) * kappa));
        (&weight * huber / kappa, &weight * u.clamp(-kappa, kappa) / kappa)
    } else {
        let slope = taus - below;
        (&u * &slope, slope)
    };
    // dL/dtheta_i = -sum_j w_j drho/du_ij.
    match weights {
        None => {
            let m = u.size()[2] as f64;
            let loss = rho.sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float) / m;
            (loss, Some(drho_du.sum_dim_intlist(2, false, Kind::Float) / -m))
        }
        Some(w) => {
            let w = w.unsqueeze(1);
            let loss = (rho * &w).sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float);
            (loss, Some((drho_du * w).sum_dim_intlist(2, false, Kind::Float).neg()))
        }
    }
}
