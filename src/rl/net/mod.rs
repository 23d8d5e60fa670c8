//! Q-networks (tch): MLPs for vectors, the Nature CNN for pixels (Mnih et al. 2015), each plain or
//! with the dueling head of Wang et al. (2016, eq. 9), chosen by [`NetSpec`]:
//! `net: {type: mlp, hidden: [64, 64], dueling: false}` or `net: {type: nature_cnn, dueling: true}`.
//!
//! Build the online and target networks with the same spec on their own `VarStore`s.

mod cnn;
mod dueling;
mod mlp;

pub use cnn::{nature_cnn, nature_cnn_trunk};
pub use dueling::{dueling_aggregate, dueling_aggregate_atoms, Dueling};
pub use mlp::{mlp, mlp_trunk};

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::Tensor;

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
    /// the replay stores them) and `atoms` outputs for each of the `actions.n` actions
    /// (action-major: output `a K + k`; `atoms` is 1 for an expected-value head).
    pub fn build(
        &self,
        p: &nn::Path,
        space: &ObsSpace,
        actions: ActionSpace,
        atoms: i64,
    ) -> Result<QNetwork, NetError> {
        let n_actions = actions.n as i64;
        match (self, space) {
            (NetSpec::Mlp { .. }, ObsSpace::Pixels { .. }) => Err(NetError::MlpOnPixels(space.shape())),
            (NetSpec::Mlp { hidden, dueling: false }, _) => {
                Ok(QNetwork::Plain(mlp(p, space.flat_dim() as i64, hidden, n_actions * atoms)))
            }
            (NetSpec::Mlp { hidden, dueling: true }, _) => {
                let (trunk, width) = mlp_trunk(&(p / "trunk"), space.flat_dim() as i64, hidden);
                Ok(QNetwork::Dueling(Dueling::new(p, trunk, width, &[], n_actions, atoms)))
            }
            (NetSpec::NatureCnn { dueling }, ObsSpace::Pixels { frames, height, width, channels }) => {
                if *channels != 1 {
                    return Err(NetError::CnnChannels(*channels));
                }
                let too_small = NetError::CnnTooSmall(*height, *width);
                let (f, h, w) = (*frames as i64, *height as i64, *width as i64);
                if *dueling {
                    let (trunk, features) = nature_cnn_trunk(&(p / "trunk"), f, h, w).ok_or(too_small)?;
                    Ok(QNetwork::Dueling(Dueling::new(p, trunk, features, &[CNN_HIDDEN], n_actions, atoms)))
                } else {
                    Ok(QNetwork::Plain(nature_cnn(p, f, h, w, n_actions * atoms).ok_or(too_small)?))
                }
            }
            (NetSpec::NatureCnn { .. }, _) => Err(NetError::CnnOnVector(space.shape())),
        }
    }
}

/// A Q-network built by [`NetSpec::build`]: `[batch, obs...] -> [batch, |A| atoms]`.
#[derive(Debug)]
pub enum QNetwork {
    /// A single stream ending in `|A|` outputs.
    Plain(nn::Sequential),
    /// Value and advantage streams.
    Dueling(Dueling),
}

impl Module for QNetwork {
    fn forward(&self, xs: &Tensor) -> Tensor {
        match self {
            QNetwork::Plain(net) => net.forward(xs),
            QNetwork::Dueling(net) => net.forward(xs),
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
        let net = spec.build(&vs.root(), &cartpole(), actions, 1).unwrap();
        assert!(matches!(net, QNetwork::Plain(_)));
        assert_eq!(net.forward(&Tensor::zeros([3, 4], (Kind::Float, Device::Cpu))).size(), vec![3, 2]);

        let spec: NetSpec = serde_norway::from_str("{type: mlp, dueling: true}").unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let net = spec.build(&vs.root(), &ObsSpace::Discrete { n: 16 }, ActionSpace { n: 4 }, 1).unwrap();
        assert!(matches!(net, QNetwork::Dueling(_)));
        assert_eq!(net.forward(&Tensor::zeros([3, 16], (Kind::Float, Device::Cpu))).size(), vec![3, 4]);

        let spec: NetSpec = serde_norway::from_str("{type: nature_cnn, dueling: true}").unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let net = spec.build(&vs.root(), &atari(), ActionSpace { n: 4 }, 1).unwrap();
        assert!(matches!(net, QNetwork::Dueling(_)));
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
        assert_eq!(cnn.build(&vs.root(), &cartpole(), a, 1).unwrap_err(), NetError::CnnOnVector(vec![4]));
        assert!(matches!(NetSpec::default().build(&vs.root(), &atari(), a, 1), Err(NetError::MlpOnPixels(_))));
        let rgb = ObsSpace::Pixels { frames: 4, height: 84, width: 84, channels: 3 };
        assert_eq!(cnn.build(&vs.root(), &rgb, a, 1).unwrap_err(), NetError::CnnChannels(3));
        let tiny = ObsSpace::Pixels { frames: 4, height: 20, width: 20, channels: 1 };
        assert_eq!(cnn.build(&vs.root(), &tiny, a, 1).unwrap_err(), NetError::CnnTooSmall(20, 20));
    }
}
