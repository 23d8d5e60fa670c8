//! `tune run FILE.yaml`: run or resume a study until it has `n_trials` finished trials.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{show, BASE_CONFIG_ATTR, SEED_ATTR, STUDY_FILE_ATTR};
use crate::executor::{install_ctrlc, run_study, ProgressMode, RunOptions};
use crate::objective::{BuildContext, ObjectiveSpec};
use crate::spec::{sample_config, StudySpec};
use crate::study::Study;

/// Arguments of `tune run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The study file (YAML).
    file: PathBuf,
    /// Storage URL, overriding the file's `storage` and TUNE_STORAGE (default sqlite:///tune.db);
    /// postgresql://USER@HOST:PORT/DATABASE runs one study from many machines.
    #[arg(long)]
    storage: Option<String>,
    /// Total number of finished trials to reach, overriding the file's `n_trials`.
    #[arg(long)]
    n_trials: Option<u64>,
    /// CPU trials to run at once in this process, overriding `parallelism.jobs`.
    #[arg(long, short)]
    jobs: Option<usize>,
    /// Stop starting trials after this many seconds, overriding `timeout`.
    #[arg(long)]
    timeout: Option<f64>,
    /// One line per finished trial, even on a terminal.
    #[arg(long)]
    plain: bool,
    /// No progress output, only the final summary.
    #[arg(long, short)]
    quiet: bool,
}

/// Runs the subcommand.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let spec = StudySpec::load(&a.file)?;
    if a.timeout.is_some_and(|t| !(t > 0.0 && t <= crate::spec::MAX_SECONDS)) {
        return Err(crate::input_err!(
            "--timeout must be a positive number of seconds, at most {:e}",
            crate::spec::MAX_SECONDS
        ));
    }
    if a.jobs.is_some_and(|j| !(1..=crate::spec::MAX_JOBS).contains(&j)) {
        return Err(crate::input_err!("--jobs must be from 1 to {}", crate::spec::MAX_JOBS));
    }
    if matches!(spec.objective, ObjectiveSpec::Rl(_)) {
        // Trainers run on these devices: a missing GPU is the file's mistake, found before any write.
        for (i, d) in spec.parallelism.devices.iter().enumerate() {
            crate::rl::train::parse_device(d).map_err(|e| {
                crate::input_err!(
                    "{}: parallelism.devices[{i}]: {e}; list only devices this machine has (`nvidia-smi -L`), or remove `devices` to train on the config's device",
                    a.file.display()
                )
            })?;
        }
    }
    let url = super::resolve_storage(a.storage.as_deref(), spec.storage.as_deref());
    let storage = crate::storage::open(&url)?;
    spec.check_against(storage.as_ref())?;

    // The seed: the file's, else the one stored when the study was created, else a fresh one.
    let stored_seed = match storage.get_study_id_from_name(&spec.name)? {
        Some(id) => storage.get_study_system_attrs(id)?.get(SEED_ATTR).and_then(Value::as_u64),
        None => None,
    };
    let seed = spec.seed.or(stored_seed).unwrap_or_else(|| rand::random::<u32>() as u64);
    let ctx = BuildContext { base_dir: spec.base_dir(), log_dir: PathBuf::from("tune-logs").join(&spec.name) };
    let objective = spec.objective.build(&ctx)?;
    let study = Study::create_or_load(
        storage.clone(),
        &spec.name,
        spec.direction,
        spec.build_sampler(seed)?,
        spec.build_pruner()?,
        seed,
    )?;
    storage.set_study_system_attr(study.study_id(), SEED_ATTR, &Value::from(seed))?;
    storage.set_study_system_attr(study.study_id(), BASE_CONFIG_ATTR, objective.base_config())?;
    storage.set_study_system_attr(study.study_id(), STUDY_FILE_ATTR, &Value::from(a.file.display().to_string()))?;

    let jobs = a.jobs.unwrap_or(spec.parallelism.jobs);
    let opts = RunOptions {
        n_trials: a.n_trials.or(spec.n_trials),
        timeout: a.timeout.or(spec.timeout).map(Duration::from_secs_f64),
        jobs,
        devices: spec.parallelism.slots(jobs).into_iter().flatten().collect(),
        heartbeat_interval: Duration::from_secs_f64(spec.heartbeat.interval),
        grace: Duration::from_secs_f64(spec.heartbeat.grace),
        retries: spec.heartbeat.retries,
        progress: if a.quiet {
            ProgressMode::Quiet
        } else if a.plain {
            ProgressMode::Plain
        } else {
            ProgressMode::Auto
        },
    };
    let before = study.trials()?.iter().filter(|t| t.state.is_finished() && !t.interrupted()).count();
    if let Some(n) = opts.n_trials {
        if before as u64 >= n {
            println!("Study `{}` already has {before} finished trials (n_trials = {n}); nothing to run.", spec.name);
            println!("Raise n_trials (or pass --n-trials) to run more.");
            show::print_summary(&study, 10)?;
            return Ok(0);
        }
        if before > 0 {
            println!("Resuming study `{}`: {before} of {n} trials finished.", spec.name);
        }
    }
    install_ctrlc(Arc::clone(study.stop_flag()));
    let params = spec.params.clone();
    let summary = run_study(&study, &opts, |trial| {
        let config = sample_config(&params, objective.base_config(), trial)?;
        objective.run(&config, trial)
    })?;

    show::print_summary(&study, 10)?;
    println!(
        "This run: {} complete, {} pruned, {} failed in {:.1} s{}.",
        summary.complete,
        summary.pruned,
        summary.failed,
        summary.elapsed.as_secs_f64(),
        if summary.recovered > 0 { format!("; {} stale trial(s) recovered", summary.recovered) } else { String::new() }
    );
    if summary.interrupted {
        eprintln!(
            "Interrupted: {} running trial(s) marked FAIL and re-queued. Resume with: tune run {}{}",
            summary.interrupted_trials,
            a.file.display(),
            a.storage.map(|s| format!(" --storage {}", crate::storage::postgres::mask(&s))).unwrap_or_default()
        );
        return Ok(130);
    }
    if summary.failed > 0 && summary.complete + summary.pruned == 0 {
        eprintln!("Every trial of this run failed; `tune show {}` lists the reasons.", spec.name);
        return Ok(1);
    }
    Ok(0)
}
