//! Q-networks (tch): MLPs for vectors, the Nature CNN for pixels (Mnih et al. 2015), each plain or
//! with the dueling head of Wang et al. (2016, eq. 9), chosen by [`NetSpec`]:
//! `net: {type: mlp, hidden: [64, 64], dueling: false}` or `net: {type: nature_cnn, dueling: true}`.
//!
//! Build the online and target networks with the same spec on their own `VarStore`s.

mod cnn;
mod dueling;
mod mlp;
mod noisy;

pub use cnn::{nature_cnn, nature_cnn_head, nature_cnn_trunk};
pub use dueling::{dueling_aggregate, dueling_aggregate_atoms, Dueling};
pub use mlp::{mlp, mlp_trunk};
pub use noisy::{draw_noise, is_noise, Layers, Linear, Noise, NoisyLinear};

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::rl::env::{ActionSpace, ObsSpace};

/// The Nature CNN's fully connected layer, also the width of each dueling stream (Wang et al.).
const CNN_HIDDEN: i64 = 512;

/// Why a network cannot be built for an environment.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NetError {
    /// An MLP on pixels.
    #[error("net.type mlp needs vector observations, got pixels of shape {0:?}; use net.type nature_cnn")]
    MlpOnPixels(Vec<usize>),
    /// A CNN on a vector.
    #[error("net.type nature_cnn needs pixel observations, got shape {0:?}; use net.type mlp")]
    CnnOnVector(Vec<usize>),
    /// Colour frames.
    #[error("net.type nature_cnn needs grayscale frames, got {0} channels; set the environment's grayscale option")]
    CnnChannels(usize),
    /// Frames smaller than the convolutions' receptive field.
    #[error("net.type nature_cnn needs frames of at least 36x36, got {0}x{1}")]
    CnnTooSmall(usize, usize),
}

/// The `net:` section of a DQN config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NetSpec {
    /// Fully connected layers with ReLU.
    Mlp {
        /// Hidden layer widths.
        #[serde(default = "default_hidden")]
        hidden: Vec<i64>,
        /// Dueling head (single linear value and advantage streams on the last hidden layer).
        #[serde(default)]
        dueling: bool,
    },
    /// The Nature DQN CNN on stacked grayscale frames.
    NatureCnn {
        /// Dueling head (value and advantage streams of 512 units each, as Wang et al.).
        #[serde(default)]
        dueling: bool,
    },
}

fn default_hidden() -> Vec<i64> {
    vec![64, 64]
}

impl Default for NetSpec {
    fn default() -> Self {
        NetSpec::Mlp { hidden: default_hidden(), dueling: false }
    }
}

/// What a network outputs and how its layers are made, beyond its [`NetSpec`].
#[derive(Clone, Debug)]
pub struct NetOptions {
    /// Outputs per action (atoms or quantiles of a distributional head; 1 otherwise).
    pub atoms: i64,
    /// Plain or noisy linear layers.
    pub layers: Layers,
    /// IQN: the number of cosines embedding a quantile fraction (`None`: no embedding).
    pub tau_embedding: Option<i64>,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions { atoms: 1, layers: Layers::plain(), tau_embedding: None }
    }
}

impl NetSpec {
    /// The usual network for `space`: Nature CNN for pixels, a 64-64 MLP otherwise.
    pub fn default_for(space: &ObsSpace) -> Self {
        match space {
            ObsSpace::Pixels { .. } => NetSpec::NatureCnn { dueling: false },
            _ => NetSpec::default(),
        }
    }

    /// Whether the dueling head is on.
    pub fn dueling(&self) -> bool {
        match self {
            NetSpec::Mlp { dueling, .. } | NetSpec::NatureCnn { dueling } => *dueling,
        }
    }

    /// Builds the network under `p` for observations of `space` (one-hot for discrete ones, as
    /// the replay stores them) and `opts.atoms` outputs for each of the `actions.n` actions
    /// (action-major: output `a K + k`).
    ///
    /// The network is a body (the hidden layers of an MLP, the convolutions of the Nature CNN)
    /// and an output part (the last linear layer; the CNN's 512-unit layer and output; or the
    /// dueling streams). Variable names do not depend on that split: `0.weight`, ... for an MLP,
    /// `conv1.weight`, ..., `fc.weight`, `q.weight` for the CNN, `trunk.*`, `value.*` and
    /// `advantage.*` when dueling.
    pub fn build(
        &self,
        p: &nn::Path,
        space: &ObsSpace,
        actions: ActionSpace,
        opts: &NetOptions,
    ) -> Result<QNetwork, NetError> {
        let n_actions = actions.n as i64;
        let (atoms, layers) = (opts.atoms, &opts.layers);
        let (trunk, features, out) = match (self, space) {
            (NetSpec::Mlp { .. }, ObsSpace::Pixels { .. }) => return Err(NetError::MlpOnPixels(space.shape())),
            (NetSpec::Mlp { hidden, dueling }, _) => {
                let in_dim = space.flat_dim() as i64;
                if *dueling {
                    let (trunk, width) = mlp_trunk(&(p / "trunk"), in_dim, hidden, layers);
                    (trunk, width, Stream::Dueling(Dueling::new(p, width, &[], n_actions, atoms, layers)))
                } else {
                    let (trunk, width) = mlp_trunk(p, in_dim, hidden, layers);
                    let last = layers.linear(p / hidden.len().to_string(), width, n_actions * atoms);
                    (trunk, width, Stream::Plain(nn::seq().add(last)))
                }
            }
            (NetSpec::NatureCnn { dueling }, ObsSpace::Pixels { frames, height, width, channels }) => {
                if *channels != 1 {
                    return Err(NetError::CnnChannels(*channels));
                }
                let too_small = NetError::CnnTooSmall(*height, *width);
                let (f, h, w) = (*frames as i64, *height as i64, *width as i64);
                if *dueling {
                    let (trunk, features) = nature_cnn_trunk(&(p / "trunk"), f, h, w).ok_or(too_small)?;
                    let streams = Dueling::new(p, features, &[CNN_HIDDEN], n_actions, atoms, layers);
                    (trunk, features, Stream::Dueling(streams))
                } else {
                    let (trunk, features) = nature_cnn_trunk(p, f, h, w).ok_or(too_small)?;
                    (trunk, features, Stream::Plain(nature_cnn_head(p, features, n_actions * atoms, layers)))
                }
            }
            (NetSpec::NatureCnn { .. }, _) => return Err(NetError::CnnOnVector(space.shape())),
        };
        let embedding = opts.tau_embedding.map(|n| TauEmbedding::new(&(p / "tau_embedding"), n, features));
        Ok(QNetwork { trunk, embedding, out })
    }
}

/// The output part of a [`QNetwork`].
#[derive(Debug)]
enum Stream {
    Plain(nn::Sequential),
    Dueling(Dueling),
}

/// IQN's embedding of quantile fractions (Dabney, Ostrovski, Silver and Munos 2018, "Implicit
/// Quantile Networks for Distributional Reinforcement Learning", eq. 4):
/// `phi_j(tau) = ReLU(sum_{i=0}^{n-1} cos(pi i tau) w_ij + b_j)`, with as many outputs as the
/// body has features; the body's features are multiplied by it elementwise.
#[derive(Debug)]
struct TauEmbedding {
    linear: nn::Linear,
    /// `pi i`, `i = 0, ..., n - 1`.
    freqs: Tensor,
}

impl TauEmbedding {
    fn new(p: &nn::Path, n: i64, features: i64) -> Self {
        let freqs = Tensor::arange(n, (Kind::Float, p.device())) * std::f64::consts::PI;
        TauEmbedding { linear: nn::linear(p, n, features, Default::default()), freqs }
    }
}

/// A Q-network built by [`NetSpec::build`]: `[batch, obs...] -> [batch, |A| atoms]`, or with
/// IQN's embedding `[batch, obs...], [batch, M] -> [batch, |A| M]`.
#[derive(Debug)]
pub struct QNetwork {
    trunk: nn::Sequential,
    embedding: Option<TauEmbedding>,
    out: Stream,
}

impl QNetwork {
    /// Whether the output part is the dueling streams.
    pub fn is_dueling(&self) -> bool {
        matches!(self.out, Stream::Dueling(_))
    }

    /// IQN: the quantile values `Z_tau(s, a)` at the fractions `taus` `[B, M]` of each row, as
    /// `[B, |A| M]` (action-major, like a distributional head's outputs).
    pub fn forward_taus(&self, xs: &Tensor, taus: &Tensor) -> Tensor {
        let e = self.embedding.as_ref().expect("forward_taus needs a network built with tau_embedding");
        let (b, m) = (taus.size()[0], taus.size()[1]);
        let h = self.trunk.forward(xs);
        let phi = e.linear.forward(&(taus.unsqueeze(-1) * &e.freqs).cos()).relu();
        let z = (h.unsqueeze(1) * phi).view([b * m, -1]);
        let q = match &self.out {
            Stream::Plain(net) => net.forward(&z),
            Stream::Dueling(net) => net.forward(&z),
        };
        q.view([b, m, -1]).permute([0, 2, 1]).reshape([b, -1])
    }
}

impl Module for QNetwork {
    fn forward(&self, xs: &Tensor) -> Tensor {
        debug_assert!(self.embedding.is_none(), "an IQN network needs forward_taus");
        let h = self.trunk.forward(xs);
        match &self.out {
            Stream::Plain(net) => net.forward(&h),
            Stream::Dueling(net) => net.forward(&h),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn cartpole() -> ObsSpace {
        ObsSpace::Box { low: vec![0.0; 4], high: vec![1.0; 4] }
    }

    fn atari() -> ObsSpace {
        ObsSpace::Pixels { frames: 4, height: 84, width: 84, channels: 1 }
    }

    #[test]
    fn specs_from_yaml_build_the_right_network() {
        let actions = ActionSpace { n: 2 };
        let spec: NetSpec = serde_norway::from_str("{type: mlp, hidden: [64, 64], dueling: false}").unwrap();
        assert_eq!(spec, NetSpec::default());
        let vs = nn::VarStore::new(Device::Cpu);
        let net = spec.build(&vs.root(), &cartpole(), actions, &NetOptions::default()).unwrap();
        assert!(!net.is_dueling());
        assert_eq!(net.forward(&Tensor::zeros([3, 4], (Kind::Float, Device::Cpu))).size(), vec![3, 2]);

        let spec: NetSpec = serde_norway::from_str("{type: mlp, dueling: true}").unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let net = spec
            .build(&vs.root(), &ObsSpace::Discrete { n: 16 }, ActionSpace { n: 4 }, &NetOptions::default())
            .unwrap();
        assert!(net.is_dueling());
        assert_eq!(net.forward(&Tensor::zeros([3, 16], (Kind::Float, Device::Cpu))).size(), vec![3, 4]);

        let spec: NetSpec = serde_norway::from_str("{type: nature_cnn, dueling: true}").unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let net = spec.build(&vs.root(), &atari(), ActionSpace { n: 4 }, &NetOptions::default()).unwrap();
        assert!(net.is_dueling());
        let x = Tensor::full([2, 4, 84, 84], 255, (Kind::Uint8, Device::Cpu));
        assert_eq!(net.forward(&x).size(), vec![2, 4]);
        assert_eq!(NetSpec::default_for(&atari()), NetSpec::NatureCnn { dueling: false });
    }

    #[test]
    fn bad_specs_are_rejected() {
        assert!(serde_norway::from_str::<NetSpec>("{type: mlp, hiden: [64]}").is_err());
        assert!(serde_norway::from_str::<NetSpec>("{type: resnet}").is_err());
        let vs = nn::VarStore::new(Device::Cpu);
        let a = ActionSpace { n: 2 };
        let cnn = NetSpec::NatureCnn { dueling: false };
        assert_eq!(
            cnn.build(&vs.root(), &cartpole(), a, &NetOptions::default()).unwrap_err(),
            NetError::CnnOnVector(vec![4])
        );
        assert!(matches!(
            NetSpec::default().build(&vs.root(), &atari(), a, &NetOptions::default()),
            Err(NetError::MlpOnPixels(_))
        ));
        let rgb = ObsSpace::Pixels { frames: 4, height: 84, width: 84, channels: 3 };
        assert_eq!(cnn.build(&vs.root(), &rgb, a, &NetOptions::default()).unwrap_err(), NetError::CnnChannels(3));
        let tiny = ObsSpace::Pixels { frames: 4, height: 20, width: 20, channels: 1 };
        assert_eq!(cnn.build(&vs.root(), &tiny, a, &NetOptions::default()).unwrap_err(), NetError::CnnTooSmall(20, 20));
    }
}
