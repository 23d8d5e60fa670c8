//! The dueling head (Wang et al. 2016, "Dueling Network Architectures for Deep Reinforcement
//! Learning", eq. 9): `Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a')`, a value stream and an
//! advantage stream on a shared body; subtracting the mean makes `V` and `A` identifiable.

use tch::nn::{self, Module};
use tch::Tensor;

use super::Layers;

/// Eq. 9: `value` is `[batch, 1]`, `advantage` `[batch, |A|]`; returns `[batch, |A|]`.
pub fn dueling_aggregate(value: &Tensor, advantage: &Tensor) -> Tensor {
    value + advantage - advantage.mean_dim(-1, true, None)
}

/// Eq. 9 per atom (Hessel et al. 2018, "Rainbow", eq. 4 on the logits): `value` is `[batch, K]`,
/// `advantage` `[batch, |A| K]` (action-major); returns `[batch, |A| K]`.
pub fn dueling_aggregate_atoms(value: &Tensor, advantage: &Tensor, atoms: i64) -> Tensor {
    if atoms == 1 {
        return dueling_aggregate(value, advantage);
    }
    let batch = advantage.size()[0];
    let a = advantage.view([batch, -1, atoms]);
    (value.unsqueeze(1) + &a - a.mean_dim(1, true, None)).view([batch, -1])
}

/// Value and advantage streams on a shared body's features, combined by [`dueling_aggregate`].
#[derive(Debug)]
pub struct Dueling {
    value: nn::Sequential,
    advantage: nn::Sequential,
    /// Outputs per action (atoms or quantiles of a distributional head; 1 otherwise).
    atoms: i64,
}

impl Dueling {
    /// Streams on a body with `features` outputs: each is
    /// `features -> stream_hidden... -> 1` (value) or `-> n_actions` (advantage), ReLU between
    /// layers (the paper's Atari streams have one hidden layer of 512; MLPs use none), with
    /// `atoms` outputs per action and per value.
    pub fn new(
        p: &nn::Path,
        features: i64,
        stream_hidden: &[i64],
        n_actions: i64,
        atoms: i64,
        layers: &Layers,
    ) -> Self {
        let value = super::mlp(&(p / "value"), features, stream_hidden, atoms, layers);
        let advantage = super::mlp(&(p / "advantage"), features, stream_hidden, n_actions * atoms, layers);
        Dueling { value, advantage, atoms }
    }
}

impl Module for Dueling {
    fn forward(&self, h: &Tensor) -> Tensor {
        dueling_aggregate_atoms(&self.value.forward(h), &self.advantage.forward(h), self.atoms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn aggregation_on_a_fixed_tensor() {
        let value = Tensor::from_slice(&[1.0f32, -2.0]).view([2, 1]);
        let advantage = Tensor::from_slice(&[1.0f32, 2.0, 6.0, 0.0, 0.0, 3.0]).view([2, 3]);
        let q = dueling_aggregate(&value, &advantage);
        // Row means 3 and 1: (1 + [1, 2, 6] - 3, -2 + [0, 0, 3] - 1).
        let expected = Tensor::from_slice(&[-1.0f32, 0.0, 4.0, -3.0, -3.0, 0.0]).view([2, 3]);
        assert!(q.allclose(&expected, 1e-6, 1e-6, false), "{q}");
        // The advantages' mean is removed: Q averages to V.
        let mean = q.mean_dim(-1, true, None);
        assert!(mean.allclose(&value, 1e-6, 1e-6, false));
    }

    #[test]
    fn dueling_mlp_shapes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        let (trunk, width) = super::super::mlp_trunk(&(&p / "trunk"), 4, &[32], &Layers::plain());
        let net = Dueling::new(&p, width, &[], 3, 1, &Layers::plain());
        let q = net.forward(&trunk.forward(&Tensor::ones([7, 4], (Kind::Float, Device::Cpu))));
        assert_eq!(q.size(), vec![7, 3]);
    }

    #[test]
    fn aggregation_per_atom() {
        // Two actions, two atoms: value [1, 2]; advantages a0 = [1, 4], a1 = [3, 0] (means [2, 2]).
        let value = Tensor::from_slice(&[1.0f32, 2.0]).view([1, 2]);
        let advantage = Tensor::from_slice(&[1.0f32, 4.0, 3.0, 0.0]).view([1, 4]);
        let out = dueling_aggregate_atoms(&value, &advantage, 2);
        let expected = Tensor::from_slice(&[0.0f32, 4.0, 2.0, 0.0]).view([1, 4]);
        assert!(out.allclose(&expected, 1e-6, 1e-6, false), "{out}");
    }
}
