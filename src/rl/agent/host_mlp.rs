//! A plain MLP's forward pass for one observation, on the host: what acting costs on CPU.
//!
//! Acting runs the Q-network on one observation per environment step (and per evaluation
//! step). At CartPole sizes that is a few thousand multiply-adds, which libtorch spends most of
//! its time dispatching (a matrix product and a ReLU per layer, plus the copies in and out);
//! here each layer is one pass of dot products over the parameters in place (`pulp` lanes, as
//! the heads' host maths). [`super::DqnAgent`] and [`super::batched::BatchedDqn`] act through
//! the same function, so a batched member picks the same greedy actions as an agent alone.

use pulp::{Arch, Simd, WithSimd};

use super::head::dot;

/// Where one layer's parameters sit in a flat parameter vector.
#[derive(Clone, Copy, Debug)]
struct Layer {
    weight: usize,
    bias: usize,
    inputs: usize,
    outputs: usize,
}

/// The forward pass of a plain MLP (`0.weight`, `0.bias`, ..., ReLU between layers) over flat
/// parameters laid out as `layout` says.
#[derive(Debug)]
pub(super) struct HostMlp {
    layers: Vec<Layer>,
    /// Scratch for hidden activations, as wide as the widest layer.
    a: Vec<f32>,
    b: Vec<f32>,
    arch: Arch,
}

impl HostMlp {
    /// The pass for an MLP of `n_layers` linear layers whose variables `layout` places
    /// (`(name, shape, offset)`), or `None` when a layer is missing.
    pub(super) fn new(layout: &[(String, Vec<i64>, i64)], n_layers: usize) -> Option<Self> {
        let find = |name: String| layout.iter().find(|(n, ..)| *n == name);
        let mut layers = Vec::with_capacity(n_layers);
        for i in 0..n_layers {
            let (_, shape, weight) = find(format!("{i}.weight"))?;
            let (_, _, bias) = find(format!("{i}.bias"))?;
            layers.push(Layer {
                weight: *weight as usize,
                bias: *bias as usize,
                outputs: shape[0] as usize,
                inputs: shape[1] as usize,
            });
        }
        let width = layers.iter().map(|l| l.inputs.max(l.outputs)).max()?;
        Some(HostMlp { layers, a: vec![0.0; width], b: vec![0.0; width], arch: Arch::new() })
    }

    /// The outputs for input `x` into `out`, with parameters `params`.
    pub(super) fn forward(&mut self, params: &[f32], x: &[f32], out: &mut [f32]) {
        let (mut cur, mut next) = (std::mem::take(&mut self.a), std::mem::take(&mut self.b));
        cur[..x.len()].copy_from_slice(x);
        let last = self.layers.len() - 1;
        for (l, layer) in self.layers.iter().enumerate() {
            let pass = MatVec {
                weight: &params[layer.weight..layer.weight + layer.inputs * layer.outputs],
                bias: &params[layer.bias..layer.bias + layer.outputs],
                input: &cur[..layer.inputs],
                out: if l == last { &mut *out } else { &mut next[..layer.outputs] },
                relu: l != last,
            };
            self.arch.dispatch(pass);
            std::mem::swap(&mut cur, &mut next);
        }
        self.a = cur;
        self.b = next;
    }
}

/// `out = W input + b` (`W` row-major `[out, in]`), then the ReLU (NaN passes, as libtorch's).
struct MatVec<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    input: &'a [f32],
    out: &'a mut [f32],
    relu: bool,
}

impl WithSimd for MatVec<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let n = self.input.len();
        for ((o, row), &b) in self.out.iter_mut().zip(self.weight.chunks_exact(n)).zip(self.bias) {
            let v = b + dot(s, row, self.input);
            *o = if self.relu && v < 0.0 { 0.0 } else { v };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, Module};
    use tch::{Device, Kind, Tensor};

    #[test]
    fn matches_libtorch_within_rounding() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = crate::rl::net::mlp(&vs.root(), 5, &[17, 9], 3, &crate::rl::net::Layers::plain());
        let mut named: Vec<_> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let mut layout = Vec::new();
        let mut flat = Vec::new();
        for (name, t) in &named {
            layout.push((name.clone(), t.size(), flat.len() as i64));
            let mut v = vec![0f32; t.numel()];
            t.copy_data(&mut v, t.numel());
            flat.extend(v);
        }
        let mut host = HostMlp::new(&layout, 3).unwrap();
        let x = [0.3f32, -1.2, 0.7, 2.0, -0.1];
        let mut out = [0f32; 3];
        host.forward(&flat, &x, &mut out);
        let expected = net.forward(&Tensor::from_slice(&x).view([1, 5]));
        let mut e = [0f32; 3];
        expected.to_kind(Kind::Float).copy_data(&mut e, 3);
        for (a, b) in out.iter().zip(e) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{out:?} vs {e:?}");
        }
    }
}
