//! No replay: learn from the newest transitions only, as the naive online Q-learning of lab 000
//! (exercise 2) does. A small ring keeps the n-step windows; `sample` returns the most recent
//! sampleable transitions, newest first.

use rand::RngCore;

use super::{Batch, Replay, ReplayStorage};
use crate::rl::env::{Obs, ObsSpace};
use crate::rl::state::State;

/// The newest transitions, no sampling.
#[derive(Clone, Debug)]
pub struct LatestReplay {
    storage: ReplayStorage,
    /// Slots that became sampleable, oldest first, at most `keep` of them.
    recent: std::collections::VecDeque<usize>,
    keep: usize,
}

impl LatestReplay {
    /// Keeps the newest `keep` transitions of `space` with `n_step`-step returns.
    pub fn new(space: &ObsSpace, keep: usize, n_step: usize, gamma: f32) -> Self {
        Self::with_streams(space, keep, n_step, gamma, 1)
    }

    /// [`new`](Self::new), fed by `streams` environment copies (each with room for `keep`).
    pub fn with_streams(space: &ObsSpace, keep: usize, n_step: usize, gamma: f32, streams: usize) -> Self {
        let frames = match space {
            ObsSpace::Pixels { frames, .. } => *frames,
            _ => 1,
        };
        // Room for the windows still open, the pads of a reset and `keep` transitions.
        let capacity = 2 * (keep + n_step + frames) + 2;
        LatestReplay {
            storage: ReplayStorage::with_streams(space, capacity * streams, n_step, gamma, streams),
            recent: std::collections::VecDeque::with_capacity(keep + 1),
            keep,
        }
    }

    /// The underlying storage (to size batches with [`ReplayStorage::new_batch`]).
    pub fn storage(&self) -> &ReplayStorage {
        &self.storage
    }

    /// Follows the slots the storage's last change made sampleable or overwrote.
    fn track_changes(&mut self) {
        for &(slot, valid) in self.storage.changes() {
            if valid {
                if self.recent.len() == self.keep {
                    self.recent.pop_front();
                }
                self.recent.push_back(slot);
            } else {
                self.recent.retain(|&s| s != slot);
            }
        }
    }
}

impl Replay for LatestReplay {
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
        self.track_changes();
    }

    fn sample(&mut self, _rng: &mut dyn RngCore, _beta: f64, batch: &mut Batch) {
        assert!(!self.recent.is_empty(), "sampling an empty replay buffer");
        for row in 0..batch.len() {
            // Newest first; a batch larger than what is kept repeats the newest ones.
            let slot = self.recent[self.recent.len() - 1 - row % self.recent.len()];
            self.storage.write_row(slot, row, batch);
            batch.indices[row] = slot;
            batch.weights[row] = 1.0;
        }
    }

    fn len(&self) -> usize {
        self.recent.len()
    }

    fn cut_episode(&mut self) {
        self.storage.cut_episode();
        self.track_changes();
    }

    fn state(&self, out: &mut State) {
        self.storage.state(out);
        let recent: Vec<i64> = self.recent.iter().map(|&s| s as i64).collect();
        out.put_slice("replay.recent", &recent);
    }

    fn load_state(&mut self, state: &State) -> anyhow::Result<()> {
        self.storage.load_state(state)?;
        self.recent.clear();
        for s in state.ints("replay.recent")?.into_iter().rev().take(self.keep).collect::<Vec<_>>().into_iter().rev() {
            anyhow::ensure!((s as usize) < self.storage.capacity(), "checkpoint entry `replay.recent` is out of range");
            self.recent.push_back(s as usize);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rl::replay::ObsBatch;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn returns_the_newest_transition() {
        let space = ObsSpace::Box { low: vec![0.0], high: vec![1.0] };
        let mut replay = LatestReplay::new(&space, 1, 1, 0.9);
        let mut batch = replay.storage().new_batch(1);
        let mut rng = StdRng::seed_from_u64(0);
        for t in 0..50 {
            let done = t % 7 == 6;
            replay.push(Obs::F32(&[t as f32]), t % 2, t as f32, Obs::F32(&[t as f32 + 1.0]), done, false);
            replay.sample(&mut rng, 0.4, &mut batch);
            let (ObsBatch::F32(obs), ObsBatch::F32(next)) = (&batch.obs, &batch.next_obs) else { unreachable!() };
            assert_eq!((obs[0], next[0], batch.returns[0]), (t as f32, t as f32 + 1.0, t as f32), "step {t}");
            assert_eq!(batch.terminated[0], if done { 1.0 } else { 0.0 });
            assert_eq!(batch.actions[0], (t % 2) as i64);
        }
    }
}
