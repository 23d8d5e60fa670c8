//! The `tune` binary: parses arguments, runs the library, maps the outcome to an exit code
//! (0 ok, 1 a study or trial failure to look at, 2 bad input, 130 interrupted).

fn main() {
    let code = match tune::cli::run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("Error: {err:#}");
            tune::error::exit_code(&err)
        }
    };
    std::process::exit(code);
}
