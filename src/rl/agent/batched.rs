//! The batched learner: `K` DQN members trained as one model (the PureJaxRL idea, Lu et al.
//! 2022), so that the per-operation overhead that dominates a small network's update (FACTS.md
//! §6) is paid once for all of them.
//!
//! Layout: the members' trainable parameters are the rows of one `[K, P]` tensor, row `i` laid
//! out exactly as the flat parameters of a [`super::DqnAgent`] (variables in name order), so a
//! member starts from the weights an agent with its seed starts from and its row can be saved
//! under the agent's variable names. Each linear layer is a view `[K, out, in]` of those rows;
//! a forward pass is one batched matrix product (`baddbmm`) per layer for all members, and the
//! backward pass is written by hand, as the agent's fused MLP is: per layer two batched
//! products and a ReLU mask, straight into the `[K, P]` gradient. The dueling streams'
//! aggregation `V + A - mean A` is differentiated by hand too (`dV = sum_a dQ`,
//! `dA = dQ - mean_a dQ`).
//!
//! The Nature CNN (Mnih et al. 2015) runs through libtorch's autograd instead ([`Graph`]), each
//! variable of the members an autograd leaf over the `[K, P]` parameters, whose gradients are
//! copied into the same `[K, P]` gradient, so everything after the backward pass (frozen
//! variables, clipping, each member's optimizer) is shared. On a GPU the members' frames become
//! the channel blocks of one image per row and each convolution is one grouped convolution
//! (`groups = K`, member `j`'s filters the `j`-th block), the dense layers batched products:
//! one launch per layer for all members. On CPU, where convolutions are compute-bound and
//! libtorch's grouped convolution and large batched products are slower than one member's at a
//! time (`cargo bench --bench batched -- --cnn`), each member runs the agent's own operations,
//! so a member's updates are its agent's bit for bit. Noisy layers (NoisyNets) take the same
//! path: each member draws its factorised noise from its own stream, as its agent, before each
//! greedy action and each gradient step (online network, then target), into one `[K, N]`
//! tensor; evaluation acts with the means.
//!
//! Per member: its replay buffer (prioritized replay keeps its own sum tree), its random
//! streams (its sampling is the trainer's per-member stream, as for the agent), its exploration
//! schedule and every scalar hyperparameter that does not change a tensor's shape or the loop's
//! gates: learning rate and its schedule, discount (the member's buffer computes its n-step
//! returns), target period or Polyak weight, PER's alpha, beta and epsilon, gradient clipping,
//! reward scale, the loss (Huber or squared error) and the whole optimizer (type, betas, eps,
//! decay: each member has its own optimizer over its own row). What shapes tensors or gates the
//! loop (network, batch size, n-step, replay type and size, learning starts, update schedule,
//! double DQN, target type) is the group's ([`group_key`]).
//!
//! Heads: the expected head (plain or dueling), and C51 and QR-DQN on CPU, whose
//! target and loss run on each member's host rows through the agent's own [`HostHead`], so a
//! member makes the agent's updates bit for bit. IQN, Munchausen with C51 or QR-DQN, and C51
//! and QR-DQN on a GPU take
//! the agent's own tensor maths (its targets and `Head::per_row`) on the `K B` rows of all
//! members at once ([`BatchedDqn::general_loss`]), row-wise operations whose every row is the
//! agent's; IQN's fractions are each member's, drawn from its own stream as its agent draws
//! them, and its fraction embedding runs in [`Graph`].
//!
//! An update samples every live member's batch into one `[K, B, ...]` staging area (one copy to
//! the device), computes all members' TD errors in one pass, and on the host each member's
//! loss, its finiteness and its output gradient `w l'(delta) / B`; each member's loss is the
//! mean over its own rows, so the gradient of their sum with respect to member `i`'s row is
//! member `i`'s own. A member whose loss or gradient turns NaN or infinite is failed and masked
//! (its rows get no gradient and its optimizer no step), so its NaN never reaches the others.

use rand::rngs::StdRng;
use rand::Rng;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use super::dqn::{
    alias, alias_mut, build_replay, flush_denormals, host_loss, initial_parameters, per_beta, samples_rng,
    weighted_mean, DqnConfig, Fractions, ReplaySpec, TargetSpec,
};
use super::head::{Head, HostBatch, HostHead};
use super::host_mlp::HostMlp;
use super::optim::FlatOptimizer;
use super::{argmax, LossKind, Progress};
use crate::rl::env::{ActionSpace, Obs, ObsSpace};
use crate::rl::net::{NetError, NetSpec};
use crate::rl::replay::{Batch, ObsBatch, Replay, ReplayStorage};

/// What members of one batched learner must share: everything in the config but the scalars
/// each member may have its own value of (see the module documentation).
pub fn group_key(cfg: &DqnConfig) -> Value {
    let mut v = serde_json::to_value(cfg).unwrap_or_default();
    if let Value::Object(map) = &mut v {
        for key in ["gamma", "lr", "lr_schedule", "max_grad_norm", "reward_scale", "exploration", "optimizer", "loss"] {
            map.remove(key);
        }
        for (section, keep) in [("target", "type"), ("replay", "type")] {
            if let Some(Value::Object(inner)) = map.get_mut(section) {
                inner.retain(|k, _| k == keep || (section == "replay" && k == "size"));
            }
        }
        // Munchausen's alpha, tau and clip and the noisy layers' initial sigma are per member;
        // whether each is on is the group's.
        for key in ["munchausen", "noisy"] {
            if let Some(m) = map.get_mut(key) {
                *m = Value::Bool(!m.is_null());
            }
        }
    }
    v
}

/// Munchausen's `tau`, `alpha` and `clip` of each member as `[K, 1, 1]` tensors on `device`,
/// when the group uses Munchausen.
fn munchausen_scalars(cfgs: &[DqnConfig], device: Device) -> Option<[Tensor; 3]> {
    let ms: Vec<&super::Munchausen> = cfgs.iter().map(|c| c.munchausen.as_ref()).collect::<Option<_>>()?;
    let column = |f: fn(&super::Munchausen) -> f64| {
        let values: Vec<f32> = ms.iter().map(|m| f(m) as f32).collect();
        Tensor::from_slice(&values).view([-1, 1, 1]).to_device(device)
    };
    Some([column(|m| m.tau), column(|m| m.alpha), column(|m| m.clip)])
}

/// The frozen variables among an agent's initial ones, flat, on `device`.
fn frozen_of(vars: &[(String, Vec<i64>, Tensor, bool)], device: Device) -> Vec<Tensor> {
    vars.iter().filter(|v| v.3).map(|(_, _, t, _)| t.view([-1]).to_device(device)).collect()
}

/// An agent's initial variables as one flat row, in the layout order.
fn flat_row(vars: &[(String, Vec<i64>, Tensor, bool)]) -> Tensor {
    Tensor::cat(&vars.iter().map(|(_, _, t, _)| t.view([-1])).collect::<Vec<_>>(), 0)
}

/// One linear layer of every member: views into the `[K, P]` parameters and gradient.
struct Linear {
    /// `W`, `[K, out, in]`.
    weight: Tensor,
    /// `W^T`, `[K, in, out]`.
    weight_t: Tensor,
    /// `b`, `[K, 1, out]`.
    bias: Tensor,
    grad_weight: Tensor,
    grad_bias: Tensor,
}

/// Where each variable sits in a member's row: name, shape, offset.
type Layout = Vec<(String, Vec<i64>, i64)>;

impl Linear {
    fn new(flat: &Tensor, grad: &Tensor, layout: &Layout, prefix: &str) -> anyhow::Result<Self> {
        let (w, b) = (Slot::find(layout, &format!("{prefix}.weight"))?, Slot::find(layout, &format!("{prefix}.bias"))?);
        let k = flat.size()[0];
        let bias = |t: &Tensor| b.of(t).view([k, 1, -1]);
        let weight = w.of(flat);
        Ok(Linear {
            weight_t: weight.transpose(1, 2),
            weight,
            bias: bias(flat),
            grad_weight: w.of(grad),
            grad_bias: bias(grad),
        })
    }

    /// `h W^T + b` for every member: `[K, R, in] -> [K, R, out]`.
    fn forward(&self, h: &Tensor) -> Tensor {
        self.bias.baddbmm(h, &self.weight_t, 1.0, 1.0)
    }

    /// Writes `dL/dW = dZ^T h` and `dL/db = 1^T dZ` of every member.
    fn gradients(&self, dz: &Tensor, input: &Tensor, ones: &Tensor) {
        let _ = dz.transpose(1, 2).bmm_out(&self.grad_weight, input);
        let _ = ones.bmm_out(&self.grad_bias, dz);
    }
}

/// The shape of a batched network: its layers' variable prefixes in a member's layout.
#[derive(Clone, Debug)]
struct Plan {
    /// The convolutions (prefix, stride) of the Nature CNN, on pixels `[frames, height, width]`.
    convs: Vec<(String, i64)>,
    pixels: Option<[i64; 3]>,
    /// Linear layers with a ReLU after each, on the body's features.
    trunk: Vec<String>,
    /// The output part: one stream, or the dueling value and advantage streams; ReLU between
    /// a stream's layers.
    streams: Vec<Vec<String>>,
    /// Outputs per action (atoms or quantiles of a distributional head; 1 otherwise).
    atoms: i64,
    /// Every linear layer is a factorised noisy one (NoisyNets).
    noisy: bool,
    /// IQN's fraction embedding: its cosines (`None` for the other heads).
    embedding: Option<i64>,
}

impl Plan {
    fn new(
        spec: &NetSpec,
        space: &ObsSpace,
        atoms: i64,
        noisy: bool,
        embedding: Option<i64>,
    ) -> Result<Self, crate::error::InputError> {
        let names = |prefix: &str, n: usize| (0..n).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>();
        let dueling = spec.dueling();
        let (convs, pixels, trunk, stream_layers) = match (spec, space) {
            (NetSpec::Mlp { hidden, .. }, _) if dueling => (vec![], None, names("trunk.", hidden.len()), 1),
            (NetSpec::Mlp { hidden, .. }, _) => {
                return Ok(Plan {
                    convs: vec![],
                    pixels: None,
                    trunk: names("", hidden.len()),
                    streams: vec![vec![hidden.len().to_string()]],
                    atoms,
                    noisy,
                    embedding,
                })
            }
            (NetSpec::NatureCnn { .. }, ObsSpace::Pixels { frames, height, width, .. }) => {
                let prefix = if dueling { "trunk." } else { "" };
                let convs = [("conv1", 4), ("conv2", 2), ("conv3", 1)].map(|(n, s)| (format!("{prefix}{n}"), s));
                (convs.to_vec(), Some([*frames as i64, *height as i64, *width as i64]), vec![], 2)
            }
            (NetSpec::NatureCnn { .. }, _) => {
                return Err(crate::error::InputError::new(NetError::CnnOnVector(space.shape()).to_string()))
            }
        };
        let streams = if dueling {
            vec![names("value.", stream_layers), names("advantage.", stream_layers)]
        } else {
            vec![vec!["fc".into(), "q".into()]]
        };
        Ok(Plan { convs, pixels, trunk, streams, atoms, noisy, embedding })
    }

    /// Whether the hand-written passes cover this network (an MLP with single-layer streams);
    /// anything else runs through libtorch's autograd.
    fn fused(&self) -> bool {
        self.convs.is_empty() && !self.noisy && self.embedding.is_none() && self.streams.iter().all(|s| s.len() == 1)
    }
}

/// `V + A - mean_a A` (Wang et al. 2016, eq. 9), per atom when `atoms > 1` (as
/// `dueling_aggregate_atoms`): value `[K, R, atoms]`, advantages `[K, R, |A| atoms]`.
fn aggregate(value: &Tensor, advantage: &Tensor, atoms: i64) -> Tensor {
    if atoms == 1 {
        return value + advantage - advantage.mean_dim(-1, true, None);
    }
    let (k, r) = (advantage.size()[0], advantage.size()[1]);
    let a = advantage.view([k, r, -1, atoms]);
    (value.unsqueeze(2) + &a - a.mean_dim(2, true, None)).view([k, r, -1])
}

/// Where a variable sits in a member's row.
#[derive(Clone, Debug)]
struct Slot {
    offset: i64,
    shape: Vec<i64>,
}

impl Slot {
    fn find(layout: &Layout, name: &str) -> anyhow::Result<Self> {
        let (_, shape, offset) = layout
            .iter()
            .find(|(n, ..)| n == name)
            .ok_or_else(|| anyhow::anyhow!("the network has no variable `{name}`"))?;
        Ok(Slot { offset: *offset, shape: shape.clone() })
    }

    /// This variable of every member in `params` `[K, P]`: `[K, shape...]`.
    fn of(&self, params: &Tensor) -> Tensor {
        let k = params.size()[0];
        let mut shape = vec![k];
        shape.extend(&self.shape);
        params.narrow(1, self.offset, self.shape.iter().product()).view(shape.as_slice())
    }
}

/// A dense layer of a [`Graph`]: indices into its slots, and for a noisy layer its `sigma`s'
/// and where `f(eps_in)` and `f(eps_out)` sit in a member's noise (offset, length each).
struct Dense {
    weight: usize,
    bias: usize,
    sigma: Option<(usize, usize)>,
    noise: Option<[i64; 4]>,
}

/// The layers of a network that runs through libtorch's autograd (the Nature CNN): every
/// member's convolutions as one grouped convolution (`groups = K`, member `j`'s channels and
/// filters the `j`-th block), its linear layers as batched products.
///
/// Each variable of every member (`[K, shape...]`, a view of the `[K, P]` parameters) is its
/// own autograd leaf, so the backward pass yields each variable's gradient at its own size; a
/// single `[K, P]` leaf would make every view's backward scatter into a `[K, P]` buffer of
/// zeros (27 ms of a 36 ms Nature CNN step, measured).
struct Graph {
    /// The variables the layers read, covering every member's whole row.
    slots: Vec<Slot>,
    /// Convolutions: weight and bias (indices into `slots`) and stride.
    convs: Vec<(usize, usize, i64)>,
    pixels: Option<[i64; 3]>,
    trunk: Vec<Dense>,
    streams: Vec<Vec<Dense>>,
    /// Length of a member's noise vector (0 without noisy layers).
    noise_len: i64,
    /// The agent's noise variables (name, length), in the noise vector's order.
    noise_vars: Vec<(String, i64)>,
    /// IQN's fraction embedding and its frequencies `pi i`, `i = 0..n`.
    embedding: Option<(Dense, Tensor)>,
    atoms: i64,
    /// Each member through its own operations (on CPU, where batching compute-bound
    /// convolutions saves nothing and libtorch's grouped convolution and large batched
    /// products are slower than one member's at a time), or all members as one grouped
    /// convolution and batched products (on a GPU, where each launch costs).
    per_member: bool,
    /// The leaves and the outputs of the last forward pass that saved them.
    saved: Option<(Vec<Tensor>, Tensor)>,
}

impl Graph {
    fn new(layout: &Layout, plan: &Plan, per_member: bool, device: Device) -> anyhow::Result<Self> {
        let mut slots = Vec::new();
        let mut pair = |prefix: &str, w: &str, b: &str| -> anyhow::Result<(usize, usize)> {
            slots.push(Slot::find(layout, &format!("{prefix}.{w}"))?);
            slots.push(Slot::find(layout, &format!("{prefix}.{b}"))?);
            Ok((slots.len() - 2, slots.len() - 1))
        };
        let convs = plan
            .convs
            .iter()
            .map(|(prefix, stride)| pair(prefix, "weight", "bias").map(|(w, b)| (w, b, *stride)))
            .collect::<anyhow::Result<_>>()?;
        // Noise variables, as the agent's `Noise` lays them out: by name, `f(eps_in)` and
        // `f(eps_out)` of each layer.
        let mut noise_names: Vec<(String, String, i64)> = Vec::new();
        let mut dense = |prefix: &String| -> anyhow::Result<Dense> {
            let (weight, bias) = pair(prefix, "weight", "bias")?;
            let sigma = plan.noisy.then(|| pair(prefix, "weight_sigma", "bias_sigma")).transpose()?;
            if plan.noisy {
                let shape = Slot::find(layout, &format!("{prefix}.weight"))?.shape;
                noise_names.push((format!("{prefix}.noise_in"), prefix.clone(), shape[1]));
                noise_names.push((format!("{prefix}.noise_out"), prefix.clone(), shape[0]));
            }
            Ok(Dense { weight, bias, sigma, noise: None })
        };
        let mut trunk: Vec<Dense> = plan.trunk.iter().map(&mut dense).collect::<anyhow::Result<_>>()?;

        let mut streams: Vec<Vec<Dense>> = plan
            .streams
            .iter()
            .map(|s| s.iter().map(&mut dense).collect::<anyhow::Result<_>>())
            .collect::<anyhow::Result<_>>()?;
        // The agent's `TauEmbedding`: a plain linear layer on `cos(pi i tau)`.
        let embedding = match plan.embedding {
            Some(n) => {
                let (weight, bias) = pair("tau_embedding", "weight", "bias")?;
                let freqs = Tensor::arange(n, (Kind::Float, device)) * std::f64::consts::PI;
                Some((Dense { weight, bias, sigma: None, noise: None }, freqs))
            }
            None => None,
        };
        noise_names.sort();
        let mut offsets = std::collections::HashMap::new();
        let mut noise_len = 0;
        for (name, _, len) in &noise_names {
            offsets.insert(name.clone(), (noise_len, *len));
            noise_len += len;
        }
        let prefixes = plan.trunk.iter().chain(plan.streams.iter().flatten());
        for (layer, prefix) in trunk.iter_mut().chain(streams.iter_mut().flatten()).zip(prefixes) {
            if plan.noisy {
                let (i, o) = (offsets[&format!("{prefix}.noise_in")], offsets[&format!("{prefix}.noise_out")]);
                layer.noise = Some([i.0, i.1, o.0, o.1]);
            }
        }
        let covered: i64 = slots.iter().map(|s| s.shape.iter().product::<i64>()).sum();
        let row: i64 = layout.iter().map(|(_, shape, _)| shape.iter().product::<i64>()).sum();
        anyhow::ensure!(covered == row, "the batched network reads {covered} of a member's {row} parameters");
        Ok(Graph {
            slots,
            convs,
            pixels: plan.pixels,
            trunk,
            streams,
            noise_len,
            noise_vars: noise_names.into_iter().map(|(name, _, len)| (name, len)).collect(),
            embedding,
            atoms: plan.atoms,
            per_member,
            saved: None,
        })
    }

    /// A dense layer of every member, `[K, R, in] -> [K, R, out]`; a noisy one with the noise in
    /// `noise` (`[K, noise_len]`; `None`: its means), as the agent's `NoisyLinear` computes it:
    /// `mu_w x + mu_b + f_out * (sigma_w (f_in * x) + sigma_b)`.
    fn dense(vars: &[Tensor], layer: &Dense, h: &Tensor, noise: Option<&Tensor>) -> Tensor {
        let mean = Self::linear(vars, (layer.weight, layer.bias), h);
        let (Some(sigma), Some([i_off, i_len, o_off, o_len]), Some(noise)) = (layer.sigma, layer.noise, noise) else {
            return mean;
        };
        let k = h.size()[0];
        let f_in = noise.narrow(1, i_off, i_len).view([k, 1, i_len]);
        let f_out = noise.narrow(1, o_off, o_len).view([k, 1, o_len]);
        mean + Self::linear(vars, sigma, &(h * f_in)) * f_out
    }

    /// `h W^T + b` of every member: `[K, R, in] -> [K, R, out]`.
    fn linear(vars: &[Tensor], (weight, bias): (usize, usize), h: &Tensor) -> Tensor {
        if h.size()[0] == 1 {
            // One member: the agent's own `addmm`, which libtorch differentiates without the
            // transposed copies of a batched product's.
            return h.select(0, 0).linear(&vars[weight].select(0, 0), Some(vars[bias].select(0, 0))).unsqueeze(0);
        }
        vars[bias].unsqueeze(1).baddbmm(h, &vars[weight].transpose(1, 2), 1.0, 1.0)
    }

    /// Outputs `[K, R, |A| atoms]` of observations `[K, R, D]` (pixels as bytes, scaled by
    /// 1/255 as the agent's network scales them), `vars` being each slot's `[K, shape...]`.
    fn outputs(&self, vars: &[Tensor], x: &Tensor, noise: Option<&Tensor>, taus: Option<&Tensor>) -> Tensor {
        let (k, r) = (x.size()[0], x.size()[1]);
        let mut h = match self.pixels {
            Some([frames, height, width]) => {
                // Member j's frames become channels j*frames.. of one image per row.
                let mut img =
                    x.view([k, r, frames, height, width]).transpose(0, 1).reshape([r, k * frames, height, width]);
                img = img.to_kind(Kind::Float) / 255.0;
                for &(weight, bias, stride) in &self.convs {
                    let mut shape = vec![k * self.slots[weight].shape[0]];
                    shape.extend(&self.slots[weight].shape[1..]);
                    let w = vars[weight].reshape(shape.as_slice());
                    let b = vars[bias].reshape([-1]);
                    img = img.conv2d(&w, Some(&b), [stride, stride], [0, 0], [1, 1], k).relu();
                }
                // `[R, K C, h, w]` -> `[K, R, C h w]`, each member's features in the agent's order.
                img.view([r, k, -1]).transpose(0, 1)
            }
            None => x.to_kind(Kind::Float),
        };
        for layer in &self.trunk {
            h = Self::dense(vars, layer, &h, noise).relu();
        }
        // IQN (Dabney et al. 2018, eq. 4): the features times `phi(tau)` of each of the `M`
        // fractions of a row, `[K, R, M]`, as the agent's `forward_taus`: rows become `R M`.
        let fractions = match (&self.embedding, taus) {
            (Some((embedding, freqs)), Some(taus)) => {
                let (k, r, m) = (taus.size()[0], taus.size()[1], taus.size()[2]);
                // (`reshape`: the products follow their inputs' strides, which may be a view's.)
                let cos = (taus.unsqueeze(-1) * freqs).cos().reshape([k, r * m, -1]);
                let phi = Self::dense(vars, embedding, &cos, None).relu().reshape([k, r, m, -1]);
                h = (h.unsqueeze(2) * phi).reshape([k, r * m, -1]);
                Some(m)
            }
            _ => None,
        };
        let stream = |layers: &[Dense]| {
            let mut z = h.shallow_clone();
            for (j, layer) in layers.iter().enumerate() {
                z = Self::dense(vars, layer, &z, noise);
                if j + 1 < layers.len() {
                    z = z.relu();
                }
            }
            z
        };
        let out = match self.streams.as_slice() {
            [plain] => stream(plain),
            [value, advantage] => aggregate(&stream(value), &stream(advantage), self.atoms),
            _ => unreachable!("one stream, or value and advantage"),
        };
        match fractions {
            // `[K, R M, |A|]` -> `[K, R, |A| M]`, action-major as a distributional head's.
            Some(m) => {
                let (k, r) = (x.size()[0], x.size()[1]);
                out.reshape([k, r, m, -1]).permute([0, 1, 3, 2]).reshape([k, r, -1])
            }
            None => out,
        }
    }
}

/// A network of every member, over one `[K, P]` parameter tensor: an MLP with single-layer
/// streams through the hand-written passes, anything else through autograd ([`Graph`]).
struct Stack {
    flat: Tensor,
    grad: Tensor,
    plan: Plan,
    trunk: Vec<Linear>,
    /// The output layer, or the value and advantage streams.
    out: Vec<Linear>,
    /// The trunk layers' inputs and the features the output part read, from the last
    /// [`Stack::forward`] that saved them.
    saved: Vec<Tensor>,
    graph: Option<Graph>,
    /// Noisy layers: each member's noise `[K, N]` on the device, its host rows and their alias
    /// (declared first), and whether forward passes use it (off: the means, as evaluation).
    noise: Option<(Tensor, Tensor, Vec<f32>)>,
    noise_on: bool,
}

impl Stack {
    fn new(flat: Tensor, layout: &Layout, plan: &Plan) -> anyhow::Result<Self> {
        let grad = flat.zeros_like();
        let (trunk, out, graph) = if plan.fused() {
            let trunk =
                plan.trunk.iter().map(|p| Linear::new(&flat, &grad, layout, p)).collect::<anyhow::Result<_>>()?;
            let out =
                plan.streams.iter().map(|s| Linear::new(&flat, &grad, layout, &s[0])).collect::<anyhow::Result<_>>()?;
            (trunk, out, None)
        } else {
            (Vec::new(), Vec::new(), Some(Graph::new(layout, plan, flat.device() == Device::Cpu, flat.device())?))
        };
        let noise = graph.as_ref().filter(|g| g.noise_len > 0).map(|g| {
            let (k, n) = (flat.size()[0], g.noise_len);
            let mut host = vec![0f32; (k * n) as usize];
            // SAFETY: `host` moves into the stack with the tensor, is never resized, and the
            // tensor is declared before it.
            let alias = unsafe { alias_mut(&mut host, &[k, n]) };
            (Tensor::zeros([k, n], (Kind::Float, flat.device())), alias, host)
        });
        Ok(Stack {
            noise,
            noise_on: false,
            flat,
            grad,
            trunk,
            out,
            saved: Vec::with_capacity(plan.trunk.len() + 1),
            graph,
            plan: plan.clone(),
        })
    }

    /// Q-values `[K, R, |A|]` of observations `[K, R, in]`, keeping what the backward pass
    /// needs when `save`.
    fn forward(&mut self, x: &Tensor, save: bool) -> Tensor {
        self.forward_taus(x, None, save)
    }

    /// [`Stack::forward`], IQN's outputs `[K, R, |A| M]` at the fractions `taus` `[K, R, M]`.
    fn forward_taus(&mut self, x: &Tensor, taus: Option<&Tensor>, save: bool) -> Tensor {
        if let Some(graph) = &mut self.graph {
            let _guard = tch::no_grad_guard();
            let vars: Vec<Tensor> = graph.slots.iter().map(|s| s.of(&self.flat)).collect();
            // Leaves over the same storage (the autograd graph ends at them): each variable of
            // all members, or of each member on its own.
            let leaves: Vec<Tensor> = match (save, graph.per_member) {
                (false, _) => Vec::new(),
                (true, false) => vars.iter().map(|v| v.detach().set_requires_grad(true)).collect(),
                (true, true) => (0..x.size()[0])
                    .flat_map(|j| vars.iter().map(move |v| v.narrow(0, j, 1).detach().set_requires_grad(true)))
                    .collect(),
            };
            let noise = self.noise.as_ref().filter(|_| self.noise_on).map(|(t, ..)| t);
            let out = tch::with_grad(|| {
                let vars = if save { &leaves } else { &vars };
                if !graph.per_member {
                    return graph.outputs(vars, x, noise, taus);
                }
                let n = graph.slots.len();
                let one = |j: i64| -> Tensor {
                    let own: Vec<Tensor> = if save {
                        vars[j as usize * n..(j as usize + 1) * n].iter().map(|v| v.shallow_clone()).collect()
                    } else {
                        vars.iter().map(|v| v.narrow(0, j, 1)).collect()
                    };
                    let member = |t: Option<&Tensor>| t.map(|t| t.narrow(0, j, 1));
                    graph.outputs(&own, &x.narrow(0, j, 1), member(noise).as_ref(), member(taus).as_ref())
                };
                Tensor::cat(&(0..x.size()[0]).map(one).collect::<Vec<_>>(), 0)
            });
            if save {
                graph.saved = Some((leaves, out.shallow_clone()));
            }
            return out.detach();
        }
        let _guard = tch::no_grad_guard();
        if save {
            self.saved.clear();
        }
        let mut h = x.shallow_clone();
        for layer in &self.trunk {
            let z = layer.forward(&h).relu_();
            if save {
                self.saved.push(h);
            }
            h = z;
        }
        let q = if self.out.len() == 2 {
            aggregate(&self.out[0].forward(&h), &self.out[1].forward(&h), self.plan.atoms)
        } else {
            self.out[0].forward(&h)
        };
        if save {
            self.saved.push(h);
        }
        q
    }

    /// Draws new noise for the members `draw[i]` from their `rngs[i]` (each member's row as the
    /// agent's `Noise` draws it), copies every row to the device and turns the noise on.
    fn draw_noise(&mut self, draw: &[bool], rngs: &mut [StdRng]) {
        let Some((device, alias, host)) = &mut self.noise else { return };
        let n = host.len() / draw.len();
        for (i, rng) in rngs.iter_mut().enumerate().filter(|(i, _)| draw[*i]) {
            crate::rl::net::draw_noise(rng, &mut host[i * n..(i + 1) * n]);
        }
        let _guard = tch::no_grad_guard();
        device.copy_(alias);
        self.noise_on = true;
    }

    /// Writes every member's `dL/dtheta` into `grad`, given `dL/dQ` `[K, B, |A|]` for the last
    /// saved forward pass; `ones` is `[K, 1, B]`.
    fn backward(&mut self, grad_q: &Tensor, ones: &Tensor) {
        if let Some(graph) = &mut self.graph {
            let (leaves, out) = graph.saved.take().expect("a saved forward pass");
            // d/dtheta of sum(out * dL/dout) is the chain rule's vector-Jacobian product.
            // (The callers run under `no_grad`; this product must join the graph.)
            let surrogate = tch::with_grad(|| (out * grad_q).sum(Kind::Float));
            let grads = Tensor::run_backward(&[surrogate], &leaves, false, false);
            let _guard = tch::no_grad_guard();
            let n = graph.slots.len();
            for (j, g) in grads.iter().enumerate() {
                let dst = graph.slots[j % n].of(&self.grad);
                let mut dst = if graph.per_member { dst.narrow(0, (j / n) as i64, 1) } else { dst };
                dst.copy_(g);
            }
            return;
        }
        let _guard = tch::no_grad_guard();
        let features = self.saved.last().expect("a saved forward pass");
        let atoms = self.plan.atoms;
        let mut dh = if self.out.len() == 2 {
            let (d_value, d_advantage) = if atoms == 1 {
                (grad_q.sum_dim_intlist(-1, true, Kind::Float), grad_q - grad_q.mean_dim(-1, true, None))
            } else {
                // Per atom: dV = sum_a dQ, dA = dQ - mean_a dQ.
                let (k, r) = (grad_q.size()[0], grad_q.size()[1]);
                let g = grad_q.view([k, r, -1, atoms]);
                (g.sum_dim_intlist(2, false, Kind::Float), (&g - g.mean_dim(2, true, None)).view([k, r, -1]))
            };
            self.out[0].gradients(&d_value, features, ones);
            self.out[1].gradients(&d_advantage, features, ones);
            (!self.trunk.is_empty()).then(|| d_value.bmm(&self.out[0].weight) + d_advantage.bmm(&self.out[1].weight))
        } else {
            self.out[0].gradients(grad_q, features, ones);
            (!self.trunk.is_empty()).then(|| grad_q.bmm(&self.out[0].weight))
        };
        for (l, layer) in self.trunk.iter().enumerate().rev() {
            let Some(d) = dh.take() else { break };
            // Through the ReLU that produced the layer's output (positive where z was).
            let dz = self.saved[l + 1].threshold_backward(&d, 0.0);
            layer.gradients(&dz, &self.saved[l], ones);
            if l > 0 {
                dh = Some(dz.bmm(&layer.weight));
            }
        }
    }
}

/// Observation rows of the staging area: floats, or pixels kept as bytes up to the network (a
/// quarter of the copy to a device).
enum Rows {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

impl Rows {
    fn new(space: &ObsSpace, len: usize) -> Self {
        match space {
            ObsSpace::Pixels { .. } => Rows::U8(vec![0; len]),
            _ => Rows::F32(vec![0.0; len]),
        }
    }

    /// A CPU tensor over the rows.
    ///
    /// # Safety
    /// As [`alias_mut`]: the rows outlive the tensor and are never resized.
    unsafe fn alias(&mut self, shape: &[i64]) -> Tensor {
        match self {
            Rows::F32(v) => alias_mut(v, shape),
            Rows::U8(v) => alias_mut(v, shape),
        }
    }

    /// Copies a sampled batch's observations into rows `at..`.
    fn put(&mut self, at: usize, batch: &ObsBatch) {
        match (self, batch) {
            (Rows::F32(dst), ObsBatch::F32(src)) => dst[at..at + src.len()].copy_from_slice(src),
            (Rows::U8(dst), ObsBatch::U8(src)) => dst[at..at + src.len()].copy_from_slice(src),
            _ => unreachable!("the replay stores the observations the staging area was built for"),
        }
    }

    /// Writes one observation into `dim` rows from `at`.
    fn put_obs(&mut self, at: usize, dim: usize, obs: Obs<'_>) {
        match (self, obs) {
            (Rows::F32(dst), Obs::Index(s)) => {
                dst[at..at + dim].fill(0.0);
                dst[at + s] = 1.0;
            }
            (Rows::F32(dst), Obs::F32(x)) => dst[at..at + dim].copy_from_slice(x),
            (Rows::U8(dst), Obs::U8(x)) => dst[at..at + dim].copy_from_slice(x),
            _ => unreachable!("the environment gives the observations the staging area was built for"),
        }
    }
}

/// Host buffers of `K` members' batches, actions and outputs, the CPU tensors that alias them
/// and their device copies.
struct Staging {
    /// A distributional head's outputs at `s'` (bootstrap and, for Double DQN, online), at `s`,
    /// and their gradient, `[K, B, |A| atoms]` host tensors over `dist` (declared first).
    dist_t: Option<[Tensor; 4]>,
    // Host tensors aliasing the staging buffers below (declared first: dropped before them).
    host: [Tensor; 6],
    grad_rows_host: Tensor,
    td_host: Tensor,
    act_host: Tensor,
    q_out: Tensor,
    norms_host: Tensor,
    /// Device copies of `host` (`obs, next_obs, actions, returns, bootstrap, weights`), when not
    /// on CPU.
    device_batch: Option<[Tensor; 6]>,
    device_grad_rows: Option<Tensor>,
    device_act: Option<Tensor>,
    // The staging area, `[K, B, ...]` row-major.
    obs: Rows,
    next_obs: Rows,
    actions: Vec<i64>,
    returns: Vec<f32>,
    bootstrap: Vec<f32>,
    weights: Vec<f32>,
    indices: Vec<usize>,
    /// `q - y` per row, and `dL/dQ` per row.
    td: Vec<f32>,
    grad_rows: Vec<f32>,
    /// Acting: one observation per member, `[K, 1, D]`, and the Q-values `[K, |A|]`.
    act_obs: Rows,
    q_host: Vec<f32>,
    /// Each member's gradient norm.
    norms: Vec<f32>,
    /// `dL/d(outputs)`, `[K, B, |A|]`, zero but for the actions taken.
    grad_q: Tensor,
    /// `[K, 1, B]` ones: sums a layer's `dZ` over rows.
    ones: Tensor,
    /// The members taking the current gradient phase: live, with something to sample.
    taking: Vec<bool>,
    /// The members acting greedily this step.
    greedy: Vec<bool>,
    /// Each member's PER importance exponent in the current gradient phase.
    betas: Vec<f64>,
    /// Host buffers behind `dist_t`: next, chooser, out, grad.
    dist: [Vec<f32>; 4],
}

impl Staging {
    /// `host_head`: the head's loss runs on the host (C51, QR-DQN on CPU), which needs `dist`.
    fn new(k: usize, b: usize, space: &ObsSpace, n: usize, atoms: usize, host_head: bool, device: Device) -> Self {
        let dim = space.flat_dim();
        let (mut obs, mut next_obs) = (Rows::new(space, k * b * dim), Rows::new(space, k * b * dim));
        let (actions, returns, bootstrap) = (vec![0i64; k * b], vec![0f32; k * b], vec![0f32; k * b]);
        let (mut td, grad_rows, mut act_obs, mut q_host) =
            (vec![0f32; k * b], vec![0f32; k * b], Rows::new(space, k * dim), vec![0f32; k * n]);
        let mut norms = vec![0f32; k];
        let weights = vec![1f32; k * b];
        let (ki, bi, di, ni) = (k as i64, b as i64, dim as i64, n as i64);
        // SAFETY: the aliased buffers live in the struct (their heap storage never moves: they
        // are refilled in place and never resized) and the tensors, declared before them, are
        // dropped first. libtorch writes `td`, `act_obs`, `q_host` and `norms` only through
        // these tensors, while no Rust reference to them is alive.
        let (host, grad_rows_host, td_host, act_host, q_out, norms_host) = unsafe {
            let col = [ki, bi, 1];
            (
                [
                    obs.alias(&[ki, bi, di]),
                    next_obs.alias(&[ki, bi, di]),
                    alias(&actions, &col),
                    alias(&returns, &col),
                    alias(&bootstrap, &col),
                    alias(&weights, &col),
                ],
                alias(&grad_rows, &col),
                alias_mut(&mut td, &col),
                act_obs.alias(&[ki, 1, di]),
                alias_mut(&mut q_host, &[ki, 1, ni]),
                alias_mut(&mut norms, &[ki]),
            )
        };
        let on_device = device != Device::Cpu;
        let width = if host_head { k * b * n * atoms } else { 0 };
        let mut dist = [vec![0f32; width], vec![0f32; width], vec![0f32; width], vec![0f32; width]];
        let shape = [ki, bi, ni * atoms as i64];
        // SAFETY: as above; libtorch writes the first three only through these tensors.
        let dist_t = host_head.then(|| unsafe { dist.each_mut().map(|v| alias_mut(v, &shape)) });
        Staging {
            dist_t,
            dist,
            device_batch: on_device.then(|| host.each_ref().map(|t| t.to_device(device))),
            device_grad_rows: on_device.then(|| grad_rows_host.to_device(device)),
            device_act: on_device.then(|| act_host.to_device(device)),
            host,
            grad_rows_host,
            td_host,
            act_host,
            q_out,
            norms_host,
            obs,
            next_obs,
            actions,
            returns,
            bootstrap,
            weights,
            indices: vec![0; k * b],
            td,
            grad_rows,
            act_obs,
            q_host,
            norms,
            grad_q: Tensor::zeros([ki, bi, ni * atoms as i64], (Kind::Float, device)),
            ones: Tensor::ones([ki, 1, bi], (Kind::Float, device)),
            taking: vec![false; k],
            greedy: vec![false; k],
            betas: vec![1.0; k],
        }
    }
}

/// Adds a member's `loss` to its running mean (`sum`, `count`), or halts it as diverged when the
/// loss is not finite (`steps`: its optimizer steps so far); returns whether it was finite.
fn record_loss(loss: f64, steps: u64, halted: &mut Option<Halt>, sum: &mut f64, count: &mut u64) -> bool {
    if !loss.is_finite() {
        *halted = Some(Halt::Failed(format!(
            "training diverged: the loss became {loss} at gradient step {}; lower lr, set max_grad_norm or reward_scale",
            steps + 1
        )));
        return false;
    }
    *sum += loss;
    *count += 1;
    true
}

/// A member's reason to have stopped learning.
#[derive(Clone, Debug, PartialEq)]
pub enum Halt {
    /// Stopped from outside (pruned, or done).
    Stopped,
    /// Its training diverged.
    Failed(String),
}

/// `K` DQN members trained as one model (see the module documentation).
pub struct BatchedDqn {
    cfgs: Vec<DqnConfig>,
    /// Munchausen's `tau`, `alpha` and `clip` of every member, `[K, 1, 1]` each (when the
    /// group uses Munchausen).
    munchausen: Option<[Tensor; 3]>,
    /// Frozen pretrained variables (`pretrained.freeze`): offset and length in a row. Their
    /// gradient is zeroed before clipping (the agent's norm leaves them out) and each member's
    /// values (`frozen_values`) are put back after its optimizer steps (weight decay would move
    /// them).
    frozen: Vec<(i64, i64)>,
    /// Each member's frozen values, as its agent starts with them (the file's, or its seed's
    /// initialisation for a frozen variable the file lacks).
    frozen_values: Vec<Vec<Tensor>>,
    /// The spaces and environment copies every member's weights and replay are built for.
    space: ObsSpace,
    actions: ActionSpace,
    copies: usize,
    device: Device,
    k: usize,
    b: usize,
    dim: usize,
    n_actions: usize,
    /// Outputs per action (atoms or quantiles of a distributional head; 1 otherwise).
    atoms: usize,
    /// The head's maths on tensors (its Q-values; targets and losses on the general path).
    head: Head,
    /// C51 and QR-DQN: their target and loss on host rows (CPU), as the agent's host path.
    host_head: Option<HostHead>,
    /// IQN, and Munchausen with a distributional head: the agent's own tensor maths on every
    /// member's rows at once ([`BatchedDqn::general_loss`]).
    general: bool,
    /// IQN's fractions of every member.
    fractions: Option<Fractions>,
    /// `[0, 1, ..., atoms - 1]` as a `[1, atoms]` int64 row: action `a`'s outputs are
    /// `a atoms + this` (the general path's gather).
    outputs_per_action: Tensor,
    layout: Layout,
    /// Acting on the host (CPU, plain MLP), as [`super::DqnAgent`] acts.
    host_act: Option<HostMlp>,
    online: Stack,
    target: Option<Stack>,
    /// Member `i`'s row of the online parameters and of their gradient, `[P]` each.
    rows: Vec<(Tensor, Tensor)>,
    optimizers: Vec<FlatOptimizer>,
    replays: Vec<Box<dyn Replay>>,
    /// Each member's stream of noisy-layer noise, as its agent's.
    samples_rngs: Vec<StdRng>,
    /// One member's sample, copied into the staging area.
    sample: Batch,
    /// The staging area of updates and actions, sized for the members.
    st: Staging,
    lrs: Vec<f64>,
    halted: Vec<Option<Halt>>,
    loss_sum: Vec<f64>,
    loss_count: Vec<u64>,
    updates: u64,
    /// Copies of the members' observations to the device for acting (one per `act` call that
    /// needs a forward pass, for all members).
    act_uploads: u64,
}

impl std::fmt::Debug for BatchedDqn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchedDqn").field("members", &self.k).field("device", &self.device).finish_non_exhaustive()
    }
}

impl BatchedDqn {
    /// Members with configs `cfgs` (one group: equal [`group_key`]s) and initial weights seeded
    /// by `seeds`, for an environment with these spaces.
    pub fn new(
        cfgs: &[DqnConfig],
        seeds: &[u64],
        space: &ObsSpace,
        actions: ActionSpace,
        device: Device,
        copies: usize,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!cfgs.is_empty() && cfgs.len() == seeds.len(), "a batched learner needs one seed per member");
        let first = &cfgs[0];
        for cfg in cfgs {
            cfg.validate(space).map_err(crate::error::InputError::new)?;
            anyhow::ensure!(
                group_key(cfg) == group_key(first),
                "members of one batched learner must share everything but scalar hyperparameters"
            );
        }
        let (k, b, dim, n) = (cfgs.len(), first.batch_size, space.flat_dim(), actions.n);
        let atoms = Head::new(&first.head, Device::Cpu).width() as usize;
        let embedding = first.head.iqn_samples().map(|(.., n)| n as i64);
        // C51 and QR-DQN take the agent's host path on CPU, and its tensor maths (the general
        // path) on a GPU, as the agent does.
        let general = embedding.is_some() || (atoms > 1 && (first.munchausen.is_some() || device != Device::Cpu));
        // IQN's network has one output per action and fraction.
        let net_atoms = if embedding.is_some() { 1 } else { atoms as i64 };
        let plan = Plan::new(&first.net_spec(space), space, net_atoms, first.noisy.is_some(), embedding)?;
        let fused_mlp = plan.fused() && plan.streams.len() == 1;
        // Each member's initial weights, exactly as an agent with its seed makes them.
        let mut layout: Layout = Vec::new();
        let mut rows = Vec::with_capacity(k);
        let mut frozen = Vec::new();
        let mut frozen_values = Vec::with_capacity(k);
        for (cfg, &seed) in cfgs.iter().zip(seeds) {
            let vars = initial_parameters(cfg, space, actions, seed)?;
            if layout.is_empty() {
                let mut offset = 0;
                for (name, shape, t, is_frozen) in &vars {
                    layout.push((name.clone(), shape.clone(), offset));
                    if *is_frozen {
                        frozen.push((offset, t.numel() as i64));
                    }
                    offset += t.numel() as i64;
                }
            }
            frozen_values.push(frozen_of(&vars, device));
            rows.push(flat_row(&vars));
        }
        let flat = Tensor::stack(&rows, 0).to_device(device);
        let target = match first.target {
            TargetSpec::None => None,
            _ => Some(Stack::new(flat.copy(), &layout, &plan)?),
        };
        let online = Stack::new(flat, &layout, &plan)?;
        let rows: Vec<(Tensor, Tensor)> =
            (0..k as i64).map(|i| (online.flat.select(0, i), online.grad.select(0, i))).collect();
        let optimizers = cfgs.iter().zip(&rows).map(|(c, (p, _))| FlatOptimizer::new(&c.optimizer, p)).collect();
        let replays = cfgs.iter().map(|c| build_replay(c, space, copies)).collect();
        let sample =
            ReplayStorage::new(space, 2 * (first.n_step + 8) + 2, first.n_step, first.gamma as f32).new_batch(b);
        Ok(BatchedDqn {
            munchausen: munchausen_scalars(cfgs, device),
            frozen,
            frozen_values,
            space: space.clone(),
            actions,
            copies,
            device,
            k,
            b,
            dim,
            n_actions: n,
            atoms,
            head: Head::new(&first.head, device),
            host_head: HostHead::new(&first.head).filter(|_| !general),
            general,
            outputs_per_action: Tensor::arange(atoms as i64, (Kind::Int64, device)).view([1, atoms as i64]),
            fractions: first
                .head
                .iqn_samples()
                .map(|(n, n_prime, kp, _)| Fractions::new(k, [b, n, n_prime, kp], device)),
            host_act: (device == Device::Cpu && fused_mlp && atoms == 1)
                .then(|| HostMlp::new(&layout, plan.trunk.len() + 1))
                .flatten(),
            layout,
            online,
            target,
            rows,
            optimizers,
            replays,
            samples_rngs: seeds.iter().map(|&s| samples_rng(s)).collect(),
            sample,
            st: Staging::new(k, b, space, n, atoms, atoms > 1 && !general, device),
            lrs: cfgs.iter().map(|c| c.lr).collect(),
            halted: vec![None; k],
            loss_sum: vec![0.0; k],
            loss_count: vec![0; k],
            updates: 0,
            act_uploads: 0,
            cfgs: cfgs.to_vec(),
        })
    }

    /// How many times acting copied observations to the device (0 on CPU): once per step that
    /// needs a greedy action, for all members together.
    pub fn act_uploads(&self) -> u64 {
        self.act_uploads
    }

    /// Number of members.
    pub fn members(&self) -> usize {
        self.k
    }

    /// Why member `i` stopped learning (`None` while it learns).
    pub fn halted(&self, i: usize) -> Option<&Halt> {
        self.halted[i].as_ref()
    }

    /// Stops member `i`: it takes no more updates and costs only its rows of the passes.
    pub fn stop(&mut self, i: usize) {
        self.halted[i].get_or_insert(Halt::Stopped);
    }

    fn live(&self, i: usize) -> bool {
        self.halted[i].is_none()
    }

    /// Gives member `i`'s slot (stopped, failed or done) to a new member with config `cfg`
    /// (of this group) and initial weights seeded by `seed`: its row starts from the weights an
    /// agent with that seed starts from, with a fresh optimizer, replay buffer and counters, as
    /// a run of its own from step 0 ([`BatchedDqn::learn`] reads each member's own step).
    pub fn replace(&mut self, i: usize, cfg: &DqnConfig, seed: u64) -> anyhow::Result<()> {
        anyhow::ensure!(self.halted[i].is_some(), "member {i} still learns: only a halted member's slot is given away");
        cfg.validate(&self.space).map_err(crate::error::InputError::new)?;
        anyhow::ensure!(
            group_key(cfg) == group_key(&self.cfgs[i]),
            "members of one batched learner must share everything but scalar hyperparameters"
        );
        let vars = initial_parameters(cfg, &self.space, self.actions, seed)?;
        self.frozen_values[i] = frozen_of(&vars, self.device);
        let row = flat_row(&vars).to_device(self.device);
        {
            let _guard = tch::no_grad_guard();
            let (params, grad) = &mut self.rows[i];
            params.copy_(&row);
            let _ = grad.zero_();
            if let Some(target) = &mut self.target {
                target.flat.select(0, i as i64).copy_(&row);
            }
        }
        self.optimizers[i] = FlatOptimizer::new(&cfg.optimizer, &self.rows[i].0);
        self.replays[i] = build_replay(cfg, &self.space, self.copies);
        self.samples_rngs[i] = samples_rng(seed);
        self.cfgs[i] = cfg.clone();
        self.lrs[i] = cfg.lr;
        self.munchausen = munchausen_scalars(&self.cfgs, self.device);
        self.halted[i] = None;
        self.loss_sum[i] = 0.0;
        self.loss_count[i] = 0;
        Ok(())
    }

    /// Drops the stopped and failed members from the model once at most half the members are
    /// live, so that they stop costing their rows of every pass; returns the kept members'
    /// former indices, in their new order (`None`: nothing changed).
    pub fn compact(&mut self) -> Option<Vec<usize>> {
        let keep: Vec<usize> = (0..self.k).filter(|&i| self.live(i)).collect();
        if keep.is_empty() || 2 * keep.len() > self.k {
            return None;
        }
        let index = Tensor::from_slice(&keep.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(self.device);
        let layout = &self.layout;
        let restack = |stack: &Stack| {
            Stack::new(stack.flat.index_select(0, &index), layout, &stack.plan)
                .expect("the layout built these layers before")
        };
        let (online, target) = (restack(&self.online), self.target.as_ref().map(restack));
        (self.online, self.target) = (online, target);
        let k = keep.len();
        self.rows = (0..k as i64).map(|i| (self.online.flat.select(0, i), self.online.grad.select(0, i))).collect();
        fn pick<T>(v: &mut Vec<T>, keep: &[usize]) {
            let mut old: Vec<Option<T>> = v.drain(..).map(Some).collect();
            v.extend(keep.iter().map(|&i| old[i].take().expect("each member is kept once")));
        }
        pick(&mut self.cfgs, &keep);
        pick(&mut self.frozen_values, &keep);
        pick(&mut self.optimizers, &keep);
        pick(&mut self.replays, &keep);
        pick(&mut self.samples_rngs, &keep);
        pick(&mut self.lrs, &keep);
        pick(&mut self.halted, &keep);
        pick(&mut self.loss_sum, &keep);
        pick(&mut self.loss_count, &keep);
        self.k = k;
        let host_head = self.host_head.is_some();
        self.st = Staging::new(k, self.b, &self.space, self.n_actions, self.atoms, host_head, self.device);
        if let Some(f) = &mut self.fractions {
            *f = Fractions::new(k, f.sizes, self.device);
        }
        self.munchausen = munchausen_scalars(&self.cfgs, self.device);
        Some(keep)
    }

    /// Member `i`'s parameters, `[P]`, in the agent's flat layout.
    pub fn parameters(&self, i: usize) -> &Tensor {
        &self.rows[i].0
    }

    /// Member `i`'s target-network parameters, if the group has a target network.
    pub fn target_parameters(&self, i: usize) -> Option<Tensor> {
        self.target.as_ref().map(|t| t.flat.select(0, i as i64))
    }

    /// Optimizer steps member `i` took.
    pub fn optimizer_steps(&self, i: usize) -> u64 {
        self.optimizers[i].steps()
    }

    /// Gradient steps taken.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Member `i`'s learning rate now.
    pub fn learning_rate(&self, i: usize) -> f64 {
        self.lrs[i]
    }

    /// Member `i`'s mean training loss since the last call (`None` when it took no update).
    pub fn take_mean_loss(&mut self, i: usize) -> Option<f64> {
        let mean = (self.loss_count[i] > 0).then(|| self.loss_sum[i] / self.loss_count[i] as f64);
        self.loss_sum[i] = 0.0;
        self.loss_count[i] = 0;
        mean
    }

    /// Writes member `i`'s weights as a [`super::DqnAgent`] saves its own (safetensors, the
    /// agent's variable names), so `tune eval` and `pretrained:` read them.
    pub fn save(&self, i: usize, path: &std::path::Path) -> anyhow::Result<()> {
        let row = self.rows[i].0.to_device(Device::Cpu);
        let mut named: Vec<(String, Tensor)> = self
            .layout
            .iter()
            .map(|(name, shape, off)| {
                (name.clone(), row.narrow(0, *off, shape.iter().product()).view(shape.as_slice()))
            })
            .collect();
        // Noisy layers: the agent's file holds its (untrained) noise variables too, and its
        // loader wants every variable.
        let noise = self.online.graph.as_ref().map_or(&[][..], |g| &g.noise_vars[..]);
        named.extend(noise.iter().map(|(name, len)| (name.clone(), Tensor::zeros([*len], (Kind::Float, Device::Cpu)))));
        Tensor::write_safetensors(&named, path)
            .map_err(|e| anyhow::anyhow!("cannot write weights to {}: {e}", path.display()))
    }

    /// Picks an action for each member `i` with `act[i]`: random with probability
    /// `epsilon[i]` (from `rngs[i]`, drawn as [`super::DqnAgent`] draws it), greedy otherwise;
    /// the greedy ones come from one forward pass for all members. Noisy layers draw fresh
    /// noise for each greedy member when `training`, and act with their means otherwise (the
    /// agent's `act` and `act_eval`).
    pub fn act<'o>(
        &mut self,
        obs: impl Fn(usize) -> Obs<'o>,
        epsilon: &[f64],
        rngs: &mut [StdRng],
        act: &[bool],
        out: &mut [usize],
        training: bool,
    ) {
        let mut greedy = false;
        for i in (0..self.k).filter(|&i| act[i]) {
            let rng = &mut rngs[i];
            if rng.random::<f64>() < epsilon[i] {
                out[i] = rng.random_range(0..self.n_actions);
            } else {
                out[i] = usize::MAX;
                greedy = true;
            }
        }
        if !greedy {
            return;
        }
        for i in 0..self.k {
            self.st.greedy[i] = act[i] && out[i] == usize::MAX;
            if self.st.greedy[i] {
                self.st.act_obs.put_obs(i * self.dim, self.dim, obs(i));
            }
        }
        // Noisy layers: fresh noise for each greedy member, as its agent draws before a greedy
        // action.
        if training {
            self.online.draw_noise(&self.st.greedy, &mut self.samples_rngs);
        } else {
            self.online.noise_on = false;
        }
        // IQN: `K` fresh fractions for each greedy member, as its agent values actions.
        if let Some(f) = &mut self.fractions {
            f.draw_act(&self.st.greedy, &mut self.samples_rngs);
        }
        let n = self.n_actions;
        if let (Some(host), Rows::F32(act_obs)) = (&mut self.host_act, &self.st.act_obs) {
            let p = self.online.flat.size()[1] as usize;
            // SAFETY: the online parameters are a contiguous CPU f32 tensor of K P elements
            // that nothing writes while this reads them.
            let flat = unsafe { std::slice::from_raw_parts(self.online.flat.data_ptr() as *const f32, self.k * p) };
            for i in 0..self.k {
                if act[i] && out[i] == usize::MAX {
                    let q = &mut self.st.q_host[i * n..(i + 1) * n];
                    host.forward(&flat[i * p..(i + 1) * p], &act_obs[i * self.dim..(i + 1) * self.dim], q);
                    out[i] = argmax(q);
                }
            }
            return;
        }
        {
            let _guard = tch::no_grad_guard();
            let input = match &mut self.st.device_act {
                Some(d) => {
                    d.copy_(&self.st.act_host);
                    self.act_uploads += 1;
                    d.shallow_clone()
                }
                None => self.st.act_host.shallow_clone(),
            };
            let q = self.q_values(&input);
            self.st.q_out.copy_(&q);
        }
        for i in 0..self.k {
            if !act[i] || out[i] != usize::MAX {
                continue;
            }
            out[i] = argmax(&self.st.q_host[i * n..(i + 1) * n]);
        }
    }

    /// Every member's Q-values `[K, 1, |A|]` of its observation in `input` `[K, 1, D]`.
    fn q_values(&mut self, input: &Tensor) -> Tensor {
        let taus = self.fractions.as_ref().map(|f| f.act.view([self.k as i64, 1, -1]));
        let out = self.online.forward_taus(input, taus.as_ref(), false);
        if matches!(self.head, Head::Expected) {
            return out;
        }
        // Q(s, a) from each member's distribution, as the agent's head computes it.
        let (k, n) = (self.k as i64, self.n_actions as i64);
        self.head.q(&out.view([k, -1]), n).view([k, 1, n])
    }

    /// Stores member `i`'s transition from its environment copy `copy` (its reward scaled by
    /// its `reward_scale`).
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        i: usize,
        copy: usize,
        obs: Obs<'_>,
        action: usize,
        reward: f32,
        next_obs: Obs<'_>,
        terminated: bool,
        truncated: bool,
    ) {
        let reward = reward * self.cfgs[i].reward_scale as f32;
        self.replays[i].push_stream(copy, obs, action, reward, next_obs, terminated, truncated);
    }

    /// After the members with `stored[i]` stored their step `progress[i].step` (each its own
    /// count: members that joined later are behind): learning-rate schedules, a gradient phase
    /// of the members due one (each sampling from `rngs[i]`) and each one's hard target copy.
    /// Returns the members that failed in it.
    pub fn learn(&mut self, progress: &[Progress], stored: &[bool], rngs: &mut [StdRng]) -> Vec<usize> {
        let (learning_starts, train_freq, gradient_steps) =
            (self.cfgs[0].learning_starts, self.cfgs[0].train_freq, self.cfgs[0].gradient_steps);
        for ((lr, cfg), &p) in self.lrs.iter_mut().zip(&self.cfgs).zip(progress) {
            *lr = cfg.lr_schedule.value(cfg.lr, p);
        }
        let mut failed = Vec::new();
        // As an agent alone, a member updates at its own gates once its own buffer can be
        // sampled; the others sit this phase out as stopped ones do.
        for (i, p) in progress.iter().enumerate().take(self.k) {
            self.st.taking[i] = stored[i]
                && self.live(i)
                && !self.replays[i].is_empty()
                && p.step >= learning_starts
                && p.step % train_freq == 0;
        }
        if self.st.taking.iter().any(|&t| t) {
            for ((beta, c), p) in self.st.betas.iter_mut().zip(&self.cfgs).zip(progress) {
                *beta = per_beta(&c.replay, p.fraction);
            }
            for _ in 0..gradient_steps {
                if !self.st.taking.iter().any(|&t| t) {
                    break;
                }
                let now = self.update(rngs);
                for &i in &now {
                    self.st.taking[i] = false;
                }
                failed.extend(now);
            }
        }
        if let Some(target) = &mut self.target {
            let _guard = tch::no_grad_guard();
            for (i, (cfg, p)) in self.cfgs.iter().zip(progress).enumerate() {
                if let TargetSpec::Hard { every } = cfg.target {
                    if stored[i] && p.step % every == 0 && self.halted[i].is_none() {
                        target.flat.select(0, i as i64).copy_(&self.rows[i].0);
                    }
                }
            }
        }
        failed
    }

    /// One gradient step of every live member on batches sampled from `rngs` (what
    /// [`BatchedDqn::learn`] runs; public for benchmarks); returns those that failed in it.
    pub fn gradient_step(&mut self, rngs: &mut [StdRng]) -> Vec<usize> {
        self.st.betas.fill(1.0);
        for i in 0..self.k {
            self.st.taking[i] = self.live(i) && !self.replays[i].is_empty();
        }
        self.update(rngs)
    }

    /// A distributional head's loss and output gradient (C51, QR-DQN), computed as the agent's
    /// host path computes them, member by member on its own rows; the gradient is
    /// back-propagated for all members at once.
    fn distributional_loss(&mut self, obs: &Tensor, next_obs: &Tensor, failed: &mut Vec<usize>) {
        let (b, width) = (self.b, self.n_actions * self.atoms);
        let double = self.cfgs[0].double;
        let [next_t, chooser_t, out_t, grad_t] =
            self.st.dist_t.as_mut().expect("a distributional head has its buffers");
        let next = match &mut self.target {
            Some(t) => t.forward(next_obs, false),
            None => self.online.forward(next_obs, false),
        };
        next_t.copy_(&next);
        if double {
            chooser_t.copy_(&self.online.forward(next_obs, false));
        }
        out_t.copy_(&self.online.forward(obs, true));
        let grad_t = grad_t.shallow_clone();
        let head = self.host_head.as_mut().expect("checked by the caller");
        let [next, chooser, out, grad] = &mut self.st.dist;
        for i in 0..self.k {
            let (rows, outs) = (i * b..(i + 1) * b, i * b * width..(i + 1) * b * width);
            if !self.st.taking[i] {
                grad[outs].fill(0.0);
                continue;
            }
            let prioritized = matches!(self.cfgs[i].replay, ReplaySpec::Prioritized { .. });
            let weights = prioritized.then_some(&self.st.weights[rows.clone()]);
            let batch = HostBatch {
                next: &next[outs.clone()],
                chooser: if double { &chooser[outs.clone()] } else { &next[outs.clone()] },
                out: &out[outs.clone()],
                actions: &self.st.actions[rows.clone()],
                returns: &self.st.returns[rows.clone()],
                bootstrap: &self.st.bootstrap[rows.clone()],
                weights,
            };
            head.loss(&batch, self.n_actions, &mut self.st.td[rows.clone()], &mut grad[outs.clone()]);
            let loss = weighted_mean(&self.st.td[rows], weights);
            let steps = self.optimizers[i].steps();
            if !record_loss(loss, steps, &mut self.halted[i], &mut self.loss_sum[i], &mut self.loss_count[i]) {
                grad[outs].fill(0.0);
                failed.push(i);
                continue;
            }
        }
        self.online.backward(&grad_t, &self.st.ones);
    }

    /// The general path (IQN, Munchausen with a distributional head): the agent's own target and
    /// loss maths (`DqnAgent::targets` and `Head::per_row`) on the `K B` rows of all members at
    /// once, each member's Munchausen scalars as per-row columns; each member's loss on the host
    /// and its output gradient back-propagated for all. `batch` is `obs, next_obs, actions,
    /// returns, bootstrap, weights`.
    fn general_loss(&mut self, batch: [&Tensor; 6], failed: &mut Vec<usize>) {
        let [obs, next_obs, actions, returns, bootstrap, weights] = batch;
        let (k, b, n) = (self.k as i64, self.b as i64, self.n_actions as i64);
        let rows = |t: &Tensor| t.reshape([k * b, -1]);
        // Each member's fractions, `[K, B, .]`.
        let [online_taus, target_taus, policy_taus] = match &self.fractions {
            Some(f) => [&f.online, &f.target, &f.policy].map(|t| Some(t.view([k, b, -1]))),
            None => [None, None, None],
        };
        let head = &self.head;
        let iqn = self.fractions.is_some();
        let (actions_r, returns_r, bootstrap_r) = (rows(actions), rows(returns), rows(bootstrap));
        let bootstrap_net = match &mut self.target {
            Some(t) => t,
            None => &mut self.online,
        };
        let next_out = rows(&bootstrap_net.forward_taus(next_obs, target_taus.as_ref(), false));
        // The policy's values Q(x, a) by a network: IQN's at K fractions of their own, the mean
        // of the outputs otherwise.
        let policy_q =
            |net: &mut Stack, x: &Tensor| head.q(&rows(&net.forward_taus(x, policy_taus.as_ref(), false)), n);
        let next_q = if iqn { policy_q(bootstrap_net, next_obs) } else { head.q(&next_out, n) };
        let mut target = if let Some([tau, alpha, clip]) = &self.munchausen {
            // As the agent: log pi = log_softmax(q' / tau) of the bootstrap network.
            let per_row = |t: &Tensor| rows(&t.expand([k, b, 1], false));
            let (tau, alpha, clip) = (per_row(tau), per_row(alpha), per_row(clip));
            let log_pi = |q: &Tensor| (q / &tau).log_softmax(-1, Kind::Float);
            let log_pi_s = log_pi(&policy_q(bootstrap_net, obs)).gather(1, &actions_r, false);
            let bonus = (log_pi_s * &tau).maximum(&clip).clamp_max(0.0) * alpha;
            let log_pi_next = log_pi(&next_q);
            let shift = (&log_pi_next * tau.neg()).unsqueeze(-1);
            let next = next_out.view([k * b, n, -1]);
            head.target(&next, Some((&log_pi_next.exp(), &shift)), &(&returns_r + bonus), &bootstrap_r)
        } else {
            // The outputs of a* = argmax_a Q(s', a), by the bootstrap network or (double) the
            // online one.
            let q = if self.cfgs[0].double { policy_q(&mut self.online, next_obs) } else { next_q };
            let next = next_out.view([k * b, n, -1]);
            let width = next.size()[2];
            let a_star = q.argmax(1, true).unsqueeze(-1).expand([k * b, 1, width], false);
            head.target(&next.gather(1, &a_star, false), None, &returns_r, &bootstrap_r)
        };
        target.taus = online_taus.as_ref().map(rows);
        let out = self.online.forward_taus(obs, online_taus.as_ref(), true);
        let width = out.size()[2] / n;
        debug_assert_eq!(width, self.outputs_per_action.size()[1]);
        let columns = &actions_r * width + &self.outputs_per_action;
        let chosen = rows(&out).gather(1, &columns, false);
        let (per_row, grad) = head.per_row(&chosen, &target);
        let mut grad = grad.expect("distributional heads give their output gradient");
        self.st.td_host.copy_(&per_row.view([k, b, 1]));
        for i in 0..self.k {
            if !self.st.taking[i] {
                continue;
            }
            let rows = i * self.b..(i + 1) * self.b;
            let prioritized = matches!(self.cfgs[i].replay, ReplaySpec::Prioritized { .. });
            let weights = prioritized.then_some(&self.st.weights[rows.clone()]);
            let loss = weighted_mean(&self.st.td[rows], weights);
            let steps = self.optimizers[i].steps();
            if !record_loss(loss, steps, &mut self.halted[i], &mut self.loss_sum[i], &mut self.loss_count[i]) {
                failed.push(i);
                continue;
            }
        }
        if matches!(self.cfgs[0].replay, ReplaySpec::Prioritized { .. }) {
            let _ = grad.g_mul_(&rows(weights));
        }
        let _ = grad.g_mul_scalar_(1.0 / b as f64);
        let _ = self.st.grad_q.zero_();
        let _ = self.st.grad_q.view([k * b, -1]).scatter_(1, &columns, &grad);
        for i in (0..self.k).filter(|&i| !self.st.taking[i] || self.halted[i].is_some()) {
            let _ = self.st.grad_q.select(0, i as i64).zero_();
        }
        self.online.backward(&self.st.grad_q, &self.st.ones);
    }

    /// One gradient step of every member in `st.taking`; returns those that failed in it.
    fn update(&mut self, rngs: &mut [StdRng]) -> Vec<usize> {
        flush_denormals();
        let (b, d) = (self.b, self.dim);
        for (i, rng) in rngs.iter_mut().enumerate().take(self.k) {
            if !self.st.taking[i] {
                continue;
            }
            self.replays[i].sample(rng, self.st.betas[i], &mut self.sample);
            let s = &self.sample;
            self.st.obs.put(i * b * d, &s.obs);
            self.st.next_obs.put(i * b * d, &s.next_obs);
            let rows = i * b..(i + 1) * b;
            self.st.actions[rows.clone()].copy_from_slice(&s.actions);
            self.st.returns[rows.clone()].copy_from_slice(&s.returns);
            self.st.weights[rows.clone()].copy_from_slice(&s.weights);
            self.st.indices[rows.clone()].copy_from_slice(&s.indices);
            for ((boot, &disc), &term) in self.st.bootstrap[rows].iter_mut().zip(&s.discounts).zip(&s.terminated) {
                *boot = disc * (1.0 - term);
            }
        }
        // Noisy layers: each taking member's online noise, then its target network's, as its
        // agent draws them for a gradient step.
        self.online.draw_noise(&self.st.taking, &mut self.samples_rngs);
        if let Some(target) = &mut self.target {
            target.draw_noise(&self.st.taking, &mut self.samples_rngs);
        }
        if let Some(f) = &mut self.fractions {
            f.draw(&self.st.taking, &mut self.samples_rngs);
        }
        let _guard = tch::no_grad_guard();
        if let Some(dev) = &mut self.st.device_batch {
            for (dst, src) in dev.iter_mut().zip(&self.st.host) {
                dst.copy_(src);
            }
        }
        let [obs, next_obs, actions, returns, bootstrap, weights] =
            self.st.device_batch.as_ref().unwrap_or(&self.st.host).each_ref().map(|t| t.shallow_clone());
        let mut failed = Vec::new();
        if self.general {
            self.general_loss([&obs, &next_obs, &actions, &returns, &bootstrap, &weights], &mut failed);
        } else if self.host_head.is_some() {
            self.distributional_loss(&obs, &next_obs, &mut failed);
        } else {
            // y = G + gamma^m (1 - terminated) Q'(s', a*), a* by the target network or (double) the
            // online one.
            let next = match &mut self.target {
                Some(t) => t.forward(&next_obs, false),
                None => self.online.forward(&next_obs, false),
            };
            let y = if let Some([tau, alpha, clip]) = &self.munchausen {
                // Munchausen-DQN, as the agent's target: log pi = log_softmax(q / tau) of the
                // bootstrap network, y = G + alpha clip(tau log pi(a|s), l0, 0)
                // + gamma^m sum_a' pi(a'|s') (q'(s', a') - tau log pi(a'|s')).
                let q_s = match &mut self.target {
                    Some(t) => t.forward(&obs, false),
                    None => self.online.forward(&obs, false),
                };
                let log_pi = |q: &Tensor| (q / tau).log_softmax(-1, Kind::Float);
                let log_pi_s = log_pi(&q_s).gather(2, &actions, false);
                let bonus = (log_pi_s * tau).maximum(clip).clamp_max(0.0) * alpha;
                let log_pi_next = log_pi(&next);
                let shifted = &next + &log_pi_next * tau.neg();
                let next_value = (shifted * log_pi_next.exp()).sum_dim_intlist(-1, true, Kind::Float);
                (&returns + bonus).addcmul(&bootstrap, &next_value)
            } else {
                let next_value = if self.cfgs[0].double {
                    let chooser = self.online.forward(&next_obs, false);
                    next.gather(2, &chooser.argmax(-1, true), false)
                } else {
                    next.amax(-1, true)
                };
                returns.addcmul(&bootstrap, &next_value)
            };
            let q = self.online.forward(&obs, true).gather(2, &actions, false);
            self.st.td_host.copy_(&(q - y));
            // Each member's loss, its finiteness and its output gradient, on the host.
            let scale = 1.0 / b as f32;
            for i in 0..self.k {
                let rows = i * b..(i + 1) * b;
                if !self.st.taking[i] {
                    self.st.grad_rows[rows].fill(0.0);
                    continue;
                }
                let cfg = &self.cfgs[i];
                let prioritized = matches!(cfg.replay, ReplaySpec::Prioritized { .. });
                let weights = prioritized.then_some(&self.st.weights[rows.clone()]);
                let kind = cfg.loss.unwrap_or_default();
                let loss = host_loss(kind, &self.st.td[rows.clone()], weights);
                let steps = self.optimizers[i].steps();
                if !record_loss(loss, steps, &mut self.halted[i], &mut self.loss_sum[i], &mut self.loss_count[i]) {
                    self.st.grad_rows[rows].fill(0.0);
                    failed.push(i);
                    continue;
                }
                for (j, (g, &delta)) in
                    self.st.grad_rows[rows.clone()].iter_mut().zip(&self.st.td[rows.clone()]).enumerate()
                {
                    let dl = match kind {
                        LossKind::Huber => delta.clamp(-1.0, 1.0),
                        LossKind::Mse => delta * 2.0,
                    };
                    let w = if prioritized { self.st.weights[i * b + j] } else { 1.0 };
                    *g = dl * w * scale;
                }
            }
            let grad_rows = match &mut self.st.device_grad_rows {
                Some(dev) => {
                    dev.copy_(&self.st.grad_rows_host);
                    dev.shallow_clone()
                }
                None => self.st.grad_rows_host.shallow_clone(),
            };
            let _ = self.st.grad_q.zero_();
            let _ = self.st.grad_q.scatter_(2, &actions, &grad_rows);
            self.online.backward(&self.st.grad_q, &self.st.ones);
        }
        for (offset, len) in &self.frozen {
            let _ = self.online.grad.narrow(1, *offset, *len).zero_();
        }
        if self.cfgs.iter().any(|c| c.max_grad_norm.is_some()) {
            // Every member's norm in one reduction, rounded as the agent's `norm()` rounds it.
            self.st.norms_host.copy_(&self.online.grad.norm_scalaropt_dim(2, [1], false));
        }
        for i in 0..self.k {
            if !self.st.taking[i] || self.halted[i].is_some() {
                continue;
            }
            let cfg = &self.cfgs[i];
            let (params, grad) = &mut self.rows[i];
            if let Some(max_norm) = cfg.max_grad_norm {
                let norm = self.st.norms[i] as f64;
                if !norm.is_finite() {
                    self.halted[i] = Some(Halt::Failed(format!(
                        "training diverged: the gradient norm became {norm} at gradient step {}; lower lr or set reward_scale",
                        self.optimizers[i].steps() + 1
                    )));
                    failed.push(i);
                    continue;
                }
                if norm > max_norm {
                    let _ = grad.g_mul_scalar_(max_norm / (norm + 1e-6));
                }
            }
            self.optimizers[i].step(params, grad, self.lrs[i]);
            for ((offset, len), value) in self.frozen.iter().zip(&self.frozen_values[i]) {
                params.narrow(0, *offset, *len).copy_(value);
            }
            if matches!(cfg.replay, ReplaySpec::Prioritized { .. }) {
                let rows = i * b..(i + 1) * b;
                self.replays[i].update_priorities(&self.st.indices[rows.clone()], &self.st.td[rows]);
            }
            if let (TargetSpec::Soft { tau }, Some(target)) = (&cfg.target, &mut self.target) {
                let _ = target.flat.select(0, i as i64).lerp_(&*params, *tau);
            }
        }
        self.updates += 1;
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rl::agent::{Agent, DqnAgent, Transition};
    use rand::SeedableRng;

    /// The largest difference between member `i`'s parameters and an agent's alone, after
    /// `steps` gradient steps of both on the same transitions (random frames for pixels), each
    /// member's config `yaml` with `lr` from `lrs`.
    fn diff_after(yaml: &str, space: &ObsSpace, lrs: &[f64], steps: usize, gpu_way: bool) -> Vec<f64> {
        let actions = ActionSpace { n: 4 };
        let cfgs: Vec<DqnConfig> = lrs
            .iter()
            .map(|lr| {
                let mut c: DqnConfig = serde_norway::from_str(yaml).unwrap();
                c.lr = *lr;
                c
            })
            .collect();
        let seeds: Vec<u64> = (0..lrs.len() as u64).map(|s| 7 + s).collect();
        let mut learner = BatchedDqn::new(&cfgs, &seeds, space, actions, Device::Cpu, 1).unwrap();
        // The GPU's way, here on the CPU: one grouped convolution and batched products for all
        // members, and C51's and QR-DQN's loss by the tensor maths rather than on the host.
        for stack in std::iter::once(&mut learner.online).chain(learner.target.as_mut()) {
            stack.graph.as_mut().expect("the Nature CNN runs through autograd").per_member = !gpu_way;
        }
        if gpu_way && learner.atoms > 1 {
            (learner.general, learner.host_head) = (true, None);
        }
        let mut agents: Vec<DqnAgent> =
            cfgs.iter().zip(&seeds).map(|(c, &s)| DqnAgent::new(c, space, actions, Device::Cpu, s).unwrap()).collect();
        let mut data = StdRng::seed_from_u64(1);
        let dim = space.flat_dim();
        // One trajectory of random frames: each observation is the previous next one, but after
        // an episode's end.
        let mut o: Vec<u8> = (0..dim).map(|_| data.random()).collect();
        for step in 0..64u64 {
            let n: Vec<u8> = (0..dim).map(|_| data.random()).collect();
            let (a, r, done) = (data.random_range(0..4), data.random::<f32>(), data.random::<f64>() < 0.1);
            for (i, agent) in agents.iter_mut().enumerate() {
                learner.push(i, 0, Obs::U8(&o), a, r, Obs::U8(&n), done, false);
                let t = Transition {
                    obs: Obs::U8(&o),
                    action: a,
                    reward: r,
                    next_obs: Obs::U8(&n),
                    terminated: done,
                    truncated: false,
                    env: 0,
                };
                agent.observe(t, Progress { step: step + 1, episode: 0, fraction: 0.0 }, &mut data.clone()).unwrap();
            }
            o = if done { (0..dim).map(|_| data.random()).collect() } else { n };
        }
        let mut rngs: Vec<StdRng> = seeds.iter().map(|&s| StdRng::seed_from_u64(s)).collect();
        let mut alone = rngs.clone();
        let start: Vec<Tensor> = (0..lrs.len()).map(|i| learner.parameters(i).copy()).collect();
        for _ in 0..steps {
            assert!(learner.gradient_step(&mut rngs).is_empty());
            for (agent, rng) in agents.iter_mut().zip(&mut alone) {
                agent.gradient_step(rng).unwrap();
            }
        }
        // Acting: every member's Q-values of one observation each, from one forward pass, are the
        // agent's to float tolerance (noisy layers with the last step's noise), and its greedy
        // action (with fresh noise) the agent's.
        let k = agents.len();
        let obs: Vec<Vec<u8>> = (0..k).map(|_| (0..dim).map(|_| data.random()).collect()).collect();
        let x = Tensor::from_slice(&obs.concat()).view([k as i64, 1, dim as i64]);
        let q = tch::no_grad(|| learner.q_values(&x));
        let mut greedy = vec![0; k];
        learner.act(|i| Obs::U8(&obs[i]), &vec![0.0; k], &mut rngs, &vec![true; k], &mut greedy, true);
        for ((i, agent), rng) in agents.iter_mut().enumerate().zip(&mut alone) {
            // (IQN values actions at fresh fractions each time: only its actions are compared.)
            if learner.fractions.is_none() {
                let mine = Vec::<f32>::try_from(q.get(i as i64).view([-1])).unwrap();
                let theirs = agent.q_values(Obs::U8(&obs[i])).to_vec();
                let gap = mine.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                let scale = theirs.iter().fold(1f32, |m, q| m.max(q.abs()));
                assert!(gap <= 1e-5 * scale, "member {i}: Q-values {mine:?} against the agent's {theirs:?}");
            }
            assert_eq!(greedy[i], agent.act(Obs::U8(&obs[i]), 0.0, rng), "member {i}");
        }
        agents
            .iter()
            .enumerate()
            .map(|(i, a)| {
                assert!(learner.optimizer_steps(i) == steps as u64 && a.updates() == steps as u64);
                let moved = (learner.parameters(i) - &start[i]).abs().max().double_value(&[]);
                assert!(moved > 1e-5, "member {i} did not learn");
                (learner.parameters(i) - a.parameters()).abs().max().double_value(&[])
            })
            .collect()
    }

    #[test]
    fn a_cnn_on_vectors_is_an_input_error_and_noisy_members_save_files_agents_load() {
        let vector = ObsSpace::Box { low: vec![0.0; 4], high: vec![1.0; 4] };
        let cnn: DqnConfig = serde_norway::from_str("{net: {type: nature_cnn}}").unwrap();
        let err =
            BatchedDqn::new(&[cnn.clone(), cnn], &[0, 1], &vector, ActionSpace { n: 2 }, Device::Cpu, 1).unwrap_err();
        assert!(err.downcast_ref::<crate::error::InputError>().is_some(), "{err}");
        assert!(err.to_string().contains("needs pixel observations"), "{err}");
        let dir = tempfile::TempDir::new().unwrap();
        for yaml in ["{noisy: {sigma0: 0.5}}", "{noisy: {}, net: {type: mlp, dueling: true}, head: {type: iqn}}"] {
            let cfg: DqnConfig = serde_norway::from_str(yaml).unwrap();
            let learner =
                BatchedDqn::new(&[cfg.clone(), cfg.clone()], &[3, 4], &vector, ActionSpace { n: 2 }, Device::Cpu, 1)
                    .unwrap();
            let path = dir.path().join("member.safetensors");
            learner.save(1, &path).unwrap();
            let mut agent = DqnAgent::new(&cfg, &vector, ActionSpace { n: 2 }, Device::Cpu, 0).unwrap();
            agent.load(&path).unwrap();
            assert_eq!(agent.parameters().size(), learner.parameters(1).size());
            assert_eq!((agent.parameters() - learner.parameters(1)).abs().max().double_value(&[]), 0.0, "{yaml}");
        }
    }

    #[test]
    fn pixel_members_of_every_network_and_head_take_the_gradient_steps_of_agents_alone() {
        let pixels = ObsSpace::Pixels { frames: 4, height: 36, width: 36, channels: 1 };
        let nets = [
            "net: {type: nature_cnn}",
            "net: {type: nature_cnn, dueling: true}",
            "net: {type: nature_cnn, dueling: true}, head: {type: qr, quantiles: 8}, double: true",
            "net: {type: nature_cnn}, head: {type: c51, atoms: 11, v_min: -5, v_max: 5}",
            "net: {type: nature_cnn}, noisy: {sigma0: 0.5}, double: true",
            "net: {type: nature_cnn, dueling: true}, noisy: {sigma0: 0.4}, target: {type: none}",
            "net: {type: nature_cnn}, head: {type: iqn, n_tau: 8, n_tau_prime: 6, k_policy: 4, embedding: 16}",
            "net: {type: nature_cnn, dueling: true}, head: {type: c51, atoms: 11, v_min: 0, v_max: 10}, munchausen: {}",
        ];
        for net in nets {
            let yaml =
                format!("{{{net}, replay: {{type: uniform, size: 100}}, batch_size: 8, learning_starts: 100000}}");
            for (steps, gpu_way) in [(1, false), (20, false), (20, true)] {
                let diffs = diff_after(&yaml, &pixels, &[1e-3, 3e-4], steps, gpu_way);
                println!("{net}: after {steps} steps (the GPU's way: {gpu_way}) {diffs:?}");
                // Member by member (CPU) is the agent's own arithmetic: bit for bit. The GPU's
                // way sums convolutions in another order: float tolerance.
                let tolerance = if gpu_way { 1e-4 } else { 0.0 };
                assert!(
                    diffs.iter().all(|&d| d <= tolerance),
                    "{net}: after {steps} steps the members differ by {diffs:?}"
                );
            }
        }
    }
}
