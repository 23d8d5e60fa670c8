//! Samplers propose parameter values from the trials seen so far (Optuna's `BaseSampler`).
//! A sampler must only `sample_independent`; multivariate (relative) sampling is optional.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::distribution::Distribution;
use crate::frozen::{Direction, FrozenTrial};

pub mod gp;
mod grid;
pub(crate) mod random;
pub mod tpe;

pub use gp::{GpConfig, GpSampler};
pub use grid::GridSampler;
pub use random::RandomSampler;
pub use tpe::{TpeConfig, TpeSampler};

/// An immutable snapshot of a study, as samplers and pruners see it.
#[derive(Debug, Clone, Copy)]
pub struct StudyView<'a> {
    /// Whether smaller or larger values are better.
    pub direction: Direction,
    /// Every trial of the study, ordered by number (the current one included), as shared
    /// snapshots.
    pub trials: &'a [Arc<FrozenTrial>],
}

/// A search space: parameter name to distribution, ordered by name.
pub type SearchSpace = BTreeMap<String, Distribution>;

/// Proposes parameter values. Values are in the internal representation (categorical: index).
pub trait Sampler: Send + Sync {
    /// The space to sample jointly for `trial`; empty (the default) means no relative sampling.
    fn infer_relative_search_space(&self, _study: &StudyView, _trial: &FrozenTrial) -> SearchSpace {
        SearchSpace::new()
    }

    /// Samples the parameters of `space` jointly. Names it leaves out fall back to
    /// `sample_independent`.
    fn sample_relative(&self, _study: &StudyView, _trial: &FrozenTrial, _space: &SearchSpace) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }

    /// True when the sampler must see every trial of the study even where the pruner narrows
    /// the view ([`crate::pruner::Pruner::sampler_trials`]): the grid sampler, which tracks
    /// the points every trial holds (Optuna's reads the storage directly for this).
    fn sees_whole_study(&self) -> bool {
        false
    }

    /// Samples one parameter on its own.
    fn sample_independent(&self, study: &StudyView, trial: &FrozenTrial, name: &str, dist: &Distribution) -> f64;
}

/// A reproducible generator for one decision of one trial: the same `(seed, number, salt)`
/// always gives the same stream, whatever the order in which parallel workers ask.
pub fn trial_rng(seed: u64, number: i64, salt: &str) -> StdRng {
    // FNV-1a over the salt, then SplitMix64 to spread the bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in salt.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = seed ^ h ^ (number as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

/// Wraps owned trials as the shared snapshots a `StudyView` holds (for tests, benches and
/// callers that build trials themselves).
pub fn shared(trials: &[FrozenTrial]) -> Vec<Arc<FrozenTrial>> {
    trials.iter().cloned().map(Arc::new).collect()
}
