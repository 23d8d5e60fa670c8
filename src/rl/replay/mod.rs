//! Experience replay (Lin 1992; Mnih et al. 2015, Algorithm 1) with n-step returns
//! (Sutton & Barto 2018, eq. 7.1; Hessel et al. 2018, eq. 2):
//! `G_t^(n) = sum_{k<m} gamma^k r_{t+k}`, bootstrapped with `gamma^m max_a Q(s_{t+m}, a)` unless
//! the episode terminated within the `m = min(n, steps to episode end)` steps.
//!
//! [`ReplayStorage`] is the shared ring of observations and outcomes; [`UniformReplay`] samples
//! it uniformly and [`PrioritizedReplay`] proportionally to priorities (Schaul et al. 2016).
//!
//! Layout: one slot per observation, written once. An episode occupies consecutive slots
//! `[pad x (k-1)] o_0 o_1 ... o_T`, where slot `o_t` also holds `(a_t, r_t, terminated, truncated)`
//! of the step taken from it, `o_T` is the final observation (kept so that a truncated episode
//! bootstraps from it), and for pixel observations stacked `k` deep, each slot holds only the
//! newest frame; the `k - 1` pad slots hold the older frames of the reset observation, so a
//! stack is rebuilt from `k` consecutive slots at sampling time and never reaches into the
//! previous episode, whatever padding the environment used. A slot is a sampleable transition
//! once its n-step target is known: `n` more steps were stored or the episode ended.
//!
//! Several environment copies (`env.num_envs`) feed one buffer through *streams*: the ring is
//! cut into one equal region per copy (as Stable-Baselines3's buffer keeps `size / n_envs` rows
//! per environment), each region a ring of its own with the layout above, so that a copy's
//! episodes stay contiguous while all copies share one sampler (and one sum tree).

mod latest;
mod prioritized;
mod sum_tree;
mod uniform;

pub use latest::LatestReplay;
pub use prioritized::{PrioritizedConfig, PrioritizedReplay};
use sum_tree::prefetch;
pub use sum_tree::{MinTree, SumTree};
pub use uniform::UniformReplay;

use rand::{Rng, RngCore};

use crate::rl::env::{Obs, ObsSpace};
use crate::rl::state::State;

/// A replay buffer as the DQN trainer sees it: store a step, sample a batch, report TD errors.
pub trait Replay {
    /// Stores one environment step. `obs` is read only at episode starts (after construction or
    /// after a step with `terminated || truncated`); otherwise it must equal the previous
    /// `next_obs`, which is already stored.
    fn push(&mut self, obs: Obs<'_>, action: usize, reward: f32, next_obs: Obs<'_>, terminated: bool, truncated: bool) {
        self.push_stream(0, obs, action, reward, next_obs, terminated, truncated);
    }

    /// [`push`](Replay::push) from environment copy `stream` (below the buffer's stream count),
    /// whose episodes are kept apart from the other copies'.
    #[allow(clippy::too_many_arguments)]
    fn push_stream(
        &mut self,
        stream: usize,
        obs: Obs<'_>,
        action: usize,
        reward: f32,
        next_obs: Obs<'_>,
        terminated: bool,
        truncated: bool,
    );

    /// Fills every row of `batch` with a sampled transition. `beta` is the importance-sampling
    /// exponent of prioritized replay (the trainer anneals it to 1); uniform replay ignores it and
    /// writes weights of 1. Panics when [`Replay::len`] is 0.
    fn sample(&mut self, rng: &mut dyn RngCore, beta: f64, batch: &mut Batch);

    /// Reports `|TD error|` for the rows of the last batch (a no-op for uniform replay).
    fn update_priorities(&mut self, _indices: &[usize], _td_errors: &[f32]) {}

    /// Number of sampleable transitions.
    fn len(&self) -> usize;

    /// True when nothing can be sampled yet.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends the episodes in progress (one per stream) as if a time limit cut them: their last
    /// steps bootstrap from the stored final observations, and the next pushes start new
    /// episodes (a training segment's end, where the environments are reset).
    fn cut_episode(&mut self);

    /// The buffer's contents, for a checkpoint.
    fn state(&self, out: &mut State);

    /// Restores contents written by [`Replay::state`] into a buffer of the same capacity and
    /// observation space (an error names what differs). Prioritized replay re-weights the
    /// stored priorities to its own `alpha`.
    fn load_state(&mut self, state: &State) -> anyhow::Result<()>;
}

/// Observations of a batch, row-major `[batch, shape...]`: floats for vectors, bytes for pixels
/// (left as `0..=255`; the Nature CNN divides by 255 on the device).
#[derive(Clone, Debug, PartialEq)]
pub enum ObsBatch {
    /// `[batch, dim]` floats.
    F32(Vec<f32>),
    /// `[batch, frames, height, width(, channels)]` bytes.
    U8(Vec<u8>),
}

/// A sampled batch, allocated once by [`ReplayStorage::new_batch`] and refilled in place.
///
/// TD target of row `j`: `returns[j] + discounts[j] * (1 - terminated[j]) * max_a Q'(next_obs[j], a)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `s_t`.
    pub obs: ObsBatch,
    /// `a_t`, as `i64` for `Tensor::gather`.
    pub actions: Vec<i64>,
    /// The n-step return `sum_{k<m} gamma^k r_{t+k}`.
    pub returns: Vec<f32>,
    /// `gamma^m`, the discount of the bootstrap value.
    pub discounts: Vec<f32>,
    /// 1 when the episode terminated within the `m` steps (no bootstrap), else 0; truncation
    /// leaves it 0 so the target bootstraps from the truncation observation.
    pub terminated: Vec<f32>,
    /// `s_{t+m}`.
    pub next_obs: ObsBatch,
    /// Importance-sampling weights (1 for uniform replay).
    pub weights: Vec<f32>,
    /// Buffer indices, to pass back to [`Replay::update_priorities`].
    pub indices: Vec<usize>,
}

impl Batch {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// True for a batch of 0 rows.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum SlotKind {
    /// Never written.
    Empty,
    /// An older frame of a reset observation, only there to rebuild stacks.
    Pad,
    /// An observation with no step taken from it (yet, or ever: the final one).
    Obs,
    /// An observation and the step taken from it.
    Step,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ObsKind {
    F32,
    U8,
    /// Discrete states stored one-hot, so networks see a vector.
    OneHot,
}

/// A slot that became sampleable (`true`) or stopped being so (`true` -> `false`) during a push.
pub type SlotChange = (usize, bool);

/// Where one stream (an environment copy) writes: its region of the ring and its episode.
#[derive(Clone, Copy, Debug)]
struct Stream {
    /// First slot of the region.
    start: usize,
    /// Next slot to write.
    cursor: usize,
    /// Slots of the region written so far, up to its length.
    filled: usize,
    in_episode: bool,
    /// Slot of the latest observation, from which the next step is taken.
    current: usize,
    episode_steps: usize,
}

/// The preallocated ring shared by both replay buffers.
#[derive(Clone, Debug)]
pub struct ReplayStorage {
    capacity: usize,
    /// Slots per stream (`capacity / streams.len()`).
    region: usize,
    n_step: usize,
    gamma: f32,
    kind: ObsKind,
    /// Frames per observation (`k`); 1 except for stacked pixels.
    stack: usize,
    /// Scalars per slot: one frame, or the whole vector.
    slot_len: usize,
    obs_f32: Vec<f32>,
    obs_u8: Vec<u8>,
    actions: Vec<u32>,
    rewards: Vec<f32>,
    terminated: Vec<bool>,
    truncated: Vec<bool>,
    slots: Vec<SlotKind>,
    valid: Vec<bool>,
    n_valid: usize,
    streams: Vec<Stream>,
    changes: Vec<SlotChange>,
}

impl ReplayStorage {
    /// A ring of `capacity` slots (observations, including `k - 1` pads and one final
    /// observation per episode) for `space`, with `n_step`-step returns discounted by `gamma`.
    ///
    /// Panics when `capacity` cannot hold a few n-step windows (`capacity <= 2 * (n_step + k)`)
    /// or `n_step == 0`.
    pub fn new(space: &ObsSpace, capacity: usize, n_step: usize, gamma: f32) -> Self {
        Self::with_streams(space, capacity, n_step, gamma, 1)
    }

    /// [`new`](Self::new) with `streams` environment copies writing to their own regions of
    /// `capacity / streams` slots each (the remainder is left unused).
    ///
    /// Panics when a region cannot hold a few n-step windows, or `n_step` or `streams` is 0.
    pub fn with_streams(space: &ObsSpace, capacity: usize, n_step: usize, gamma: f32, streams: usize) -> Self {
        let (kind, stack, slot_len) = match space {
            ObsSpace::Discrete { n } => (ObsKind::OneHot, 1, *n),
            ObsSpace::Box { low, .. } => (ObsKind::F32, 1, low.len()),
            ObsSpace::Pixels { frames, height, width, channels } => {
                (ObsKind::U8, (*frames).max(1), height * width * channels)
            }
        };
        assert!(n_step >= 1, "n_step must be at least 1");
        assert!(streams >= 1, "a replay buffer needs at least one stream");
        let region = capacity / streams;
        assert!(
            region > 2 * (n_step + stack),
            "buffer_size {capacity} too small for n_step {n_step} and {streams} environment copies"
        );
        let capacity = region * streams;
        let (obs_f32, obs_u8) = match kind {
            ObsKind::U8 => (Vec::new(), vec![0u8; capacity * slot_len]),
            _ => (vec![0f32; capacity * slot_len], Vec::new()),
        };
        ReplayStorage {
            capacity,
            region,
            n_step,
            gamma,
            kind,
            stack,
            slot_len,
            obs_f32,
            obs_u8,
            actions: vec![0; capacity],
            rewards: vec![0.0; capacity],
            terminated: vec![false; capacity],
            truncated: vec![false; capacity],
            slots: vec![SlotKind::Empty; capacity],
            valid: vec![false; capacity],
            n_valid: 0,
            streams: (0..streams)
                .map(|k| Stream {
                    start: k * region,
                    cursor: k * region,
                    filled: 0,
                    in_episode: false,
                    current: k * region,
                    episode_steps: 0,
                })
                .collect(),
            // Worst case of one push: an episode start writes `stack + 1` slots, each invalidating up to
            // `stack`, then up to `n_step` windows close.
            changes: Vec::with_capacity((stack + 1) * stack + n_step),
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of sampleable transitions.
    pub fn len(&self) -> usize {
        self.n_valid
    }

    /// True when nothing can be sampled yet.
    pub fn is_empty(&self) -> bool {
        self.n_valid == 0
    }

    /// Slots written so far, over all streams (at most `capacity`).
    pub fn filled(&self) -> usize {
        self.streams.iter().map(|s| s.filled).sum()
    }

    /// Number of streams (environment copies).
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// A sampleable slot drawn uniformly (rejection over the written slots: the ones that are
    /// not transitions, pads, final observations and windows still open, are few). Panics
    /// when nothing can be sampled.
    #[inline]
    pub fn uniform_slot(&self, rng: &mut dyn RngCore) -> usize {
        assert!(self.n_valid > 0, "sampling an empty replay buffer");
        if let [stream] = self.streams.as_slice() {
            loop {
                let i = rng.random_range(0..stream.filled);
                if self.valid[i] {
                    return i;
                }
            }
        }
        // Streams fill at nearly the same pace: a row of `widest` per stream, and a draw beyond
        // a stream's written slots is rejected like an invalid one.
        let (k, widest) = (self.streams.len(), self.streams.iter().map(|s| s.filled).max().unwrap_or(0));
        loop {
            let r = rng.random_range(0..k * widest);
            let (stream, offset) = (&self.streams[r % k], r / k);
            if offset < stream.filled && self.valid[stream.start + offset] {
                return stream.start + offset;
            }
        }
    }

    /// Slot `i` moved by `delta` within its stream's region (wrapping there); `|delta|` is at
    /// most a region (an n-step window or a frame stack), so one wrap suffices and one stream
    /// costs no division.
    #[inline]
    fn shifted(&self, i: usize, delta: isize) -> usize {
        let region = self.region as isize;
        let start = if self.streams.len() == 1 { 0 } else { i - i % self.region };
        let j = (i - start) as isize + delta;
        let j = if j < 0 {
            j + region
        } else if j >= region {
            j - region
        } else {
            j
        };
        start + j as usize
    }

    /// Whether slot `i` is a sampleable transition.
    pub fn is_valid(&self, i: usize) -> bool {
        self.valid[i]
    }

    /// Slots whose sampleability changed during the last [`push`](Self::push), in order.
    pub fn changes(&self) -> &[SlotChange] {
        &self.changes
    }

    /// A batch of `batch_size` rows shaped for this storage's observations.
    pub fn new_batch(&self, batch_size: usize) -> Batch {
        let obs_len = self.stack * self.slot_len * batch_size;
        let obs = || match self.kind {
            ObsKind::U8 => ObsBatch::U8(vec![0; obs_len]),
            _ => ObsBatch::F32(vec![0.0; obs_len]),
        };
        Batch {
            obs: obs(),
            actions: vec![0; batch_size],
            returns: vec![0.0; batch_size],
            discounts: vec![0.0; batch_size],
            terminated: vec![0.0; batch_size],
            next_obs: obs(),
            weights: vec![1.0; batch_size],
            indices: vec![0; batch_size],
        }
    }

    /// Stores one step (see [`Replay::push`]); [`changes`](Self::changes) then lists the slots
    /// that became sampleable or were overwritten.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        stream: usize,
        obs: Obs<'_>,
        action: usize,
        reward: f32,
        next_obs: Obs<'_>,
        terminated: bool,
        truncated: bool,
    ) {
        self.changes.clear();
        if !self.streams[stream].in_episode {
            self.start_episode(stream, obs);
        } else {
            debug_assert!(self.matches_current(stream, obs), "obs differs from the previous next_obs");
        }
        let s = self.streams[stream].current;
        self.actions[s] = action as u32;
        self.rewards[s] = reward;
        self.terminated[s] = terminated;
        self.truncated[s] = truncated;
        self.slots[s] = SlotKind::Step;
        self.streams[stream].episode_steps += 1;
        self.streams[stream].current = self.write_slot(stream, next_obs, SlotKind::Obs, self.stack - 1);

        // The step at `s` completes the n-step window of the transition n - 1 slots back, or, at
        // the episode's end, of every transition whose window it cuts short.
        let n = self.n_step;
        let episode_steps = self.streams[stream].episode_steps;
        if terminated || truncated {
            for j in 0..n.min(episode_steps) {
                self.set_valid(self.shifted(s, -(j as isize)), true);
            }
            self.streams[stream].in_episode = false;
            self.streams[stream].episode_steps = 0;
        } else if episode_steps >= n {
            self.set_valid(self.shifted(s, -(n as isize - 1)), true);
        }
    }

    fn start_episode(&mut self, stream: usize, obs: Obs<'_>) {
        for frame in 0..self.stack - 1 {
            self.write_slot(stream, obs, SlotKind::Pad, frame);
        }
        let current = self.write_slot(stream, obs, SlotKind::Obs, self.stack - 1);
        let st = &mut self.streams[stream];
        st.current = current;
        st.in_episode = true;
        st.episode_steps = 0;
    }

    /// Writes frame `frame` of `obs` (the whole vector when unstacked) at the stream's cursor.
    fn write_slot(&mut self, stream: usize, obs: Obs<'_>, kind: SlotKind, frame: usize) -> usize {
        let s = self.streams[stream].cursor;
        // Overwriting the oldest slot also breaks the frame history of the k - 1 slots after it.
        for d in 0..self.stack {
            let t = self.shifted(s, d as isize);
            if self.valid[t] {
                self.set_valid(t, false);
            }
        }
        let len = self.slot_len;
        match (self.kind, obs) {
            (ObsKind::F32, Obs::F32(x)) => {
                assert_eq!(x.len(), len, "observation length");
                self.obs_f32[s * len..(s + 1) * len].copy_from_slice(x);
            }
            (ObsKind::OneHot, Obs::Index(i)) => {
                let row = &mut self.obs_f32[s * len..(s + 1) * len];
                row.fill(0.0);
                row[i] = 1.0;
            }
            (ObsKind::OneHot, Obs::F32(x)) => {
                assert_eq!(x.len(), len, "observation length");
                self.obs_f32[s * len..(s + 1) * len].copy_from_slice(x);
            }
            (ObsKind::U8, Obs::U8(x)) => {
                assert_eq!(x.len(), len * self.stack, "observation length");
                self.obs_u8[s * len..(s + 1) * len].copy_from_slice(&x[frame * len..(frame + 1) * len]);
            }
            (kind, obs) => panic!("observation {obs:?} does not match the replay's {kind:?} space"),
        }
        self.slots[s] = kind;
        self.terminated[s] = false;
        self.truncated[s] = false;
        let next = self.shifted(s, 1);
        let st = &mut self.streams[stream];
        st.cursor = next;
        st.filled = (st.filled + 1).min(self.region);
        s
    }

    fn matches_current(&self, stream: usize, obs: Obs<'_>) -> bool {
        let (s, len) = (self.streams[stream].current, self.slot_len);
        match obs {
            Obs::F32(x) => self.obs_f32[s * len..(s + 1) * len] == *x,
            Obs::U8(x) => self.obs_u8[s * len..(s + 1) * len] == x[(self.stack - 1) * len..],
            Obs::Index(i) => self.obs_f32[s * len + i] == 1.0,
        }
    }

    fn set_valid(&mut self, i: usize, valid: bool) {
        debug_assert!(!valid || self.slots[i] == SlotKind::Step);
        if self.valid[i] != valid {
            self.valid[i] = valid;
            if valid {
                self.n_valid += 1;
            } else {
                self.n_valid -= 1;
            }
            self.changes.push((i, valid));
        }
    }

    /// Ends the episode in progress (see [`Replay::cut_episode`]); [`changes`](Self::changes)
    /// then lists the transitions this made sampleable.
    pub fn cut_episode(&mut self) {
        self.changes.clear();
        for k in 0..self.streams.len() {
            let Stream { in_episode, current, episode_steps, .. } = self.streams[k];
            if !in_episode {
                continue;
            }
            if episode_steps > 0 {
                // The last step is the slot just before the latest observation.
                let s = self.shifted(current, -1);
                self.truncated[s] = true;
                for j in 0..self.n_step.min(episode_steps) {
                    self.set_valid(self.shifted(s, -(j as isize)), true);
                }
            }
            self.streams[k].in_episode = false;
            self.streams[k].episode_steps = 0;
        }
    }

    /// Appends the ring's contents to `out` under `replay.*`.
    pub fn state(&self, out: &mut State) {
        match self.kind {
            ObsKind::U8 => out.put_slice("replay.obs", &self.obs_u8),
            _ => out.put_slice("replay.obs", &self.obs_f32),
        }
        let actions: Vec<i64> = self.actions.iter().map(|&a| a as i64).collect();
        out.put_slice("replay.actions", &actions);
        out.put_slice("replay.rewards", &self.rewards);
        let bytes = |v: &[bool]| -> Vec<u8> { v.iter().map(|&b| b as u8).collect() };
        out.put_slice("replay.terminated", &bytes(&self.terminated));
        out.put_slice("replay.truncated", &bytes(&self.truncated));
        out.put_slice("replay.valid", &bytes(&self.valid));
        let slots: Vec<u8> = self.slots.iter().map(|k| *k as u8).collect();
        out.put_slice("replay.slots", &slots);
        // One stream's meta is the layout of a buffer without streams: 4 + 5 values.
        let mut meta = vec![self.capacity as i64, self.slot_len as i64, self.stack as i64, self.n_valid as i64];
        for st in &self.streams {
            meta.extend([
                st.cursor as i64,
                st.filled as i64,
                st.in_episode as i64,
                st.current as i64,
                st.episode_steps as i64,
            ]);
        }
        out.put_ints("replay.meta", &meta);
    }

    /// Restores what [`state`](Self::state) wrote; `n_step` and `gamma` stay this storage's own
    /// (returns are computed when sampling).
    pub fn load_state(&mut self, state: &State) -> anyhow::Result<()> {
        let meta = state.ints("replay.meta")?;
        anyhow::ensure!(meta.len() >= 9 && (meta.len() - 4) % 5 == 0, "checkpoint entry `replay.meta` is malformed");
        let streams = (meta.len() - 4) / 5;
        anyhow::ensure!(
            streams == self.streams.len(),
            "the checkpoint's replay buffer is fed by {streams} environment copies, this config's by {}: env.num_envs must stay the same",
            self.streams.len()
        );
        anyhow::ensure!(
            meta[0] as usize == self.capacity && meta[1] as usize == self.slot_len && meta[2] as usize == self.stack,
            "the checkpoint's replay buffer has {} slots of {}x{} values, this config's has {} of {}x{}: replay.size and the environment must stay the same",
            meta[0],
            meta[2],
            meta[1],
            self.capacity,
            self.stack,
            self.slot_len
        );
        match self.kind {
            ObsKind::U8 => state.fill("replay.obs", &mut self.obs_u8)?,
            _ => state.fill("replay.obs", &mut self.obs_f32)?,
        }
        let mut actions = vec![0i64; self.capacity];
        state.fill("replay.actions", &mut actions)?;
        for (a, v) in self.actions.iter_mut().zip(actions) {
            *a = v as u32;
        }
        state.fill("replay.rewards", &mut self.rewards)?;
        let mut bytes = vec![0u8; self.capacity];
        for (name, dst) in [
            ("replay.terminated", &mut self.terminated),
            ("replay.truncated", &mut self.truncated),
            ("replay.valid", &mut self.valid),
        ] {
            state.fill(name, &mut bytes)?;
            for (d, &b) in dst.iter_mut().zip(&bytes) {
                *d = b != 0;
            }
        }
        state.fill("replay.slots", &mut bytes)?;
        for (d, &b) in self.slots.iter_mut().zip(&bytes) {
            *d = match b {
                0 => SlotKind::Empty,
                1 => SlotKind::Pad,
                2 => SlotKind::Obs,
                3 => SlotKind::Step,
                other => anyhow::bail!("checkpoint entry `replay.slots` holds an unknown slot kind {other}"),
            };
        }
        self.n_valid = meta[3] as usize;
        let region = self.region;
        let mut in_regions = true;
        for (st, m) in self.streams.iter_mut().zip(meta[4..].chunks_exact(5)) {
            st.cursor = m[0] as usize;
            st.filled = m[1] as usize;
            st.in_episode = m[2] != 0;
            st.current = m[3] as usize;
            st.episode_steps = m[4] as usize;
            let inside = |i: usize| (st.start..st.start + region).contains(&i);
            in_regions &= inside(st.cursor) && inside(st.current) && st.filled <= region;
        }
        let consistent = self.n_valid == self.valid.iter().filter(|&&v| v).count()
            && in_regions
            && self.valid.iter().zip(&self.slots).all(|(&v, &k)| !v || k == SlotKind::Step);
        anyhow::ensure!(
            consistent,
            "checkpoint entry `replay.meta` disagrees with the stored slots (a damaged checkpoint)"
        );
        self.changes.clear();
        Ok(())
    }

    /// Writes transition `i` (a valid slot) into row `row` of `batch`; weights are left alone.
    pub fn write_row(&self, i: usize, row: usize, batch: &mut Batch) {
        debug_assert!(self.valid[i], "slot {i} is not a sampleable transition");
        let (mut ret, mut discount, mut m, mut terminated) = (0.0f32, 1.0f32, 0, false);
        while m < self.n_step {
            let t = self.shifted(i, m as isize);
            ret += discount * self.rewards[t];
            discount *= self.gamma;
            m += 1;
            if self.terminated[t] {
                terminated = true;
                break;
            }
            if self.truncated[t] {
                break;
            }
        }
        batch.actions[row] = self.actions[i] as i64;
        batch.returns[row] = ret;
        batch.discounts[row] = discount;
        batch.terminated[row] = terminated as u8 as f32;
        batch.indices[row] = i;
        self.write_stack(i, row, &mut batch.obs);
        self.write_stack(self.shifted(i, m as isize), row, &mut batch.next_obs);
    }

    /// Starts loading what [`write_row`](Self::write_row) reads for slot `i` of a vector
    /// observation (its step, its observation and the next one), so that the cache misses of a
    /// batch's rows overlap. Pixel rows are kilobytes each and left to the copy itself.
    pub fn prefetch_row(&self, i: usize) {
        if self.kind == ObsKind::U8 {
            return;
        }
        let next = self.shifted(i, 1);
        prefetch(self.obs_f32.as_ptr().wrapping_add(i * self.slot_len));
        prefetch(self.obs_f32.as_ptr().wrapping_add((next + 1) * self.slot_len - 1));
        prefetch(self.rewards.as_ptr().wrapping_add(i));
        prefetch(self.actions.as_ptr().wrapping_add(i));
        prefetch(self.terminated.as_ptr().wrapping_add(i));
        prefetch(self.truncated.as_ptr().wrapping_add(i));
    }

    /// Copies the observation ending at slot `i` (its `k - 1` predecessors and itself).
    fn write_stack(&self, i: usize, row: usize, out: &mut ObsBatch) {
        let (len, k) = (self.slot_len, self.stack);
        match out {
            ObsBatch::F32(out) => {
                out[row * len..(row + 1) * len].copy_from_slice(&self.obs_f32[i * len..(i + 1) * len]);
            }
            ObsBatch::U8(out) => {
                let row_out = &mut out[row * k * len..(row + 1) * k * len];
                for (f, dst) in row_out.chunks_exact_mut(len).enumerate() {
                    let s = self.shifted(i, f as isize + 1 - k as isize);
                    dst.copy_from_slice(&self.obs_u8[s * len..(s + 1) * len]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vec_space(dim: usize) -> ObsSpace {
        ObsSpace::Box { low: vec![0.0; dim], high: vec![1.0; dim] }
    }

    /// Runs episodes of the given lengths (the last step terminates or truncates) with
    /// observation `[t]` at step `t` of episode `e` encoded as `100 e + t` and reward `t + 1`.
    fn fill(storage: &mut ReplayStorage, episodes: &[(usize, bool)]) {
        for (e, &(len, terminal)) in episodes.iter().enumerate() {
            for t in 0..len {
                let o = [(100 * e + t) as f32];
                let o2 = [(100 * e + t + 1) as f32];
                let last = t + 1 == len;
                storage.push(
                    0,
                    Obs::F32(&o),
                    t % 2,
                    (t + 1) as f32,
                    Obs::F32(&o2),
                    last && terminal,
                    last && !terminal,
                );
            }
        }
    }

    fn row(storage: &ReplayStorage, i: usize) -> (f32, i64, f32, f32, f32, f32) {
        let mut b = storage.new_batch(1);
        storage.write_row(i, 0, &mut b);
        let (ObsBatch::F32(o), ObsBatch::F32(o2)) = (&b.obs, &b.next_obs) else { unreachable!() };
        (o[0], b.actions[0], b.returns[0], b.discounts[0], b.terminated[0], o2[0])
    }

    fn valid_rows(storage: &ReplayStorage) -> Vec<(f32, i64, f32, f32, f32, f32)> {
        (0..storage.capacity()).filter(|&i| storage.is_valid(i)).map(|i| row(storage, i)).collect()
    }

    #[test]
    fn one_step_transitions() {
        let mut s = ReplayStorage::new(&vec_space(1), 32, 1, 0.5);
        fill(&mut s, &[(3, true)]);
        // Slots: o0 o1 o2 o3(final): three transitions.
        assert_eq!(s.len(), 3);
        assert_eq!(
            valid_rows(&s),
            vec![(0.0, 0, 1.0, 0.5, 0.0, 1.0), (1.0, 1, 2.0, 0.5, 0.0, 2.0), (2.0, 0, 3.0, 0.5, 1.0, 3.0)]
        );
    }

    #[test]
    fn n_step_returns_across_episode_ends() {
        let gamma = 0.5f32;
        let mut s = ReplayStorage::new(&vec_space(1), 64, 3, gamma);
        // Episode 0: 4 steps then terminated; episode 1: 2 steps then truncated.
        fill(&mut s, &[(4, true), (2, false)]);
        let rows = valid_rows(&s);
        // Rewards 1, 2, 3, 4 in episode 0.
        let g = |rs: &[f32]| rs.iter().enumerate().map(|(k, r)| gamma.powi(k as i32) * r).sum::<f32>();
        assert_eq!(
            rows,
            vec![
                // t = 0: full window, bootstrap from o_3 with gamma^3.
                (0.0, 0, g(&[1.0, 2.0, 3.0]), 0.125, 0.0, 3.0),
                // t = 1: window reaches the terminal step: no bootstrap.
                (1.0, 1, g(&[2.0, 3.0, 4.0]), 0.125, 1.0, 4.0),
                (2.0, 0, g(&[3.0, 4.0]), 0.25, 1.0, 4.0),
                (3.0, 1, 4.0, 0.5, 1.0, 4.0),
                // Episode 1, truncated after 2 steps: bootstrap from the truncation observation.
                (100.0, 0, g(&[1.0, 2.0]), 0.25, 0.0, 102.0),
                (101.0, 1, 2.0, 0.5, 0.0, 102.0),
            ]
        );
    }

    #[test]
    fn transitions_wait_for_their_window() {
        let mut s = ReplayStorage::new(&vec_space(1), 64, 3, 0.9);
        let o = [0.0f32];
        for t in 0..4 {
            s.push(0, Obs::F32(&o), 0, 1.0, Obs::F32(&o), false, false);
            assert_eq!(s.len(), (t + 1usize).saturating_sub(2));
        }
    }

    #[test]
    fn ring_overwrites_oldest_transitions() {
        let mut s = ReplayStorage::new(&vec_space(1), 10, 1, 0.9);
        // 3 episodes of 3 steps: 12 slots in a ring of 10.
        fill(&mut s, &[(3, true), (3, true), (3, true)]);
        let mut rows: Vec<f32> = valid_rows(&s).iter().map(|r| r.0).collect();
        rows.sort_by(f32::total_cmp);
        // Slots 0 and 1 (o_0, o_1 of episode 0) were overwritten by episode 2's last two slots.
        assert_eq!(rows, vec![2.0, 100.0, 101.0, 102.0, 200.0, 201.0, 202.0]);
        assert_eq!(s.len(), 7);
    }

    /// Step `t` of episode `e` (of `len` steps) as `fill` makes it, from copy `stream` (into
    /// that stream, or the only one of a one-stream buffer), its observations offset by
    /// `1000 * stream`.
    fn push_step(storage: &mut ReplayStorage, stream: usize, e: usize, t: usize, len: usize, terminal: bool) {
        let base = (1000 * stream + 100 * e + t) as f32;
        let last = t + 1 == len;
        let stream = stream.min(storage.streams() - 1);
        storage.push(
            stream,
            Obs::F32(&[base]),
            t % 2,
            (t + 1) as f32,
            Obs::F32(&[base + 1.0]),
            last && terminal,
            last && !terminal,
        );
    }

    #[test]
    fn streams_keep_their_episodes_apart_as_separate_buffers_would() {
        // Two copies' episodes pushed interleaved, into one buffer of two streams and into two
        // buffers of one each: the same transitions, n-step windows and ring overwrites.
        for (capacity, episodes) in [(128, vec![(4, true), (2, false), (5, true)]), (20, vec![(3, true); 4])] {
            let mut shared = ReplayStorage::with_streams(&vec_space(1), capacity, 3, 0.5, 2);
            let mut alone = [
                ReplayStorage::new(&vec_space(1), capacity / 2, 3, 0.5),
                ReplayStorage::new(&vec_space(1), capacity / 2, 3, 0.5),
            ];
            // Stream 1 runs its episodes in the opposite order, so the streams end episodes at
            // different pushes.
            let order = |k: usize| -> Vec<(usize, (usize, bool))> {
                let mut v: Vec<_> = episodes.iter().copied().enumerate().collect();
                if k == 1 {
                    v.reverse();
                }
                v
            };
            let steps = |k: usize| -> Vec<(usize, usize, usize, bool)> {
                order(k).into_iter().flat_map(|(e, (len, term))| (0..len).map(move |t| (e, t, len, term))).collect()
            };
            let (s0, s1) = (steps(0), steps(1));
            for j in 0..s0.len().max(s1.len()) {
                for (k, steps) in [(0, &s0), (1, &s1)] {
                    if let Some(&(e, t, len, term)) = steps.get(j) {
                        push_step(&mut shared, k, e, t, len, term);
                        push_step(&mut alone[k], k, e, t, len, term);
                    }
                }
            }
            let mut ours = valid_rows(&shared);
            let mut theirs: Vec<_> = alone.iter().flat_map(valid_rows).collect();
            let key = |r: &(f32, i64, f32, f32, f32, f32)| r.0;
            ours.sort_by(|a, b| key(a).total_cmp(&key(b)));
            theirs.sort_by(|a, b| key(a).total_cmp(&key(b)));
            assert_eq!(ours, theirs, "capacity {capacity}");
            assert_eq!(shared.len(), alone[0].len() + alone[1].len());

            // A cut closes every stream's episode; a checkpoint keeps the streams.
            shared.cut_episode();
            let mut state = State::new();
            shared.state(&mut state);
            let mut restored = ReplayStorage::with_streams(&vec_space(1), capacity, 3, 0.5, 2);
            restored.load_state(&state).unwrap();
            assert_eq!(valid_rows(&restored), valid_rows(&shared));
            let mut three = ReplayStorage::with_streams(&vec_space(1), 3 * capacity, 3, 0.5, 3);
            let err = three.load_state(&state).unwrap_err().to_string();
            assert!(err.contains("env.num_envs must stay the same"), "{err}");
        }
    }

    #[test]
    fn uniform_draws_reach_every_stream() {
        use rand::SeedableRng;
        let mut s = ReplayStorage::with_streams(&vec_space(1), 300, 1, 0.9, 3);
        for t in 0..40 {
            for k in 0..3 {
                push_step(&mut s, k, 0, t, 40, false);
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut per_stream = [0usize; 3];
        for _ in 0..3000 {
            let i = s.uniform_slot(&mut rng);
            assert!(s.is_valid(i));
            per_stream[i / 100] += 1;
        }
        // 39 transitions per stream: a third of the draws each, within sampling noise.
        assert!(per_stream.iter().all(|&n| (850..1150).contains(&n)), "{per_stream:?}");
    }

    #[test]
    fn one_hot_discrete_observations() {
        let mut s = ReplayStorage::new(&ObsSpace::Discrete { n: 4 }, 16, 1, 0.9);
        s.push(0, Obs::Index(2), 1, 0.0, Obs::Index(3), true, false);
        let mut b = s.new_batch(1);
        s.write_row(0, 0, &mut b);
        assert_eq!(b.obs, ObsBatch::F32(vec![0.0, 0.0, 1.0, 0.0]));
        assert_eq!(b.next_obs, ObsBatch::F32(vec![0.0, 0.0, 0.0, 1.0]));
    }

    /// A 2x2 frame filled with `v`.
    fn frame(v: u8) -> [u8; 4] {
        [v; 4]
    }

    /// The stacked observation an environment would return: frames `vs`, oldest first.
    fn stacked(vs: &[u8]) -> Vec<u8> {
        vs.iter().flat_map(|&v| frame(v)).collect()
    }

    #[test]
    fn frame_stacks_rebuilt_without_leaking_across_episodes() {
        let space = ObsSpace::Pixels { frames: 4, height: 2, width: 2, channels: 1 };
        let mut s = ReplayStorage::new(&space, 64, 1, 0.99);
        // Episode A: reset stack pads with zeros (as SB3's VecFrameStack), frames 1..=5.
        // Episode B: reset stack repeats its first frame (as Gymnasium's FrameStackObservation).
        let episodes: [(Vec<u8>, Vec<u8>); 2] =
            [(vec![0, 0, 0, 1], vec![2, 3, 4, 5]), (vec![11, 11, 11, 11], vec![12, 13])];
        let mut expected = Vec::new();
        for (reset, next_frames) in &episodes {
            let mut obs = reset.clone();
            for (t, &f) in next_frames.iter().enumerate() {
                let mut next = obs[1..].to_vec();
                next.push(f);
                let last = t + 1 == next_frames.len();
                s.push(0, Obs::U8(&stacked(&obs)), 0, 1.0, Obs::U8(&stacked(&next)), last, false);
                expected.push((stacked(&obs), stacked(&next)));
                obs = next;
            }
        }
        // Episode A uses 3 pads + 5 observations; only newest frames are stored per slot.
        assert_eq!(s.filled(), (3 + 5) + (3 + 3));
        let mut b = s.new_batch(1);
        let mut got = Vec::new();
        for i in (0..s.filled()).filter(|&i| s.is_valid(i)) {
            s.write_row(i, 0, &mut b);
            let (ObsBatch::U8(o), ObsBatch::U8(o2)) = (&b.obs, &b.next_obs) else { unreachable!() };
            got.push((o.clone(), o2.clone()));
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn overwritten_frame_history_invalidates_dependents() {
        let space = ObsSpace::Pixels { frames: 2, height: 1, width: 1, channels: 1 };
        let mut s = ReplayStorage::new(&space, 8, 1, 0.99);
        let mut obs = vec![0u8, 1];
        for v in 2..12u8 {
            let next = vec![obs[1], v];
            s.push(0, Obs::U8(&obs), 0, 0.0, Obs::U8(&next), false, false);
            obs = next;
        }
        // 1 pad + 11 observations written to 8 slots: the oldest surviving slot holds frame 4, so
        // the first rebuildable stack is (4, 5), and the newest observation has no step yet.
        let mut b = s.new_batch(1);
        let mut firsts = Vec::new();
        for i in (0..8).filter(|&i| s.is_valid(i)) {
            s.write_row(i, 0, &mut b);
            let ObsBatch::U8(o) = &b.obs else { unreachable!() };
            assert_eq!(o[1], o[0] + 1, "stack {o:?} mixes frames");
            firsts.push(o[0]);
        }
        firsts.sort();
        assert_eq!(firsts, vec![4, 5, 6, 7, 8, 9]);
    }
}
