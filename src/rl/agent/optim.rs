//! Optimizers on one flat parameter vector.
//!
//! At DQN sizes (a 64-64 MLP) libtorch's per-operation overhead, not arithmetic, dominates an
//! update (FACTS.md §6), and `torch.optim.Adam` costs about ten operations per parameter tensor.
//! Every trainable parameter of the online network is instead a view into one contiguous tensor
//! and the gradients are gathered into another, so each optimizer step is a handful of
//! operations whatever the number of layers: Adam is 7 (8 with AMSGrad), and on CPU one loop
//! over host memory ([`HostAdam`]). The update rules are PyTorch's
//! (`torch/optim/{adam,adamw,rmsprop,sgd}.py`, single-tensor form), so a config tuned with
//! PyTorch keeps its meaning.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::rl::schedule::{exponential_decay, linear_schedule, Per};
use crate::rl::state::State;

use super::Progress;

/// The `optimizer:` section of a DQN config (the learning rate is `lr`, beside it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerSpec {
    /// Adam (Kingma & Ba 2015) with L2 `weight_decay` added to the gradient.
    Adam {
        /// `(beta1, beta2)`.
        #[serde(default = "default_betas")]
        betas: (f64, f64),
        /// Added to the denominator.
        #[serde(default = "default_adam_eps")]
        eps: f64,
        /// L2 penalty.
        #[serde(default)]
        weight_decay: f64,
        /// Keep the running maximum of the second moment (Reddi et al. 2018).
        #[serde(default)]
        amsgrad: bool,
    },
    /// AdamW (Loshchilov & Hutter 2019): decoupled weight decay; lab 000 uses it with AMSGrad.
    Adamw {
        /// `(beta1, beta2)`.
        #[serde(default = "default_betas")]
        betas: (f64, f64),
        /// Added to the denominator.
        #[serde(default = "default_adam_eps")]
        eps: f64,
        /// Decoupled decay (PyTorch's default 0.01).
        #[serde(default = "default_adamw_decay")]
        weight_decay: f64,
        /// Keep the running maximum of the second moment.
        #[serde(default)]
        amsgrad: bool,
    },
    /// RMSprop as PyTorch (`alpha` 0.99, `eps` 1e-8), optionally with momentum.
    Rmsprop {
        /// Smoothing constant of the squared-gradient average.
        #[serde(default = "default_rms_alpha")]
        alpha: f64,
        /// Added to the denominator.
        #[serde(default = "default_adam_eps")]
        eps: f64,
        /// Momentum factor.
        #[serde(default)]
        momentum: f64,
    },
    /// Stochastic gradient descent, optionally with momentum.
    Sgd {
        /// Momentum factor.
        #[serde(default)]
        momentum: f64,
        /// L2 penalty.
        #[serde(default)]
        weight_decay: f64,
    },
}

fn default_betas() -> (f64, f64) {
    (0.9, 0.999)
}
fn default_adam_eps() -> f64 {
    1e-8
}
fn default_adamw_decay() -> f64 {
    0.01
}
fn default_rms_alpha() -> f64 {
    0.99
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        OptimizerSpec::Adam { betas: default_betas(), eps: default_adam_eps(), weight_decay: 0.0, amsgrad: false }
    }
}

impl OptimizerSpec {
    /// Checks the ranges PyTorch checks.
    pub fn validate(&self) -> Result<(), String> {
        let unit = |name: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("optimizer.{name} must be in [0, 1), got {v}"))
            }
        };
        let non_negative = |name: &str, v: f64| {
            if v >= 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(format!("optimizer.{name} must be a finite number >= 0, got {v}"))
            }
        };
        match *self {
            OptimizerSpec::Adam { betas, eps, weight_decay, .. }
            | OptimizerSpec::Adamw { betas, eps, weight_decay, .. } => {
                unit("betas[0]", betas.0)?;
                unit("betas[1]", betas.1)?;
                non_negative("eps", eps)?;
                non_negative("weight_decay", weight_decay)
            }
            OptimizerSpec::Rmsprop { alpha, eps, momentum } => {
                unit("alpha", alpha)?;
                non_negative("eps", eps)?;
                unit("momentum", momentum)
            }
            OptimizerSpec::Sgd { momentum, weight_decay } => {
                unit("momentum", momentum)?;
                non_negative("weight_decay", weight_decay)
            }
        }
    }
}

/// How the learning rate changes from its initial `lr`.
///
/// `{type: exponential, factor: 0.97, floor: 1.0e-4, per: episode}` is lab 000's
/// `MinimumExponentialLR`; `{type: linear, end: 1.0e-5}` anneals to `end` over the budget.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// Always `lr`.
    #[default]
    Constant,
    /// `max(floor, lr * factor^t)`.
    Exponential {
        /// Multiplier per step or episode.
        factor: f64,
        /// Lower bound.
        floor: f64,
        /// What `t` counts (default: episodes, as lab 000).
        #[serde(default = "per_episode")]
        per: Per,
    },
    /// From `lr` to `end` linearly over the budget.
    Linear {
        /// The final learning rate.
        end: f64,
    },
}

fn per_episode() -> Per {
    Per::Episode
}

impl LrSchedule {
    /// The learning rate at `p`, starting from `lr`.
    pub fn value(&self, lr: f64, p: Progress) -> f64 {
        match *self {
            LrSchedule::Constant => lr,
            LrSchedule::Exponential { factor, floor, per } => {
                exponential_decay(lr, factor, floor, if per == Per::Step { p.step } else { p.episode })
            }
            LrSchedule::Linear { end } => linear_schedule(lr, end, 1_000_000, (p.fraction * 1e6) as u64),
        }
    }
}

/// An optimizer over one flat parameter tensor, with its state in flat tensors of the same size.
#[derive(Debug)]
pub struct FlatOptimizer {
    spec: OptimizerSpec,
    /// Steps taken (for Adam's bias corrections).
    t: i32,
    /// First moment (Adam) or momentum buffer (RMSprop, SGD).
    m: Option<Tensor>,
    /// Second moment (Adam) or squared-gradient average (RMSprop).
    v: Option<Tensor>,
    /// Running maximum of `v` (AMSGrad).
    v_max: Option<Tensor>,
    /// Scratch for the denominator.
    denom: Option<Tensor>,
    /// Whether Adam may take the host path on CPU (tests turn it off to check the tensor one).
    host: bool,
}

impl FlatOptimizer {
    /// State for parameters shaped like `params`.
    pub fn new(spec: &OptimizerSpec, params: &Tensor) -> Self {
        let zeros = || Some(params.zeros_like());
        let (m, v, v_max, denom) = match *spec {
            OptimizerSpec::Adam { amsgrad, .. } | OptimizerSpec::Adamw { amsgrad, .. } => {
                (zeros(), zeros(), if amsgrad { zeros() } else { None }, zeros())
            }
            OptimizerSpec::Rmsprop { momentum, .. } => {
                (if momentum > 0.0 { zeros() } else { None }, zeros(), None, zeros())
            }
            OptimizerSpec::Sgd { momentum, .. } => (if momentum > 0.0 { zeros() } else { None }, None, None, None),
        };
        FlatOptimizer { spec: spec.clone(), t: 0, m, v, v_max, denom, host: true }
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.t as u64
    }

    /// Appends the step count and moment buffers to `out` under `opt.*`.
    pub fn state(&self, out: &mut State) {
        out.put_ints("opt.t", &[self.t as i64]);
        for (name, buf) in [("opt.m", &self.m), ("opt.v", &self.v), ("opt.v_max", &self.v_max)] {
            if let Some(buf) = buf {
                out.put(name, buf);
            }
        }
    }

    /// Restores what [`state`](Self::state) wrote. A buffer the checkpoint lacks (AMSGrad
    /// switched on, momentum added) starts from zero, as a new optimizer's would.
    pub fn load_state(&mut self, state: &State) -> anyhow::Result<()> {
        let t = state.ints("opt.t")?;
        anyhow::ensure!(t.len() == 1, "checkpoint entry `opt.t` is malformed");
        self.t = t[0] as i32;
        for (name, buf) in [("opt.m", &mut self.m), ("opt.v", &mut self.v), ("opt.v_max", &mut self.v_max)] {
            if let Some(buf) = buf {
                if state.find(name).is_some() {
                    state.copy_into(name, buf)?;
                } else {
                    let _ = buf.zero_();
                }
            }
        }
        Ok(())
    }

    /// One step on `params` (updated in place) with gradient `grad` (used as scratch), at
    /// learning rate `lr`. Runs without gradient tracking.
    pub fn step(&mut self, params: &mut Tensor, grad: &mut Tensor, lr: f64) {
        let _guard = tch::no_grad_guard();
        self.t += 1;
        if lr <= 0.0 {
            return;
        }
        match self.spec {
            OptimizerSpec::Adam { betas, eps, weight_decay, .. }
            | OptimizerSpec::Adamw { betas, eps, weight_decay, .. } => {
                let decoupled = matches!(self.spec, OptimizerSpec::Adamw { .. });
                let (b1, b2) = betas;
                let step = lr / (1.0 - b1.powi(self.t));
                let bias2_sqrt = (1.0 - b2.powi(self.t)).sqrt();
                if let Some(host) = HostAdam::of(params, grad, &self.m, &self.v, &self.v_max).filter(|_| self.host) {
                    let consts = AdamStep { b1, b2, eps, step, bias2_sqrt, weight_decay, decoupled, lr };
                    host.step(&consts);
                    return;
                }
                if weight_decay != 0.0 {
                    if decoupled {
                        let _ = params.g_mul_scalar_(1.0 - lr * weight_decay);
                    } else {
                        let _ = grad.g_add_(&(&*params * weight_decay));
                    }
                }
                let (m, v, denom) = (self.m.as_mut().unwrap(), self.v.as_mut().unwrap(), self.denom.as_mut().unwrap());
                // m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2 (g is scratch from here on).
                let _ = m.lerp_(grad, 1.0 - b1);
                let _ = grad.square_();
                let _ = v.lerp_(grad, 1.0 - b2);
                let second = match self.v_max.as_mut() {
                    Some(v_max) => {
                        let _ = v_max.maximum_out(v_max, v);
                        &*v_max
                    }
                    None => &*v,
                };
                // p <- p - step m / (sqrt(v) / sqrt(bias2) + eps), step = lr / bias1, with the
                // factor -1/step folded into the denominator (tch's addcdiv_ has no `value`).
                let _ = second.sqrt_out(denom);
                let _ = denom.g_mul_scalar_(-1.0 / (step * bias2_sqrt)).g_add_scalar_(-eps / step);
                let _ = params.addcdiv_(m, denom);
            }
            OptimizerSpec::Rmsprop { alpha, eps, momentum } => {
                let (v, denom) = (self.v.as_mut().unwrap(), self.denom.as_mut().unwrap());
                let _ = grad.mul_out(denom, grad);
                let _ = v.lerp_(denom, 1.0 - alpha);
                let _ = v.sqrt_out(denom);
                match self.m.as_mut() {
                    Some(buf) => {
                        // buf <- momentum buf + g / (sqrt(v) + eps);  p <- p - lr buf.
                        let _ = denom.g_add_scalar_(eps);
                        let _ = buf.g_mul_scalar_(momentum).addcdiv_(grad, denom);
                        let _ = params.g_add_(&(&*buf * -lr));
                    }
                    None => {
                        let _ = denom.g_mul_scalar_(-1.0 / lr).g_add_scalar_(-eps / lr);
                        let _ = params.addcdiv_(grad, denom);
                    }
                }
            }
            OptimizerSpec::Sgd { momentum, weight_decay } => {
                if weight_decay != 0.0 {
                    let _ = grad.g_add_(&(&*params * weight_decay));
                }
                let direction = match self.m.as_mut() {
                    Some(buf) if self.t == 1 => {
                        buf.copy_(grad);
                        &*buf
                    }
                    Some(buf) => {
                        let _ = buf.g_mul_scalar_(momentum).g_add_(grad);
                        &*buf
                    }
                    None => &*grad,
                };
                let _ = params.g_add_(&(direction * -lr));
            }
        }
    }
}

/// The constants of one Adam step.
struct AdamStep {
    b1: f64,
    b2: f64,
    eps: f64,
    /// `lr / (1 - b1^t)`.
    step: f64,
    /// `sqrt(1 - b2^t)`.
    bias2_sqrt: f64,
    weight_decay: f64,
    /// AdamW's decoupled decay rather than Adam's L2 term.
    decoupled: bool,
    lr: f64,
}

/// Adam's state as host slices of CPU tensors, for the step fused into one pass.
///
/// libtorch runs Adam as seven operations over the flat vectors (eight with AMSGrad), each a
/// dispatch and a pass over memory; at DQN sizes (a few thousand to tens of thousands of
/// parameters) the dispatches cost more than the arithmetic. One loop over the elements, which
/// the compiler vectorises (compiled for AVX2 through pulp's dispatch where the CPU has it),
/// does the same arithmetic in the same order as PyTorch's single-tensor Adam
/// (`torch/optim/adam.py`: `m.lerp_(g, 1 - b1)`, `v.mul_(b2).addcmul_(g, g, value=1 - b2)`,
/// `sqrt(v) / sqrt(bias2) + eps`, `p.addcdiv_(m, denom, value=-step)`, AMSGrad's
/// `torch.maximum`, NaN passing through as there), in `f32` with the scalars rounded to `f32`
/// as libtorch does.
struct HostAdam<'a> {
    params: &'a mut [f32],
    grad: &'a [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    v_max: Option<&'a mut [f32]>,
}

impl<'a> HostAdam<'a> {
    /// The slices, when every tensor is a contiguous `f32` tensor on the CPU of the same size.
    fn of(
        params: &'a mut Tensor,
        grad: &'a Tensor,
        m: &'a Option<Tensor>,
        v: &'a Option<Tensor>,
        v_max: &'a Option<Tensor>,
    ) -> Option<Self> {
        let n = params.numel();
        if n == 0 {
            return None;
        }
        let host = |t: &Tensor| {
            t.device() == tch::Device::Cpu && t.kind() == tch::Kind::Float && t.is_contiguous() && t.numel() == n
        };
        let (m, v) = (m.as_ref()?, v.as_ref()?);
        if ![&*params, grad, m, v].into_iter().chain(v_max.as_ref()).all(host) {
            return None;
        }
        // SAFETY: each tensor is a contiguous CPU f32 tensor of `n` elements, alive for 'a; the
        // optimizer owns `m`, `v` and `v_max` and the caller lends `params` mutably, so no other
        // reference writes them meanwhile. `grad` is only read, and is a different tensor.
        let slice = |t: &Tensor| unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) };
        Some(HostAdam {
            params: slice(params),
            grad: slice(grad),
            m: slice(m),
            v: slice(v),
            v_max: v_max.as_ref().map(slice),
        })
    }

    fn step(self, c: &AdamStep) {
        pulp::Arch::new().dispatch(
            #[inline(always)]
            || self.run(c),
        )
    }

    #[inline(always)]
    fn run(self, c: &AdamStep) {
        let w1 = (1.0 - c.b1) as f32;
        let (b2, w2) = (c.b2 as f32, (1.0 - c.b2) as f32);
        let (eps, bias2_sqrt, neg_step) = (c.eps as f32, c.bias2_sqrt as f32, -c.step as f32);
        // Adam's L2 term is added to the gradient, AdamW's decay scales the parameter.
        let (l2, keep) =
            if c.decoupled { (0.0, (1.0 - c.lr * c.weight_decay) as f32) } else { (c.weight_decay as f32, 1.0) };
        // torch.lerp(a, b, w) for w < 0.5 is a + w (b - a); Adam's weights 1 - beta are below it.
        let lerp = |a: f32, b: f32, w: f32| if w < 0.5 { a + w * (b - a) } else { b - (b - a) * (1.0 - w) };
        let v_max = self.v_max;
        match v_max {
            None => {
                for (((p, &g), m), v) in
                    self.params.iter_mut().zip(self.grad).zip(self.m.iter_mut()).zip(self.v.iter_mut())
                {
                    let g = g + l2 * *p;
                    *p *= keep;
                    *m = lerp(*m, g, w1);
                    *v = *v * b2 + w2 * g * g;
                    *p += neg_step * *m / (v.sqrt() / bias2_sqrt + eps);
                }
            }
            Some(v_max) => {
                let moments = self.m.iter_mut().zip(self.v.iter_mut()).zip(v_max.iter_mut());
                for ((p, &g), ((m, v), vm)) in self.params.iter_mut().zip(self.grad).zip(moments) {
                    let g = g + l2 * *p;
                    *p *= keep;
                    *m = lerp(*m, g, w1);
                    *v = *v * b2 + w2 * g * g;
                    // torch.maximum: NaN wins.
                    if !(*vm >= *v) {
                        *vm = *v;
                    }
                    *p += neg_step * *m / (vm.sqrt() / bias2_sqrt + eps);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::OptimizerConfig;
    use tch::{nn, Device, Kind};

    /// Runs `steps` steps of ours and of tch's (libtorch's C++ optimizers) on the same quadratic
    /// loss and compares the parameters.
    fn matches_libtorch(spec: OptimizerSpec, reference: impl OptimizerConfig, lr: f64) {
        let init = Tensor::from_slice(&[0.5f32, -1.5, 2.0, 0.25]);
        let target = Tensor::from_slice(&[1.0f32, 0.0, -1.0, 3.0]);
        let vs = nn::VarStore::new(Device::Cpu);
        let x = vs.root().var_copy("x", &init);
        let mut opt = reference.build(&vs, lr).unwrap();
        // Ours on the host path (CPU) and on the tensor path (other devices).
        let mut flats = [init.copy(), init.copy()];
        let mut ours = [
            FlatOptimizer::new(&spec, &flats[0]),
            FlatOptimizer { host: false, ..FlatOptimizer::new(&spec, &flats[1]) },
        ];
        for _ in 0..25 {
            let loss = (&x - &target).square().sum(Kind::Float) + x.abs().sum(Kind::Float);
            opt.backward_step(&loss);
            for (flat, ours) in flats.iter_mut().zip(&mut ours) {
                let mut grad = (&*flat - &target) * 2.0 + flat.sign();
                ours.step(flat, &mut grad, lr);
            }
        }
        for (flat, path) in flats.iter().zip(["host", "tensor"]) {
            let diff = (flat - &x).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "{spec:?} ({path} path): ours {flat:?} libtorch {x:?}");
        }
    }

    #[test]
    fn adam_matches_libtorch() {
        matches_libtorch(OptimizerSpec::default(), nn::Adam::default(), 0.05);
        let adam_l2 = OptimizerSpec::Adam { betas: (0.8, 0.99), eps: 1e-6, weight_decay: 0.1, amsgrad: false };
        matches_libtorch(adam_l2, nn::Adam { beta1: 0.8, beta2: 0.99, wd: 0.1, eps: 1e-6, amsgrad: false }, 0.05);
        let amsgrad = OptimizerSpec::Adam { betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0, amsgrad: true };
        matches_libtorch(amsgrad, nn::Adam { amsgrad: true, ..Default::default() }, 0.05);
    }

    #[test]
    fn adamw_matches_libtorch() {
        let spec = OptimizerSpec::Adamw { betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01, amsgrad: true };
        matches_libtorch(spec, nn::AdamW { amsgrad: true, ..Default::default() }, 0.004);
    }

    #[test]
    fn rmsprop_and_sgd_match_libtorch() {
        let rms = OptimizerSpec::Rmsprop { alpha: 0.99, eps: 1e-8, momentum: 0.0 };
        matches_libtorch(rms, nn::RmsProp::default(), 0.01);
        let rms_m = OptimizerSpec::Rmsprop { alpha: 0.9, eps: 1e-8, momentum: 0.5 };
        matches_libtorch(rms_m, nn::RmsProp { alpha: 0.9, momentum: 0.5, ..Default::default() }, 0.01);
        matches_libtorch(OptimizerSpec::Sgd { momentum: 0.0, weight_decay: 0.0 }, nn::Sgd::default(), 0.1);
        let sgd_m = OptimizerSpec::Sgd { momentum: 0.9, weight_decay: 0.01 };
        matches_libtorch(sgd_m, nn::Sgd { momentum: 0.9, wd: 0.01, ..Default::default() }, 0.1);
    }

    #[test]
    fn lr_schedules() {
        let p = |episode, fraction| Progress { step: 0, episode, fraction };
        assert_eq!(LrSchedule::Constant.value(0.1, p(5, 0.5)), 0.1);
        let exp = LrSchedule::Exponential { factor: 0.97, floor: 1e-4, per: Per::Episode };
        assert!((exp.value(0.004, p(1, 0.0)) - 0.00388).abs() < 1e-12);
        assert_eq!(exp.value(0.004, p(10_000, 0.0)), 1e-4);
        assert!((LrSchedule::Linear { end: 0.0 }.value(1.0, p(0, 0.25)) - 0.75).abs() < 1e-9);
    }
}
