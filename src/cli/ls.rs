//! `tune ls`: the studies in a storage with their trial counts and best values.

use super::{fmt_f64, open_existing, DEFAULT_STORAGE};
use crate::frozen::TrialState;

/// Arguments of `tune ls`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Storage URL: sqlite:///FILE or postgresql://USER@HOST:PORT/DATABASE (password from
    /// PGPASSWORD or ~/.pgpass).
    #[arg(long, env = "TUNE_STORAGE", hide_env_values = true, default_value = DEFAULT_STORAGE)]
    storage: String,
}

/// Runs the subcommand.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let storage = open_existing(&a.storage)?;
    let studies = storage.get_all_studies()?;
    if studies.is_empty() {
        println!("No studies in {}.", crate::storage::postgres::mask(&a.storage));
        return Ok(0);
    }
    println!(
        "{:<32} {:<9} {:>8} {:>8} {:>7} {:>7} {:>8} {:>14}",
        "study", "direction", "trials", "complete", "pruned", "failed", "running", "best"
    );
    for s in studies {
        let n = |st| s.counts.get(&st).copied().unwrap_or(0);
        let total: usize = s.counts.values().sum();
        println!(
            "{:<32} {:<9} {:>8} {:>8} {:>7} {:>7} {:>8} {:>14}",
            s.name,
            s.direction.as_str().to_lowercase(),
            total,
            n(TrialState::Complete),
            n(TrialState::Pruned),
            n(TrialState::Fail),
            n(TrialState::Running),
            fmt_f64(s.best_value)
        );
    }
    Ok(0)
}
