//! Runs a study's trials: `jobs` workers on a rayon pool, a heartbeat thread that keeps this
//! process's RUNNING trials alive and fails (then re-enqueues) trials of dead workers, a budget
//! shared with every other process on the same storage, timeouts and Ctrl-C.

use std::collections::{BTreeMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use crate::error::{panic_message, Interrupted};
use crate::frozen::{FrozenTrial, TrialState, FAIL_REASON_KEY, FIXED_PARAMS_KEY, INTERRUPTED_KEY, RETRY_KEY};
use crate::study::{outcome_of, Study, Trial};

mod progress;

pub use progress::{Progress, ProgressMode};

/// How to run a study.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Total budget of finished trials in the study (across resumes and processes).
    pub n_trials: Option<u64>,
    /// Stop starting trials after this long.
    pub timeout: Option<Duration>,
    /// Trials evaluated at once in this process (when `devices` is empty).
    pub jobs: usize,
    /// One entry per worker: the device its trials are placed on ([`Trial::device`]). Empty:
    /// `jobs` workers and no placement. See [`crate::spec::Parallelism::slots`].
    pub devices: Vec<String>,
    /// How often running trials record a heartbeat.
    pub heartbeat_interval: Duration,
    /// A RUNNING trial whose heartbeat is older than this belongs to a dead worker.
    pub grace: Duration,
    /// How many times the parameters of an interrupted trial are re-enqueued.
    pub retries: u32,
    /// Progress display.
    pub progress: ProgressMode,
    /// The total the progress display counts towards, when not `n_trials` (PBT's segments).
    pub progress_total: Option<u64>,
    /// Run only enqueued (WAITING) trials, never sample new ones: a scheduler (PBT) enqueues
    /// what it wants run.
    pub enqueued_only: bool,
    /// Trials each worker asks for at once and hands to the objective together (trial
    /// batching: an objective may train them as one model); 1 asks one at a time.
    pub batch: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            n_trials: None,
            timeout: None,
            jobs: 1,
            devices: Vec::new(),
            heartbeat_interval: Duration::from_secs(10),
            grace: Duration::from_secs(60),
            retries: 1,
            progress: ProgressMode::Quiet,
            progress_total: None,
            enqueued_only: false,
            batch: 1,
        }
    }
}

/// What one `run` did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Trials this process finished as COMPLETE.
    pub complete: usize,
    /// Trials this process finished as PRUNED.
    pub pruned: usize,
    /// Trials this process finished as FAIL (interruptions excluded).
    pub failed: usize,
    /// Trials that were running when the run was interrupted (marked FAIL and re-enqueued).
    pub interrupted_trials: usize,
    /// True when Ctrl-C stopped the run.
    pub interrupted: bool,
    /// Trials of dead workers that this run failed and re-enqueued.
    pub recovered: usize,
    /// Wall time.
    pub elapsed: Duration,
}

/// Shared state of one run.
struct Run<'a> {
    study: &'a Study,
    opts: &'a RunOptions,
    running: Mutex<HashSet<i64>>,
    /// Held while a worker checks for and starts an enqueued trial (`enqueued_only`).
    asking: Mutex<()>,
    /// Workers between starting a trial in storage and listing it in `running`.
    starting: AtomicUsize,
    active: AtomicUsize,
    told_waiting: AtomicBool,
    summary: Mutex<RunSummary>,
    /// The first error that ended a worker (it stops the others).
    failure: Mutex<Option<String>>,
    done: (Mutex<bool>, Condvar),
    progress: Progress,
    start: Instant,
}

/// Runs trials of `study` with `evaluate` until the budget is met, the timeout passes, or the
/// study's stop flag is set (Ctrl-C). `evaluate` returns the value, or `Err(TrialPruned)`.
pub fn run_study<F>(study: &Study, opts: &RunOptions, evaluate: F) -> anyhow::Result<RunSummary>
where
    F: Fn(&mut Trial) -> anyhow::Result<f64> + Sync,
{
    run_study_batched(study, opts, |trials: Vec<Trial>, feed: &mut dyn TrialFeed| {
        for mut trial in trials {
            let result = evaluate(&mut trial);
            feed.tell(trial, result);
        }
    })
}

/// What a batch of trials is run with ([`run_study_batched`]): more trials on request, and each
/// trial's outcome recorded as soon as it is known.
pub trait TrialFeed {
    /// Starts one more trial on the batch's device, within the budget (the sampler sees the
    /// batch's trials RUNNING); `None` once the budget is taken or the run is stopping. A
    /// storage error stops the run (the batch's trials see `interrupted()`) and ends it with
    /// that error.
    fn ask(&mut self) -> Option<Trial>;

    /// Records `trial`'s outcome (its value, or `Err(TrialPruned)` or another error), now.
    fn tell(&mut self, trial: Trial, result: anyhow::Result<f64>);
}

/// [`run_study`] with trial batching: each worker asks up to `opts.batch` trials at once (the
/// sampler sees the earlier ones RUNNING, so TPE's constant liar spreads them) and `evaluate`
/// runs them together, telling each one's value or error to the feed as it ends and asking the
/// feed for more when it can take them. Each trial is recorded on its own, exactly as one run
/// alone; a trial `evaluate` never tells (it panicked, or forgot) fails with the reason.
pub fn run_study_batched<F>(study: &Study, opts: &RunOptions, evaluate: F) -> anyhow::Result<RunSummary>
where
    F: Fn(Vec<Trial>, &mut dyn TrialFeed) + Sync,
{
    let slots: Vec<Option<String>> = if opts.devices.is_empty() {
        vec![None; opts.jobs.max(1)]
    } else {
        opts.devices.iter().cloned().map(Some).collect()
    };
    let run = Run {
        study,
        opts,
        running: Mutex::new(HashSet::new()),
        asking: Mutex::new(()),
        starting: AtomicUsize::new(0),
        active: AtomicUsize::new(slots.len()),
        told_waiting: AtomicBool::new(false),
        summary: Mutex::new(RunSummary::default()),
        failure: Mutex::new(None),
        done: (Mutex::new(false), Condvar::new()),
        progress: Progress::new(opts.progress, opts.progress_total.or(opts.n_trials), study.direction()),
        start: Instant::now(),
    };
    run.recover_stale()?;
    run.progress.refresh(&study.trials()?);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(slots.len() + 1)
        .thread_name(|i| format!("tune-worker-{i}"))
        .build()
        .context("starting the worker pool")?;
    let errors: Mutex<Vec<anyhow::Error>> = Mutex::new(Vec::new());
    pool.scope(|s| {
        s.spawn(|_| run.heartbeat_loop());
        for device in &slots {
            let (run, evaluate, errors) = (&run, &evaluate, &errors);
            s.spawn(move |_| {
                if let Err(e) = run.worker(device.as_deref(), evaluate) {
                    run.record_failure(&e);
                    study.stop_flag().store(true, Ordering::SeqCst);
                    errors.lock().unwrap().push(e);
                }
            });
        }
    });
    let mut summary = run.summary.into_inner().unwrap();
    summary.elapsed = run.start.elapsed();
    summary.interrupted =
        summary.interrupted || (study.stop_flag().load(Ordering::SeqCst) && errors.lock().unwrap().is_empty());
    run.progress.finish();
    if let Some(e) = errors.into_inner().unwrap().into_iter().next() {
        return Err(e);
    }
    Ok(summary)
}

/// The [`TrialFeed`] of one batch on one worker.
struct Feed<'r, 'a> {
    run: &'r Run<'a>,
    device: Option<&'r str>,
    /// Trials handed out and not told yet.
    untold: Vec<i64>,
    /// The first storage error met asking or telling: it ends the run once the batch is over.
    first_error: Option<anyhow::Error>,
}

impl Feed<'_, '_> {
    fn fail(&mut self, e: anyhow::Error) {
        self.run.record_failure(&e);
        self.run.study.stop_flag().store(true, Ordering::SeqCst);
        self.first_error.get_or_insert(e);
    }
}

impl TrialFeed for Feed<'_, '_> {
    fn ask(&mut self) -> Option<Trial> {
        if self.first_error.is_some() || self.run.stopping() || self.run.timed_out() {
            return None;
        }
        self.run.starting.fetch_add(1, Ordering::SeqCst);
        let asked = self.run.ask(self.run.opts.n_trials);
        if let Ok(Some(t)) = &asked {
            self.run.running.lock().unwrap().insert(t.trial_id());
        }
        self.run.starting.fetch_sub(1, Ordering::SeqCst);
        match asked {
            Ok(Some(mut t)) => {
                t.place_on(self.device);
                self.untold.push(t.trial_id());
                Some(t)
            }
            Ok(None) => None,
            Err(e) => {
                self.fail(e);
                None
            }
        }
    }

    fn tell(&mut self, trial: Trial, result: anyhow::Result<f64>) {
        let id = trial.trial_id();
        self.untold.retain(|&u| u != id);
        if let Err(e) = self.run.run_trial(trial, result) {
            self.fail(e);
        }
    }
}

impl Run<'_> {
    fn stopping(&self) -> bool {
        self.study.stop_flag().load(Ordering::SeqCst)
    }

    fn timed_out(&self) -> bool {
        self.opts.timeout.is_some_and(|t| self.start.elapsed() >= t)
    }

    /// One worker, whose trials run on `device`: start trials until the budget, the timeout or
    /// a stop. Whatever it returns, or if it panics, its guard tells the heartbeat loop that it
    /// is gone, so that the run ends once every worker is.
    fn worker<F>(&self, device: Option<&str>, evaluate: &F) -> anyhow::Result<()>
    where
        F: Fn(Vec<Trial>, &mut dyn TrialFeed) + Sync,
    {
        let _gone = WorkerGuard(self);
        let budget = self.opts.n_trials;
        // How long to wait before asking again once the budget is taken: short at first (fast
        // trials elsewhere finish in milliseconds), doubling up to the heartbeat interval or 2 s.
        let longest_wait = self.opts.heartbeat_interval.min(Duration::from_secs(2));
        let mut wait = Duration::from_millis(25).min(longest_wait);
        loop {
            if self.stopping() || self.timed_out() {
                return Ok(());
            }
            let mut trials = Vec::with_capacity(self.opts.batch.max(1));
            // Ask up to `batch` trials, but no more once the run is stopping.
            while trials.len() < self.opts.batch.max(1) && (trials.is_empty() || !(self.stopping() || self.timed_out()))
            {
                self.starting.fetch_add(1, Ordering::SeqCst);
                let asked = self.ask(budget);
                if let Ok(Some(t)) = &asked {
                    self.running.lock().unwrap().insert(t.trial_id());
                }
                self.starting.fetch_sub(1, Ordering::SeqCst);
                match asked {
                    Ok(Some(t)) => trials.push(t),
                    Ok(None) => break,
                    Err(e) if trials.is_empty() => return Err(e),
                    Err(e) => {
                        // The trials already started go back to the queue; the error ends the run.
                        for t in &trials {
                            self.running.lock().unwrap().remove(&t.trial_id());
                            self.abandon(t.trial_id(), &e);
                        }
                        return Err(e);
                    }
                }
            }
            if trials.is_empty() {
                // The budget is taken. Trials still RUNNING elsewhere either finish or go
                // stale (their worker died) and come back as WAITING: wait for that.
                let foreign = self.foreign_running()?;
                if foreign == 0 {
                    return Ok(());
                }
                if !self.told_waiting.swap(true, Ordering::SeqCst) {
                    self.progress.note(&format!(
                        "budget taken: waiting for {foreign} trial(s) running in other processes (or for them to go stale)"
                    ));
                }
                self.sleep(wait);
                wait = (wait * 2).min(longest_wait);
                self.recover_stale()?;
                continue;
            }
            wait = Duration::from_millis(25).min(longest_wait);
            for trial in &mut trials {
                trial.place_on(device);
            }
            self.run_trials(trials, device, evaluate)?;
        }
    }

    /// Starts the next trial within `budget`; with `enqueued_only`, only a WAITING one (the
    /// check and the start are one step for this process's workers).
    fn ask(&self, budget: Option<u64>) -> anyhow::Result<Option<Trial>> {
        if !self.opts.enqueued_only {
            return self.study.ask_within(budget);
        }
        let _one_at_a_time = self.asking.lock().unwrap();
        let counts = self.study.storage().count_trials(self.study.study_id())?;
        if counts.get(&TrialState::Waiting).copied().unwrap_or(0) == 0 {
            return Ok(None);
        }
        self.study.ask_within(budget)
    }

    /// Evaluates started trials (already listed in `running`) together (a panic fails each of
    /// them with its message) and records each one's outcome; the first error returns after
    /// every trial is recorded.
    fn run_trials<F>(&self, trials: Vec<Trial>, device: Option<&str>, evaluate: &F) -> anyhow::Result<()>
    where
        F: Fn(Vec<Trial>, &mut dyn TrialFeed) + Sync,
    {
        let mut feed =
            Feed { run: self, device, untold: trials.iter().map(Trial::trial_id).collect(), first_error: None };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            crate::fault::maybe_panic("trial.panic");
            evaluate(trials, &mut feed)
        }));
        let reason = match outcome {
            Ok(()) => "the objective returned no result for this trial".to_string(),
            Err(panic) => format!("the objective panicked: {}", panic_message(panic.as_ref())),
        };
        let Feed { mut untold, mut first_error, .. } = feed;
        untold.sort_unstable();
        for id in untold {
            // Its `Trial` is gone with the panic: the storage records the outcome directly. A
            // stopping run re-queues it, as any trial it cut short.
            self.running.lock().unwrap().remove(&id);
            let st = self.study.storage();
            if self.stopping() {
                let requeued = st.get_trial(id).map_err(anyhow::Error::from).and_then(|t| {
                    self.mark_interrupted(id, &self.stop_reason())?;
                    self.requeue(&t, false)
                });
                match requeued {
                    Ok(_) => self.summary.lock().unwrap().interrupted_trials += 1,
                    Err(e) => {
                        self.abandon(id, &e);
                        first_error.get_or_insert(e);
                    }
                }
                continue;
            }
            let failed = st
                .set_trial_system_attr(id, FAIL_REASON_KEY, &Value::from(reason.as_str()))
                .and_then(|_| st.set_trial_state_values(id, TrialState::Fail, None));
            match failed {
                Ok(_) => self.summary.lock().unwrap().failed += 1,
                Err(e) => {
                    // Not the trial's fault: it is re-queued where the storage allows, and the
                    // run ends with the error.
                    let e = anyhow::Error::from(e);
                    self.abandon(id, &e);
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Records the outcome of one evaluated trial (listed in `running`). If recording fails (a
    /// storage error), the trial is failed as interrupted and re-queued where the storage still
    /// allows, so that it neither stays RUNNING nor counts against the budget, and the error
    /// returns.
    fn run_trial(&self, trial: Trial, result: anyhow::Result<f64>) -> anyhow::Result<()> {
        let id = trial.trial_id();
        let result = self.record(trial, result);
        self.running.lock().unwrap().remove(&id);
        if let Err(e) = &result {
            let finished_elsewhere = e.chain().find_map(|c| match c.downcast_ref::<crate::storage::StorageError>() {
                Some(crate::storage::StorageError::TrialFinished { number, state }) => Some((*number, *state)),
                _ => None,
            });
            if let Some((number, state)) = finished_elsewhere {
                // This worker lost touch with the storage for longer than the grace period and
                // another worker failed and re-queued the trial: its result is refused, and
                // the run goes on.
                self.progress.note(&format!(
                    "trial {number} was marked {state} by another worker while this one ran it (no heartbeat \
                     reached the storage within the grace period); its late result is refused and the \
                     re-queued attempt stands"
                ));
                return Ok(());
            }
            self.abandon(id, e);
        }
        let t = result?;
        if let Some(t) = t {
            {
                let mut s = self.summary.lock().unwrap();
                match t.state {
                    TrialState::Complete => s.complete += 1,
                    TrialState::Pruned => s.pruned += 1,
                    _ => s.failed += 1,
                }
            }
            if self.progress.shows_trials() {
                self.progress.trial_finished(&t, &self.study.trials()?);
            }
        }
        Ok(())
    }

    /// Tells the study the objective's `result` for `trial`; `None` when the run was
    /// interrupted and the trial re-queued.
    fn record(&self, mut trial: Trial, result: anyhow::Result<f64>) -> anyhow::Result<Option<FrozenTrial>> {
        // A storage error met by the objective (suggest, report) is not the trial's fault: the
        // run stops with it, and `run_trial` re-queues the trial.
        if let Err(e) = &result {
            if e.chain().any(|c| c.is::<crate::storage::StorageError>()) {
                return result.map(|_| None);
            }
        }
        let interrupted = match &result {
            Err(e) => e.chain().any(|c| c.is::<Interrupted>()) || self.stopping(),
            Ok(_) => false,
        };
        if interrupted {
            trial.flush()?;
            self.mark_interrupted(trial.trial_id(), &self.stop_reason())?;
            self.requeue(trial.frozen(), false)?;
            self.summary.lock().unwrap().interrupted_trials += 1;
            return Ok(None);
        }
        Ok(Some(self.study.tell_known(trial, outcome_of(result))?))
    }

    /// Why running trials are being stopped, for their `fail_reason`.
    fn stop_reason(&self) -> String {
        match self.failure.lock().unwrap().as_deref() {
            Some(e) => format!("interrupted: the run stopped on an error ({e})"),
            None => "interrupted by Ctrl-C".to_string(),
        }
    }

    /// Best effort after a storage error while trial `id` was RUNNING: fail it as interrupted
    /// and re-queue its parameters, unless it already finished. Errors here are ignored (the
    /// storage may be gone); a trial left RUNNING goes stale and the next run recovers it.
    fn abandon(&self, id: i64, e: &anyhow::Error) {
        self.record_failure(e);
        let Ok(t) = self.study.storage().get_trial(id) else { return };
        if t.state.is_finished() {
            return;
        }
        if self.mark_interrupted(id, &format!("interrupted: tune stopped on a storage error ({e:#})")).is_ok() {
            let _ = self.requeue(&t, false);
        }
    }

    /// Keeps the first error of the run, for the reasons of the trials it stops.
    fn record_failure(&self, e: &anyhow::Error) {
        self.failure.lock().unwrap().get_or_insert_with(|| format!("{e:#}"));
    }

    fn mark_interrupted(&self, id: i64, reason: &str) -> anyhow::Result<()> {
        let st = self.study.storage();
        st.set_trial_system_attr(id, INTERRUPTED_KEY, &Value::Bool(true))?;
        st.set_trial_system_attr(id, FAIL_REASON_KEY, &Value::from(reason))?;
        st.set_trial_state_values(id, TrialState::Fail, None)?;
        Ok(())
    }

    /// Enqueues the parameters of an interrupted trial again. Retries after dead workers are
    /// limited by `retries`; Ctrl-C interruptions are not the trial's fault and always re-run.
    fn requeue(&self, t: &FrozenTrial, count_retry: bool) -> anyhow::Result<bool> {
        let retry = t.system_attrs.get(RETRY_KEY).and_then(Value::as_u64).unwrap_or(0);
        if count_retry && retry >= self.opts.retries as u64 {
            return Ok(false);
        }
        let mut params: BTreeMap<String, Value> = match t.system_attrs.get(FIXED_PARAMS_KEY) {
            Some(v) => serde_json::from_value(v.clone()).unwrap_or_default(),
            None => BTreeMap::new(),
        };
        params.extend(t.external_params());
        let new = self.study.enqueue_with(&params, &crate::study::carried(t))?;
        let next = if count_retry { retry + 1 } else { retry };
        let st = self.study.storage();
        st.set_trial_system_attr(new.trial_id, RETRY_KEY, &Value::from(next))?;
        st.set_trial_system_attr(new.trial_id, "tune:retry_of", &Value::from(t.number))?;
        Ok(true)
    }

    /// Fails RUNNING trials of dead workers and re-enqueues their parameters.
    fn recover_stale(&self) -> anyhow::Result<()> {
        let stale = self.study.storage().fail_stale_trials(self.study.study_id(), self.opts.grace)?;
        for t in &stale {
            let requeued = self.requeue(t, true)?;
            self.progress.note(&format!(
                "trial {} was RUNNING with no heartbeat for over {:?}: marked FAIL{}",
                t.number,
                self.opts.grace,
                if requeued { " and its parameters re-enqueued" } else { " (retries used up)" }
            ));
        }
        self.summary.lock().unwrap().recovered += stale.len();
        Ok(())
    }

    fn foreign_running(&self) -> anyhow::Result<usize> {
        // Counted before listing: a trial this process starts meanwhile is either in `mine`
        // or one of the `starting` ones.
        let starting = self.starting.load(Ordering::SeqCst);
        let running = self.study.storage().get_all_trials(self.study.study_id(), Some(&[TrialState::Running]))?;
        let mine = self.running.lock().unwrap().clone();
        let foreign = running.iter().filter(|t| !mine.contains(&t.trial_id)).count();
        Ok(foreign.saturating_sub(starting.max(self.starting.load(Ordering::SeqCst))))
    }

    fn heartbeat_loop(&self) {
        loop {
            if self.sleep(self.opts.heartbeat_interval) {
                return;
            }
            let ids: Vec<i64> = self.running.lock().unwrap().iter().copied().collect();
            for id in ids {
                if let Err(e) = self.study.storage().record_heartbeat(id) {
                    self.progress.note(&format!("warning: could not record a heartbeat: {e}"));
                }
            }
            if let Err(e) = self.recover_stale() {
                self.progress.note(&format!("warning: could not check for stale trials: {e:#}"));
            }
        }
    }

    /// Sleeps up to `d`; returns true when the run is over.
    fn sleep(&self, d: Duration) -> bool {
        let (lock, cvar) = &self.done;
        let guard = lock.lock().unwrap();
        let (guard, _) = cvar.wait_timeout_while(guard, d, |done| !*done).unwrap();
        *guard
    }

    /// The last worker to end ends the heartbeat loop.
    fn finish_worker(&self) {
        if self.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            let (lock, cvar) = &self.done;
            *lock.lock().unwrap() = true;
            cvar.notify_all();
        }
    }
}

/// Ends its worker when dropped: on return, on an error and on a panic alike.
struct WorkerGuard<'r, 'a>(&'r Run<'a>);

impl Drop for WorkerGuard<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A bug outside any objective: the other workers stop too.
            self.0.record_failure(&anyhow::anyhow!("a worker panicked"));
            self.0.study.stop_flag().store(true, Ordering::SeqCst);
        }
        self.0.finish_worker();
    }
}

/// Installs a Ctrl-C handler for the process: the first press sets `flag` (workers stop
/// starting trials; running ones are told through `Trial::interrupted`), the second exits at once.
pub fn install_ctrlc(flag: Arc<AtomicBool>) {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nSecond Ctrl-C: exiting now. Trials still RUNNING are recovered by the next `tune run` after the heartbeat grace period.");
            std::process::exit(130);
        }
        eprintln!(
            "\nCtrl-C: finishing up (running trials are stopped and re-queued); press Ctrl-C again to exit at once."
        );
    });
}
