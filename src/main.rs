//! The `tune` binary: parses arguments, runs the library, maps the outcome to an exit code
//! (0 ok, 1 a study or trial failure to look at, 2 bad input, 130 interrupted).

fn main() {
    tune::error::install_quiet_panic_hook();
    let code = match std::panic::catch_unwind(tune::cli::run) {
        Ok(Ok(code)) => code,
        Ok(Err(err)) => {
            eprintln!("Error: {err:#}");
            tune::error::exit_code(&err)
        }
        Err(panic) => {
            eprintln!(
                "Error: internal error: {}; this is a bug in tune, please report it (RUST_BACKTRACE=1 shows where)",
                tune::error::panic_message(panic.as_ref())
            );
            1
        }
    };
    std::process::exit(code);
}
