//! Study reports (`tune report`): parameter importances so far.

mod fanova;
mod forest;
mod importance;

pub use forest::ForestConfig;
pub use importance::{intersection_search_space, param_importances, Importances};
