//! Test support: databases on the throwaway server that `scripts/test.sh` starts and names in
//! `TUNE_TEST_POSTGRES` (an admin URL; the password in `PGPASSWORD`). Used by the unit tests and
//! by `tests/postgres.rs`.
#![doc(hidden)]

use std::sync::atomic::{AtomicUsize, Ordering};

use postgres::NoTls;

use super::{Env, Target};

static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// The admin URL of the test server, or `None` (printing why) when there is none.
pub fn admin_url() -> Option<String> {
    match std::env::var("TUNE_TEST_POSTGRES") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("skipped: no PostgreSQL test server (TUNE_TEST_POSTGRES is unset; scripts/test.sh starts one)");
            None
        }
    }
}

/// Creates an empty database on the test server and returns its URL.
pub fn fresh_database(admin: &str, tag: &str) -> String {
    let name = format!("tune_{tag}_{}_{}", std::process::id(), NEXT_DB.fetch_add(1, Ordering::Relaxed));
    let t = Target::resolve(admin, &Env::process()).unwrap();
    let mut c = t.config.connect(NoTls).unwrap();
    c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// A plain client on `url` (password from the environment, as the storage's).
pub fn client(url: &str) -> postgres::Client {
    Target::resolve(url, &Env::process()).unwrap().config.connect(NoTls).unwrap()
}
