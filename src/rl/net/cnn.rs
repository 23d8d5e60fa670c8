//! The Nature DQN network (Mnih et al. 2015, "Human-level control through deep reinforcement
//! learning", Methods: "Model architecture"): `4x84x84` pixels scaled by 1/255 -> conv 32 8x8
//! stride 4 -> conv 64 4x4 stride 2 -> conv 64 3x3 stride 1 -> 3136 -> 512 -> |A|, ReLU after
//! every layer but the last.

use tch::nn;
use tch::Kind;

use super::Layers;

/// Side of a square-kernel convolution's output without padding.
fn conv_out(side: i64, kernel: i64, stride: i64) -> i64 {
    (side - kernel) / stride + 1
}

/// The convolutional body on `[batch, frames, height, width]` pixels (bytes or floats in
/// `0..=255`), flattened. Returns the layers and their output width (3136 for 84x84), or `None`
/// when the image is smaller than the receptive field.
pub fn nature_cnn_trunk(p: &nn::Path, frames: i64, height: i64, width: i64) -> Option<(nn::Sequential, i64)> {
    let mut side = [height, width];
    for (k, s) in [(8, 4), (4, 2), (3, 1)] {
        side = side.map(|x| conv_out(x, k, s));
    }
    if side.iter().any(|&x| x < 1) {
        return None;
    }
    let conv =
        |name: &str, i, o, k, stride| nn::conv2d(p / name, i, o, k, nn::ConvConfig { stride, ..Default::default() });
    let net = nn::seq()
        // Replay stores raw bytes; scaling here keeps the 4x smaller u8 batches until the device.
        .add_fn(|x| x.to_kind(Kind::Float) / 255.0)
        .add(conv("conv1", frames, 32, 8, 4))
        .add_fn(|x| x.relu())
        .add(conv("conv2", 32, 64, 4, 2))
        .add_fn(|x| x.relu())
        .add(conv("conv3", 64, 64, 3, 1))
        .add_fn(|x| x.relu().flatten(1, -1));
    Some((net, 64 * side[0] * side[1]))
}

/// The Nature DQN's fully connected part on the trunk's `features`: -> 512 -> `n_outputs`.
pub fn nature_cnn_head(p: &nn::Path, features: i64, n_outputs: i64, layers: &Layers) -> nn::Sequential {
    nn::seq().add(layers.linear(p / "fc", features, 512)).add_fn(|x| x.relu()).add(layers.linear(
        p / "q",
        512,
        n_outputs,
    ))
}

/// The full Nature DQN: [`nature_cnn_trunk`] -> 512 -> `n_actions`.
pub fn nature_cnn(p: &nn::Path, frames: i64, height: i64, width: i64, n_actions: i64) -> Option<nn::Sequential> {
    let (trunk, features) = nature_cnn_trunk(p, frames, height, width)?;
    Some(trunk.add(nature_cnn_head(p, features, n_actions, &Layers::plain())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::Module;
    use tch::{Device, Tensor};

    #[test]
    fn nature_shapes_and_parameter_count() {
        let vs = nn::VarStore::new(Device::Cpu);
        let (_, features) = nature_cnn_trunk(&(vs.root() / "probe"), 4, 84, 84).unwrap();
        assert_eq!(features, 3136);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = nature_cnn(&vs.root(), 4, 84, 84, 6).unwrap();
        let x = Tensor::zeros([2, 4, 84, 84], (Kind::Uint8, Device::Cpu));
        assert_eq!(net.forward(&x).size(), vec![2, 6]);
        let params: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
        let expected =
            (4 * 32 * 64 + 32) + (32 * 64 * 16 + 64) + (64 * 64 * 9 + 64) + (3136 * 512 + 512) + (512 * 6 + 6);
        assert_eq!(params, expected);
        assert_eq!(expected, 1_687_206);
        assert!(nature_cnn_trunk(&vs.root(), 4, 20, 20).is_none());
    }
}
