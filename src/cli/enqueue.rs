//! `tune enqueue FILE.yaml -p name=value ...`: add a WAITING trial with fixed parameters to
//! the file's study (created if needed); it runs before newly sampled trials.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use crate::spec::StudySpec;
use crate::study::Study;

/// Arguments of `tune enqueue`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The study file (YAML).
    file: PathBuf,
    /// A fixed parameter, `dotted.name=value` (value in YAML syntax: 0.01, adam, [64, 64]).
    #[arg(short, long = "param", value_name = "NAME=VALUE", required = true)]
    params: Vec<String>,
    /// Storage URL, overriding the file's `storage` and TUNE_STORAGE.
    #[arg(long)]
    storage: Option<String>,
}

/// Runs the subcommand.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let spec = StudySpec::load(&a.file)?;
    let mut params = BTreeMap::new();
    for p in &a.params {
        let (name, raw) =
            p.split_once('=').ok_or_else(|| crate::input_err!("`{p}`: expected NAME=VALUE, e.g. -p agent.lr=0.001"))?;
        let Some(ps) = spec.params.iter().find(|ps| ps.name == name) else {
            let known: Vec<&str> = spec.params.iter().map(|ps| ps.name.as_str()).collect();
            return Err(crate::input_err!(
                "`{name}` is not in the search space of {}; known: {}",
                a.file.display(),
                known.join(", ")
            ));
        };
        let value: Value = serde_norway::from_str(raw).map_err(|e| crate::input_err!("`{p}`: {e}"))?;
        let x = ps.distribution.to_internal(&value).map_err(|e| crate::input_err!("`{name}`: {e}"))?;
        if !ps.distribution.contains(x) {
            return Err(crate::input_err!("`{name}`: {raw} lies outside its range in {}", a.file.display()));
        }
        params.insert(name.to_string(), ps.distribution.to_external(x));
    }
    let url = super::resolve_storage(a.storage.as_deref(), spec.storage.as_deref());
    let storage = crate::storage::open(&url)?;
    spec.check_against(storage.as_ref())?;
    let study =
        Study::create_or_load(storage, &spec.name, spec.direction, spec.build_sampler(0)?, spec.build_pruner()?, 0)?;
    let t = study.enqueue(&params)?;
    println!("Enqueued trial #{} in `{}` with {}", t.number, spec.name, serde_json::to_string(&params)?);
    Ok(0)
}
