//! `tune run FILE.yaml`: run or resume a study until it has `n_trials` finished trials.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{show, BASE_CONFIG_ATTR, SEED_ATTR, STUDY_FILE_ATTR};
use crate::executor::{install_ctrlc, run_study_batched, ProgressMode, RunOptions};
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
    if spec.scheduler.is_some() && a.n_trials.is_some() {
        return Err(crate::input_err!(
            "--n-trials: a PBT study's budget is its population times its generations; raise the trainer's budget or the population instead"
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
    // Everything that decides a generation's plan: a resume must keep it.
    let pbt_signature = spec.scheduler.as_ref().map(|p| {
        let steps =
            crate::rl::train::TrainConfig::from_value(objective.base_config()).ok().and_then(|c| c.budget.steps);
        let space: Vec<String> =
            spec.params.iter().map(|q| format!("{}: {}", q.name, q.distribution.describe())).collect();
        serde_json::json!({"scheduler": p, "steps": steps, "seed": seed, "search_space": space})
    });
    check_pbt_resume(storage.as_ref(), &spec.name, pbt_signature.as_ref(), &a.file)?;
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
    if let Some(sig) = &pbt_signature {
        storage.set_study_system_attr(study.study_id(), PBT_ATTR, sig)?;
    }

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
        progress_total: None,
        enqueued_only: false,
        batch: spec.parallelism.batch,
    };
    if let (Some(pbt), crate::objective::ObjectiveSpec::Rl(rl)) = (&spec.scheduler, &spec.objective) {
        let objective = crate::objective::rl::RlObjective::new(rl, &ctx)?;
        return run_pbt(&a, &spec, pbt, &objective, &study, &ctx, opts, seed);
    }
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
    let summary = run_study_batched(&study, &opts, |trials, feed| {
        let resolve = |mut t: crate::study::Trial| {
            let config = sample_config(&params, objective.base_config(), &mut t);
            (t, config)
        };
        let batch = trials.into_iter().map(resolve).collect();
        objective.run_batch(batch, &mut Resolving { feed, resolve })
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

/// Study system attribute of a PBT study: population, interval, budget and seed, which a
/// resume must keep (the plan of every generation depends on them).
const PBT_ATTR: &str = "tune:pbt";

/// Refuses, before anything is written, to resume a study as PBT with another population,
/// interval, budget or seed, to turn an ordinary study into a PBT one, or the reverse.
fn check_pbt_resume(
    storage: &dyn crate::storage::Storage,
    name: &str,
    signature: Option<&Value>,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    let Some(id) = storage.get_study_id_from_name(name)? else { return Ok(()) };
    let stored = storage.get_study_system_attrs(id)?.get(PBT_ATTR).cloned();
    let has_trials = !storage.get_all_trials(id, None)?.is_empty();
    match (stored, signature) {
        (Some(old), Some(new)) if &old != new => Err(crate::input_err!(
            "{}: study `{name}` is a PBT study planned with {old}, but the file now gives {new}; the scheduler, the trainer's budget, the seed and the search space fix every generation's plan and cannot change: put them back, or give the study a new `name:`",
            file.display()
        )),
        (Some(_), None) => Err(crate::input_err!(
            "{}: study `{name}` is a PBT study, but the file has no `scheduler: {{type: pbt}}`; put it back, or give the study a new `name:`",
            file.display()
        )),
        (None, Some(_)) if has_trials => Err(crate::input_err!(
            "{}: study `{name}` already has ordinary trials; a PBT study needs a study of its own: give it a new `name:`",
            file.display()
        )),
        _ => Ok(()),
    }
}

/// `tune run` of a study with `scheduler: {type: pbt}`: the population runs generation by
/// generation on the study's workers; prints the lineage at the end.
#[allow(clippy::too_many_arguments)]
fn run_pbt(
    a: &Args,
    spec: &StudySpec,
    pbt: &crate::pbt::PbtConfig,
    objective: &crate::objective::rl::RlObjective,
    study: &Study,
    ctx: &BuildContext,
    opts: RunOptions,
    seed: u64,
) -> anyhow::Result<i32> {
    let generations = pbt.generations(objective.budget_steps());
    let total = pbt.population as u64 * generations;
    // Segments run one per worker (a population as one batched learner is not there yet).
    let opts = RunOptions { n_trials: None, progress_total: Some(total), enqueued_only: true, batch: 1, ..opts };
    let trials = study.trials()?;
    let done = crate::pbt::segments(&trials).iter().filter(|(t, _)| t.state.is_finished() && !t.interrupted()).count();
    println!(
        "{} PBT study `{}`: population {}, {} generations of {} steps ({done} of {total} segments finished).",
        if done > 0 { "Resuming" } else { "Running" },
        spec.name,
        pbt.population,
        generations,
        pbt.interval
    );
    install_ctrlc(Arc::clone(study.stop_flag()));
    let root = crate::pbt::checkpoint_root(&ctx.log_dir);
    let quiet = a.quiet;
    let summary = crate::pbt::run(study, pbt, &spec.params, objective, &opts, &root, seed, |line| {
        if !quiet {
            println!("{line}");
        }
    })?;
    show::print_pbt(study)?;
    println!(
        "This run: {} segments complete, {} failed in {:.1} s{}.",
        summary.run.complete,
        summary.run.failed,
        summary.run.elapsed.as_secs_f64(),
        if summary.run.recovered > 0 {
            format!("; {} stale segment(s) recovered", summary.run.recovered)
        } else {
            String::new()
        }
    );
    if !summary.finished {
        eprintln!(
            "{}: resume with: tune run {}{}",
            if summary.run.interrupted { "Interrupted" } else { "Stopped (timeout)" },
            a.file.display(),
            a.storage.clone().map(|s| format!(" --storage {}", crate::storage::postgres::mask(&s))).unwrap_or_default()
        );
        return Ok(if summary.run.interrupted { 130 } else { 0 });
    }
    Ok(0)
}

/// The executor's feed with each new trial's config resolved, as the objective takes it.
struct Resolving<'f, R> {
    feed: &'f mut dyn crate::executor::TrialFeed,
    resolve: R,
}

impl<R> crate::objective::BatchFeed for Resolving<'_, R>
where
    R: Fn(crate::study::Trial) -> (crate::study::Trial, anyhow::Result<serde_json::Value>),
{
    fn more(&mut self) -> Option<(crate::study::Trial, anyhow::Result<serde_json::Value>)> {
        self.feed.ask().map(&self.resolve)
    }

    fn tell(&mut self, trial: crate::study::Trial, result: anyhow::Result<f64>) {
        self.feed.tell(trial, result);
    }
}
