//! `tune`: an Optuna-compatible hyperparameter-search engine for value-based deep RL.
//!
//! Studies, trials, samplers (random, grid, TPE), pruners (median/percentile, successive
//! halving) and storages (in-memory, SQLite in Optuna's schema) are usable as a library; the
//! `tune` binary drives them from YAML study files.

pub mod distribution;
pub mod error;
pub mod fault;
pub mod frozen;
pub mod pruner;
pub mod sampler;
pub mod spec;
pub mod storage;

pub use distribution::Distribution;
pub use error::{InputError, TrialPruned};
pub use frozen::{Direction, FrozenTrial, TrialState};
pub mod objective;
pub mod study;

pub use study::{Outcome, Study, Trial};
pub mod cli;
pub mod executor;
pub mod pbt;
pub mod report;
pub mod rl;

/// Every binary linking `tune` (the CLI, tests, benches) allocates through mimalloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
