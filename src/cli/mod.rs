//! Command-line interface: clap types and one file per subcommand.

use clap::{Parser, Subcommand};

mod best;
mod enqueue;
mod eval;
mod export;
mod ls;
mod report;
mod run;
mod show;
mod train;

/// Storage used when neither the study file nor `--storage` names one (Optuna's URL form).
pub const DEFAULT_STORAGE: &str = "sqlite:///tune.db";

/// Hyperparameter search for value-based deep RL, with Optuna-compatible studies.
#[derive(Debug, Parser)]
#[command(name = "tune", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run (or resume) the study described by a YAML file.
    Run(run::Args),
    /// List the studies in a storage.
    Ls(ls::Args),
    /// Show a study's trials.
    Show(show::Args),
    /// Print the best trial of a study.
    Best(best::Args),
    /// Write the best trial's parameters into the objective's base config.
    Export(export::Args),
    /// Add trials with fixed parameters; they run before newly sampled ones.
    Enqueue(enqueue::Args),
    /// Train one agent from a trainer config and write a run folder.
    Train(train::Args),
    /// Evaluate the agent of a run folder (mean ± std return, optional GIF).
    Eval(eval::Args),
    /// Write PNG plots and a Markdown summary of a study into a folder.
    Report(report::Args),
}

/// Parses the process arguments and runs the subcommand; returns the exit code.
pub fn run() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    crate::fault::check_env()?;
    match cli.command {
        Command::Run(a) => run::run(a),
        Command::Ls(a) => ls::run(a),
        Command::Show(a) => show::run(a),
        Command::Best(a) => best::run(a),
        Command::Export(a) => export::run(a),
        Command::Enqueue(a) => enqueue::run(a),
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Report(a) => report::run(a),
    }
}

/// Study system attribute holding the objective's base config (for `tune export`).
pub const BASE_CONFIG_ATTR: &str = "tune:base_config";
/// Study system attribute holding the path of the study file that created the study.
pub const STUDY_FILE_ATTR: &str = "tune:study_file";
/// Study system attribute holding the study seed.
pub const SEED_ATTR: &str = "tune:seed";

/// The storage a study file runs on: `--storage`, else the file's `storage:`, else the
/// `TUNE_STORAGE` environment variable, else `sqlite:///tune.db`.
pub(crate) fn resolve_storage(flag: Option<&str>, file: Option<&str>) -> String {
    pick_storage(flag, file, std::env::var("TUNE_STORAGE").ok())
}

fn pick_storage(flag: Option<&str>, file: Option<&str>, env: Option<String>) -> String {
    flag.map(str::to_string)
        .or_else(|| file.map(str::to_string))
        .or_else(|| env.filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_STORAGE.to_string())
}

#[cfg(test)]
mod storage_tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_the_study_file_then_tune_storage_then_tune_db() {
        let pg = || Some("postgresql://tune@env/db".to_string());
        assert_eq!(pick_storage(Some("postgresql://a@h/x"), Some("sqlite:///f.db"), pg()), "postgresql://a@h/x");
        assert_eq!(pick_storage(None, Some("postgresql://b@h/y"), pg()), "postgresql://b@h/y");
        assert_eq!(pick_storage(None, None, pg()), "postgresql://tune@env/db");
        assert_eq!(pick_storage(None, None, Some("  ".into())), DEFAULT_STORAGE);
        assert_eq!(pick_storage(None, None, None), DEFAULT_STORAGE);
    }
}

/// Opens a storage for the read-only subcommands, refusing to create a new file (or a schema
/// in an empty PostgreSQL database).
fn open_existing(url: &str) -> anyhow::Result<std::sync::Arc<dyn crate::storage::Storage>> {
    if crate::storage::postgres::is_postgres_url(url) {
        return Ok(std::sync::Arc::new(crate::storage::PostgresStorage::open(url, false)?));
    }
    let path = url.strip_prefix("sqlite:///").unwrap_or(url);
    if url != "memory" && !std::path::Path::new(path).exists() {
        return Err(crate::error::InputError::new(format!(
            "storage file {path} does not exist; run a study first (`tune run FILE.yaml`) or pass --storage"
        ))
        .into());
    }
    Ok(crate::storage::open(url)?)
}

/// Loads a study for the read-only subcommands; an unknown name is an input error that lists
/// the studies the storage holds.
fn load_study(storage: &str, name: &str) -> anyhow::Result<crate::study::Study> {
    let st = open_existing(storage)?;
    if st.get_study_id_from_name(name)?.is_none() {
        let names: Vec<String> = st.get_all_studies()?.into_iter().map(|s| format!("`{}`", s.name)).collect();
        let holds = if names.is_empty() { "no study yet".to_string() } else { names.join(", ") };
        let storage = crate::storage::postgres::mask(storage);
        return Err(crate::error::InputError::new(format!(
            "no study named `{name}` in {storage}; it holds {holds} (`tune ls --storage {storage}` lists them)"
        ))
        .into());
    }
    crate::study::Study::load(
        st,
        name,
        std::sync::Arc::new(crate::sampler::RandomSampler::new(0)),
        std::sync::Arc::new(crate::pruner::NopPruner),
        0,
    )
}

/// Formats a JSON value compactly for tables.
pub(crate) fn fmt_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.6}").trim_end_matches('0').trim_end_matches('.').to_string(),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// Formats a trial value for tables.
pub(crate) fn fmt_f64(v: Option<f64>) -> String {
    match v {
        Some(v) if v.abs() >= 1e5 || (v != 0.0 && v.abs() < 1e-3) => format!("{v:.4e}"),
        Some(v) => format!("{v:.6}"),
        None => "-".into(),
    }
}
