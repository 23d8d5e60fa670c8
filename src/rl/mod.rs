//! Reinforcement-learning building blocks used by the `rl` objective: environments first;
//! replay buffers, networks and agents follow the same one-folder-per-concept layout.

pub mod agent;
pub mod batched;
pub mod env;
pub mod net;
pub mod record;
pub mod replay;
pub mod schedule;
pub mod state;
pub mod train;
