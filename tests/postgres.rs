//! tune on a real PostgreSQL server (the throwaway one `scripts/test.sh` starts), next to Optuna
//! itself: the schema Optuna creates, Python and Rust workers on one study, many processes on
//! one budget, clock skew, `kill -9` and a server restart. Each test prints "skipped: ..." and
//! passes when there is no test server (or, for the Python side, no optuna in `.venv`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tune::storage::postgres::testing::{admin_url, client, fresh_database};

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The project's Python with optuna and psycopg2, or `None` (and a note on stderr).
fn python() -> Option<PathBuf> {
    let py = manifest(".venv/bin/python");
    let ok =
        Command::new(&py).args(["-c", "import optuna, psycopg2"]).output().map(|o| o.status.success()).unwrap_or(false);
    if ok {
        Some(py)
    } else {
        eprintln!("skipped: `{} -c \"import optuna, psycopg2\"` failed (run scripts/setup.sh)", py.display());
        None
    }
}

/// Runs `tests/python/optuna_pg.py` with `args`; returns its stdout.
fn optuna(py: &Path, args: &[&str]) -> String {
    let out = Command::new(py).arg(manifest("tests/python/optuna_pg.py")).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "optuna_pg.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn tune_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("tune"));
    c.current_dir(dir).args(args);
    c
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The catalog of a database's public schema, one sorted line per fact: columns with types,
/// defaults and nullability; constraints with their definitions; indexes; enum types with
/// their labels in order; sequences and the columns that own them; the version rows.
fn catalog(url: &str) -> Vec<String> {
    const QUERIES: [&str; 8] = [
        "SELECT 'column ' || table_name || '.' || column_name || ' #' || ordinal_position || ' ' || data_type || ' ' \
         || udt_name || ' len=' || coalesce(character_maximum_length::text, '-') || ' prec=' \
         || coalesce(numeric_precision::text, '-') || ' null=' || is_nullable || ' default=' || coalesce(column_default, '-') \
         FROM information_schema.columns WHERE table_schema = 'public'",
        "SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' || contype::text || ' ' || pg_get_constraintdef(oid) \
         FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
        "SELECT 'index ' || tablename || ' ' || indexname || ' ' || indexdef FROM pg_indexes WHERE schemaname = 'public'",
        "SELECT 'enum ' || t.typname || ' ' || string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) \
         FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname",
        "SELECT 'sequence ' || sequence_name || ' ' || data_type || ' ' || start_value || ' ' || increment || ' ' || maximum_value \
         FROM information_schema.sequences WHERE sequence_schema = 'public'",
        "SELECT 'owned ' || s.relname || ' by ' || t.relname || '.' || a.attname FROM pg_depend d \
         JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' JOIN pg_class t ON t.oid = d.refobjid \
         JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid WHERE d.deptype = 'a'",
        "SELECT 'version_info ' || version_info_id || ' ' || schema_version || ' ' || library_version FROM version_info",
        "SELECT 'alembic ' || version_num FROM alembic_version",
    ];
    let mut c = client(url);
    let mut out: Vec<String> =
        QUERIES.iter().flat_map(|q| c.query(*q, &[]).unwrap().into_iter().map(|r| r.get::<_, String>(0))).collect();
    out.sort();
    out
}

#[test]
fn the_schema_is_optunas_and_each_side_uses_the_others_database() {
    let (Some(admin), Some(py)) = (admin_url(), python()) else { return };
    let by_optuna = fresh_database(&admin, "by_optuna");
    let by_tune = fresh_database(&admin, "by_tune");
    optuna(&py, &["create", &by_optuna, "made-by-optuna"]);
    let dir = TempDir::new().unwrap();
    write(dir.path(), "s.yaml", &zero_cost_study("made-by-tune", 6, 1));
    let out = tune_cmd(dir.path(), &["run", "s.yaml", "--quiet", "--storage", &by_tune]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (ours, theirs) = (catalog(&by_tune), catalog(&by_optuna));
    assert!(theirs.len() > 80, "the catalog listing is too small to mean anything: {theirs:#?}");
    let only_ours: Vec<&String> = ours.iter().filter(|l| !theirs.contains(l)).collect();
    let only_theirs: Vec<&String> = theirs.iter().filter(|l| !ours.contains(l)).collect();
    assert!(only_ours.is_empty() && only_theirs.is_empty(), "tune only: {only_ours:#?}\noptuna only: {only_theirs:#?}");

    // Optuna runs trials in tune's database, tune in Optuna's.
    assert_eq!(optuna(&py, &["optimize", &by_tune, "made-by-tune", "4"]).lines().last(), Some("10"));
    write(dir.path(), "o.yaml", &zero_cost_study("made-by-optuna", 5, 1));
    let out = tune_cmd(dir.path(), &["run", "o.yaml", "--quiet", "--storage", &by_optuna]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let n: i64 =
        client(&by_optuna).query_one("SELECT count(*) FROM trials WHERE state = 'COMPLETE'", &[]).unwrap().get(0);
    assert_eq!(n, 5);
}

#[test]
fn optuna_dashboard_opens_a_tune_database() {
    let (Some(admin), Some(py)) = (admin_url(), python()) else { return };
    let url = fresh_database(&admin, "dashboard");
    let dir = TempDir::new().unwrap();
    write(dir.path(), "s.yaml", &zero_cost_study("dash", 5, 1));
    let out = tune_cmd(dir.path(), &["run", "s.yaml", "--quiet", "--storage", &url]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out =
        Command::new(&py).arg(manifest("tests/python/dashboard_api.py")).args([url.as_str(), "dash"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["studies_status"], 200, "{got}");
    assert_eq!(got["detail_status"], 200, "{got}");
    assert_eq!(got["n_trials"], 5, "{got}");
}

/// A study whose trials cost nothing: random search on a 2-D sphere.
fn zero_cost_study(name: &str, n_trials: u64, jobs: u64) -> String {
    format!(
        "name: {name}\ndirection: minimize\nn_trials: {n_trials}\nseed: 1\nsampler: {{type: random}}\n\
         pruner: {{type: none}}\nparallelism: {{jobs: {jobs}}}\nobjective: {{type: function, name: sphere, dim: 2}}\n\
         search_space:\n  x.0: {{type: float, low: -5, high: 5}}\n  x.1: {{type: float, low: -5, high: 5}}\n"
    )
}

/// Waits for every child; each must exit 0 with no error on stderr.
fn all_succeed(children: Vec<Child>, what: &str) {
    for c in children {
        let out = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "a {what} failed: {err}");
        assert!(!err.to_lowercase().contains("error"), "a {what} reported an error: {err}");
    }
}

/// Trial numbers of `study` in `state`, and the total number of trials.
fn numbers(url: &str, state: &str) -> (Vec<i64>, i64) {
    let mut c = client(url);
    let nums: Vec<i64> = c
        .query("SELECT number FROM trials WHERE state = $1::text::trialstate ORDER BY number", &[&state])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i32>(0) as i64)
        .collect();
    let total: i64 = c.query_one("SELECT count(*) FROM trials", &[]).unwrap().get(0);
    (nums, total)
}

#[test]
fn eight_processes_of_four_jobs_share_one_exact_budget() {
    let Some(admin) = admin_url() else { return };
    let url = fresh_database(&admin, "budget");
    let dir = TempDir::new().unwrap();
    write(dir.path(), "s.yaml", &zero_cost_study("many", 2000, 4));
    let started = Instant::now();
    // Started at the same moment on an empty database: the schema and the study are made once.
    let children: Vec<Child> = (0..8)
        .map(|_| {
            tune_cmd(dir.path(), &["run", "s.yaml", "--quiet", "--storage", &url])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    all_succeed(children, "worker process");
    eprintln!("8 processes x 4 jobs, 2000 trials: {:.1} s", started.elapsed().as_secs_f64());
    let (complete, total) = numbers(&url, "COMPLETE");
    assert_eq!(total, 2000);
    assert_eq!(complete, (0..2000).collect::<Vec<i64>>(), "unique numbers, every trial finished");
    let studies: i64 = client(&url).query_one("SELECT count(*) FROM studies", &[]).unwrap().get(0);
    assert_eq!(studies, 1);
}

#[test]
fn tune_and_optuna_workers_run_one_study_at_once() {
    let (Some(admin), Some(py)) = (admin_url(), python()) else { return };
    let url = fresh_database(&admin, "mixed");
    let dir = TempDir::new().unwrap();
    // Optuna's workers run 40 trials each (Optuna's n_trials is per process); tune's share the
    // study budget of 200, which counts Optuna's trials too. tune's trials take 0.25 s each, so
    // its 8 threads need at least 3.75 s for their 120: Optuna's 80 fast trials are all created
    // by then, and the study ends with exactly 200.
    write(dir.path(), "s.yaml", &slow_study("mixed", 200, 5, 50, 30.0));
    optuna(&py, &["create", &url, "mixed"]);
    let mut children: Vec<Child> = (0..2)
        .map(|_| {
            let mut c = Command::new(&py)
                .arg(manifest("tests/python/optuna_pg.py"))
                .args(["optimize", &url, "mixed", "40"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(c.stdout.as_mut().unwrap()), &mut line).unwrap();
            assert_eq!(line.trim(), "ready");
            c
        })
        .collect();
    children.extend((0..4).map(|_| {
        tune_cmd(dir.path(), &["run", "s.yaml", "--quiet", "--storage", &url]).stderr(Stdio::piped()).spawn().unwrap()
    }));
    all_succeed(children, "worker");
    let (complete, total) = numbers(&url, "COMPLETE");
    assert_eq!(complete, (0..total).collect::<Vec<i64>>(), "unique numbers, all finished");
    assert_eq!(total, 200, "the budget is exact");
    let by_optuna: i64 =
        client(&url).query_one("SELECT count(*) FROM trial_params WHERE param_name = 'y'", &[]).unwrap().get(0);
    assert_eq!(by_optuna, 80, "both Optuna workers ran all their trials");
}

/// A study of slow trials (a learning curve with a sleep per step), heartbeats every 0.5 s.
fn slow_study(name: &str, n_trials: u64, steps: u64, sleep_ms: u64, grace: f64) -> String {
    format!(
        "name: {name}\ndirection: minimize\nn_trials: {n_trials}\nseed: 3\npruner: {{type: none}}\n\
         parallelism: {{jobs: 2}}\nheartbeat: {{interval: 0.5, grace: {grace}, retries: 2}}\nobjective:\n  type: function\n  \
         name: learning_curve\n  config: {{steps: {steps}, step_sleep_ms: {sleep_ms}}}\nsearch_space:\n  \
         x.0: {{type: float, low: -5, high: 5}}\n"
    )
}

fn count(url: &str, state: &str) -> i64 {
    client(url)
        .query_one("SELECT count(*) FROM trials WHERE state = $1::text::trialstate", &[&state])
        .map(|r| r.get(0))
        .unwrap_or(0)
}

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {limit:?}");
}

#[test]
fn a_worker_whose_clock_is_ten_minutes_ahead_fails_no_live_trial() {
    let Some(admin) = admin_url() else { return };
    let url = fresh_database(&admin, "clock");
    let dir = TempDir::new().unwrap();
    write(dir.path(), "s.yaml", &slow_study("clock", 6, 20, 100, 3.0));
    let a =
        tune_cmd(dir.path(), &["run", "s.yaml", "--quiet", "--storage", &url]).stderr(Stdio::piped()).spawn().unwrap();
    wait_until(Duration::from_secs(60), "worker a starts trials", || count(&url, "RUNNING") >= 2);
    // Worker b's local clock runs 600 s ahead; with a grace of 3 s it would take every trial of
    // a as dead if staleness were judged by local clocks.
    let b = tune_cmd(dir.path(), &["run", "s.yaml", "--quiet", "--storage", &url])
        .env("TUNE_TEST_CLOCK_OFFSET_S", "600")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    all_succeed(vec![a, b], "worker");
    assert_eq!((count(&url, "COMPLETE"), count(&url, "FAIL")), (6, 0));
}

#[test]
fn a_killed_worker_s_trials_are_rerun_by_another_machine() {
    let Some(admin) = admin_url() else { return };
    let url = fresh_database(&admin, "kill");
    let dir = TempDir::new().unwrap();
    // Trials of 3 s (20 steps of 150 ms), 2 at a time: the victim needs 12 s for its 8, so the
    // kill lands with trials running even when a loaded machine delays this poll by seconds.
    write(dir.path(), "s.yaml", &slow_study("kill", 8, 20, 150, 2.0));
    let mut victim = tune_cmd(dir.path(), &["run", "s.yaml", "--quiet", "--storage", &url]).spawn().unwrap();
    wait_until(Duration::from_secs(60), "the victim finishes a trial", || count(&url, "COMPLETE") >= 1);
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    let running = count(&url, "RUNNING");
    assert!(running >= 1, "the kill should leave RUNNING trials behind");
    let out = tune_cmd(dir.path(), &["run", "s.yaml", "--plain", "--storage", &url]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("no heartbeat"), "{err}");
    assert_eq!(count(&url, "COMPLETE"), 8);
    let retried: i64 = client(&url)
        .query_one("SELECT count(*) FROM trial_system_attributes WHERE key = 'tune:retry_of'", &[])
        .unwrap()
        .get(0);
    assert!(retried >= 1, "the killed trials' parameters are re-enqueued");
}

/// The test server's folder (from `scripts/test.sh`), for the restart test.
fn server_dir() -> Option<String> {
    let d = std::env::var("TUNE_TEST_PG_DIR").ok().filter(|d| !d.is_empty());
    if d.is_none() {
        eprintln!("skipped: TUNE_TEST_PG_DIR is unset (scripts/test.sh sets it)");
    }
    d
}

/// Runs in its own server (started and stopped here), so that restarting it does not disturb
/// tests running at the same time.
#[test]
fn a_server_restart_mid_study_loses_nothing_and_a_dead_server_ends_workers_with_exit_2() {
    let (Some(_), Some(_)) = (admin_url(), server_dir()) else { return };
    let tmp = TempDir::new().unwrap();
    let pgdir = tmp.path().join("pg");
    let start = Command::new(manifest("scripts/pg.sh")).args(["start", pgdir.to_str().unwrap()]).output().unwrap();
    assert!(start.status.success(), "{}", String::from_utf8_lossy(&start.stderr));
    struct Stop(PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new(manifest("scripts/pg.sh")).args(["stop", self.0.to_str().unwrap()]).status();
        }
    }
    let _stop = Stop(pgdir.clone());
    let base = String::from_utf8(start.stdout).unwrap().trim().to_string();
    let password = std::fs::read_to_string(pgdir.join("password")).unwrap().trim().to_string();
    let dir = tmp.path();
    write(dir, "s.yaml", &slow_study("restart", 24, 10, 60, 30.0));
    let worker = || {
        tune_cmd(dir, &["run", "s.yaml", "--quiet", "--storage", &base])
            .env("PGPASSWORD", &password)
            .env("TUNE_STORAGE_WAIT", "60")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let counts = |state: &str| -> i64 {
        let mut cfg =
            tune::storage::postgres::Target::resolve(&base, &tune::storage::postgres::Env::process()).unwrap().config;
        cfg.password(&password);
        cfg.connect(postgres::NoTls)
            .and_then(|mut c| c.query_one("SELECT count(*) FROM trials WHERE state = $1::text::trialstate", &[&state]))
            .map(|r| r.get(0))
            .unwrap_or(0)
    };
    let workers = vec![worker(), worker()];
    wait_until(Duration::from_secs(60), "trials finish", || counts("COMPLETE") >= 2);
    let restart = Command::new(manifest("scripts/pg.sh")).args(["restart", pgdir.to_str().unwrap()]).output().unwrap();
    assert!(restart.status.success(), "{}", String::from_utf8_lossy(&restart.stderr));
    for c in workers {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "a worker failed across the restart: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(counts("COMPLETE"), 24, "every trial finished, none lost");

    // A server that stays down: the worker gives up after its wait, with exit code 2.
    write(dir, "t.yaml", &slow_study("down", 40, 10, 60, 30.0));
    let mut c = tune_cmd(dir, &["run", "t.yaml", "--quiet", "--storage", &base])
        .env("PGPASSWORD", &password)
        .env("TUNE_STORAGE_WAIT", "3")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "the second study runs", || counts("COMPLETE") >= 25);
    let stop = Command::new(manifest("scripts/pg.sh")).args(["stop", pgdir.to_str().unwrap()]).output().unwrap();
    assert!(stop.status.success());
    let began = Instant::now();
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        assert!(began.elapsed() < Duration::from_secs(60), "the worker hangs on a dead server");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(c.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("cannot reach the PostgreSQL server") && err.contains("TUNE_STORAGE_WAIT"), "{err}");
    assert!(!err.contains(&password) && !err.contains("panicked"), "{err}");
}

#[test]
fn the_deploy_files_check_out_and_their_commands_run_on_a_real_server() {
    // The Kubernetes manifest against Kubernetes' own schemas (strict: no unknown fields).
    let kv = manifest(".venv/bin/kubernetes-validate");
    if kv.exists() {
        let out =
            Command::new(&kv).args(["--strict", "--quiet"]).arg(manifest("deploy/k8s/tune.yaml")).output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("skipped the manifest check: {} is missing (run scripts/setup.sh)", kv.display());
    }
    let sbatch = manifest("deploy/slurm/tune-array.sbatch");
    assert!(Command::new("bash").arg("-n").arg(&sbatch).status().unwrap().success());
    let Some(admin) = admin_url() else { return };
    let url = fresh_database(&admin, "deploy");

    // The compose file's worker, twice (`--scale worker=2`), with the server swapped for ours.
    let compose: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(manifest("deploy/compose/docker-compose.yaml")).unwrap())
            .unwrap();
    let worker = &compose["services"]["worker"];
    let args: Vec<String> =
        worker["command"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    let env = worker["environment"].as_object().unwrap();
    assert_eq!(env["TUNE_STORAGE"], "postgresql://tune@db:5432/tune");
    let compose_worker = || {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("tune"));
        c.current_dir(manifest("")).args(&args).env("TUNE_STORAGE", &url);
        c.env("TUNE_STORAGE_WAIT", env["TUNE_STORAGE_WAIT"].as_str().unwrap());
        c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
    };
    let mut children = vec![compose_worker(), compose_worker()];
    // The Slurm array task, as one more worker of the same study.
    let study = args.iter().find(|a| a.ends_with(".yaml")).unwrap().clone();
    children.push(
        Command::new("bash")
            .arg(&sbatch)
            .arg(&study)
            .current_dir(manifest(""))
            .env("TUNE", assert_cmd::cargo::cargo_bin("tune"))
            .env("TUNE_STORAGE", &url)
            .env("SLURM_CPUS_PER_TASK", "4")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    all_succeed(children, "deploy worker");
    let (complete, total) = numbers(&url, "COMPLETE");
    assert_eq!(complete, (0..total).collect::<Vec<i64>>());
    assert_eq!(total, 60, "studies/sphere_tpe.yaml's budget, shared by the three workers");
}

#[test]
fn a_worker_cut_off_past_the_grace_period_has_its_late_result_refused() {
    let Some(admin) = admin_url() else { return };
    let url = fresh_database(&admin, "cutoff");
    let dir = TempDir::new().unwrap();
    // Trials of 3 s, so that worker a still runs two when it is frozen, however late this poll.
    write(dir.path(), "s.yaml", &slow_study("cutoff", 6, 20, 150, 1.5));
    let a = tune_cmd(dir.path(), &["run", "s.yaml", "--plain", "--storage", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "worker a runs two trials", || count(&url, "RUNNING") >= 2);
    // Worker a freezes (as if its network were cut): no heartbeats, no writes.
    let pid = a.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_secs(3));
    // Worker b finds a's trials stale, fails and re-queues them, and finishes the study.
    let b = tune_cmd(dir.path(), &["run", "s.yaml", "--plain", "--storage", &url]).output().unwrap();
    let b_err = String::from_utf8_lossy(&b.stderr);
    assert!(b.status.success(), "{b_err}");
    assert!(b_err.contains("no heartbeat"), "{b_err}");
    assert_eq!(count(&url, "COMPLETE"), 6);
    // Worker a comes back: its results are refused, nothing is overwritten, and it ends cleanly.
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let out = a.wait_with_output().unwrap();
    let a_err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{a_err}");
    assert!(a_err.contains("late result is refused"), "{a_err}");
    assert_eq!(count(&url, "COMPLETE"), 6, "the budget holds and no attempt was overwritten");
    let failed: i64 = client(&url)
        .query_one(
            "SELECT count(*) FROM trials t JOIN trial_system_attributes a ON a.trial_id = t.trial_id \
             WHERE t.state = 'FAIL' AND a.key = 'tune:interrupted'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(failed >= 2, "a's two trials were failed as stale");
}

/// Every bad PostgreSQL target, through the command line: exit code 2, a message that names the
/// fix, no password in it, and nothing written to the database.
#[test]
fn bad_postgres_targets_exit_2_with_the_fix_and_write_nothing() {
    let Some(admin) = admin_url() else { return };
    let dir = TempDir::new().unwrap();
    write(dir.path(), "s.yaml", &zero_cost_study("bad", 3, 1));
    let (base, _) = admin.rsplit_once('/').unwrap();
    let secret = std::env::var("PGPASSWORD").unwrap_or_default();
    let run = |url: &str, wait: &str| {
        let out = tune_cmd(dir.path(), &["run", "s.yaml", "--quiet", "--storage", url])
            .env("TUNE_STORAGE_WAIT", wait)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{url}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(secret.is_empty() || !err.contains(&secret), "the password leaked: {err}");
        err
    };
    let tables = |url: &str| -> i64 {
        client(url).query_one("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", &[]).unwrap().get(0)
    };

    // Nothing listens on port 1: the worker waits TUNE_STORAGE_WAIT seconds, then says so.
    let started = Instant::now();
    let err = run("postgresql://tune@127.0.0.1:1/x", "1");
    assert!(err.contains("cannot reach the PostgreSQL server") && err.contains("TUNE_STORAGE_WAIT"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "an unreachable server is not waited on for ever");

    // A wrong password given in the URL: refused at once, the password masked.
    let url = fresh_database(&admin, "badpass");
    let hostport = base.rsplit_once('@').unwrap().1;
    let err = run(&format!("postgresql://tune:hunter2-wrong@{hostport}/{}", url.rsplit_once('/').unwrap().1), "30");
    assert!(err.contains("PGPASSWORD") && !err.contains("hunter2-wrong"), "{err}");
    assert_eq!(tables(&url), 0);

    // A missing database: the createdb command that makes it.
    let err = run(&format!("{base}/no_such_database"), "30");
    assert!(err.contains("createdb") && err.contains("no_such_database"), "{err}");

    // A database that holds something else, and one of another Optuna schema revision.
    let foreign = fresh_database(&admin, "foreigncli");
    client(&foreign).batch_execute("CREATE TABLE invoices (id int PRIMARY KEY)").unwrap();
    let err = run(&foreign, "30");
    assert!(err.contains("database of its own"), "{err}");
    assert_eq!(tables(&foreign), 1, "nothing was written");
    let old = fresh_database(&admin, "oldrev");
    let out = tune_cmd(dir.path(), &["run", "s.yaml", "--quiet", "--storage", &old]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    client(&old).batch_execute("UPDATE alembic_version SET version_num = 'v3.0.0.d'").unwrap();
    let before = catalog(&old);
    let err = run(&old, "30");
    assert!(err.contains("v3.0.0.d") && err.contains("optuna storage upgrade"), "{err}");
    assert_eq!(catalog(&old), before, "the database is left as it was");
    let n: i64 = client(&old).query_one("SELECT count(*) FROM trials", &[]).unwrap().get(0);
    assert_eq!(n, 3, "no trial was added");

    // `tune ls` names the target without its password.
    let out = Command::new(assert_cmd::cargo::cargo_bin("tune"))
        .args(["ls", "--storage", &format!("postgresql://tune:hunter2-wrong@{hostport}/postgres")])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(!text.contains("hunter2-wrong"), "{text}");
}
