//! Error kinds that decide the process exit code: bad input (2) versus a failed study (1).

use thiserror::Error;

/// A problem with what the user gave us (a study file, a flag, a storage URL, a database that
/// is not ours). Always exits with code 2, with a message that names the fix.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct InputError(pub String);

impl InputError {
    /// Builds an input error from anything printable.
    pub fn new(msg: impl Into<String>) -> Self {
        InputError(msg.into())
    }
}

/// Returned by an objective to say the trial was pruned (Optuna's `TrialPruned`).
#[derive(Debug, Error)]
#[error("trial pruned")]
pub struct TrialPruned;

/// Returned when a run was interrupted (Ctrl-C) while a trial was running.
#[derive(Debug, Error)]
#[error("interrupted")]
pub struct Interrupted;

/// The message of a caught panic (`&str` or `String` payloads; libtorch errors raised by tch
/// arrive as the latter).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Replaces the default panic hook, which prints Rust's panic banner to stderr, with one that
/// prints nothing: every panic is caught where it can be explained (a trial's panic becomes its
/// FAIL reason, the binary turns one of its own into an `Error:` line). With `RUST_BACKTRACE`
/// set, the default hook still runs, for whoever is debugging tune itself.
pub fn install_quiet_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
            default(info);
        }
    }));
}

/// Shorthand for `Err(InputError)` inside an `anyhow` function.
#[macro_export]
macro_rules! input_err {
    ($($arg:tt)*) => { ::anyhow::Error::new($crate::error::InputError(format!($($arg)*))) };
}

/// Maps an error chain to the process exit code: 2 for bad input (including a locked, corrupt
/// or foreign database), 1 for anything else.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if cause.downcast_ref::<InputError>().is_some() {
            return 2;
        }
        if let Some(e) = cause.downcast_ref::<crate::storage::StorageError>() {
            if e.is_user_fixable() {
                return 2;
            }
        }
    }
    1
}
