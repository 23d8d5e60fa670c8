//! Fully connected Q-networks for vector observations (the CartPole networks of the labs and of
//! rl-baselines3-zoo: `in -> 64 -> 64 -> |A|` with ReLU).

use tch::nn;

use super::Layers;

/// `in_dim -> hidden[0] -> ... -> hidden[last]`, a ReLU after each layer: the shared body of a
/// plain or dueling network. Returns the layers and their output width.
pub fn mlp_trunk(p: &nn::Path, in_dim: i64, hidden: &[i64], layers: &Layers) -> (nn::Sequential, i64) {
    let mut net = nn::seq();
    let mut width = in_dim;
    for (i, &h) in hidden.iter().enumerate() {
        net = net.add(layers.linear(p / i.to_string(), width, h)).add_fn(|x| x.relu());
        width = h;
    }
    (net, width)
}

/// `in_dim -> hidden... -> out_dim` with ReLU between layers and a linear output (Q-values).
pub fn mlp(p: &nn::Path, in_dim: i64, hidden: &[i64], out_dim: i64, layers: &Layers) -> nn::Sequential {
    let (trunk, width) = mlp_trunk(p, in_dim, hidden, layers);
    trunk.add(layers.linear(p / hidden.len().to_string(), width, out_dim))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::Module;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn shapes_and_parameter_count() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = mlp(&vs.root(), 4, &[64, 64], 2, &Layers::plain());
        let q = net.forward(&Tensor::zeros([5, 4], (Kind::Float, Device::Cpu)));
        assert_eq!(q.size(), vec![5, 2]);
        let params: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
        assert_eq!(params, (4 * 64 + 64) + (64 * 64 + 64) + (64 * 2 + 2));
    }
}
