//! A learner's state as named CPU tensors: what a checkpoint holds (network, target network,
//! optimizer moments, replay contents), written as one safetensors file per part so that PBT's
//! exploit can take the learner of one member and the replay buffer of another, and a resumed
//! run can read back exactly what it left.

use std::path::Path;

use anyhow::Context;
use tch::{Device, Kind, Tensor};

/// Named tensors of one part of a checkpoint, on the CPU.
#[derive(Debug, Default)]
pub struct State {
    entries: Vec<(String, Tensor)>,
}

impl State {
    /// An empty state.
    pub fn new() -> Self {
        State::default()
    }

    /// Adds a copy of `t` (moved to the CPU) under `name`.
    pub fn put(&mut self, name: impl Into<String>, t: &Tensor) {
        self.entries.push((name.into(), t.to_device(Device::Cpu).copy()));
    }

    /// Adds a slice of host values under `name`.
    pub fn put_slice<T: tch::kind::Element>(&mut self, name: impl Into<String>, v: &[T]) {
        self.entries.push((name.into(), Tensor::from_slice(v)));
    }

    /// Adds integer scalars under `name`.
    pub fn put_ints(&mut self, name: impl Into<String>, v: &[i64]) {
        self.put_slice(name, v);
    }

    /// The tensor named `name`, or an error naming what the checkpoint lacks.
    pub fn get(&self, name: &str) -> anyhow::Result<&Tensor> {
        self.find(name)
            .ok_or_else(|| anyhow::anyhow!("the checkpoint has no `{name}`; was it written by this version of tune?"))
    }

    /// The tensor named `name`, if present.
    pub fn find(&self, name: &str) -> Option<&Tensor> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The values of `name` as a host vector of `T` (converted from the stored kind).
    pub fn vec<T: tch::kind::Element>(&self, name: &str) -> anyhow::Result<Vec<T>> {
        let t = self.get(name)?.to_kind(T::KIND).contiguous();
        let mut out = vec![T::ZERO; t.numel()];
        t.copy_data(&mut out, t.numel());
        Ok(out)
    }

    /// `name` into `dst`, element for element; an error when the sizes differ.
    pub fn fill<T: tch::kind::Element + Copy>(&self, name: &str, dst: &mut [T]) -> anyhow::Result<()> {
        let v = self.vec::<T>(name)?;
        anyhow::ensure!(
            v.len() == dst.len(),
            "checkpoint entry `{name}` holds {} values where {} are expected: it was written for another configuration",
            v.len(),
            dst.len()
        );
        dst.copy_from_slice(&v);
        Ok(())
    }

    /// Integer scalars stored by [`State::put_ints`].
    pub fn ints(&self, name: &str) -> anyhow::Result<Vec<i64>> {
        self.vec::<i64>(name)
    }

    /// Copies `name` into the tensor `dst` (any device), checking the element count.
    pub fn copy_into(&self, name: &str, dst: &mut Tensor) -> anyhow::Result<()> {
        let src = self.get(name)?;
        anyhow::ensure!(
            src.numel() == dst.numel(),
            "checkpoint entry `{name}` holds {} values where the network has {}: it was written for another network",
            src.numel(),
            dst.numel()
        );
        let _guard = tch::no_grad_guard();
        dst.copy_(&src.to_kind(Kind::Float).view(dst.size().as_slice()));
        Ok(())
    }

    /// Writes the state to `path` (safetensors) through a temporary file and a rename.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        let named: Vec<(&str, &Tensor)> = self.entries.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Tensor::write_safetensors(&named, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// Reads a state written by [`State::save`].
    pub fn load(path: &Path) -> anyhow::Result<State> {
        let entries =
            Tensor::read_safetensors(path).with_context(|| format!("cannot read the checkpoint {}", path.display()))?;
        Ok(State { entries })
    }
}
