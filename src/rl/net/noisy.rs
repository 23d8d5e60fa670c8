//! Noisy linear layers (Fortunato et al. 2018, "Noisy Networks for Exploration", section 3 and
//! 3.2, factorised Gaussian noise):
//! `y = (mu_w + sigma_w * eps_w) x + mu_b + sigma_b * eps_b` with `eps_w = f(eps_out) f(eps_in)^T`,
//! `eps_b = f(eps_out)`, `f(x) = sgn(x) sqrt(|x|)` and `eps_in`, `eps_out` standard normal; `mu`
//! starts uniform in `±1/sqrt(p)` and `sigma` at `sigma0 / sqrt(p)` (`p` inputs, `sigma0 = 0.5`
//! in the paper). Because the noise is factorised, the noisy part is computed without forming
//! `eps_w`: `(sigma_w * f_out f_in^T) x = f_out * (sigma_w (f_in * x))`, so a layer costs two
//! matrix products and no `[out, in]` temporary.
//!
//! [`Layers`] builds every linear layer of a network, plain or noisy; [`Noise`] holds the noise
//! of one network (the `*.noise_in` / `*.noise_out` variables, not trained) in one flat tensor
//! refilled from the host, so resampling it costs one copy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::StandardNormal;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// Makes the linear layers of a network: plain, or noisy with `sigma0`.
#[derive(Clone, Debug)]
pub struct Layers {
    noisy: Option<(f64, Arc<AtomicBool>)>,
}

impl Default for Layers {
    fn default() -> Self {
        Layers::plain()
    }
}

impl Layers {
    /// `nn::linear` layers with PyTorch's initialisation.
    pub fn plain() -> Self {
        Layers { noisy: None }
    }

    /// Factorised noisy layers; their noise is off until a [`Noise`] attached to the network
    /// draws it.
    pub fn noisy(sigma0: f64) -> Self {
        Layers { noisy: Some((sigma0, Arc::new(AtomicBool::new(false)))) }
    }

    /// Whether the layers are noisy.
    pub fn is_noisy(&self) -> bool {
        self.noisy.is_some()
    }

    /// A layer `in_dim -> out_dim` under `p`.
    pub fn linear(&self, p: nn::Path, in_dim: i64, out_dim: i64) -> Linear {
        match &self.noisy {
            None => Linear::Plain(nn::linear(p, in_dim, out_dim, Default::default())),
            Some((sigma0, switch)) => Linear::Noisy(NoisyLinear::new(p, in_dim, out_dim, *sigma0, switch.clone())),
        }
    }

    /// The shared on/off switch of the noisy layers (`None` for plain ones).
    pub fn switch(&self) -> Option<Arc<AtomicBool>> {
        self.noisy.as_ref().map(|(_, s)| s.clone())
    }
}

/// A linear layer built by [`Layers::linear`].
#[derive(Debug)]
pub enum Linear {
    Plain(nn::Linear),
    Noisy(NoisyLinear),
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Tensor {
        match self {
            Linear::Plain(l) => l.forward(xs),
            Linear::Noisy(l) => l.forward(xs),
        }
    }
}

/// A factorised noisy linear layer: variables `weight`, `bias` (the means), `weight_sigma`,
/// `bias_sigma` (trained) and `noise_in`, `noise_out` (`f(eps_in)`, `f(eps_out)`; not trained).
#[derive(Debug)]
pub struct NoisyLinear {
    weight: Tensor,
    bias: Tensor,
    weight_sigma: Tensor,
    bias_sigma: Tensor,
    noise_in: Tensor,
    noise_out: Tensor,
    switch: Arc<AtomicBool>,
}

/// Name suffixes of the noise variables.
const NOISE_SUFFIXES: [&str; 2] = [".noise_in", ".noise_out"];

/// Whether the variable `name` holds noise (drawn, never trained or initialised).
pub fn is_noise(name: &str) -> bool {
    NOISE_SUFFIXES.iter().any(|s| name.ends_with(s))
}

impl NoisyLinear {
    fn new(p: nn::Path, in_dim: i64, out_dim: i64, sigma0: f64, switch: Arc<AtomicBool>) -> Self {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let uniform = nn::Init::Uniform { lo: -bound, up: bound };
        let sigma = nn::Init::Const(sigma0 * bound);
        NoisyLinear {
            weight: p.var("weight", &[out_dim, in_dim], uniform),
            bias: p.var("bias", &[out_dim], uniform),
            weight_sigma: p.var("weight_sigma", &[out_dim, in_dim], sigma),
            bias_sigma: p.var("bias_sigma", &[out_dim], sigma),
            noise_in: p.zeros_no_train("noise_in", &[in_dim]),
            noise_out: p.zeros_no_train("noise_out", &[out_dim]),
            switch,
        }
    }
}

impl Module for NoisyLinear {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let mean = xs.linear(&self.weight, Some(&self.bias));
        if !self.switch.load(Ordering::Relaxed) {
            return mean;
        }
        // (mu_w + sigma_w * f_out f_in^T) x + mu_b + sigma_b * f_out
        //   = mu_w x + mu_b + f_out * (sigma_w (f_in * x) + sigma_b).
        let noisy = (xs * &self.noise_in).linear(&self.weight_sigma, Some(&self.bias_sigma));
        mean + noisy * &self.noise_out
    }
}

/// Fills `out` with factorised noise `f(eps) = sgn(eps) sqrt(|eps|)`, `eps` standard normal
/// from `rng`, in order (as [`Noise::resample`] draws a network's noise, variables by name).
pub fn draw_noise(rng: &mut StdRng, out: &mut [f32]) {
    for x in out {
        let e: f32 = rng.sample(StandardNormal);
        *x = e.signum() * e.abs().sqrt();
    }
}

/// The noise of one network's noisy layers, drawn on the host.
pub struct Noise {
    /// Host tensor aliasing `host` (declared first: dropped before the buffer it reads).
    src: Tensor,
    host: Vec<f32>,
    /// Every noise variable is a view into this.
    flat: Tensor,
    switch: Arc<AtomicBool>,
}

impl std::fmt::Debug for Noise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Noise").field("len", &self.host.len()).finish()
    }
}

impl Noise {
    /// Gathers the noise variables of `vs` (built with `layers`) into one flat tensor; `None`
    /// when the layers are plain.
    pub fn attach(vs: &nn::VarStore, layers: &Layers) -> Option<Noise> {
        let switch = layers.switch()?;
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(n, _)| is_noise(n)).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let total: i64 = vars.iter().map(|(_, v)| v.numel() as i64).sum();
        let flat = Tensor::zeros([total], (Kind::Float, vs.device()));
        let mut offset = 0;
        for (_, var) in &mut vars {
            let n = var.numel() as i64;
            var.set_data(&flat.narrow(0, offset, n).view(var.size().as_slice()));
            offset += n;
        }
        let host = vec![0f32; total as usize];
        // SAFETY: `host` lives in the returned struct, is never resized, and outlives `src`
        // (fields drop in declaration order).
        let src = unsafe { Tensor::from_blob(host.as_ptr() as *const u8, &[total], &[], Kind::Float, Device::Cpu) };
        Some(Noise { src, host, flat, switch })
    }

    /// Draws new `f(eps)` for every layer and turns the noise on.
    pub fn resample(&mut self, rng: &mut StdRng) {
        draw_noise(rng, &mut self.host);
        let _guard = tch::no_grad_guard();
        self.flat.copy_(&self.src);
        self.switch.store(true, Ordering::Relaxed);
    }

    /// Turns the noise off: the layers compute with their means (evaluation).
    pub fn disable(&mut self) {
        self.switch.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn factorised_noise_equals_the_papers_weight_form() {
        let vs = nn::VarStore::new(Device::Cpu);
        let layers = Layers::noisy(0.5);
        let layer = layers.linear(vs.root() / "l", 3, 2);
        let mut noise = Noise::attach(&vs, &layers).unwrap();
        let Linear::Noisy(l) = &layer else { panic!("noisy layers") };
        assert!(l.weight_sigma.allclose(
            &Tensor::full([2, 3], 0.5 / 3f64.sqrt(), (Kind::Float, Device::Cpu)),
            1e-6,
            1e-6,
            false
        ));
        let x = Tensor::from_slice(&[0.3f32, -1.0, 2.0, 1.5, 0.2, -0.4]).view([2, 3]);
        let mean = layer.forward(&x);
        assert!(mean.allclose(&x.linear(&l.weight, Some(&l.bias)), 1e-6, 1e-6, false), "off: the mean layer");
        noise.resample(&mut StdRng::seed_from_u64(3));
        let y = layer.forward(&x);
        let eps_w = l.noise_out.outer(&l.noise_in);
        let w = &l.weight + &l.weight_sigma * eps_w;
        let b = &l.bias + &l.bias_sigma * &l.noise_out;
        assert!(y.allclose(&x.linear(&w, Some(&b)), 1e-5, 1e-5, false), "{y} vs the weight form");
        assert!(!y.allclose(&mean, 1e-3, 1e-3, false), "the noise changes the output");
        let first = Vec::<f32>::try_from(&l.noise_in).unwrap();
        noise.resample(&mut StdRng::seed_from_u64(4));
        assert_ne!(first, Vec::<f32>::try_from(&l.noise_in).unwrap(), "resampled");
        noise.disable();
        assert!(layer.forward(&x).allclose(&mean, 1e-6, 1e-6, false));
        assert!(Noise::attach(&vs, &Layers::plain()).is_none());
    }
}
