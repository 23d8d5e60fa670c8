//! `tune best STUDY`: the best trial's number, value and parameters.

use super::{fmt_f64, fmt_value, load_study, DEFAULT_STORAGE};

/// Arguments of `tune best`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Study name.
    study: String,
    /// Storage URL: sqlite:///FILE or postgresql://USER@HOST:PORT/DATABASE (password from
    /// PGPASSWORD or ~/.pgpass).
    #[arg(long, env = "TUNE_STORAGE", hide_env_values = true, default_value = DEFAULT_STORAGE)]
    storage: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the subcommand.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let study = load_study(&a.storage, &a.study)?;
    let Some(best) = study.best_trial()? else {
        eprintln!("Study `{}` has no COMPLETE trial yet.", a.study);
        return Ok(1);
    };
    if a.json {
        let out = serde_json::json!({
            "study": a.study, "number": best.number, "value": best.value,
            "params": best.external_params(), "user_attrs": best.user_attrs,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("Best trial of `{}`: #{} with value {}", a.study, best.number, fmt_f64(best.value));
        for (k, v) in best.external_params() {
            println!("  {k}: {}", fmt_value(&v));
        }
    }
    Ok(0)
}
