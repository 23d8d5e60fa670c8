//! `tune report STUDY -o DIR`: PNG figures (optimisation history, intermediate values,
//! parameter importances) and a Markdown summary with the best configs, written into DIR.

use std::path::PathBuf;

use super::{load_study, DEFAULT_STORAGE};
use crate::report;

/// Arguments of `tune report`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Study name.
    study: String,
    /// Folder to write into (created if missing; files of an earlier report are replaced).
    #[arg(short, long)]
    output: PathBuf,
    /// Storage URL: sqlite:///FILE or postgresql://USER@HOST:PORT/DATABASE (password from
    /// PGPASSWORD or ~/.pgpass).
    #[arg(long, env = "TUNE_STORAGE", hide_env_values = true, default_value = DEFAULT_STORAGE)]
    storage: String,
}

/// Runs the subcommand.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let study = load_study(&a.storage, &a.study)?;
    let written = report::write_report(&study, &a.output, Some(&a.storage))?;
    println!("Wrote the report of `{}` to {}:", a.study, a.output.display());
    for f in &written.files {
        println!("  {}", f.file_name().map_or_else(|| f.display().to_string(), |n| n.to_string_lossy().into_owned()));
    }
    for s in &written.skipped {
        println!("  (not drawn) {s}");
    }
    Ok(0)
}
