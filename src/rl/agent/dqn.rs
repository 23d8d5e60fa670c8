//! Deep Q-learning with every variant of the labs as an option of one agent:
//!
//! | variant | config |
//! |---|---|
//! | naive online Q-learning (lab 000, ex. 2) | `replay: {type: none}, target: {type: none}, batch_size: 1` |
//! | DQN 2013 (Mnih et al. 2013) | `replay: {type: uniform}, target: {type: none}` |
//! | DQN 2015 (Mnih et al. 2015) | `target: {type: hard, every: N}` (or `{type: soft, tau}`, lab 003) |
//! | Double DQN (van Hasselt et al. 2016) | `double: true` |
//! | prioritized replay (Schaul et al. 2016) | `replay: {type: prioritized, alpha, beta}` |
//! | dueling (Wang et al. 2016) | `net: {type: mlp, dueling: true}` |
//! | n-step returns (Sutton 1988; Hessel et al. 2018) | `n_step: 3` |
//! | C51 (Bellemare et al. 2017) | `head: {type: c51, atoms: 51, v_min: -10, v_max: 10}` |
//! | QR-DQN (Dabney et al. 2018) | `head: {type: qr, quantiles: 200, kappa: 1}` |
//! | IQN (Dabney et al. 2018) | `head: {type: iqn, n_tau: 64, n_tau_prime: 64, k_policy: 32}` |
//! | NoisyNets (Fortunato et al. 2018) | `noisy: {sigma0: 0.5}` (and `exploration: {type: constant, epsilon: 0}`) |
//! | Munchausen (Vieillard et al. 2020) | `munchausen: {alpha: 0.9, tau: 0.03, clip: -1}`, any head |
//!
//! The target of row `j` is `y_j = G_j + gamma^m (1 - terminated_j) Q'(s'_j, a*_j)` with
//! `a* = argmax_a Q'(s', a)` (vanilla) or `argmax_a Q(s', a)` (double), where `Q'` is the target
//! network (the online one when there is none), and the loss is
//! `mean_j w_j L(Q(s_j, a_j) - y_j)`, `w` the importance weights of prioritized replay (1
//! otherwise) and `L` the Huber or squared error. Distributional heads replace `Q` by a
//! distribution and `L` by its own loss ([`super::head`]); everything else is shared.
//!
//! Munchausen-DQN (Vieillard, Pietquin and Geist 2020, "Munchausen Reinforcement Learning",
//! eq. 2 and Appendix B.1) replaces the bootstrap by the soft value of the target network's
//! policy `pi = softmax(q' / tau)` and adds the scaled, clipped log-policy of the action taken:
//! `y = G + alpha [tau log pi(a|s)]_{l0}^0 + gamma^m (1 - terminated) sum_a' pi(a'|s')
//! (q'(s', a') - tau log pi(a'|s'))`, with `log pi` computed by the log-sum-exp trick. With a
//! distributional head the bonus shifts the target's atoms or quantiles, and the next state's
//! distribution is the `pi`-mixture of every action's, each shifted by `-tau log pi(a'|s')`
//! (the distributional form of Vieillard et al.'s M-IQN).
//!
//! NoisyNets (Fortunato et al. 2018, Algorithm 1 and Appendix C.1) make every linear layer noisy
//! ([`crate::rl::net::NoisyLinear`]). The online network's noise is drawn anew before each greedy
//! action and before each gradient step; the target network draws its own, independently, at
//! each gradient step, and the online noise of the step also picks Double DQN's `a*`. Greedy
//! evaluation uses the means (the noise off). All noise and IQN's fractions come from one
//! seeded host stream, so a seed fixes a run.
//!
//! Speed (FACTS.md §6: libtorch's per-operation overhead dominates at these sizes): trainable
//! parameters are views into one flat tensor ([`FlatOptimizer`]), so target syncs, gradient
//! clipping and the optimizer step cost a few operations each; batches are sampled into buffers
//! allocated once, which CPU tensors alias without copying; acting copies `|A|` Q-values to the
//! host and takes the argmax there.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::head::{Head, HeadSpec, HostBatch, HostHead, Target};
use super::host_mlp::HostMlp;
use super::optim::{FlatOptimizer, LrSchedule, OptimizerSpec};
use super::{argmax, Agent, Exploration, Progress, Transition};
use crate::rl::env::{ActionSpace, Obs, ObsSpace};
use crate::rl::net::{is_noise, Layers, NetOptions, NetSpec, Noise, QNetwork};
use crate::rl::replay::{Batch, LatestReplay, ObsBatch, PrioritizedConfig, PrioritizedReplay, Replay, UniformReplay};
use crate::rl::schedule::linear_schedule;
use crate::rl::state::State;

/// The `agent: {type: dqn, ...}` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DqnConfig {
    /// The Q-network (default: a 64-64 MLP for vectors, the Nature CNN for pixels).
    pub net: Option<NetSpec>,
    /// What the network outputs per action: an expected value, or a distribution (C51, QR-DQN).
    pub head: HeadSpec,
    /// Discount factor.
    pub gamma: f64,
    /// Steps per return (1 is the classic one-step target).
    pub n_step: usize,
    /// Double DQN: the online network picks the next action, the target network values it.
    pub double: bool,
    /// The target network.
    pub target: TargetSpec,
    /// Munchausen-DQN's target (off when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub munchausen: Option<Munchausen>,
    /// NoisyNets: factorised Gaussian noisy linear layers (off when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noisy: Option<Noisy>,
    /// The replay buffer.
    pub replay: ReplaySpec,
    /// Transitions per gradient step.
    pub batch_size: usize,
    /// Environment steps before the first gradient step.
    pub learning_starts: u64,
    /// Environment steps between gradient phases.
    pub train_freq: u64,
    /// Gradient steps per phase.
    pub gradient_steps: u32,
    /// The per-transition loss of the expected head (default Huber); distributional heads have
    /// their own and refuse this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossKind>,
    /// The optimizer.
    pub optimizer: OptimizerSpec,
    /// Initial learning rate.
    pub lr: f64,
    /// How the learning rate changes.
    pub lr_schedule: LrSchedule,
    /// Gradients are rescaled so that their global L2 norm is at most this (no clipping if unset).
    pub max_grad_norm: Option<f64>,
    /// Rewards are multiplied by this before learning (lab 002: 0.01); returns are reported unscaled.
    pub reward_scale: f64,
    /// Epsilon while training.
    pub exploration: Exploration,
    /// Start from saved weights, optionally freezing some layers.
    pub pretrained: Option<Pretrained>,
}

impl Default for DqnConfig {
    fn default() -> Self {
        DqnConfig {
            net: None,
            head: HeadSpec::Expected,
            gamma: 0.99,
            n_step: 1,
            double: false,
            target: TargetSpec::Hard { every: 500 },
            munchausen: None,
            noisy: None,
            replay: ReplaySpec::Uniform { size: 100_000 },
            batch_size: 64,
            learning_starts: 1000,
            train_freq: 1,
            gradient_steps: 1,
            loss: None,
            optimizer: OptimizerSpec::default(),
            lr: 1e-3,
            lr_schedule: LrSchedule::Constant,
            max_grad_norm: Some(10.0),
            reward_scale: 1.0,
            exploration: Exploration::Linear { start: 1.0, end: 0.05, fraction: 0.1 },
            pretrained: None,
        }
    }
}

/// The target network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TargetSpec {
    /// Bootstrap from the online network itself (naive Q-learning, DQN 2013).
    None,
    /// Copy the online weights every `every` environment steps (DQN 2015).
    Hard {
        /// Environment steps between copies.
        every: u64,
    },
    /// `target <- tau online + (1 - tau) target` after every gradient step (Polyak; lab 003).
    Soft {
        /// Interpolation weight in `(0, 1]`.
        tau: f64,
    },
}

/// `munchausen: {alpha: 0.9, tau: 0.03, clip: -1}` (Vieillard et al. 2020's values).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Munchausen {
    /// Weight of the log-policy bonus.
    pub alpha: f64,
    /// Entropy temperature of the softmax policy.
    pub tau: f64,
    /// Lower clip `l0` of `tau log pi(a|s)` (at most 0).
    pub clip: f64,
}

impl Default for Munchausen {
    fn default() -> Self {
        Munchausen { alpha: 0.9, tau: 0.03, clip: -1.0 }
    }
}

/// `noisy: {sigma0: 0.5}` (Fortunato et al. 2018's value for factorised noise).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Noisy {
    /// Initial noise scale: every `sigma` starts at `sigma0 / sqrt(inputs)`.
    pub sigma0: f64,
}

impl Default for Noisy {
    fn default() -> Self {
        Noisy { sigma0: 0.5 }
    }
}

/// The replay buffer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ReplaySpec {
    /// Learn from the newest `batch_size` transitions (naive online Q-learning).
    None,
    /// Uniform sampling (DQN 2013/2015).
    Uniform {
        /// Capacity in transitions.
        #[serde(default = "default_buffer")]
        size: usize,
    },
    /// Proportional prioritized replay.
    Prioritized {
        /// Capacity in transitions.
        #[serde(default = "default_buffer")]
        size: usize,
        /// Prioritization exponent (0 is uniform).
        #[serde(default = "default_alpha")]
        alpha: f64,
        /// Initial importance-sampling exponent, annealed linearly to 1.
        #[serde(default = "default_beta")]
        beta: f64,
        /// Fraction of the budget over which `beta` reaches 1.
        #[serde(default = "default_one")]
        beta_fraction: f64,
        /// Added to `|TD error|` (lab 000 uses 0.1).
        #[serde(default = "default_priority_eps")]
        epsilon: f64,
    },
}

fn default_buffer() -> usize {
    100_000
}
fn default_alpha() -> f64 {
    0.6
}
fn default_beta() -> f64 {
    0.4
}
fn default_one() -> f64 {
    1.0
}
fn default_priority_eps() -> f64 {
    1e-6
}

/// The per-transition loss of the TD error `delta`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Huber with threshold 1 (`smooth_l1_loss`, Mnih et al. 2015's error clipping).
    #[default]
    Huber,
    /// `delta^2` (mean squared error).
    Mse,
}

impl LossKind {
    /// The name configs use.
    pub fn name(self) -> &'static str {
        match self {
            LossKind::Huber => "huber",
            LossKind::Mse => "mse",
        }
    }
}

/// `pretrained: {path: cnn.safetensors, freeze: [trunk]}`: weights to start from (every variable
/// of the network found in the file is loaded) and name prefixes of variables left untrained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pretrained {
    /// A safetensors file written by `tune train` (or any file with the same variable names).
    pub path: PathBuf,
    /// Variable-name prefixes to freeze, e.g. `trunk` (all convolutions of a dueling CNN) or
    /// `trunk.conv1`.
    #[serde(default)]
    pub freeze: Vec<String>,
}

impl DqnConfig {
    /// See [`super::AgentConfig::continues_as`].
    pub fn continues_as(&self, other: &DqnConfig) -> Result<(), String> {
        let same = |name: &str, a: serde_json::Value, b: serde_json::Value| {
            if a == b {
                Ok(())
            } else {
                Err(format!(
                    "`agent.{name}` must stay the same during a run (it shapes the learner's state): {a} vs {b}"
                ))
            }
        };
        fn json<T: Serialize>(v: &T) -> serde_json::Value {
            serde_json::to_value(v).unwrap_or_default()
        }
        same("net", json(&self.net), json(&other.net))?;
        same("head", json(&self.head), json(&other.head))?;
        same("noisy", json(&self.noisy.is_some()), json(&other.noisy.is_some()))?;
        same("n_step", json(&self.n_step), json(&other.n_step))?;
        same("pretrained", json(&self.pretrained), json(&other.pretrained))?;
        let replay = |r: &ReplaySpec| match r {
            ReplaySpec::None => ("none", 0),
            ReplaySpec::Uniform { size } => ("uniform", *size),
            ReplaySpec::Prioritized { size, .. } => ("prioritized", *size),
        };
        same("replay (type and size)", json(&replay(&self.replay)), json(&replay(&other.replay)))?;
        if matches!(self.replay, ReplaySpec::None) && self.batch_size != other.batch_size {
            return Err(
                "`agent.batch_size` must stay the same with `replay: {type: none}` (it sizes the buffer)".into()
            );
        }
        let optimizer = |o: &OptimizerSpec| match o {
            OptimizerSpec::Adam { .. } | OptimizerSpec::Adamw { .. } => "adam",
            OptimizerSpec::Rmsprop { .. } => "rmsprop",
            OptimizerSpec::Sgd { .. } => "sgd",
        };
        same("optimizer.type", json(&optimizer(&self.optimizer)), json(&optimizer(&other.optimizer)))
    }

    /// Checks what serde cannot.
    pub fn validate(&self, space: &ObsSpace) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.gamma) {
            return Err(format!("gamma must be in [0, 1], got {}", self.gamma));
        }
        let positive = |name: &str, v: u64| if v == 0 { Err(format!("{name} must be at least 1")) } else { Ok(()) };
        positive("n_step", self.n_step as u64)?;
        positive("batch_size", self.batch_size as u64)?;
        positive("train_freq", self.train_freq)?;
        positive("gradient_steps", self.gradient_steps as u64)?;
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("lr must be a positive number, got {}", self.lr));
        }
        if let Some(n) = self.max_grad_norm {
            if !(n > 0.0) {
                return Err(format!("max_grad_norm must be positive (or absent for no clipping), got {n}"));
            }
        }
        if !self.reward_scale.is_finite() || self.reward_scale == 0.0 {
            return Err(format!("reward_scale must be a non-zero number, got {}", self.reward_scale));
        }
        match self.target {
            TargetSpec::Hard { every: 0 } => return Err("target.every must be at least 1".into()),
            TargetSpec::Soft { tau } if !(tau > 0.0 && tau <= 1.0) => {
                return Err(format!("target.tau must be in (0, 1], got {tau}"))
            }
            _ => {}
        }
        match self.replay {
            ReplaySpec::Uniform { size } | ReplaySpec::Prioritized { size, .. } => {
                let min = 2 * (self.n_step + 4) + 1;
                if size < min.max(self.batch_size) {
                    return Err(format!(
                        "replay.size {size} is too small: it must hold at least batch_size ({}) and {min} transitions",
                        self.batch_size
                    ));
                }
            }
            ReplaySpec::None => {}
        }
        if let ReplaySpec::Prioritized { alpha, beta, beta_fraction, epsilon, .. } = self.replay {
            if !(0.0..=1.0).contains(&alpha) {
                return Err(format!("replay.alpha must be in [0, 1], got {alpha}"));
            }
            if !(0.0..=1.0).contains(&beta) {
                return Err(format!("replay.beta must be in [0, 1], got {beta}"));
            }
            if !(0.0..=1.0).contains(&beta_fraction) {
                return Err(format!("replay.beta_fraction must be in [0, 1], got {beta_fraction}"));
            }
            if !(epsilon > 0.0) {
                return Err(format!("replay.epsilon must be positive, got {epsilon}"));
            }
        }
        if matches!(self.exploration, Exploration::Ucb { .. }) {
            return Err("exploration type `ucb` is for tabular agents; use linear, exponential or constant".into());
        }
        self.optimizer.validate()?;
        self.head.validate()?;
        if let Some(m) = &self.munchausen {
            if !(0.0..=1.0).contains(&m.alpha) {
                return Err(format!("munchausen.alpha must be in [0, 1] (0.9 in the paper), got {}", m.alpha));
            }
            if !(m.tau > 0.0 && m.tau.is_finite()) {
                return Err(format!("munchausen.tau must be a positive number (0.03 in the paper), got {}", m.tau));
            }
            if !(m.clip <= 0.0 && m.clip.is_finite()) {
                return Err(format!("munchausen.clip must be a finite number <= 0 (-1 in the paper), got {}", m.clip));
            }
            if self.double {
                return Err("double does not apply with munchausen, whose target is the soft value of every action rather than one action's; set double: false".into());
            }
        }
        if let Some(Noisy { sigma0 }) = self.noisy {
            if !(sigma0 > 0.0 && sigma0.is_finite()) {
                return Err(format!("noisy.sigma0 must be a positive number (0.5 in the paper), got {sigma0}"));
            }
        }
        if let (Some(loss), true) = (self.loss, self.head.is_distributional()) {
            let own = match self.head {
                HeadSpec::C51 { .. } => "the cross-entropy of the projected distribution",
                _ => "the quantile Huber loss (its threshold is head.kappa)",
            };
            return Err(format!(
                "loss: {} does not apply to head type {}, which is trained by {own}; remove `loss` (it takes huber or mse with head type expected only)",
                loss.name(),
                self.head.name()
            ));
        }
        if let Some(NetSpec::Mlp { hidden, .. }) = &self.net {
            if let Some((i, w)) = hidden.iter().enumerate().find(|(_, w)| **w < 1) {
                return Err(format!("net.hidden[{i}] must be at least 1 unit wide, got {w}"));
            }
        }
        if let ObsSpace::Pixels { .. } = space {
            if matches!(self.net, Some(NetSpec::Mlp { .. })) {
                return Err("net.type mlp needs vector observations; use net.type nature_cnn for pixels".into());
            }
        }
        Ok(())
    }

    pub(super) fn net_spec(&self, space: &ObsSpace) -> NetSpec {
        self.net.clone().unwrap_or_else(|| NetSpec::default_for(space))
    }

    /// What the network outputs and how its layers are made (each network gets its own noise):
    /// `atoms` outputs per action, or one per action and fraction for IQN.
    fn net_options(&self, atoms: i64) -> NetOptions {
        NetOptions {
            atoms: if self.head.iqn_samples().is_some() { 1 } else { atoms },
            layers: self.noisy.as_ref().map_or_else(Layers::plain, |n| Layers::noisy(n.sigma0)),
            tau_embedding: self.head.iqn_samples().map(|(.., embedding)| embedding as i64),
        }
    }

    /// The loss of the expected head.
    fn loss_kind(&self) -> LossKind {
        self.loss.unwrap_or_default()
    }
}

/// Host buffers and the tensors that read them.
struct BatchTensors {
    /// `[B, obs...]` on the device.
    obs: Tensor,
    next_obs: Tensor,
    /// `[B, 1]` int64.
    actions: Tensor,
    /// `[B, 1]` each.
    returns: Tensor,
    bootstrap: Tensor,
    weights: Tensor,
    /// Host tensors aliasing the batch's buffers, copied to the device ones when those differ.
    host: Option<[Tensor; 6]>,
}

/// A Q-network with the flat-parameter layout.
struct Network {
    vs: nn::VarStore,
    net: QNetwork,
    /// Trainable variables, views into `flat`, in name order.
    vars: Vec<Tensor>,
    flat: Tensor,
    /// The gradient of `flat`, same layout.
    grad: Tensor,
    /// The hand-differentiated path for plain MLPs, when it applies.
    fused: Option<FusedMlp>,
    /// The noise of noisy layers.
    noise: Option<Noise>,
}

impl Network {
    fn build(
        spec: &NetSpec,
        space: &ObsSpace,
        actions: ActionSpace,
        opts: &NetOptions,
        device: Device,
    ) -> anyhow::Result<Self> {
        let vs = nn::VarStore::new(device);
        let net = spec.build(&vs.root(), space, actions, opts)?;
        let noise = Noise::attach(&vs, &opts.layers);
        let empty = || Tensor::zeros([0], (Kind::Float, device));
        Ok(Network { vs, net, vars: Vec::new(), flat: empty(), grad: empty(), fused: None, noise })
    }

    /// Variables sorted by name.
    fn named(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<_> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// PyTorch's default initialisation of `nn.Linear` and `nn.Conv2d` (weights and biases
    /// uniform in `±1/sqrt(fan_in)`, also the means of noisy layers), drawn from `rng` so that a
    /// seed fixes it whatever the thread. Noisy layers' `*_sigma` keep their constant start and
    /// their noise is drawn, not initialised.
    fn init(&mut self, rng: &mut StdRng) {
        let named: Vec<_> = self.named().into_iter().filter(|(n, _)| !is_noise(n) && !n.ends_with("_sigma")).collect();
        let fan_in = |name: &str| -> i64 {
            let weight = name.strip_suffix("bias").map(|p| format!("{p}weight")).unwrap_or_else(|| name.to_string());
            let size = named.iter().find(|(n, _)| *n == weight).map(|(_, t)| t.size()).unwrap_or_default();
            size.iter().skip(1).product::<i64>().max(1)
        };
        let _guard = tch::no_grad_guard();
        for (name, var) in &named {
            let bound = 1.0 / (fan_in(name) as f64).sqrt();
            let values: Vec<f32> = (0..var.numel()).map(|_| rng.random_range(-bound..bound) as f32).collect();
            let mut var = var.shallow_clone();
            var.copy_(&Tensor::from_slice(&values).view(var.size().as_slice()).to_device(var.device()));
        }
    }

    /// Makes every variable not matching `frozen` a view into one flat tensor (and its gradient
    /// a view into another), and sets up the fused path for a plain MLP with nothing frozen.
    fn flatten(&mut self, frozen: &[String], spec: &NetSpec, batch_size: usize) {
        let device = self.vs.device();
        let mut trainable = Vec::new();
        for (name, var) in self.named() {
            if is_noise(&name) {
                continue;
            }
            if frozen.iter().any(|p| name == *p || name.starts_with(&format!("{p}."))) {
                let _ = var.set_requires_grad(false);
            } else {
                trainable.push((name, var));
            }
        }
        let total: i64 = trainable.iter().map(|(_, v)| v.numel() as i64).sum();
        let flat = Tensor::zeros([total], (Kind::Float, device));
        let grad = Tensor::zeros([total], (Kind::Float, device));
        let _guard = tch::no_grad_guard();
        let mut offset = 0;
        let mut grads = std::collections::HashMap::new();
        for (name, var) in &mut trainable {
            let n = var.numel() as i64;
            let size = var.size();
            let mut view = flat.narrow(0, offset, n).view(size.as_slice());
            view.copy_(var);
            var.set_data(&view);
            grads.insert(name.clone(), (var.shallow_clone(), grad.narrow(0, offset, n).view(size.as_slice())));
            offset += n;
        }
        // Noisy layers and IQN's embedding have variables the fused path does not know: it
        // declines them (`FusedMlp::new` returns `None`), as it declines dueling and frozen nets.
        self.fused = match spec {
            NetSpec::Mlp { hidden, dueling: false } if frozen.is_empty() && self.noise.is_none() => {
                FusedMlp::new(&mut grads, hidden.len() + 1, batch_size, device)
            }
            _ => None,
        };
        self.vars = trainable.into_iter().map(|(_, v)| v).collect();
        self.flat = flat;
        self.grad = grad;
    }

    /// The network's outputs (IQN's at the fractions `taus`); without gradient tracking on the
    /// fused path, with it otherwise unless the caller holds a no-grad guard.
    fn out(&self, x: &Tensor, taus: Option<&Tensor>) -> Tensor {
        match (&self.fused, taus) {
            (Some(f), _) => f.forward(x, None),
            (None, Some(taus)) => self.net.forward_taus(x, taus),
            (None, None) => self.net.forward(x),
        }
    }

    /// The network's outputs written into `dst` (the fused path's last layer writes there
    /// directly), without gradient tracking.
    fn out_into(&self, x: &Tensor, dst: &mut Tensor) {
        let _guard = tch::no_grad_guard();
        match &self.fused {
            Some(f) => {
                let _ = f.forward(x, Some(dst));
            }
            None => {
                dst.copy_(&self.net.forward(x));
            }
        }
    }
}

/// One layer of a [`FusedMlp`]: views into the flat parameters and gradient.
struct FusedLayer {
    /// `W`, `[out, in]`.
    weight: Tensor,
    /// `W^T`, `[in, out]`.
    weight_t: Tensor,
    /// `b`, `[out]`.
    bias: Tensor,
    /// `dL/dW`, `[out, in]`.
    grad_weight: Tensor,
    /// `dL/db` as a row, `[1, out]`.
    grad_bias: Tensor,
}

/// A plain MLP (`Linear -> ReLU -> ... -> Linear`) run and differentiated by hand: each layer is
/// one `addmm` (+ an in-place ReLU) forward and a transpose, two matrix products and a ReLU mask
/// backward, written straight into the flat gradient. Compared with autograd this drops the
/// graph bookkeeping and the gradient gathering, which dominate at DQN sizes (FACTS.md §6);
/// `fused_mlp_gradients_match_autograd` checks it against autograd.
struct FusedMlp {
    layers: Vec<FusedLayer>,
    /// The input of each layer in the last [`FusedMlp::forward_saving`].
    inputs: Vec<Tensor>,
    /// `[1, batch]` ones: `ones @ dZ` sums the rows of `dZ` (the bias gradient).
    ones: Tensor,
}

impl FusedMlp {
    /// Takes the `i.weight`/`i.bias` variables and gradient views of an MLP with `n_layers` layers.
    fn new(
        grads: &mut std::collections::HashMap<String, (Tensor, Tensor)>,
        n_layers: usize,
        batch_size: usize,
        device: Device,
    ) -> Option<Self> {
        let mut layers = Vec::with_capacity(n_layers);
        for i in 0..n_layers {
            let (weight, grad_weight) = grads.remove(&format!("{i}.weight"))?;
            let (bias, grad_bias) = grads.remove(&format!("{i}.bias"))?;
            layers.push(FusedLayer {
                weight_t: weight.tr(),
                weight,
                grad_bias: grad_bias.unsqueeze(0),
                bias,
                grad_weight,
            });
        }
        grads.is_empty().then(|| FusedMlp {
            layers,
            inputs: Vec::with_capacity(n_layers),
            ones: Tensor::ones([1, batch_size as i64], (Kind::Float, device)),
        })
    }

    /// The outputs for `x`, written into `into` when given (which saves the copy of a caller
    /// that wants them there, such as a host buffer).
    fn forward(&self, x: &Tensor, into: Option<&Tensor>) -> Tensor {
        let _guard = tch::no_grad_guard();
        let last = self.layers.len() - 1;
        let mut h = x.shallow_clone();
        for (l, layer) in self.layers.iter().enumerate() {
            h = Self::layer(layer, &h, l == last, into);
        }
        h
    }

    /// [`FusedMlp::forward`], keeping each layer's input for [`FusedMlp::backward`].
    fn forward_saving(&mut self, x: &Tensor, into: Option<&Tensor>) -> Tensor {
        let _guard = tch::no_grad_guard();
        self.inputs.clear();
        let last = self.layers.len() - 1;
        let mut h = x.shallow_clone();
        for (l, layer) in self.layers.iter().enumerate() {
            let z = Self::layer(layer, &h, l == last, into);
            self.inputs.push(h);
            h = z;
        }
        h
    }

    /// One layer: `h W^T + b`, then the ReLU but for the last layer, whose outputs go to
    /// `into` when given.
    fn layer(layer: &FusedLayer, h: &Tensor, last: bool, into: Option<&Tensor>) -> Tensor {
        match (last, into) {
            (true, Some(out)) => layer.bias.addmm_out(out, h, &layer.weight_t),
            (true, None) => layer.bias.addmm(h, &layer.weight_t),
            (false, _) => layer.bias.addmm(h, &layer.weight_t).relu_(),
        }
    }

    /// Writes `dL/dtheta` into the gradient views, given `dL/dQ` for the last saved forward pass.
    fn backward(&self, grad_q: &Tensor) {
        let _guard = tch::no_grad_guard();
        let mut dz = grad_q.shallow_clone();
        for (l, layer) in self.layers.iter().enumerate().rev() {
            let input = &self.inputs[l];
            let _ = dz.tr().mm_out(&layer.grad_weight, input);
            let _ = self.ones.mm_out(&layer.grad_bias, &dz);
            if l > 0 {
                // dL/dh = dZ W, through the ReLU that produced the input (h > 0 where z > 0).
                let dh = dz.mm(&layer.weight);
                dz = input.threshold_backward(&dh, 0.0);
            }
        }
    }
}

/// IQN's sampled fractions `tau ~ U(0, 1)` of `M` members (an agent is one; the batched
/// learner has one per member): per update `N` per row for the online outputs, `N'` for the
/// target and `K` for the policy (valuing `s'`, and `s` for Munchausen), and `K` for each
/// greedy action. Each member draws from its own stream, in that order, into one host buffer
/// laid out part by part (every member's online fractions, then every member's target ones,
/// then the policy's), copied to the device in one operation.
pub(super) struct Fractions {
    /// Host tensors aliasing `host` and `act_host` (declared first: dropped before them).
    src: Tensor,
    act_src: Tensor,
    host: Vec<f32>,
    act_host: Vec<f32>,
    all: Tensor,
    /// Views of `all`: `[M B, N]`, `[M B, N']`, `[M B, K]`, member-major.
    pub(super) online: Tensor,
    pub(super) target: Tensor,
    pub(super) policy: Tensor,
    /// `[M, K]` for acting.
    pub(super) act: Tensor,
    /// The batch size and `N`, `N'`, `K`.
    pub(super) sizes: [usize; 4],
}

impl Fractions {
    pub(super) fn new(members: usize, sizes: [usize; 4], device: Device) -> Self {
        let [batch, n, n_prime, k] = sizes;
        let host = vec![0f32; members * batch * (n + n_prime + k)];
        let act_host = vec![0f32; members * k];
        let (m, b) = (members as i64, batch as i64);
        let [n, n_prime, k] = [n, n_prime, k].map(|x| x as i64);
        // SAFETY: the buffers live in the struct, are never resized and outlive the aliases.
        let (src, act_src) = unsafe { (alias(&host, &[host.len() as i64]), alias(&act_host, &[m, k])) };
        let all = Tensor::zeros([host.len() as i64], (Kind::Float, device));
        let online = all.narrow(0, 0, m * b * n).view([m * b, n]);
        let target = all.narrow(0, m * b * n, m * b * n_prime).view([m * b, n_prime]);
        let policy = all.narrow(0, m * b * (n + n_prime), m * b * k).view([m * b, k]);
        let act = Tensor::zeros([m, k], (Kind::Float, device));
        Fractions { src, act_src, host, act_host, all, online, target, policy, act, sizes }
    }

    /// New update fractions for the members `draw[i]`, each from its `rngs[i]`.
    pub(super) fn draw(&mut self, draw: &[bool], rngs: &mut [StdRng]) {
        let [b, n, n_prime, k] = self.sizes;
        let members = draw.len();
        let parts = [(0, b * n), (members * b * n, b * n_prime), (members * b * (n + n_prime), b * k)];
        for (i, rng) in rngs.iter_mut().enumerate().filter(|(i, _)| draw[*i]) {
            for (start, len) in parts {
                self.host[start + i * len..start + (i + 1) * len].iter_mut().for_each(|t| *t = rng.random());
            }
        }
        let _guard = tch::no_grad_guard();
        self.all.copy_(&self.src);
    }

    /// New acting fractions for the members `draw[i]`, each from its `rngs[i]`.
    pub(super) fn draw_act(&mut self, draw: &[bool], rngs: &mut [StdRng]) {
        let k = self.sizes[3];
        for (i, rng) in rngs.iter_mut().enumerate().filter(|(i, _)| draw[*i]) {
            self.act_host[i * k..(i + 1) * k].iter_mut().for_each(|t| *t = rng.random());
        }
        let _guard = tch::no_grad_guard();
        self.act.copy_(&self.act_src);
    }
}

/// CPU training of C51 and QR-DQN without Munchausen: the head's maths on host copies of the
/// network outputs ([`HostHead`]); the gradient buffer is read in place by a tensor.
struct HostPath {
    /// `[B, |A| K]` tensors aliasing `grad`, `next`, `chooser` and `out` (declared first: dropped
    /// before them); the fused MLP writes its outputs straight into the last three.
    grad_t: Tensor,
    next_t: Tensor,
    chooser_t: Tensor,
    out_t: Tensor,
    grad: Vec<f32>,
    head: HostHead,
    next: Vec<f32>,
    chooser: Vec<f32>,
    out: Vec<f32>,
}

impl HostPath {
    fn new(cfg: &DqnConfig, n_actions: usize, atoms: i64, device: Device) -> Option<Self> {
        if device != Device::Cpu || cfg.munchausen.is_some() {
            return None;
        }
        let head = HostHead::new(&cfg.head)?;
        let len = cfg.batch_size * n_actions * atoms as usize;
        let (grad, mut next, mut chooser, mut out) =
            (vec![0f32; len], vec![0f32; len], vec![0f32; len], vec![0f32; len]);
        let shape = [cfg.batch_size as i64, n_actions as i64 * atoms];
        // SAFETY: the buffers live in the struct, are never resized and outlive the aliases;
        // libtorch writes the last three only in `host_loss_and_gradient`, before the slices
        // of them are borrowed.
        let grad_t = unsafe { alias(&grad, &shape) };
        let [next_t, chooser_t, out_t] = [&mut next, &mut chooser, &mut out].map(|b| unsafe { alias_mut(b, &shape) });
        Some(HostPath { grad_t, next_t, chooser_t, out_t, grad, head, next, chooser, out })
    }
}

/// The DQN agent.
pub struct DqnAgent {
    cfg: DqnConfig,
    device: Device,
    n_actions: usize,
    head: Head,
    /// Outputs per action (`head.width()`).
    atoms: i64,
    /// `[0, 1, ..., K - 1]` as a `[1, K]` int64 row: action `a`'s outputs are `a K + offsets`.
    atom_offsets: Tensor,
    online: Network,
    /// `None` when the config has no target network.
    target: Option<Network>,
    /// IQN's fractions.
    fractions: Option<Fractions>,
    /// The host path of the distributional heads on CPU.
    host: Option<HostPath>,
    /// Acting on the host (CPU, plain MLP, expected head).
    host_act: Option<HostMlp>,
    /// Draws the layers' noise and IQN's fractions.
    samples_rng: StdRng,
    optimizer: FlatOptimizer,
    replay: Box<dyn Replay>,
    batch: Batch,
    /// `discounts * (1 - terminated)` per row.
    bootstrap: Vec<f32>,
    tensors: BatchTensors,
    /// The observation to act on, and a host tensor aliasing it.
    act_f32: Vec<f32>,
    act_u8: Vec<u8>,
    act_host: Tensor,
    act_device: Option<Tensor>,
    q_host: Vec<f32>,
    td_host: Vec<f32>,
    grad_parts: Vec<Tensor>,
    /// `dL/d(outputs)`, `[B, |A| K]`, zero but for the actions taken.
    grad_q: Tensor,
    lr: f64,
    loss_sum: f64,
    loss_count: u64,
    updates: u64,
}

impl std::fmt::Debug for DqnAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DqnAgent").field("cfg", &self.cfg).field("device", &self.device).finish_non_exhaustive()
    }
}

/// Shape of a batch of `rows` observations of `space` as the network sees it.
fn batch_shape(space: &ObsSpace, rows: usize) -> Vec<i64> {
    std::iter::once(rows as i64).chain(space.shape().iter().map(|&d| d as i64)).collect()
}

/// A CPU tensor reading `data` in place.
///
/// # Safety
/// `data` must outlive the tensor and never be reallocated.
pub(super) unsafe fn alias<T: tch::kind::Element>(data: &[T], shape: &[i64]) -> Tensor {
    debug_assert_eq!(data.len() as i64, shape.iter().product::<i64>());
    Tensor::from_blob(data.as_ptr() as *const u8, shape, &[], T::KIND, Device::Cpu)
}

/// A CPU tensor over `data` that libtorch writes into.
///
/// # Safety
/// As [`alias`]; besides, no Rust reference to `data` may be alive while libtorch writes.
pub(super) unsafe fn alias_mut<T: tch::kind::Element>(data: &mut [T], shape: &[i64]) -> Tensor {
    debug_assert_eq!(data.len() as i64, shape.iter().product::<i64>());
    Tensor::from_blob(data.as_mut_ptr() as *const u8, shape, &[], T::KIND, Device::Cpu)
}

/// The stream of an agent seeded `seed` that draws its noisy layers' noise and IQN's fractions.
pub(super) fn samples_rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ 0x15_e5a4_91e5)
}

/// The replay buffer of `cfg`, fed by `copies` environment copies.
pub(super) fn build_replay(cfg: &DqnConfig, space: &ObsSpace, copies: usize) -> Box<dyn Replay> {
    let (gamma, n) = (cfg.gamma as f32, cfg.n_step);
    match cfg.replay {
        ReplaySpec::None => Box::new(LatestReplay::with_streams(space, cfg.batch_size, n, gamma, copies)),
        ReplaySpec::Uniform { size } => Box::new(UniformReplay::with_streams(space, size, n, gamma, copies)),
        ReplaySpec::Prioritized { size, alpha, epsilon, .. } => {
            let per = PrioritizedConfig { alpha, epsilon };
            Box::new(PrioritizedReplay::with_streams(space, size, n, gamma, per, copies))
        }
    }
}

/// PER's importance-sampling exponent at `fraction` of the budget (1 for other buffers).
pub(super) fn per_beta(replay: &ReplaySpec, fraction: f64) -> f64 {
    match *replay {
        ReplaySpec::Prioritized { beta, beta_fraction, .. } => {
            linear_schedule(beta, 1.0, (beta_fraction * 1e6) as u64, (fraction * 1e6) as u64)
        }
        _ => 1.0,
    }
}

/// The online network `DqnAgent::new` starts from for `seed`: built, initialised from the
/// seed's stream, with pretrained weights loaded; and the names of the frozen variables.
fn initial_network(
    cfg: &DqnConfig,
    spec: &NetSpec,
    space: &ObsSpace,
    actions: ActionSpace,
    atoms: i64,
    device: Device,
    seed: u64,
) -> anyhow::Result<(Network, Vec<String>)> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_1e7_0f_d9a);
    let mut online = Network::build(spec, space, actions, &cfg.net_options(atoms), device)?;
    online.init(&mut rng);
    let frozen = match &cfg.pretrained {
        Some(p) => {
            load_pretrained(&mut online.vs, &p.path)?;
            let names: Vec<String> = online.named().into_iter().map(|(n, _)| n).collect();
            for prefix in &p.freeze {
                if !names.iter().any(|n| n == prefix || n.starts_with(&format!("{prefix}."))) {
                    return Err(crate::error::InputError::new(format!(
                        "pretrained.freeze: no variable is named `{prefix}` or starts with `{prefix}.`; the network's variables are: {}",
                        names.join(", ")
                    ))
                    .into());
                }
            }
            p.freeze.clone()
        }
        None => Vec::new(),
    };
    Ok((online, frozen))
}

/// The variables of the network `DqnAgent::new` starts from for `seed`, in name order (the
/// order of its flat parameters, which leave out the frozen ones): each name, shape, value and
/// whether `pretrained.freeze` freezes it. The batched learner stacks these, so that its member
/// `i` starts exactly where an agent seeded alike does.
#[allow(clippy::type_complexity)]
pub(super) fn initial_parameters(
    cfg: &DqnConfig,
    space: &ObsSpace,
    actions: ActionSpace,
    seed: u64,
) -> anyhow::Result<Vec<(String, Vec<i64>, Tensor, bool)>> {
    let spec = cfg.net_spec(space);
    let atoms = Head::new(&cfg.head, Device::Cpu).width();
    let (online, frozen) = initial_network(cfg, &spec, space, actions, atoms, Device::Cpu, seed)?;
    Ok(online
        .named()
        .into_iter()
        .filter(|(n, _)| !is_noise(n))
        .map(|(n, t)| {
            let size = t.size();
            let is_frozen = frozen.iter().any(|p| n == *p || n.starts_with(&format!("{p}.")));
            (n, size, t.detach().copy(), is_frozen)
        })
        .collect())
}

impl DqnAgent {
    /// Builds the networks, replay and optimizer; `seed` fixes the initial weights.
    pub fn new(
        cfg: &DqnConfig,
        space: &ObsSpace,
        actions: ActionSpace,
        device: Device,
        seed: u64,
    ) -> anyhow::Result<Self> {
        Self::with_env_copies(cfg, space, actions, device, seed, 1)
    }

    /// [`new`](Self::new) for a run that steps `copies` environments together: the replay
    /// buffer keeps one stream per copy ([`Transition::env`] says which).
    pub fn with_env_copies(
        cfg: &DqnConfig,
        space: &ObsSpace,
        actions: ActionSpace,
        device: Device,
        seed: u64,
        copies: usize,
    ) -> anyhow::Result<Self> {
        cfg.validate(space).map_err(crate::error::InputError::new)?;
        let spec = cfg.net_spec(space);
        let head = Head::new(&cfg.head, device);
        let atoms = head.width();
        let (mut online, frozen) = initial_network(cfg, &spec, space, actions, atoms, device, seed)?;
        online.flatten(&frozen, &spec, cfg.batch_size);
        let target = match cfg.target {
            TargetSpec::None => None,
            _ => {
                let mut target = Network::build(&spec, space, actions, &cfg.net_options(atoms), device)?;
                target.vs.copy(&online.vs)?;
                target.flatten(&frozen, &spec, cfg.batch_size);
                target.vs.freeze();
                Some(target)
            }
        };
        let gamma = cfg.gamma as f32;
        let replay = build_replay(cfg, space, copies);
        // Any storage sizes batches the same way; a small one suffices to allocate it.
        let batch = crate::rl::replay::ReplayStorage::new(space, 2 * (cfg.n_step + 8) + 2, cfg.n_step, gamma)
            .new_batch(cfg.batch_size);
        let b = cfg.batch_size;
        let bootstrap = vec![0f32; b];
        let obs_shape = batch_shape(space, b);
        let col = [b as i64, 1];
        // SAFETY: the aliased buffers live in `self` (their heap storage never moves: they are
        // refilled in place and never resized) and the tensors are dropped with it.
        let host = unsafe {
            let obs = |o: &ObsBatch| match o {
                ObsBatch::F32(v) => alias(v, &obs_shape),
                ObsBatch::U8(v) => alias(v, &obs_shape),
            };
            [
                obs(&batch.obs),
                obs(&batch.next_obs),
                alias(&batch.actions, &col),
                alias(&batch.returns, &col),
                alias(&bootstrap, &col),
                alias(&batch.weights, &col),
            ]
        };
        let tensors = if device == Device::Cpu {
            let [obs, next_obs, actions, returns, bootstrap, weights] = host.each_ref().map(|t| t.shallow_clone());
            BatchTensors { obs, next_obs, actions, returns, bootstrap, weights, host: None }
        } else {
            let [obs, next_obs, actions, returns, bootstrap, weights] = host.each_ref().map(|t| t.to_device(device));
            BatchTensors { obs, next_obs, actions, returns, bootstrap, weights, host: Some(host) }
        };
        let (act_f32, act_u8) = match space {
            ObsSpace::Pixels { .. } => (Vec::new(), vec![0u8; space.flat_dim()]),
            _ => (vec![0f32; space.flat_dim()], Vec::new()),
        };
        let act_shape = batch_shape(space, 1);
        // SAFETY: as above, the buffers live as long as the agent and are never resized.
        let act_host = unsafe {
            if act_u8.is_empty() {
                alias(&act_f32, &act_shape)
            } else {
                alias(&act_u8, &act_shape)
            }
        };
        let act_device = (device != Device::Cpu).then(|| act_host.to_device(device));
        let optimizer = FlatOptimizer::new(&cfg.optimizer, &online.flat);
        let host_act = match &spec {
            NetSpec::Mlp { hidden, .. } if device == Device::Cpu && online.fused.is_some() && atoms == 1 => {
                let mut layout = Vec::new();
                let mut offset = 0;
                for (name, t) in online.named().into_iter().filter(|(n, _)| !is_noise(n)) {
                    layout.push((name, t.size(), offset));
                    offset += t.numel() as i64;
                }
                HostMlp::new(&layout, hidden.len() + 1)
            }
            _ => None,
        };
        Ok(DqnAgent {
            cfg: cfg.clone(),
            device,
            n_actions: actions.n,
            head,
            atoms,
            atom_offsets: Tensor::arange(atoms, (Kind::Int64, device)).view([1, atoms]),
            online,
            target,
            fractions: cfg.head.iqn_samples().map(|(n, n_prime, k, _)| Fractions::new(1, [b, n, n_prime, k], device)),
            host: HostPath::new(cfg, actions.n, atoms, device),
            host_act,
            samples_rng: samples_rng(seed),
            optimizer,
            replay,
            batch,
            bootstrap,
            tensors,
            act_f32,
            act_u8,
            act_host,
            act_device,
            q_host: vec![0.0; actions.n],
            td_host: vec![0.0; b],
            grad_parts: Vec::new(),
            grad_q: Tensor::zeros([b as i64, actions.n as i64 * atoms], (Kind::Float, device)),
            lr: cfg.lr,
            loss_sum: 0.0,
            loss_count: 0,
            updates: 0,
        })
    }

    /// One gradient step on a batch sampled from the replay buffer (what `observe` runs every
    /// `train_freq` steps; public for benchmarks).
    pub fn gradient_step(&mut self, rng: &mut StdRng) -> anyhow::Result<()> {
        self.update(1.0, rng)
    }

    /// Gradient steps taken so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The flat trainable parameters of the online network (for tests and benches).
    pub fn parameters(&self) -> &Tensor {
        &self.online.flat
    }

    /// The flat parameters of the target network, if there is one.
    pub fn target_parameters(&self) -> Option<&Tensor> {
        self.target.as_ref().map(|t| &t.flat)
    }

    /// New noise for both networks' noisy layers and new IQN fractions, for one gradient step.
    fn draw_samples(&mut self) {
        for net in std::iter::once(&mut self.online).chain(self.target.as_mut()) {
            if let Some(noise) = &mut net.noise {
                noise.resample(&mut self.samples_rng);
            }
        }
        if let Some(f) = &mut self.fractions {
            f.draw(&[true], std::slice::from_mut(&mut self.samples_rng));
        }
    }

    /// Q-values of one observation, on the host (IQN's from `K` fresh fractions; noisy layers
    /// with whatever noise they hold).
    pub fn q_values(&mut self, obs: Obs<'_>) -> &[f32] {
        match obs {
            Obs::Index(i) => {
                self.act_f32.fill(0.0);
                self.act_f32[i] = 1.0;
            }
            Obs::F32(x) => self.act_f32.copy_from_slice(x),
            Obs::U8(x) => self.act_u8.copy_from_slice(x),
        }
        if let Some(host) = &mut self.host_act {
            let flat = &self.online.flat;
            // SAFETY: the online parameters are a contiguous CPU f32 tensor that nothing writes
            // while this reads them.
            let params = unsafe { std::slice::from_raw_parts(flat.data_ptr() as *const f32, flat.numel()) };
            host.forward(params, &self.act_f32, &mut self.q_host);
            return &self.q_host;
        }
        let _guard = tch::no_grad_guard();
        let input = match &mut self.act_device {
            Some(d) => {
                d.copy_(&self.act_host);
                &*d
            }
            None => &self.act_host,
        };
        let taus = self.fractions.as_mut().map(|f| {
            f.draw_act(&[true], std::slice::from_mut(&mut self.samples_rng));
            &f.act
        });
        let q = self.head.q(&self.online.out(input, taus), self.n_actions as i64);
        q.copy_data(&mut self.q_host, self.n_actions);
        &self.q_host
    }

    fn greedy(&mut self, obs: Obs<'_>) -> usize {
        argmax(self.q_values(obs))
    }

    /// The output columns `[B, K]` of the actions `[B, 1]`.
    fn columns(&self, actions: &Tensor) -> Tensor {
        if self.atoms == 1 {
            actions.shallow_clone()
        } else {
            actions * self.atoms + &self.atom_offsets
        }
    }

    /// Computes the bootstrap discounts of the batch in `self.batch` and copies it to the device.
    fn stage_batch(&mut self) {
        for ((b, &d), &t) in self.bootstrap.iter_mut().zip(&self.batch.discounts).zip(&self.batch.terminated) {
            *b = d * (1.0 - t);
        }
        let t = &mut self.tensors;
        if let Some(host) = &t.host {
            for (dst, src) in
                [&mut t.obs, &mut t.next_obs, &mut t.actions, &mut t.returns, &mut t.bootstrap, &mut t.weights]
                    .into_iter()
                    .zip(host)
            {
                dst.copy_(src);
            }
        }
    }

    /// The targets of the batch in `self.batch` (no gradient): the TD targets `y` as `[B, 1]`,
    /// or the head's target distribution.
    fn targets(&mut self) -> Target {
        self.stage_batch();
        let _guard = tch::no_grad_guard();
        let t = &self.tensors;
        let bootstrap_net = self.target.as_ref().unwrap_or(&self.online);
        let fractions = self.fractions.as_ref();
        let next_out = bootstrap_net.out(&t.next_obs, fractions.map(|f| &f.target));
        let n_actions = self.n_actions as i64;
        let head = &self.head;
        // The policy's values Q(x, a) by `net`: IQN's at K fractions of their own, the mean of
        // the outputs otherwise (those of s' by the bootstrap network are `next_out`).
        let policy_q = |net: &Network, x: &Tensor| head.q(&net.out(x, fractions.map(|f| &f.policy)), n_actions);
        let next_q = || match fractions {
            Some(_) => policy_q(bootstrap_net, &t.next_obs),
            None => head.q(&next_out, n_actions),
        };
        let batch = t.actions.size()[0];
        let mut target = if let Some(m) = &self.cfg.munchausen {
            // log pi = log_softmax(q' / tau) of the target network (the online one without).
            let log_pi = |q: &Tensor| (q / m.tau).log_softmax(-1, Kind::Float);
            let log_pi_s = log_pi(&policy_q(bootstrap_net, &t.obs)).gather(1, &t.actions, false);
            let bonus = (log_pi_s * m.tau).clamp(m.clip, 0.0) * m.alpha;
            let log_pi_next = log_pi(&next_q());
            let shift = (&log_pi_next * -m.tau).unsqueeze(-1);
            let next = next_out.view([batch, n_actions, -1]);
            head.target(&next, Some((&log_pi_next.exp(), &shift)), &(&t.returns + bonus), &t.bootstrap)
        } else {
            // The outputs of a* = argmax_a Q(s', a), by the target network or (double) the online one.
            let next = match (head, self.cfg.double) {
                (Head::Expected, false) => next_out.amax(1, true).unsqueeze(1),
                (_, double) => {
                    let q = if double { policy_q(&self.online, &t.next_obs) } else { next_q() };
                    let next = next_out.view([batch, n_actions, -1]);
                    let width = next.size()[2];
                    next.gather(1, &q.argmax(1, true).unsqueeze(-1).expand([batch, 1, width], false), false)
                }
            };
            head.target(&next, None, &t.returns, &t.bootstrap)
        };
        target.taus = fractions.map(|f| f.online.shallow_clone());
        target
    }

    /// One gradient step on a sampled batch.
    ///
    /// `dL/dQ(s_j, a_j) = w_j l'(delta_j) / B` is formed directly (`l'` the clipped TD error for
    /// Huber, `2 delta` for MSE; a distributional head's gradient with respect to the outputs
    /// of `a_j`) and back-propagated by the fused MLP, or by autograd through the surrogate
    /// `sum_j Q(s_j, a_j) dL/dQ_j` for other networks. The loss itself, its finiteness and the
    /// new priorities come from one host copy of the TD errors (or of each row's loss).
    fn update(&mut self, beta: f64, rng: &mut StdRng) -> anyhow::Result<()> {
        flush_denormals();
        self.replay.sample(rng, beta, &mut self.batch);
        self.draw_samples();
        self.loss_and_gradient()?;
        if let Some(max_norm) = self.cfg.max_grad_norm {
            let norm = self.online.grad.norm().double_value(&[]);
            if !norm.is_finite() {
                anyhow::bail!(
                    "training diverged: the gradient norm became {norm} at gradient step {}; lower lr or set reward_scale",
                    self.updates + 1
                );
            }
            if norm > max_norm {
                let _ = self.online.grad.g_mul_scalar_(max_norm / (norm + 1e-6));
            }
        }
        self.optimizer.step(&mut self.online.flat, &mut self.online.grad, self.lr);
        if matches!(self.cfg.replay, ReplaySpec::Prioritized { .. }) {
            self.replay.update_priorities(&self.batch.indices, &self.td_host);
        }
        if let (TargetSpec::Soft { tau }, Some(target)) = (&self.cfg.target, &mut self.target) {
            let _guard = tch::no_grad_guard();
            let _ = target.flat.lerp_(&self.online.flat, *tau);
        }
        self.updates += 1;
        Ok(())
    }

    /// The loss of the batch in `self.batch` (added to the running mean), its gradient written
    /// into `self.online.grad`, and each row's TD error or loss in `self.td_host`.
    fn loss_and_gradient(&mut self) -> anyhow::Result<f64> {
        if self.host.is_some() {
            return self.host_loss_and_gradient();
        }
        let target = self.targets();
        let b = self.cfg.batch_size;
        let columns = self.columns(&self.tensors.actions);
        let t = &self.tensors;
        let out = match (&mut self.online.fused, &self.fractions) {
            (Some(fused), _) => fused.forward_saving(&t.obs, None),
            (None, Some(f)) => self.online.net.forward_taus(&t.obs, &f.online),
            (None, None) => self.online.net.forward(&t.obs),
        };
        let q = out.gather(1, &columns, false);
        let (rows, head_grad) = {
            let _guard = tch::no_grad_guard();
            self.head.per_row(&q, &target)
        };
        rows.copy_data(&mut self.td_host, b);
        let prioritized = matches!(self.cfg.replay, ReplaySpec::Prioritized { .. });
        let weights = prioritized.then_some(&self.batch.weights[..]);
        let loss = match head_grad {
            None => host_loss(self.cfg.loss_kind(), &self.td_host, weights),
            Some(_) => weighted_mean(&self.td_host, weights),
        };
        self.record_loss(loss)?;
        {
            let _guard = tch::no_grad_guard();
            let mut grad_q = match (head_grad, self.cfg.loss_kind()) {
                (Some(grad), _) => grad,
                (None, LossKind::Huber) => rows.clamp(-1.0, 1.0),
                (None, LossKind::Mse) => rows * 2.0,
            };
            if prioritized {
                let _ = grad_q.g_mul_(&self.tensors.weights);
            }
            let _ = grad_q.g_mul_scalar_(1.0 / b as f64);
            match &self.online.fused {
                Some(fused) => {
                    let _ = self.grad_q.zero_();
                    let _ = self.grad_q.scatter_(1, &columns, &grad_q);
                    fused.backward(&self.grad_q);
                }
                None => {
                    drop(_guard);
                    self.backprop(&(&q * &grad_q).sum(Kind::Float));
                }
            }
        }
        Ok(loss)
    }
}

impl DqnAgent {
    /// [`DqnAgent::loss_and_gradient`] by the host path: the forward passes in libtorch, the
    /// head's target, loss and output gradient on host copies, the backward pass in libtorch.
    fn host_loss_and_gradient(&mut self) -> anyhow::Result<f64> {
        self.stage_batch();
        let host = self.host.as_mut().expect("the host path is set up");
        let t = &self.tensors;
        let bootstrap_net = self.target.as_ref().unwrap_or(&self.online);
        bootstrap_net.out_into(&t.next_obs, &mut host.next_t);
        if self.cfg.double {
            self.online.out_into(&t.next_obs, &mut host.chooser_t);
        }
        let out = match &mut self.online.fused {
            Some(fused) => fused.forward_saving(&t.obs, Some(&host.out_t)),
            None => {
                let out = self.online.net.forward(&t.obs);
                let _guard = tch::no_grad_guard();
                host.out_t.copy_(&out);
                out
            }
        };
        let prioritized = matches!(self.cfg.replay, ReplaySpec::Prioritized { .. });
        let weights = prioritized.then_some(&self.batch.weights[..]);
        let batch = HostBatch {
            next: &host.next,
            chooser: if self.cfg.double { &host.chooser } else { &host.next },
            out: &host.out,
            actions: &self.batch.actions,
            returns: &self.batch.returns,
            bootstrap: &self.bootstrap,
            weights,
        };
        host.head.loss(&batch, self.n_actions, &mut self.td_host, &mut host.grad);
        let loss = weighted_mean(&self.td_host, weights);
        self.record_loss(loss)?;
        let grad = self.host.as_ref().expect("the host path is set up").grad_t.shallow_clone();
        match &self.online.fused {
            Some(fused) => fused.backward(&grad),
            None => self.backprop(&(&out * &grad).sum(Kind::Float)),
        }
        Ok(loss)
    }

    /// Adds `loss` to the running mean, or fails when it is not finite (the run diverged).
    fn record_loss(&mut self, loss: f64) -> anyhow::Result<()> {
        if !loss.is_finite() {
            anyhow::bail!(
                "training diverged: the loss became {loss} at gradient step {}; lower lr, set max_grad_norm or reward_scale",
                self.updates + 1
            );
        }
        self.loss_sum += loss;
        self.loss_count += 1;
        Ok(())
    }

    /// Writes the gradient of `surrogate` with respect to the trainable variables into the flat
    /// gradient, by autograd.
    fn backprop(&mut self, surrogate: &Tensor) {
        let grads = Tensor::run_backward(&[surrogate], &self.online.vars, false, false);
        self.grad_parts.clear();
        self.grad_parts.extend(grads.iter().map(|g| g.view([-1])));
        let _guard = tch::no_grad_guard();
        let _ = Tensor::cat_out(&self.online.grad, &self.grad_parts, 0);
    }
}

/// Makes the calling thread flush denormal floats to zero, as `torch.set_flush_denormal(True)`
/// does (x86 MXCSR flags FTZ and DAZ; it is per thread, so each update checks it, at the cost of
/// two instructions). Adam's moments of parameters whose gradients are nearly zero (the logits
/// of a distributional head that no target reaches) decay into the denormal range, where x86
/// arithmetic is tens of times slower: without this the optimizer step dominated a C51 update.
#[inline]
pub(super) fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads and writes the SSE control register of this thread; FTZ (bit 15) and DAZ
    // (bit 6) only change how denormal values round.
    unsafe {
        let mut csr: u32 = 0;
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
        if csr & 0x8040 != 0x8040 {
            csr |= 0x8040;
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags));
        }
    }
}

/// The mean of `values`, importance-weighted by `weights`.
pub(super) fn weighted_mean(values: &[f32], weights: Option<&[f32]>) -> f64 {
    let sum: f64 = match weights {
        Some(w) => values.iter().zip(w).map(|(&v, &w)| w as f64 * v as f64).sum(),
        None => values.iter().map(|&v| v as f64).sum(),
    };
    sum / values.len() as f64
}

/// The mean (importance-weighted) loss of TD errors `delta`.
pub(super) fn host_loss(kind: LossKind, delta: &[f32], weights: Option<&[f32]>) -> f64 {
    let per_row = |d: f32| -> f64 {
        let d = d as f64;
        match kind {
            LossKind::Huber if d.abs() <= 1.0 => 0.5 * d * d,
            LossKind::Huber => d.abs() - 0.5,
            LossKind::Mse => d * d,
        }
    };
    let sum: f64 = match weights {
        Some(w) => delta.iter().zip(w).map(|(&d, &w)| w as f64 * per_row(d)).sum(),
        None => delta.iter().map(|&d| per_row(d)).sum(),
    };
    sum / delta.len() as f64
}

/// Loads every variable of `vs` found in `path` (safetensors, or libtorch's format).
fn load_pretrained(vs: &mut nn::VarStore, path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        return Err(crate::error::InputError::new(format!(
            "pretrained.path {} does not exist; point it at a weights file written by `tune train` (weights.safetensors)",
            path.display()
        ))
        .into());
    }
    let missing = vs.load_partial(path).with_context(|| format!("cannot load weights from {}", path.display()))?;
    if missing.len() == vs.len() {
        return Err(crate::error::InputError::new(format!(
            "pretrained.path {}: none of the network's variables ({}) is in the file; was it written for this net?",
            path.display(),
            missing.join(", ")
        ))
        .into());
    }
    Ok(())
}

impl Agent for DqnAgent {
    fn act(&mut self, obs: Obs<'_>, epsilon: f64, rng: &mut StdRng) -> usize {
        if rng.random::<f64>() < epsilon {
            return rng.random_range(0..self.n_actions);
        }
        if let Some(noise) = &mut self.online.noise {
            noise.resample(&mut self.samples_rng);
        }
        self.greedy(obs)
    }

    fn act_eval(&mut self, obs: Obs<'_>, epsilon: f64, rng: &mut StdRng) -> usize {
        if let Some(noise) = &mut self.online.noise {
            noise.disable();
        }
        if rng.random::<f64>() < epsilon {
            rng.random_range(0..self.n_actions)
        } else {
            self.greedy(obs)
        }
    }

    fn observe(&mut self, t: Transition<'_>, p: Progress, rng: &mut StdRng) -> anyhow::Result<()> {
        let reward = t.reward * self.cfg.reward_scale as f32;
        self.replay.push_stream(t.env, t.obs, t.action, reward, t.next_obs, t.terminated, t.truncated);
        self.lr = self.cfg.lr_schedule.value(self.cfg.lr, p);
        if p.step >= self.cfg.learning_starts && p.step % self.cfg.train_freq == 0 && !self.replay.is_empty() {
            let beta = per_beta(&self.cfg.replay, p.fraction);
            for _ in 0..self.cfg.gradient_steps {
                self.update(beta, rng)?;
            }
        }
        if let (TargetSpec::Hard { every }, Some(target)) = (&self.cfg.target, &mut self.target) {
            if p.step % every == 0 {
                let _guard = tch::no_grad_guard();
                target.flat.copy_(&self.online.flat);
            }
        }
        Ok(())
    }

    fn take_mean_loss(&mut self) -> anyhow::Result<Option<f64>> {
        let mean = (self.loss_count > 0).then(|| self.loss_sum / self.loss_count as f64);
        self.loss_sum = 0.0;
        self.loss_count = 0;
        Ok(mean)
    }

    fn learning_rate(&self) -> Option<f64> {
        Some(self.lr)
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        self.online.vs.save(path).with_context(|| format!("cannot write weights to {}", path.display()))
    }

    fn load(&mut self, path: &Path) -> anyhow::Result<()> {
        self.online.vs.load(path).with_context(|| format!("cannot load weights from {}", path.display()))?;
        if let Some(target) = &mut self.target {
            let _guard = tch::no_grad_guard();
            target.flat.copy_(&self.online.flat);
        }
        Ok(())
    }

    fn weights_file(&self) -> &'static str {
        "weights.safetensors"
    }

    fn learner_state(&self) -> Option<State> {
        let mut s = State::new();
        s.put("online", &self.online.flat);
        if let Some(target) = &self.target {
            s.put("target", &target.flat);
        }
        self.optimizer.state(&mut s);
        s.put_ints("agent.updates", &[self.updates as i64]);
        Some(s)
    }

    fn load_learner_state(&mut self, state: &State) -> anyhow::Result<()> {
        state.copy_into("online", &mut self.online.flat)?;
        if let Some(target) = &mut self.target {
            // A config that gains a target network starts it from the online weights.
            let name = if state.find("target").is_some() { "target" } else { "online" };
            state.copy_into(name, &mut target.flat)?;
        }
        self.optimizer.load_state(state)?;
        self.updates = state.ints("agent.updates")?.first().copied().unwrap_or(0) as u64;
        Ok(())
    }

    fn replay_state(&self) -> Option<State> {
        let mut s = State::new();
        self.replay.state(&mut s);
        Some(s)
    }

    fn load_replay_state(&mut self, state: &State) -> anyhow::Result<()> {
        self.replay.load_state(state)
    }

    fn cut_episode(&mut self) {
        self.replay.cut_episode();
    }
}

#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> ObsSpace {
        ObsSpace::Box { low: vec![-1.0; 2], high: vec![1.0; 2] }
    }

    /// A DQN whose network is linear, `Q(s) = W s + b`, so Q-values are set by hand.
    fn linear(cfg: DqnConfig) -> DqnAgent {
        let cfg = DqnConfig { net: Some(NetSpec::Mlp { hidden: vec![], dueling: false }), ..cfg };
        DqnAgent::new(&cfg, &space(), ActionSpace { n: 2 }, Device::Cpu, 0).unwrap()
    }

    /// Sets `[b0, b1, w00, w01, w10, w11]` (variables in name order: `0.bias`, `0.weight`).
    fn set(flat: &mut Tensor, values: [f32; 6]) {
        let _guard = tch::no_grad_guard();
        flat.copy_(&Tensor::from_slice(&values));
    }

    fn values(t: &Tensor) -> Vec<f32> {
        let mut v = vec![0f32; t.numel()];
        t.copy_data(&mut v, t.numel());
        v
    }

    /// One row: `next_obs = [1, 2]`, return 0.5, discount 0.9.
    fn fill_row(agent: &mut DqnAgent, row: usize, terminated: bool) {
        let ObsBatch::F32(next) = &mut agent.batch.next_obs else { unreachable!() };
        next[2 * row..2 * row + 2].copy_from_slice(&[1.0, 2.0]);
        agent.batch.returns[row] = 0.5;
        agent.batch.discounts[row] = 0.9;
        agent.batch.terminated[row] = if terminated { 1.0 } else { 0.0 };
    }

    #[test]
    fn impossible_heads_and_losses_are_refused_naming_the_allowed_values() {
        let parse = |yaml: &str| -> Result<(), String> {
            let cfg: DqnConfig = serde_norway::from_str(yaml).map_err(|e| e.to_string())?;
            cfg.validate(&space())
        };
        for (yaml, needle) in [
            ("head: {type: c51, v_min: 5, v_max: 5}", "head.v_min must be below head.v_max"),
            ("head: {type: c51, atoms: 1}", "head.atoms must be at least 2"),
            ("head: {type: qr, quantiles: 0}", "head.quantiles must be at least 1"),
            ("head: {type: qr, kappa: -1}", "head.kappa must be a finite number >= 0"),
            ("{head: {type: c51}, loss: mse}", "loss: mse does not apply to head type c51"),
            ("{head: {type: qr}, loss: huber}", "remove `loss`"),
            ("munchausen: {tau: 0}", "munchausen.tau must be a positive number"),
            ("munchausen: {clip: 0.5}", "munchausen.clip must be a finite number <= 0"),
            ("{munchausen: {}, double: true}", "double does not apply with munchausen"),
            ("head: {type: c52}", "unknown variant `c52`, expected one of `expected`, `c51`, `qr`, `iqn`"),
            ("head: {type: iqn, n_tau: 0}", "head.n_tau must be at least 1 (64 in the paper)"),
            ("head: {type: iqn, k_policy: 0}", "head.k_policy must be at least 1 (32 in the paper)"),
            ("head: {type: iqn, kappa: .nan}", "head.kappa must be a finite number >= 0"),
            ("{head: {type: iqn}, loss: mse}", "loss: mse does not apply to head type iqn"),
            ("noisy: {sigma0: 0}", "noisy.sigma0 must be a positive number (0.5 in the paper)"),
            ("noisy: {sigma0: -0.5}", "noisy.sigma0 must be a positive number"),
            ("noisy: {sigma: 0.5}", "unknown field `sigma`, expected `sigma0`"),
            ("head: {type: c51, quantiles: 3}", "unknown field `quantiles`"),
        ] {
            let err = parse(yaml).unwrap_err();
            assert!(err.contains(needle), "{yaml}: {err}");
        }
        parse("{head: {type: c51}, munchausen: {}}").unwrap();
        parse("{head: {type: expected}, loss: mse}").unwrap();
        let c51: DqnConfig = serde_norway::from_str("head: {type: c51}").unwrap();
        assert_eq!(c51.head, HeadSpec::C51 { atoms: 51, v_min: -10.0, v_max: 10.0 }, "the paper's defaults");
    }

    #[test]
    fn noise_is_drawn_per_greedy_action_and_off_in_evaluation() {
        let cfg = DqnConfig { noisy: Some(Noisy::default()), ..Default::default() };
        let mut agent = DqnAgent::new(&cfg, &space(), ActionSpace { n: 2 }, Device::Cpu, 0).unwrap();
        assert!(agent.online.fused.is_none(), "noisy layers take the autograd path");
        let mut rng = StdRng::seed_from_u64(0);
        let obs = [0.5f32, -0.5];
        let mut q = |agent: &mut DqnAgent, eval: bool| {
            if eval {
                agent.act_eval(Obs::F32(&obs), 0.0, &mut rng);
            } else {
                agent.act(Obs::F32(&obs), 0.0, &mut rng);
            }
            agent.q_values(Obs::F32(&obs)).to_vec()
        };
        let (a, b) = (q(&mut agent, false), q(&mut agent, false));
        assert_ne!(a, b, "each greedy training action draws new noise");
        let (e1, e2) = (q(&mut agent, true), q(&mut agent, true));
        assert_eq!(e1, e2, "evaluation uses the means");
        assert_ne!(e1, a);
        // sigma starts at sigma0 / sqrt(inputs): 0.5 / sqrt(2) for the first layer.
        let sigma = agent.online.named().into_iter().find(|(n, _)| n == "0.weight_sigma").unwrap().1;
        assert!((sigma.mean(Kind::Float).double_value(&[]) - 0.5 / 2f64.sqrt()).abs() < 1e-6);
        // The same seed gives the same noise.
        let mut again = DqnAgent::new(&cfg, &space(), ActionSpace { n: 2 }, Device::Cpu, 0).unwrap();
        let mut rng = StdRng::seed_from_u64(0);
        again.act(Obs::F32(&obs), 0.0, &mut rng);
        assert_eq!(again.q_values(Obs::F32(&obs)).to_vec(), a);
    }

    #[test]
    fn noisy_and_iqn_networks_build_on_pixels_plain_and_dueling() {
        let atari = ObsSpace::Pixels { frames: 4, height: 84, width: 84, channels: 1 };
        let iqn = HeadSpec::Iqn { n_tau: 8, n_tau_prime: 8, k_policy: 4, kappa: 1.0, embedding: 16 };
        for (dueling, head) in
            [(false, HeadSpec::Expected), (true, HeadSpec::Expected), (false, iqn.clone()), (true, iqn)]
        {
            let cfg = DqnConfig {
                net: Some(NetSpec::NatureCnn { dueling }),
                head,
                noisy: Some(Noisy::default()),
                batch_size: 4,
                replay: ReplaySpec::Uniform { size: 64 },
                ..Default::default()
            };
            let mut agent = DqnAgent::new(&cfg, &atari, ActionSpace { n: 3 }, Device::Cpu, 0).unwrap();
            let names: Vec<String> = agent.online.named().into_iter().map(|(n, _)| n).collect();
            let stream = if dueling { "advantage.1" } else { "q" };
            assert!(names.contains(&format!("{stream}.weight_sigma")), "{names:?}");
            assert!(!names.iter().any(|n| n.contains("conv") && n.ends_with("_sigma")), "convolutions stay plain");
            let mut rng = StdRng::seed_from_u64(1);
            let frame = vec![7u8; atari.flat_dim()];
            let a = agent.act(Obs::U8(&frame), 0.0, &mut rng);
            assert!(a < 3);
            assert!(agent.q_values(Obs::U8(&frame)).iter().all(|q| q.is_finite()));
        }
    }

    #[test]
    fn distributional_heads_act_on_the_mean() {
        // A linear C51 net whose two actions put all mass on atoms -1 and +1 of [-1, 0, 1]:
        // action 1 is greedy whatever the logits' scale.
        let cfg = DqnConfig {
            net: Some(NetSpec::Mlp { hidden: vec![], dueling: false }),
            head: HeadSpec::C51 { atoms: 3, v_min: -1.0, v_max: 1.0 },
            ..Default::default()
        };
        let mut agent = DqnAgent::new(&cfg, &space(), ActionSpace { n: 2 }, Device::Cpu, 0).unwrap();
        // Biases come first in name order: logits [9, 0, 0 | 0, 0, 3], weights 0.
        let mut flat = vec![0f32; 6 + 12];
        flat[..6].copy_from_slice(&[9.0, 0.0, 0.0, 0.0, 0.0, 3.0]);
        {
            let _guard = tch::no_grad_guard();
            agent.online.flat.copy_(&Tensor::from_slice(&flat));
        }
        let q = agent.q_values(Obs::F32(&[0.3, -0.2])).to_vec();
        assert!(q[0] < -0.99 && q[1] > 0.8, "{q:?}");
        assert_eq!(agent.greedy(Obs::F32(&[0.3, -0.2])), 1);
    }

    #[test]
    fn vanilla_and_double_targets() {
        for double in [false, true] {
            let cfg = DqnConfig { double, batch_size: 2, ..Default::default() };
            let mut agent = linear(cfg);
            // Online Q(s) = s, target Q'(s) = (s1, s0).
            set(&mut agent.online.flat, [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
            set(&mut agent.target.as_mut().unwrap().flat, [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]);
            fill_row(&mut agent, 0, false);
            fill_row(&mut agent, 1, true);
            let y = values(&agent.targets().values);
            // Vanilla: max_a Q'([1, 2]) = 2. Double: argmax_a Q([1, 2]) = 1, Q'([1, 2])_1 = 1.
            let expected = if double { 0.5 + 0.9 * 1.0 } else { 0.5 + 0.9 * 2.0 };
            assert!((y[0] - expected).abs() < 1e-6, "double {double}: {y:?}");
            assert_eq!(y[1], 0.5, "terminated rows do not bootstrap");
        }
        // Without a target network the online network bootstraps: max Q([1, 2]) = 2.
        let mut agent = linear(DqnConfig { target: TargetSpec::None, batch_size: 1, ..Default::default() });
        set(&mut agent.online.flat, [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
        fill_row(&mut agent, 0, false);
        assert!((values(&agent.targets().values)[0] - 2.3).abs() < 1e-6);
    }

    #[test]
    fn truncation_bootstraps_termination_does_not() {
        let cfg = DqnConfig { batch_size: 1, replay: ReplaySpec::Uniform { size: 32 }, ..Default::default() };
        let mut agent = linear(cfg);
        let mut rng = StdRng::seed_from_u64(0);
        for (terminated, truncated, expected) in [(true, false, 1.0), (false, true, 0.0)] {
            let mut replay = UniformReplay::new(&space(), 32, 1, 0.9);
            replay.push(Obs::F32(&[0.0, 0.0]), 1, 1.0, Obs::F32(&[1.0, 2.0]), terminated, truncated);
            replay.sample(&mut rng, 1.0, &mut agent.batch);
            assert_eq!(agent.batch.terminated[0], expected);
            assert_eq!(agent.batch.discounts[0], 0.9);
        }
    }

    fn step(agent: &mut DqnAgent, t: u64, rng: &mut StdRng) {
        let (x, next) = ([(t - 1) as f32 * 0.01, -0.5], [t as f32 * 0.01, -0.5]);
        let tr = Transition {
            obs: Obs::F32(&x),
            action: (t % 2) as usize,
            reward: 1.0,
            next_obs: Obs::F32(&next),
            terminated: false,
            truncated: false,
            env: 0,
        };
        agent.observe(tr, Progress { step: t, episode: 0, fraction: 0.0 }, rng).unwrap();
    }

    #[test]
    fn hard_target_copies_every_n_steps() {
        let cfg = DqnConfig { target: TargetSpec::Hard { every: 3 }, learning_starts: 1_000, ..Default::default() };
        let mut agent = linear(cfg);
        let mut rng = StdRng::seed_from_u64(0);
        let initial = values(&agent.online.flat);
        assert_eq!(values(agent.target_parameters().unwrap()), initial, "target starts as a copy");
        set(&mut agent.online.flat, [1.0; 6]);
        for t in 1..=2 {
            step(&mut agent, t, &mut rng);
            assert_eq!(values(agent.target_parameters().unwrap()), initial, "step {t}");
        }
        step(&mut agent, 3, &mut rng);
        assert_eq!(values(agent.target_parameters().unwrap()), vec![1.0; 6]);
    }

    #[test]
    fn soft_target_moves_by_tau_per_gradient_step() {
        let cfg = DqnConfig {
            target: TargetSpec::Soft { tau: 0.25 },
            learning_starts: 0,
            batch_size: 2,
            replay: ReplaySpec::Uniform { size: 32 },
            ..Default::default()
        };
        let mut agent = linear(cfg);
        let mut rng = StdRng::seed_from_u64(0);
        set(&mut agent.target.as_mut().unwrap().flat, [0.0; 6]);
        for t in 1..=3 {
            let before = values(agent.target_parameters().unwrap());
            let updates = agent.updates();
            step(&mut agent, t, &mut rng);
            assert_eq!(agent.updates(), updates + 1);
            let online = values(agent.parameters());
            let after = values(agent.target_parameters().unwrap());
            for k in 0..6 {
                assert!((after[k] - (0.25 * online[k] + 0.75 * before[k])).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn gradient_steps_follow_learning_starts_and_train_freq() {
        let cfg = DqnConfig {
            learning_starts: 4,
            train_freq: 2,
            gradient_steps: 3,
            batch_size: 2,
            replay: ReplaySpec::Uniform { size: 32 },
            ..Default::default()
        };
        let mut agent = linear(cfg);
        let mut rng = StdRng::seed_from_u64(0);
        let mut counts = Vec::new();
        for t in 1..=8 {
            step(&mut agent, t, &mut rng);
            counts.push(agent.updates());
        }
        assert_eq!(counts, vec![0, 0, 0, 3, 3, 6, 6, 9]);
    }

    #[test]
    fn pretrained_weights_load_and_frozen_layers_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.safetensors");
        let net = NetSpec::Mlp { hidden: vec![8], dueling: false };
        let cfg = DqnConfig {
            net: Some(net.clone()),
            learning_starts: 0,
            batch_size: 2,
            replay: ReplaySpec::Uniform { size: 32 },
            ..Default::default()
        };
        let source = DqnAgent::new(&cfg, &space(), ActionSpace { n: 2 }, Device::Cpu, 1).unwrap();
        source.save(&path).unwrap();
        let source_vars = source.online.vs.variables();

        let pretrained = Pretrained { path: path.clone(), freeze: vec!["0".into()] };
        let cfg = DqnConfig { pretrained: Some(pretrained), ..cfg };
        let mut agent = DqnAgent::new(&cfg, &space(), ActionSpace { n: 2 }, Device::Cpu, 2).unwrap();
        let vars = agent.online.vs.variables();
        for name in ["0.weight", "0.bias", "1.weight", "1.bias"] {
            assert_eq!(values(&vars[name]), values(&source_vars[name]), "{name} loaded");
        }
        assert_eq!(agent.parameters().numel(), 8 * 2 + 2, "only layer 1 is trainable");
        let mut rng = StdRng::seed_from_u64(0);
        for t in 1..=5 {
            step(&mut agent, t, &mut rng);
        }
        assert_eq!(values(&vars["0.weight"]), values(&source_vars["0.weight"]), "frozen layer unchanged");
        assert_ne!(values(&vars["1.weight"]), values(&source_vars["1.weight"]), "trainable layer learned");

        let bad = DqnConfig {
            pretrained: Some(Pretrained { path, freeze: vec!["conv9".into()] }),
            net: Some(net),
            ..Default::default()
        };
        let err = DqnAgent::new(&bad, &space(), ActionSpace { n: 2 }, Device::Cpu, 0).unwrap_err().to_string();
        assert!(err.contains("conv9") && err.contains("0.weight"), "{err}");
    }

    #[test]
    fn divergence_is_an_error_not_a_panic() {
        let cfg = DqnConfig {
            learning_starts: 0,
            batch_size: 2,
            replay: ReplaySpec::Uniform { size: 32 },
            reward_scale: 1e38,
            ..Default::default()
        };
        let mut agent = linear(cfg);
        let mut rng = StdRng::seed_from_u64(0);
        let x = [0.5f32, 0.5];
        let mut result = Ok(());
        for t in 1..=10 {
            let tr = Transition {
                obs: Obs::F32(&x),
                action: 0,
                reward: 1e10,
                next_obs: Obs::F32(&x),
                terminated: false,
                truncated: false,
                env: 0,
            };
            result = agent.observe(tr, Progress { step: t, episode: 0, fraction: 0.0 }, &mut rng);
            if result.is_err() {
                break;
            }
        }
        let err = result.unwrap_err().to_string();
        assert!(err.contains("diverged"), "{err}");
    }

    #[test]
    fn fused_mlp_gradients_match_autograd() {
        let spec = NetSpec::Mlp { hidden: vec![16, 8], dueling: false };
        let mut net =
            Network::build(&spec, &space(), ActionSpace { n: 3 }, &NetOptions::default(), Device::Cpu).unwrap();
        net.init(&mut StdRng::seed_from_u64(3));
        net.flatten(&[], &spec, 5);
        let x = Tensor::randn([5, 2], (Kind::Float, Device::Cpu));
        let grad_q = Tensor::randn([5, 3], (Kind::Float, Device::Cpu));
        let q_autograd = net.net.forward(&x);
        let grads = Tensor::run_backward(&[(&q_autograd * &grad_q).sum(Kind::Float)], &net.vars, false, false);
        let expected = Tensor::cat(&grads.iter().map(|g| g.view([-1])).collect::<Vec<_>>(), 0);
        let fused = net.fused.as_mut().expect("a plain MLP takes the fused path");
        let q_fused = fused.forward_saving(&x, None);
        fused.backward(&grad_q);
        assert!((q_fused - q_autograd).abs().max().double_value(&[]) < 1e-6);
        let diff = (&net.grad - &expected).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "fused gradient differs from autograd by {diff}");
        // Dueling networks and frozen layers take the autograd path.
        let dueling = NetSpec::Mlp { hidden: vec![8], dueling: true };
        let mut net =
            Network::build(&dueling, &space(), ActionSpace { n: 3 }, &NetOptions::default(), Device::Cpu).unwrap();
        net.flatten(&[], &dueling, 5);
        assert!(net.fused.is_none());
    }

    #[test]
    fn host_loss_matches_libtorch() {
        let q = Tensor::from_slice(&[0.5f32, 3.0, -2.5, 0.0]);
        let y = Tensor::from_slice(&[0.0f32, 0.0, 0.0, 0.2]);
        let delta: Vec<f32> = vec![0.5, 3.0, -2.5, -0.2];
        let huber = q.huber_loss(&y, tch::Reduction::Mean, 1.0).double_value(&[]);
        assert!((host_loss(LossKind::Huber, &delta, None) - huber).abs() < 1e-6);
        let mse = q.mse_loss(&y, tch::Reduction::Mean).double_value(&[]);
        assert!((host_loss(LossKind::Mse, &delta, None) - mse).abs() < 1e-6);
        let w = [1.0f32, 0.5, 0.25, 1.0];
        let weighted = (q.mse_loss(&y, tch::Reduction::None) * Tensor::from_slice(&w)).mean(Kind::Float);
        assert!((host_loss(LossKind::Mse, &delta, Some(&w)) - weighted.double_value(&[])).abs() < 1e-6);
    }

    #[test]
    fn autograd_and_fused_paths_train_alike() {
        // The same plain MLP trained through either path takes the same steps.
        let cfg = DqnConfig {
            net: Some(NetSpec::Mlp { hidden: vec![8], dueling: false }),
            learning_starts: 0,
            batch_size: 4,
            replay: ReplaySpec::Uniform { size: 32 },
            ..Default::default()
        };
        let mut fused = DqnAgent::new(&cfg, &space(), ActionSpace { n: 2 }, Device::Cpu, 5).unwrap();
        let mut autograd = DqnAgent::new(&cfg, &space(), ActionSpace { n: 2 }, Device::Cpu, 5).unwrap();
        autograd.online.fused = None;
        autograd.target.as_mut().unwrap().fused = None;
        let (mut r1, mut r2) = (StdRng::seed_from_u64(0), StdRng::seed_from_u64(0));
        for t in 1..=20 {
            step(&mut fused, t, &mut r1);
            step(&mut autograd, t, &mut r2);
        }
        let diff = (fused.parameters() - autograd.parameters()).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "paths diverged by {diff}");
        assert_ne!(
            values(fused.parameters()),
            values(&DqnAgent::new(&cfg, &space(), ActionSpace { n: 2 }, Device::Cpu, 5).unwrap().online.flat)
        );
    }

    #[test]
    fn a_checkpoint_restores_the_learner_and_replay_exactly() {
        let dir = tempfile::tempdir().unwrap();
        for replay in [
            ReplaySpec::Uniform { size: 64 },
            ReplaySpec::Prioritized { size: 64, alpha: 0.6, beta: 0.4, beta_fraction: 1.0, epsilon: 1e-6 },
        ] {
            let cfg = DqnConfig {
                net: Some(NetSpec::Mlp { hidden: vec![8], dueling: false }),
                learning_starts: 4,
                batch_size: 4,
                n_step: 3,
                replay,
                target: TargetSpec::Hard { every: 7 },
                ..Default::default()
            };
            let mut a = DqnAgent::new(&cfg, &space(), ActionSpace { n: 2 }, Device::Cpu, 1).unwrap();
            let mut rng = StdRng::seed_from_u64(0);
            for t in 1..=30 {
                step(&mut a, t, &mut rng);
            }
            a.learner_state().unwrap().save(&dir.path().join("l.safetensors")).unwrap();
            a.replay_state().unwrap().save(&dir.path().join("r.safetensors")).unwrap();
            // Another seed: everything that matters comes from the checkpoint.
            let mut b = DqnAgent::new(&cfg, &space(), ActionSpace { n: 2 }, Device::Cpu, 9).unwrap();
            b.load_learner_state(&State::load(&dir.path().join("l.safetensors")).unwrap()).unwrap();
            b.load_replay_state(&State::load(&dir.path().join("r.safetensors")).unwrap()).unwrap();
            assert_eq!(values(a.parameters()), values(b.parameters()));
            assert_eq!(a.updates(), b.updates());
            let (mut ra, mut rb) = (StdRng::seed_from_u64(3), StdRng::seed_from_u64(3));
            for t in 31..=50 {
                step(&mut a, t, &mut ra);
                step(&mut b, t, &mut rb);
            }
            assert_eq!(values(a.parameters()), values(b.parameters()), "same updates after the restore");
            assert_eq!(values(a.target_parameters().unwrap()), values(b.target_parameters().unwrap()));
            // A config that shapes the network differently cannot take the state.
            let other = DqnConfig { net: Some(NetSpec::Mlp { hidden: vec![16], dueling: false }), ..cfg.clone() };
            let mut c = DqnAgent::new(&other, &space(), ActionSpace { n: 2 }, Device::Cpu, 9).unwrap();
            assert!(c.load_learner_state(&a.learner_state().unwrap()).is_err());
            assert!(cfg.continues_as(&other).unwrap_err().contains("agent.net"));
            let lr = DqnConfig { lr: 0.5, gamma: 0.9, batch_size: 16, ..cfg.clone() };
            assert!(cfg.continues_as(&lr).is_ok());
        }
    }

    #[test]
    fn a_cut_episode_closes_its_windows_and_the_next_push_starts_a_new_one() {
        let cfg = DqnConfig {
            n_step: 3,
            learning_starts: 1000,
            replay: ReplaySpec::Uniform { size: 64 },
            ..Default::default()
        };
        let mut agent = linear(cfg);
        let mut rng = StdRng::seed_from_u64(0);
        for t in 1..=5 {
            step(&mut agent, t, &mut rng);
        }
        // 5 steps with 3-step windows: 3 are sampleable; the cut makes the last 2 so too.
        assert_eq!(agent.replay.len(), 3);
        agent.cut_episode();
        assert_eq!(agent.replay.len(), 5);
        // A new episode from an unrelated observation.
        let (x, next) = ([0.9f32, 0.9], [0.8f32, 0.8]);
        let tr = Transition {
            obs: Obs::F32(&x),
            action: 0,
            reward: 0.0,
            next_obs: Obs::F32(&next),
            terminated: true,
            truncated: false,
            env: 0,
        };
        agent.observe(tr, Progress { step: 6, episode: 0, fraction: 0.0 }, &mut rng).unwrap();
        assert_eq!(agent.replay.len(), 6);
    }

    #[test]
    fn same_seed_same_initial_weights() {
        let cfg = DqnConfig { net: Some(NetSpec::default()), ..Default::default() };
        let a = DqnAgent::new(&cfg, &space(), ActionSpace { n: 2 }, Device::Cpu, 7).unwrap();
        let b = DqnAgent::new(&cfg, &space(), ActionSpace { n: 2 }, Device::Cpu, 7).unwrap();
        let c = DqnAgent::new(&cfg, &space(), ActionSpace { n: 2 }, Device::Cpu, 8).unwrap();
        assert_eq!(values(a.parameters()), values(b.parameters()));
        assert_ne!(values(a.parameters()), values(c.parameters()));
        // PyTorch's default bound for the first layer: 1 / sqrt(fan_in = 2).
        assert!(values(a.parameters()).iter().all(|v| v.abs() <= 1.0 / 2f32.sqrt()));
    }
}
