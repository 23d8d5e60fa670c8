//! The PostgreSQL backend against a real server: the one `scripts/test.sh` starts and names in
//! `TUNE_TEST_POSTGRES` (an admin URL; the password in `PGPASSWORD`). Without it the tests say
//! so and skip.

use std::sync::Arc;

use super::testing::{admin_url, client, fresh_database};
use super::*;
use crate::storage::contract;

#[test]
fn contract() {
    let Some(admin) = admin_url() else { return };
    contract::run_all(&|| Arc::new(PostgresStorage::open(&fresh_database(&admin, "contract"), true).unwrap()));
}

#[test]
fn workers_started_together_create_the_schema_once() {
    let Some(admin) = admin_url() else { return };
    let url = fresh_database(&admin, "race");
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let s = PostgresStorage::open(&url, true).unwrap();
                match s.create_new_study("shared", Direction::Minimize) {
                    Ok(id) => Some(id),
                    Err(StorageError::DuplicateStudy(_)) => None,
                    Err(e) => panic!("{e}"),
                }
            })
        })
        .collect();
    let created: Vec<i64> = handles.into_iter().filter_map(|h| h.join().unwrap()).collect();
    assert_eq!(created.len(), 1, "exactly one worker creates the study");
    let mut c = client(&url);
    let n: i64 = c.query_one("SELECT count(*) FROM alembic_version", &[]).unwrap().get(0);
    assert_eq!(n, 1);
    let n: i64 = c.query_one("SELECT count(*) FROM studies", &[]).unwrap().get(0);
    assert_eq!(n, 1);
}

#[test]
fn foreign_and_other_revision_databases_are_refused_and_left_alone() {
    let Some(admin) = admin_url() else { return };
    let url = fresh_database(&admin, "foreign");
    client(&url).batch_execute("CREATE TABLE invoices (id int PRIMARY KEY); INSERT INTO invoices VALUES (1)").unwrap();
    let e = PostgresStorage::open(&url, true).err().expect("refused");
    assert!(matches!(e, StorageError::Incompatible { .. }), "{e}");
    assert!(e.to_string().contains("database of its own"), "{e}");
    let tables: i64 =
        client(&url).query_one("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", &[]).unwrap().get(0);
    assert_eq!(tables, 1, "nothing was written");

    let url = fresh_database(&admin, "revision");
    drop(PostgresStorage::open(&url, true).unwrap());
    client(&url).batch_execute("UPDATE alembic_version SET version_num = 'v3.0.0.d'").unwrap();
    let e = PostgresStorage::open(&url, true).err().expect("refused").to_string();
    assert!(e.contains("v3.0.0.d") && e.contains("optuna storage upgrade"), "{e}");

    // A read-only open of an empty database creates nothing.
    let url = fresh_database(&admin, "empty");
    let e = PostgresStorage::open(&url, false).err().expect("refused").to_string();
    assert!(e.contains("holds no study"), "{e}");
    let tables: i64 =
        client(&url).query_one("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", &[]).unwrap().get(0);
    assert_eq!(tables, 0);
}

#[test]
fn the_shared_budget_is_exact_across_storages() {
    let Some(admin) = admin_url() else { return };
    let url = fresh_database(&admin, "budget");
    let study = PostgresStorage::open(&url, true).unwrap().create_new_study("b", Direction::Minimize).unwrap();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let s = PostgresStorage::open(&url, true).unwrap();
                let mut mine = Vec::new();
                while let Some(t) = s.start_next_trial(study, Some(120)).unwrap() {
                    s.set_trial_state_values(t.trial_id, TrialState::Complete, Some(t.number as f64)).unwrap();
                    mine.push(t.number);
                }
                mine
            })
        })
        .collect();
    let mut numbers: Vec<i64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..120).collect::<Vec<i64>>());
}

#[test]
fn a_late_tell_on_a_trial_failed_elsewhere_changes_nothing() {
    let Some(admin) = admin_url() else { return };
    let url = fresh_database(&admin, "late");
    let a = PostgresStorage::open(&url, true).unwrap();
    let b = PostgresStorage::open(&url, true).unwrap();
    let study = a.create_new_study("late", Direction::Minimize).unwrap();
    let t = a.start_next_trial(study, None).unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let failed = b.fail_stale_trials(study, Duration::from_millis(100)).unwrap();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].system_attrs[FAIL_REASON_KEY].as_str().unwrap().contains("database server time"));
    assert!(!a.set_trial_state_values(t.trial_id, TrialState::Complete, Some(1.0)).unwrap());
    let e = a.set_trial_intermediate_value(t.trial_id, 1, 1.0).err().unwrap();
    assert!(matches!(e, StorageError::TrialFinished { .. }), "{e}");
    let now = b.get_trial(t.trial_id).unwrap();
    assert_eq!((now.state, now.value), (TrialState::Fail, None));
}

#[test]
fn login_errors_name_the_fix_and_never_show_the_password() {
    let Some(admin) = admin_url() else { return };
    let t = Target::resolve(&admin, &Env::process()).unwrap();
    let (host, port) = (t.config.get_hosts().to_vec(), t.config.get_ports()[0]);
    let host = match &host[0] {
        postgres::config::Host::Tcp(h) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let e = PostgresStorage::open(&format!("postgresql://tune:wrong-secret@{host}:{port}/postgres"), true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("PGPASSWORD") && !e.contains("wrong-secret"), "{e}");
    let e = PostgresStorage::open(&format!("{}/no_such_db", admin.rsplit_once('/').unwrap().0), true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("createdb") && e.contains("no_such_db"), "{e}");
}

#[test]
fn a_trial_s_parameters_and_attributes_are_written_together_in_order_or_not_at_all() {
    let Some(admin) = admin_url() else { return };
    let url = fresh_database(&admin, "batch");
    let s = PostgresStorage::open(&url, true).unwrap();
    let study = s.create_new_study("b", Direction::Minimize).unwrap();
    let f = Distribution::float(0.0, 1.0, false, None).unwrap();
    let i = Distribution::int(0, 5, false, 1).unwrap();
    let t = s.start_next_trial(study, None).unwrap().unwrap();
    let params =
        vec![("z".to_string(), 0.25, f.clone()), ("a".to_string(), 3.0, i.clone()), ("z".to_string(), 0.5, f.clone())];
    s.set_trial_params_and_attrs(t.trial_id, &params, &[("seed".to_string(), Value::from(7))]).unwrap();
    let rows: Vec<(String, f64)> = client(&url)
        .query("SELECT param_name, param_value FROM trial_params ORDER BY param_id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        vec![("a".to_string(), 3.0), ("z".to_string(), 0.5)],
        "in order, the last value of a repeated name"
    );
    let got = s.get_trial(t.trial_id).unwrap();
    assert_eq!(got.user_attrs["seed"], Value::from(7));

    // `a` as a float in a later trial is refused, and the batch's other writes with it.
    let u = s.start_next_trial(study, None).unwrap().unwrap();
    let bad = vec![("y".to_string(), 0.1, f.clone()), ("a".to_string(), 0.5, f)];
    let e = s.set_trial_params_and_attrs(u.trial_id, &bad, &[("seed".to_string(), Value::from(8))]).unwrap_err();
    assert!(matches!(e, StorageError::IncompatibleDistribution { .. }), "{e}");
    let n: i64 = client(&url)
        .query_one("SELECT count(*) FROM trial_params WHERE trial_id = $1", &[&(u.trial_id as i32)])
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing of the refused batch was written");
    assert!(s.get_trial(u.trial_id).unwrap().user_attrs.is_empty());
}

#[test]
fn statements_a_schema_change_invalidated_are_prepared_again() {
    let Some(admin) = admin_url() else { return };
    let url = fresh_database(&admin, "reprepare");
    let s = PostgresStorage::open(&url, true).unwrap();
    s.create_new_study("one", Direction::Minimize).unwrap();
    assert_eq!(s.get_all_studies().unwrap().len(), 1);
    // The cached listing statement returns study_name; another type for it invalidates the
    // statement ("cached plan must not change result type"): the storage prepares it anew.
    client(&url).batch_execute("ALTER TABLE studies ALTER COLUMN study_name TYPE text").unwrap();
    s.create_new_study("two", Direction::Minimize).unwrap();
    let names: Vec<String> = s.get_all_studies().unwrap().into_iter().map(|st| st.name).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn a_worker_frozen_inside_a_transaction_blocks_the_others_only_briefly() {
    let Some(admin) = admin_url() else { return };
    let url = fresh_database(&admin, "frozen");
    let a = PostgresStorage::open(&url, true).unwrap();
    let b = Arc::new(PostgresStorage::open(&url, true).unwrap());
    let study = a.create_new_study("frozen", Direction::Minimize).unwrap();
    let t = a.start_next_trial(study, None).unwrap().unwrap();
    // Worker a freezes in the middle of a write: its pooled connection holds the trial's row
    // lock in an open transaction and sends nothing more.
    let mut conn = a.pool.get().unwrap();
    let mut tx = conn.client.transaction().unwrap();
    tx.query("SELECT 1 FROM trials WHERE trial_id = $1 FOR UPDATE", &[&(t.trial_id as i32)]).unwrap();
    // Worker b's write to that trial waits for the lock until the server ends a's session.
    let (done, result) = std::sync::mpsc::channel();
    let started = Instant::now();
    let writer = Arc::clone(&b);
    std::thread::spawn(move || {
        let _ = done.send(writer.set_trial_state_values(t.trial_id, TrialState::Complete, Some(1.0)));
    });
    let written = result
        .recv_timeout(IDLE_IN_TRANSACTION_TIMEOUT + Duration::from_secs(20))
        .expect("a frozen transaction blocked another worker's write");
    assert!(written.unwrap(), "b's result is stored");
    assert!(started.elapsed() >= IDLE_IN_TRANSACTION_TIMEOUT / 2, "b did wait for the lock");
    // a's session is gone: its transaction cannot go on, and a new connection works.
    assert!(tx.query("SELECT 1", &[]).is_err());
    drop(tx);
    drop(conn);
    assert_eq!(a.get_trial(t.trial_id).unwrap().state, TrialState::Complete);
}
