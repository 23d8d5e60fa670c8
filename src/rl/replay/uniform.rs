//! Uniform experience replay (Mnih et al. 2015, Algorithm 1: "sample random minibatch of
//! transitions from D"), over the n-step transitions of [`ReplayStorage`].

use rand::RngCore;

use super::{Batch, Replay, ReplayStorage};
use crate::rl::env::{Obs, ObsSpace};
use crate::rl::state::State;

/// Samples stored transitions uniformly, with replacement.
#[derive(Clone, Debug)]
pub struct UniformReplay {
    storage: ReplayStorage,
}

impl UniformReplay {
    /// A buffer of `buffer_size` slots for `space` with `n_step`-step returns discounted by `gamma`.
    pub fn new(space: &ObsSpace, buffer_size: usize, n_step: usize, gamma: f32) -> Self {
        Self::with_streams(space, buffer_size, n_step, gamma, 1)
    }

    /// [`new`](Self::new), fed by `streams` environment copies.
    pub fn with_streams(space: &ObsSpace, buffer_size: usize, n_step: usize, gamma: f32, streams: usize) -> Self {
        UniformReplay { storage: ReplayStorage::with_streams(space, buffer_size, n_step, gamma, streams) }
    }

    /// The underlying storage (to size batches with [`ReplayStorage::new_batch`]).
    pub fn storage(&self) -> &ReplayStorage {
        &self.storage
    }
}

impl Replay for UniformReplay {
    fn push_stream(
        &mut self,
        stream: usize,
        obs: Obs<'_>,
        action: usize,
        reward: f32,
        next_obs: Obs<'_>,
        terminated: bool,
        truncated: bool,
    ) {
        self.storage.push(stream, obs, action, reward, next_obs, terminated, truncated);
    }

    fn sample(&mut self, rng: &mut dyn RngCore, _beta: f64, batch: &mut Batch) {
        assert!(!self.storage.is_empty(), "sampling an empty replay buffer");
        for row in 0..batch.len() {
            let i = self.storage.uniform_slot(rng);
            self.storage.write_row(i, row, batch);
            batch.weights[row] = 1.0;
        }
    }

    fn len(&self) -> usize {
        self.storage.len()
    }

    fn cut_episode(&mut self) {
        self.storage.cut_episode();
    }

    fn state(&self, out: &mut State) {
        self.storage.state(out);
    }

    fn load_state(&mut self, state: &State) -> anyhow::Result<()> {
        self.storage.load_state(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rl::replay::ObsBatch;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn samples_only_transitions_uniformly() {
        let space = ObsSpace::Box { low: vec![0.0], high: vec![1.0] };
        let mut replay = UniformReplay::new(&space, 100, 1, 0.9);
        // Five one-step episodes: slots alternate transition / final observation.
        for e in 0..5 {
            replay.push(Obs::F32(&[e as f32]), 0, 1.0, Obs::F32(&[-1.0]), true, false);
        }
        assert_eq!(replay.len(), 5);
        let mut rng = StdRng::seed_from_u64(3);
        let mut batch = replay.storage().new_batch(50);
        let mut counts = [0usize; 5];
        for _ in 0..200 {
            replay.sample(&mut rng, 0.4, &mut batch);
            let ObsBatch::F32(obs) = &batch.obs else { unreachable!() };
            for &o in obs {
                counts[o as usize] += 1;
            }
            assert!(batch.weights.iter().all(|&w| w == 1.0));
        }
        // 10,000 draws, 2,000 expected each; 5 sigma is about 200.
        assert!(counts.iter().all(|&c| c.abs_diff(2000) < 200), "{counts:?}");
    }
}
