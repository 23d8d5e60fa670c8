//! Proportional prioritized experience replay (Schaul et al. 2016, "Prioritized Experience
//! Replay", Algorithm 1): transition `i` is sampled with probability
//! `P(i) = p_i^alpha / sum_k p_k^alpha` (eq. 1), `p_i = |delta_i| + epsilon`, new transitions enter
//! with the largest priority seen so far, and the loss is weighted by
//! `w_i = (N * P(i))^-beta / max_j w_j` (Section 3.4), where `max_j w_j` belongs to the smallest
//! priority, so `w_i = (p_i^alpha / min_k p_k^alpha)^-beta` and `N` cancels out.
//!
//! A batch of `k` is drawn stratified (Appendix B.2.1): the total priority mass is cut into `k`
//! equal segments and one transition is drawn from each.

use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use super::{Batch, MinTree, Replay, ReplayStorage, SumTree};
use crate::rl::env::{Obs, ObsSpace};
use crate::rl::state::State;

/// The `prioritized: {alpha: 0.6, epsilon: 1.0e-6}` section of a DQN config; `beta` is a
/// schedule driven by the trainer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrioritizedConfig {
    /// How much prioritization is used: 0 is uniform, 1 fully proportional (paper: 0.6).
    pub alpha: f64,
    /// Added to `|TD error|` so that no transition becomes unsampleable.
    pub epsilon: f64,
}

impl Default for PrioritizedConfig {
    fn default() -> Self {
        PrioritizedConfig { alpha: 0.6, epsilon: 1e-6 }
    }
}

/// Replay sampled proportionally to `|TD error|^alpha`, with importance-sampling weights.
#[derive(Clone, Debug)]
pub struct PrioritizedReplay {
    storage: ReplayStorage,
    config: PrioritizedConfig,
    /// `p_i^alpha` per slot; 0 for slots that are not sampleable.
    sum: SumTree,
    /// `p_i^alpha` per slot; `+inf` for slots that are not sampleable.
    min: MinTree,
    /// The largest `p_i` (before `alpha`) seen so far, given to new transitions.
    max_priority: f64,
    /// Scratch for the stratified draws, sized on the first batch.
    masses: Vec<f64>,
    /// Scratch for the new leaf values of a priority update.
    leaves: Vec<f64>,
}

impl PrioritizedReplay {
    /// A buffer of `buffer_size` slots for `space` with `n_step`-step returns discounted by `gamma`.
    pub fn new(space: &ObsSpace, buffer_size: usize, n_step: usize, gamma: f32, config: PrioritizedConfig) -> Self {
        Self::with_streams(space, buffer_size, n_step, gamma, config, 1)
    }

    /// [`new`](Self::new), fed by `streams` environment copies.
    pub fn with_streams(
        space: &ObsSpace,
        buffer_size: usize,
        n_step: usize,
        gamma: f32,
        config: PrioritizedConfig,
        streams: usize,
    ) -> Self {
        PrioritizedReplay {
            storage: ReplayStorage::with_streams(space, buffer_size, n_step, gamma, streams),
            config,
            sum: SumTree::new(buffer_size),
            min: MinTree::new(buffer_size),
            max_priority: 1.0,
            masses: Vec::new(),
            leaves: Vec::new(),
        }
    }

    /// The underlying storage (to size batches with [`ReplayStorage::new_batch`]).
    pub fn storage(&self) -> &ReplayStorage {
        &self.storage
    }

    /// `p_i^alpha` of slot `i` (0 when it is not a sampleable transition).
    pub fn priority_alpha(&self, i: usize) -> f64 {
        self.sum.get(i)
    }

    fn set_leaf(&mut self, i: usize, value: f64) {
        self.sum.set(i, value);
        self.min.set(i, if value > 0.0 { value } else { f64::INFINITY });
    }
}

impl Replay for PrioritizedReplay {
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
        let initial = self.max_priority.powf(self.config.alpha);
        for k in 0..self.storage.changes().len() {
            let (i, valid) = self.storage.changes()[k];
            self.set_leaf(i, if valid { initial } else { 0.0 });
        }
    }

    fn sample(&mut self, rng: &mut dyn RngCore, beta: f64, batch: &mut Batch) {
        assert!(!self.storage.is_empty(), "sampling an empty replay buffer");
        let n = batch.len();
        let segment = self.sum.total() / n as f64;
        self.masses.resize(n, 0.0);
        for (row, mass) in self.masses.iter_mut().enumerate() {
            *mass = (row as f64 + rng.random::<f64>()) * segment;
        }
        self.sum.find_prefix_sums(&mut self.masses, &mut batch.indices);
        for &i in &batch.indices {
            self.storage.prefetch_row(i);
        }
        let min = self.min.min();
        for row in 0..n {
            let i = batch.indices[row];
            debug_assert!(self.storage.is_valid(i));
            self.storage.write_row(i, row, batch);
            // Single precision is all a loss weight needs, and `powf` on `f32` is much cheaper.
            batch.weights[row] = ((self.sum.get(i) / min) as f32).powf(-beta as f32);
        }
    }

    fn update_priorities(&mut self, indices: &[usize], td_errors: &[f32]) {
        assert_eq!(indices.len(), td_errors.len(), "one TD error per index");
        self.leaves.resize(indices.len(), 0.0);
        // The sum tree's lines are warm from sampling; the min tree's load while the powers run.
        for &i in indices {
            self.min.prefetch(i);
        }
        for ((&i, &delta), leaf) in indices.iter().zip(td_errors).zip(self.leaves.iter_mut()) {
            *leaf = if self.storage.is_valid(i) {
                let p = delta.abs() as f64 + self.config.epsilon;
                self.max_priority = self.max_priority.max(p);
                // The TD error is single precision already; so is this power, for speed.
                (p as f32).powf(self.config.alpha as f32) as f64
            } else {
                // A slot overwritten since it was sampled keeps the priority it entered with.
                self.sum.get(i)
            };
        }
        self.sum.set_many(indices, &self.leaves);
        for leaf in &mut self.leaves {
            if *leaf <= 0.0 {
                *leaf = f64::INFINITY;
            }
        }
        self.min.set_many(indices, &self.leaves);
    }

    fn len(&self) -> usize {
        self.storage.len()
    }

    fn cut_episode(&mut self) {
        self.storage.cut_episode();
        let initial = self.max_priority.powf(self.config.alpha);
        for k in 0..self.storage.changes().len() {
            let (i, valid) = self.storage.changes()[k];
            self.set_leaf(i, if valid { initial } else { 0.0 });
        }
    }

    fn state(&self, out: &mut State) {
        self.storage.state(out);
        let leaves: Vec<f64> = (0..self.storage.capacity()).map(|i| self.sum.get(i)).collect();
        out.put_slice("replay.priorities", &leaves);
        out.put_slice("replay.priority_info", &[self.max_priority, self.config.alpha]);
    }

    fn load_state(&mut self, state: &State) -> anyhow::Result<()> {
        self.storage.load_state(state)?;
        let info = state.vec::<f64>("replay.priority_info")?;
        anyhow::ensure!(info.len() == 2, "checkpoint entry `replay.priority_info` is malformed");
        let (max_priority, alpha) = (info[0], info[1]);
        let mut leaves = vec![0f64; self.storage.capacity()];
        state.fill("replay.priorities", &mut leaves)?;
        // Leaves hold p^alpha: a new alpha re-weights the same priorities, (p^a)^(a'/a) = p^a'.
        if alpha != self.config.alpha {
            let ratio = self.config.alpha / alpha;
            for l in &mut leaves {
                if *l > 0.0 {
                    *l = if alpha == 0.0 { 1.0 } else { l.powf(ratio) };
                }
            }
        }
        let valid: Vec<bool> = (0..leaves.len()).map(|i| self.storage.is_valid(i)).collect();
        for (l, v) in leaves.iter_mut().zip(valid) {
            if !v {
                *l = 0.0;
            }
        }
        let indices: Vec<usize> = (0..leaves.len()).collect();
        self.sum = SumTree::new(leaves.len());
        self.min = MinTree::new(leaves.len());
        self.sum.set_many(&indices, &leaves);
        let mins: Vec<f64> = leaves.iter().map(|&l| if l > 0.0 { l } else { f64::INFINITY }).collect();
        self.min.set_many(&indices, &mins);
        self.max_priority = max_priority;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// Four one-step transitions (one episode, n = 1) in slots 0..4, final observation in slot 4.
    fn four(config: PrioritizedConfig) -> PrioritizedReplay {
        let space = ObsSpace::Box { low: vec![0.0], high: vec![1.0] };
        let mut per = PrioritizedReplay::new(&space, 16, 1, 0.9, config);
        for t in 0..4 {
            per.push(Obs::F32(&[t as f32]), 0, 0.0, Obs::F32(&[t as f32 + 1.0]), t == 3, false);
        }
        per
    }

    #[test]
    fn new_transitions_get_the_max_priority() {
        let mut per = four(PrioritizedConfig { alpha: 0.5, epsilon: 1.0 });
        assert!((0..4).all(|i| per.priority_alpha(i) == 1.0));
        assert_eq!(per.priority_alpha(4), 0.0, "the final observation is not a transition");
        per.update_priorities(&[0, 1], &[-15.0, 3.0]);
        assert_eq!(per.priority_alpha(0), 4.0);
        assert_eq!(per.priority_alpha(1), 2.0);
        per.push(Obs::F32(&[9.0]), 0, 0.0, Obs::F32(&[10.0]), true, false);
        assert_eq!(per.priority_alpha(5), 4.0, "max priority 16, to the power 0.5");
    }

    #[test]
    fn importance_weights_match_hand_computation() {
        let mut per = four(PrioritizedConfig { alpha: 0.5, epsilon: 1.0 });
        // p = |delta| + 1 = 1, 4, 9, 16, so p^alpha = 1, 2, 3, 4 and P = 0.1, 0.2, 0.3, 0.4.
        per.update_priorities(&[0, 1, 2, 3], &[0.0, 3.0, -8.0, 15.0]);
        // Ten strata of mass 1 over prefix sums [0,1) [1,3) [3,6) [6,10): slots 0, 1 1, 2 2 2, 3 3 3 3.
        let mut batch = per.storage().new_batch(10);
        let mut rng = StdRng::seed_from_u64(0);
        per.sample(&mut rng, 0.5, &mut batch);
        assert_eq!(batch.indices, vec![0, 1, 1, 2, 2, 2, 3, 3, 3, 3]);
        // w_i = (N P(i))^-beta / max_j w_j with N = 4, beta = 0.5:
        // (0.4, 0.8, 1.2, 1.6)^-0.5 = 1.5811, 1.1180, 0.9129, 0.7906; divided by 1.5811.
        let expected = [1.0, 1.0 / 2f32.sqrt(), 1.0 / 3f32.sqrt(), 0.5];
        for (row, &i) in batch.indices.iter().enumerate() {
            assert!((batch.weights[row] - expected[i]).abs() < 1e-6, "row {row}: {}", batch.weights[row]);
        }
        // beta = 1 gives w_i = p_min^alpha / p_i^alpha exactly.
        per.sample(&mut rng, 1.0, &mut batch);
        for (row, &i) in batch.indices.iter().enumerate() {
            assert!((batch.weights[row] - 1.0 / (i as f32 + 1.0)).abs() < 1e-6);
        }
    }

    #[test]
    fn sampling_follows_priorities() {
        let mut per = four(PrioritizedConfig { alpha: 1.0, epsilon: 0.0 });
        per.update_priorities(&[0, 1, 2, 3], &[1.0, 0.5, 2.0, 4.5]);
        let mut batch = per.storage().new_batch(3);
        let mut rng = StdRng::seed_from_u64(11);
        let mut counts = [0usize; 4];
        let draws = 30_000;
        for _ in 0..draws / 3 {
            per.sample(&mut rng, 0.4, &mut batch);
            for &i in &batch.indices {
                counts[i] += 1;
            }
        }
        // Stratification only lowers the variance of the multinomial, so its chi-square bound
        // (3 degrees of freedom, 99.9%: 16.3) still holds.
        let p = [1.0, 0.5, 2.0, 4.5];
        let chi2: f64 = (0..4)
            .map(|i| {
                let e = draws as f64 * p[i] / 8.0;
                (counts[i] as f64 - e).powi(2) / e
            })
            .sum();
        assert!(chi2 < 16.3, "chi2 = {chi2}, counts = {counts:?}");
    }

    #[test]
    fn overwritten_slots_leave_the_trees() {
        let space = ObsSpace::Box { low: vec![0.0], high: vec![1.0] };
        let mut per = PrioritizedReplay::new(&space, 8, 1, 0.9, PrioritizedConfig::default());
        for t in 0..20 {
            per.push(Obs::F32(&[t as f32]), 0, 0.0, Obs::F32(&[t as f32 + 1.0]), false, false);
        }
        let live = (0..8).filter(|&i| per.priority_alpha(i) > 0.0).count();
        assert_eq!(live, per.len());
        assert_eq!(per.len(), 7, "the newest slot has no step yet");
        assert!((per.sum.total() - 7.0).abs() < 1e-12);
    }
}
