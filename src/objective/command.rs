//! The `command` objective: runs any program once per trial and reads its results from a
//! line protocol on its standard output, so a search can drive scripts in any language.
//!
//! # Protocol
//!
//! For each trial, `tune` writes the trial's resolved config (the base `config` with the sampled
//! parameters filled in) to `<log_dir>/trial-<number>/config.json` and starts the program in
//! `workdir` (default: the study file's folder), in a process group of its own, with stdin
//! closed. The command line may use placeholders: `{config}` (the path of that JSON file),
//! `{trial}` (the trial number), `{seed}` (the trial's seed) and `{<dotted.path>}` (the value at
//! that path of the trial's config, e.g. `{opt.lr}`); strings and numbers are inserted as they
//! are, other values as JSON, and `{{` / `}}` stand for literal braces. A list runs the program
//! directly (no shell); a string runs through `sh -c`, where inserted values are not quoted.
//!
//! The environment also carries `TUNE_CONFIG` (the config path), `TUNE_TRIAL_DIR` (the trial's
//! log folder, for checkpoints or other files), `TUNE_TRIAL_NUMBER`, `TUNE_SEED`, `TUNE_STUDY`,
//! `TUNE_DEVICE` (the device `parallelism.devices` placed the trial on, when it lists any)
//! and `TUNE_PARAM_<NAME>` for every parameter of the trial (the name upper-cased with each
//! non-alphanumeric character replaced by `_`: `opt.lr` gives `TUNE_PARAM_OPT_LR`).
//! `PYTHONUNBUFFERED=1` is set unless `env` says otherwise, so that Python programs' reports
//! arrive as they are printed.
//!
//! The program talks back with lines on stdout:
//!
//! - `@tune report <step> <value>`: an intermediate value at an integer step. The pruner is
//!   asked right away; when it says stop, the program is killed and the trial is PRUNED.
//! - `@tune value <value>`: the trial's final value; the last such line wins.
//!
//! Values are decimal numbers, `nan`, `inf` or `-inf`. Other lines are only logged; a malformed
//! `@tune` line fails the trial. Stdout and stderr are saved to `stdout.log` and `stderr.log` in
//! the trial folder. A non-zero exit fails the trial with the exit status and the last lines of
//! stderr; exiting with 0 but without a value line fails it too. Past `timeout` seconds, or on
//! Ctrl-C, the whole process group is killed. When the program exits, anything it left running
//! in its process group is killed as well. The trial's user attributes record `log_dir` and
//! `exit_code` (null when the program was killed by a signal).

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::{BuildContext, Objective};
use crate::error::{InputError, Interrupted, TrialPruned};
use crate::spec::path::get as lookup;
use crate::study::Trial;

/// How often a running trial checks for Ctrl-C.
const INTERRUPT_POLL: Duration = Duration::from_millis(100);
/// How long to keep reading output after the program exited: a process that left its group
/// (`setsid`) may hold the pipes open forever.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Lines of stderr quoted in the error of a failed trial.
const STDERR_TAIL_LINES: usize = 10;

/// The `objective:` section for `type: command`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// The program to run per trial: a list (program and arguments, no shell) or a string (run
    /// with `sh -c`). Each element is templated with `{config}`, `{trial}`, `{seed}` and
    /// `{<dotted.path>}` of the trial's config; `{{` and `}}` are literal braces.
    pub command: CommandLine,
    /// The base config (a mapping) the sampled parameters are written into; every parameter
    /// of the search space must be a dotted path that exists in it.
    #[serde(default = "empty_mapping")]
    pub config: Value,
    /// Seconds a trial may run before its process group is killed and the trial fails.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Extra environment variables for the program (strings, numbers or booleans).
    #[serde(default)]
    pub env: BTreeMap<String, Value>,
    /// Working directory, relative to the study file's folder (default: that folder).
    #[serde(default)]
    pub workdir: Option<PathBuf>,
}

fn empty_mapping() -> Value {
    Value::Object(Default::default())
}

/// The `command:` field: a string for the shell or a list of arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandLine {
    /// Run with `sh -c <string>`.
    Shell(String),
    /// Run the first element with the others as arguments, without a shell.
    Argv(Vec<String>),
}

impl<'de> Deserialize<'de> for CommandLine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A hand-written visitor instead of `#[serde(untagged)]`, whose error message ("did not
        // match any variant") would not tell the user what to write.
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = CommandLine;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string (run with `sh -c`) or a list of strings (program and arguments)")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<CommandLine, E> {
                Ok(CommandLine::Shell(s.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<CommandLine, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element::<ArgString>()? {
                    argv.push(arg.0);
                }
                Ok(CommandLine::Argv(argv))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// One argument: YAML writes `[python3, train.py, --epochs, 10]`, so plain numbers and
/// booleans are accepted and written as they read.
struct ArgString(String);

impl<'de> Deserialize<'de> for ArgString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(ArgString(s)),
            v @ (Value::Number(_) | Value::Bool(_)) => Ok(ArgString(v.to_string())),
            v => Err(serde::de::Error::custom(format!(
                "each element of `command` must be a string, got {v}; quote it, e.g. \"{{config}}\""
            ))),
        }
    }
}

/// Runs an external program per trial (see the module documentation for the protocol).
#[derive(Debug)]
pub struct CommandObjective {
    base: Value,
    program: String,
    /// Templated arguments after the program (for the shell form: `-c` and the script).
    args: Vec<Template>,
    timeout: Option<f64>,
    env: Vec<(String, String)>,
    workdir: PathBuf,
    log_dir: PathBuf,
}

impl CommandObjective {
    /// Checks the spec (config is a mapping, placeholders are known, the program exists,
    /// `workdir` is a folder) and builds the objective. Problems are `InputError`s.
    pub fn new(spec: &CommandSpec, ctx: &BuildContext) -> anyhow::Result<Self> {
        if !spec.config.is_object() {
            return Err(input(format!(
                "objective.config must be a mapping of settings (got {}); write e.g. `config: {{x: 0.0}}`",
                spec.config
            )));
        }
        let base = spec.config.clone();
        let template = |s: &str| Template::parse(s, &base).map_err(|e| input(format!("objective.command: {e}")));
        let (program, args) = match &spec.command {
            CommandLine::Shell(script) => {
                if script.trim().is_empty() {
                    return Err(input("objective.command is empty; give the program to run per trial".into()));
                }
                ("sh".to_string(), vec![Template::literal("-c"), template(script)?])
            }
            CommandLine::Argv(argv) => {
                let Some((first, rest)) = argv.split_first() else {
                    return Err(input("objective.command is an empty list; give the program and its arguments".into()));
                };
                if first.contains(['{', '}']) {
                    return Err(input(format!(
                        "objective.command: the program `{first}` cannot contain placeholders; put them in the arguments"
                    )));
                }
                let args = rest.iter().map(|a| template(a)).collect::<anyhow::Result<_>>()?;
                (first.clone(), args)
            }
        };
        let timeout = match spec.timeout {
            Some(t) if !(t > 0.0 && t <= crate::spec::MAX_SECONDS) => {
                return Err(input(format!(
                    "objective.timeout must be a positive number of seconds, at most {:e}, got {t}",
                    crate::spec::MAX_SECONDS
                )));
            }
            t => t,
        };
        let mut env = Vec::new();
        for (name, value) in &spec.env {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(input(format!("objective.env: `{name}` is not a valid environment variable name")));
            }
            let value = match value {
                Value::String(s) => s.clone(),
                v @ (Value::Number(_) | Value::Bool(_)) => v.to_string(),
                v => return Err(input(format!("objective.env.{name} must be a string, number or boolean, got {v}"))),
            };
            env.push((name.clone(), value));
        }
        // An empty folder (a library caller's `Path::parent` of a bare name) is the current one.
        let here = if ctx.base_dir.as_os_str().is_empty() { Path::new(".") } else { ctx.base_dir.as_path() };
        let base_dir = std::path::absolute(here)
            .with_context(|| format!("resolving the study folder {}", ctx.base_dir.display()))?;
        let workdir = match &spec.workdir {
            Some(w) => base_dir.join(w),
            None => base_dir,
        };
        if !workdir.is_dir() {
            return Err(input(format!(
                "objective.workdir {} is not a folder; paths are relative to the study file's folder",
                workdir.display()
            )));
        }
        let path_var =
            env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone()).or_else(|| std::env::var("PATH").ok());
        check_program(&program, &workdir, path_var.as_deref())?;
        // Absolute, because the program runs in `workdir` and gets this path through `{config}`.
        let log_dir = std::path::absolute(&ctx.log_dir)
            .with_context(|| format!("resolving the log folder {}", ctx.log_dir.display()))?;
        Ok(CommandObjective { base, program, args, timeout, env, workdir, log_dir })
    }

    /// Builds the process for one trial: arguments, environment, folders and pipes.
    fn command(
        &self,
        config: &Value,
        trial: &Trial,
        trial_dir: &Path,
        config_path: &Path,
    ) -> anyhow::Result<tokio::process::Command> {
        let vars =
            Vars { config_path: &config_path.to_string_lossy(), trial: trial.number(), seed: trial.seed(), config };
        // A path (`./train.sh`) is resolved against the workdir here: how a relative program
        // path combines with `current_dir` differs between platforms and spawn methods.
        let mut cmd = if self.program.contains('/') {
            tokio::process::Command::new(self.workdir.join(&self.program))
        } else {
            tokio::process::Command::new(&self.program)
        };
        for arg in &self.args {
            cmd.arg(arg.render(&vars)?);
        }
        cmd.current_dir(&self.workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own group, so that killing it also kills what a shell or launcher started.
            .process_group(0)
            .env("PYTHONUNBUFFERED", "1");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.env("TUNE_CONFIG", config_path)
            .env("TUNE_TRIAL_DIR", trial_dir)
            .env("TUNE_TRIAL_NUMBER", trial.number().to_string())
            .env("TUNE_SEED", trial.seed().to_string())
            .env("TUNE_STUDY", trial.study_name());
        if let Some(device) = trial.device() {
            cmd.env("TUNE_DEVICE", device);
        }
        for (name, value) in trial.frozen().external_params() {
            cmd.env(param_env_name(&name), plain(&value));
        }
        Ok(cmd)
    }

    /// Runs the process to its end, following the protocol. `status` receives how the process
    /// ended, whatever the outcome.
    async fn supervise(
        &self,
        mut cmd: tokio::process::Command,
        trial: &mut Trial,
        trial_dir: &Path,
        status: &mut Option<ExitStatus>,
    ) -> anyhow::Result<f64> {
        let create = |name: &str| {
            let path = trial_dir.join(name);
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
        };
        let mut stdout_log = create("stdout.log")?;
        let stderr_log = create("stderr.log")?;
        let mut child = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        let group = ProcessGroup(child.id().map(|pid| pid as i32));
        let mut stdout = BufReader::new(child.stdout.take().context("the program's stdout was not captured")?);
        let stderr = tokio::spawn(log_and_tail(child.stderr.take().context("stderr was not captured")?, stderr_log));

        let mut buf = Vec::new();
        let mut line_no = 0usize;
        let mut stdout_open = true;
        let mut value = None;
        let deadline = tokio::time::sleep(Duration::from_secs_f64(self.timeout.unwrap_or(0.0)));
        tokio::pin!(deadline);
        let drain = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(drain);
        let mut poll = tokio::time::interval(INTERRUPT_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

        while stdout_open || status.is_none() {
            let event = tokio::select! {
                // `read_until` keeps partial input in `buf` when another branch wins, so no
                // output is lost; the line is handled once complete.
                r = stdout.read_until(b'\n', &mut buf), if stdout_open => Event::Read(r),
                s = child.wait(), if status.is_none() => Event::Exited(s),
                _ = &mut deadline, if self.timeout.is_some() => Event::TimedOut,
                _ = &mut drain, if status.is_some() => Event::DrainOver,
                _ = poll.tick() => Event::Poll,
            };
            match event {
                Event::Read(r) => {
                    let n = r.context("reading the program's stdout")?;
                    if n == 0 {
                        stdout_open = false;
                        if buf.is_empty() {
                            continue;
                        }
                    } else if buf.last() != Some(&b'\n') {
                        continue;
                    }
                    line_no += 1;
                    let _ = stdout_log.write_all(&buf);
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    buf.clear();
                    let msg = parse_line(&line).map_err(|e| anyhow!("stdout line {line_no} `{}`: {e}", line.trim()));
                    match msg {
                        Ok(None) => {}
                        Ok(Some(Message::Value(v))) => value = Some(v),
                        Ok(Some(Message::Report { step, value })) => {
                            trial.report(step, value)?;
                            if trial.interrupted() {
                                stop(&mut child, &group, status).await;
                                return Err(Interrupted.into());
                            }
                            if trial.should_prune()? {
                                stop(&mut child, &group, status).await;
                                return Err(TrialPruned.into());
                            }
                        }
                        Err(e) => {
                            stop(&mut child, &group, status).await;
                            return Err(e);
                        }
                    }
                }
                Event::Exited(s) => {
                    *status = Some(s.context("waiting for the program")?);
                    // Leftovers of the group (background jobs) would keep the pipes open.
                    group.kill();
                    drain.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
                }
                Event::TimedOut => {
                    stop(&mut child, &group, status).await;
                    return Err(anyhow!("timed out after {} s", self.timeout.unwrap_or_default()));
                }
                Event::DrainOver => break,
                Event::Poll => {
                    if trial.interrupted() {
                        stop(&mut child, &group, status).await;
                        return Err(Interrupted.into());
                    }
                }
            }
        }

        let tail = match tokio::time::timeout(DRAIN_GRACE, stderr).await {
            Ok(Ok(tail)) => tail,
            _ => VecDeque::new(),
        };
        let exit = status.expect("the loop ends after the program exited");
        if !exit.success() {
            return Err(anyhow!(
                "`{}` {}{}",
                self.program,
                describe_exit(exit),
                describe_stderr(&tail, &trial_dir.join("stderr.log"))
            ));
        }
        value.ok_or_else(|| {
            anyhow!(
                "`{}` exited with status 0 without reporting its result; print a line `@tune value <number>` to stdout \
                 (in Python: print(f\"@tune value {{result}}\", flush=True)); output is in {}",
                self.program,
                trial_dir.display()
            )
        })
    }

    /// Explains why the program could not be started, and what to do about it.
    fn spawn_error(&self, e: std::io::Error) -> anyhow::Error {
        let fix = match e.kind() {
            std::io::ErrorKind::NotFound => {
                "check its name and that it is on PATH, or give its path (relative to the workdir)"
            }
            std::io::ErrorKind::PermissionDenied => {
                "make it executable (chmod +x) or run it through its interpreter, e.g. [python3, script.py]"
            }
            _ => "check `objective.command`",
        };
        anyhow!("cannot start `{}` in {}: {e}; {fix}", self.program, self.workdir.display())
    }
}

impl Objective for CommandObjective {
    fn base_config(&self) -> &Value {
        &self.base
    }

    /// The program reads its config as the base config shows it: a value keeps its kind.
    fn check(&self, config: &Value) -> Result<(), String> {
        crate::spec::path::same_kinds(&self.base, config)
    }

    fn run(&self, config: &Value, trial: &mut Trial) -> anyhow::Result<f64> {
        let trial_dir = self.log_dir.join(format!("trial-{}", trial.number()));
        std::fs::create_dir_all(&trial_dir).with_context(|| format!("creating {}", trial_dir.display()))?;
        let config_path = trial_dir.join("config.json");
        let mut json = serde_json::to_string_pretty(config)?;
        json.push('\n');
        std::fs::write(&config_path, json).with_context(|| format!("writing {}", config_path.display()))?;
        trial.set_user_attr("log_dir", Value::from(trial_dir.to_string_lossy().into_owned()))?;

        let cmd = self.command(config, trial, &trial_dir, &config_path)?;
        // One small runtime per trial: trials run on plain worker threads, each driving its
        // own process.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .context("starting the runtime that supervises the program")?;
        let mut status = None;
        let result = rt.block_on(self.supervise(cmd, trial, &trial_dir, &mut status));
        if let Some(status) = status {
            let recorded = trial.set_user_attr("exit_code", status.code().map_or(Value::Null, Value::from));
            // A storage error must not hide why the trial ended (pruned, interrupted, failed).
            if result.is_ok() {
                recorded?;
            }
        }
        result
    }
}

/// What woke the supervising loop.
enum Event {
    Read(std::io::Result<usize>),
    Exited(std::io::Result<ExitStatus>),
    TimedOut,
    DrainOver,
    Poll,
}

/// The program's process group; killed when dropped, so that no exit path leaves it running.
struct ProcessGroup(Option<i32>);

impl ProcessGroup {
    fn kill(&self) {
        if let Some(pgid) = self.0 {
            // SAFETY: killpg only sends a signal; the group is the one the child leads. ESRCH
            // (the group is already gone) is expected and harmless.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills the program's group and reaps it, recording how it ended.
async fn stop(child: &mut tokio::process::Child, group: &ProcessGroup, status: &mut Option<ExitStatus>) {
    group.kill();
    if status.is_none() {
        let _ = child.start_kill();
        if let Ok(Ok(s)) = tokio::time::timeout(DRAIN_GRACE, child.wait()).await {
            *status = Some(s);
        }
    }
}

/// Copies a stream to its log file and keeps its last lines for error messages.
async fn log_and_tail(stream: impl AsyncRead + Unpin, mut log: std::fs::File) -> VecDeque<String> {
    let mut reader = BufReader::new(stream);
    let mut tail = VecDeque::new();
    let mut buf = Vec::new();
    while let Ok(n) = reader.read_until(b'\n', &mut buf).await {
        if n == 0 {
            break;
        }
        let _ = log.write_all(&buf);
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(String::from_utf8_lossy(&buf).trim_end().to_string());
        buf.clear();
    }
    tail
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => format!("ended with {status}"),
    }
}

fn describe_stderr(tail: &VecDeque<String>, log: &Path) -> String {
    let lines: Vec<&str> = tail.iter().map(String::as_str).skip_while(|l| l.trim().is_empty()).collect();
    if lines.is_empty() {
        return format!("; stderr was empty (stdout is in {})", log.with_file_name("stdout.log").display());
    }
    let mut s = format!("; last lines of stderr ({}):", log.display());
    for line in lines {
        s.push_str("\n    ");
        s.push_str(line);
    }
    s
}

/// Rejects at build time a program that cannot be found, rather than failing every trial.
fn check_program(program: &str, workdir: &Path, path_var: Option<&str>) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let executable =
        |p: &Path| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if program.contains('/') {
        let path = workdir.join(program);
        if !path.exists() {
            return Err(input(format!(
                "objective.command: program {} does not exist (relative paths start from the workdir, {})",
                path.display(),
                workdir.display()
            )));
        }
        if !executable(&path) {
            return Err(input(format!(
                "objective.command: {} is not executable; chmod +x it or run it through its interpreter, e.g. [python3, {program}]",
                path.display()
            )));
        }
        return Ok(());
    }
    let found = std::env::split_paths(path_var.unwrap_or_default()).any(|dir| executable(&dir.join(program)));
    if !found {
        return Err(input(format!(
            "objective.command: program `{program}` was not found on PATH; install it, or give its path (e.g. ./{program})"
        )));
    }
    Ok(())
}

fn input(msg: String) -> anyhow::Error {
    InputError::new(msg).into()
}

/// One piece of a templated argument.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    ConfigPath,
    Trial,
    Seed,
    /// A dotted path into the trial's config.
    Path(String),
}

/// A command-line string with placeholders, parsed once when the objective is built.
#[derive(Debug, Clone, PartialEq)]
struct Template(Vec<Piece>);

/// What placeholders are replaced with for one trial.
struct Vars<'a> {
    config_path: &'a str,
    trial: i64,
    seed: u64,
    config: &'a Value,
}

impl Template {
    fn literal(s: &str) -> Template {
        Template(vec![Piece::Text(s.to_string())])
    }

    /// Parses `s`; a placeholder other than `config`, `trial` and `seed` must be a path of
    /// `base`, so that a typo is caught before any trial runs.
    fn parse(s: &str, base: &Value) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = s.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek().map(|&(_, c)| c) == Some('}') => {
                    chars.next();
                    text.push('}');
                }
                '}' => return Err(format!("single `}}` in `{s}`; write `}}}}` for a literal brace")),
                '{' => {
                    let rest = &s[i + 1..];
                    let end = rest
                        .find(['}', '{'])
                        .filter(|&j| rest.as_bytes()[j] == b'}')
                        .ok_or_else(|| format!("unclosed `{{` in `{s}`; write `{{{{` for a literal brace"))?;
                    let name = &rest[..end];
                    for _ in 0..name.chars().count() + 1 {
                        chars.next();
                    }
                    let piece = match name {
                        "config" => Piece::ConfigPath,
                        "trial" => Piece::Trial,
                        "seed" => Piece::Seed,
                        _ if lookup(base, name).is_some() => Piece::Path(name.to_string()),
                        _ => {
                            return Err(format!(
                                "unknown placeholder `{{{name}}}` in `{s}`; use {{config}}, {{trial}}, {{seed}} or a \
                                 dotted path of `config` (e.g. {{opt.lr}}), and write `{{{{`/`}}}}` for literal braces \
                                 (in a shell string, `$HOME` instead of `${{HOME}}`)"
                            ))
                        }
                    };
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(piece);
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template(pieces))
    }

    fn render(&self, vars: &Vars) -> anyhow::Result<String> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::ConfigPath => out.push_str(vars.config_path),
                Piece::Trial => out.push_str(&vars.trial.to_string()),
                Piece::Seed => out.push_str(&vars.seed.to_string()),
                Piece::Path(p) => {
                    let v = lookup(vars.config, p).with_context(|| format!("the trial's config has no `{p}`"))?;
                    out.push_str(&plain(v));
                }
            }
        }
        Ok(out)
    }
}

/// A value as a program reads it on its command line: strings without quotes, numbers as
/// written, anything else as JSON.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `TUNE_PARAM_<NAME>` for parameter `name`.
fn param_env_name(name: &str) -> String {
    let suffix: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("TUNE_PARAM_{suffix}")
}

/// A protocol line.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Message {
    Report { step: i64, value: f64 },
    Value(f64),
}

/// Parses one stdout line: `None` for an ordinary line, an error for a malformed `@tune` line.
fn parse_line(line: &str) -> Result<Option<Message>, String> {
    let mut words = line.split_whitespace();
    if words.next() != Some("@tune") {
        return Ok(None);
    }
    let words: Vec<&str> = words.collect();
    let number =
        |s: &str| s.parse::<f64>().map_err(|_| format!("`{s}` is not a number (nan, inf and -inf are allowed)"));
    match words.as_slice() {
        ["report", step, value] => {
            let step = step.parse::<i64>().map_err(|_| format!("the step `{step}` is not an integer"))?;
            Ok(Some(Message::Report { step, value: number(value)? }))
        }
        ["value", value] => Ok(Some(Message::Value(number(value)?))),
        _ => Err("expected `@tune report <step> <value>` or `@tune value <value>`".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Instant;

    use serde_json::json;

    use super::*;
    use crate::distribution::Distribution;
    use crate::frozen::{Direction, FrozenTrial};
    use crate::pruner::{NopPruner, Pruner};
    use crate::sampler::{Sampler, StudyView};
    use crate::storage::InMemoryStorage;
    use crate::study::{outcome_of, Outcome, Study};

    fn vars(config: &Value) -> Vars<'_> {
        Vars { config_path: "/logs/trial-3/config.json", trial: 3, seed: 42, config }
    }

    fn render(s: &str, config: &Value) -> Result<String, String> {
        let t = Template::parse(s, config)?;
        Ok(t.render(&vars(config)).unwrap())
    }

    #[test]
    fn templates_fill_builtins_and_paths() {
        let c =
            json!({"x": 1.5, "opt": {"lr": 0.001, "name": "adam"}, "layers": [64, 32], "on": true, "net": {"a": 1}});
        assert_eq!(render("--config={config}", &c).unwrap(), "--config=/logs/trial-3/config.json");
        assert_eq!(render("t{trial}-s{seed}", &c).unwrap(), "t3-s42");
        assert_eq!(render("{x} {opt.lr} {opt.name}", &c).unwrap(), "1.5 0.001 adam");
        assert_eq!(render("{layers} {layers.1} {on} {net}", &c).unwrap(), "[64,32] 32 true {\"a\":1}");
        assert_eq!(render("no placeholders", &c).unwrap(), "no placeholders");
    }

    #[test]
    fn templates_escape_braces() {
        let c = json!({"x": 2});
        assert_eq!(render("{{x}} {{{x}}}", &c).unwrap(), "{x} {2}");
        assert_eq!(render("awk '{{print $1}}'", &c).unwrap(), "awk '{print $1}'");
        assert_eq!(render("é{x}ü", &c).unwrap(), "é2ü");
    }

    #[test]
    fn templates_reject_unknown_and_unbalanced() {
        let c = json!({"opt": {"lr": 0.1}});
        let e = Template::parse("{opt.momentum}", &c).unwrap_err();
        assert!(e.contains("unknown placeholder `{opt.momentum}`"), "{e}");
        let e = Template::parse("echo ${HOME}", &c).unwrap_err();
        assert!(e.contains("`{HOME}`") && e.contains("$HOME"), "{e}");
        assert!(Template::parse("{opt}", &c).is_ok());
        assert!(Template::parse("{}", &c).unwrap_err().contains("unknown placeholder `{}`"));
        assert!(Template::parse("{config", &c).unwrap_err().contains("unclosed"));
        assert!(Template::parse("{a{config}", &c).unwrap_err().contains("unclosed"));
        assert!(Template::parse("a}b", &c).unwrap_err().contains("single `}`"));
    }

    #[test]
    fn env_names_are_upper_snake() {
        assert_eq!(param_env_name("x"), "TUNE_PARAM_X");
        assert_eq!(param_env_name("opt.lr"), "TUNE_PARAM_OPT_LR");
        assert_eq!(param_env_name("net.hidden-size.0"), "TUNE_PARAM_NET_HIDDEN_SIZE_0");
        assert_eq!(param_env_name("größe"), "TUNE_PARAM_GR__E");
    }

    #[test]
    fn protocol_lines_parse() {
        assert_eq!(parse_line("hello world"), Ok(None));
        assert_eq!(parse_line(""), Ok(None));
        assert_eq!(parse_line("@tuned value 1"), Ok(None));
        assert_eq!(parse_line("@tune value 1.5\n"), Ok(Some(Message::Value(1.5))));
        assert_eq!(parse_line("  @tune  report 10   -2e-3\r\n"), Ok(Some(Message::Report { step: 10, value: -2e-3 })));
        assert_eq!(parse_line("@tune value inf"), Ok(Some(Message::Value(f64::INFINITY))));
        assert_eq!(parse_line("@tune value -inf"), Ok(Some(Message::Value(f64::NEG_INFINITY))));
        assert!(matches!(parse_line("@tune value nan"), Ok(Some(Message::Value(v))) if v.is_nan()));
        assert!(
            matches!(parse_line("@tune report 3 NaN"), Ok(Some(Message::Report { step: 3, value })) if value.is_nan())
        );
        assert!(parse_line("@tune value abc").unwrap_err().contains("`abc` is not a number"));
        assert!(parse_line("@tune report 1.5 2").unwrap_err().contains("not an integer"));
        assert!(parse_line("@tune report 1").unwrap_err().contains("expected"));
        assert!(parse_line("@tune").unwrap_err().contains("expected"));
        assert!(parse_line("@tune values 1").unwrap_err().contains("expected"));
    }

    #[test]
    fn spec_deserializes_both_command_forms() {
        let s: CommandSpec = serde_json::from_value(json!({"command": "echo {x}", "config": {"x": 1}})).unwrap();
        assert_eq!(s.command, CommandLine::Shell("echo {x}".into()));
        assert_eq!(s.timeout, None);
        let s: CommandSpec =
            serde_json::from_value(json!({"command": ["python3", "t.py", "--n", 10], "timeout": 5})).unwrap();
        assert_eq!(s.command, CommandLine::Argv(vec!["python3".into(), "t.py".into(), "--n".into(), "10".into()]));
        assert_eq!(s.config, json!({}));
        assert_eq!(s.timeout, Some(5.0));
        let e = serde_json::from_value::<CommandSpec>(json!({"command": 3})).unwrap_err().to_string();
        assert!(e.contains("a string (run with `sh -c`) or a list"), "{e}");
        assert!(serde_json::from_value::<CommandSpec>(json!({"command": "x", "cmd": 1})).is_err());
    }

    fn ctx(dir: &Path) -> BuildContext {
        BuildContext { base_dir: dir.to_path_buf(), log_dir: dir.join("logs") }
    }

    fn spec(command: Value, config: Value) -> CommandSpec {
        serde_json::from_value(json!({"command": command, "config": config})).unwrap()
    }

    fn build_err(s: &CommandSpec, dir: &Path) -> String {
        let e = CommandObjective::new(s, &ctx(dir)).unwrap_err();
        assert!(e.is::<InputError>(), "{e:#}");
        e.to_string()
    }

    #[test]
    fn bad_specs_are_input_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(build_err(&spec(json!("echo {nope}"), json!({})), d).contains("unknown placeholder"));
        assert!(build_err(&spec(json!([]), json!({})), d).contains("empty list"));
        assert!(build_err(&spec(json!(" "), json!({})), d).contains("empty"));
        assert!(build_err(&spec(json!("true"), json!([1])), d).contains("must be a mapping"));
        assert!(build_err(&spec(json!(["no-such-program-xyz"]), json!({})), d).contains("not found on PATH"));
        assert!(build_err(&spec(json!(["./missing.sh"]), json!({})), d).contains("does not exist"));
        std::fs::write(d.join("plain.sh"), "echo hi").unwrap();
        assert!(build_err(&spec(json!(["./plain.sh"]), json!({})), d).contains("chmod +x"));
        let mut s = spec(json!("true"), json!({}));
        s.timeout = Some(0.0);
        assert!(build_err(&s, d).contains("positive"));
        s.timeout = None;
        s.workdir = Some("nowhere".into());
        assert!(build_err(&s, d).contains("not a folder"));
        s.workdir = None;
        s.env.insert("A".into(), json!({"b": 1}));
        assert!(build_err(&s, d).contains("objective.env.A"));
    }

    /// Samples the middle of a float range (samplers are not what these tests are about).
    struct MidSampler;
    impl Sampler for MidSampler {
        fn sample_independent(&self, _: &StudyView, _: &FrozenTrial, _: &str, d: &Distribution) -> f64 {
            match d {
                Distribution::Float { low, high, .. } => (low + high) / 2.0,
                _ => 0.0,
            }
        }
    }

    /// Prunes any trial as soon as it reported something.
    struct AlwaysPrune;
    impl Pruner for AlwaysPrune {
        fn prune(&self, _: &StudyView, trial: &FrozenTrial) -> bool {
            !trial.intermediate_values.is_empty()
        }
    }

    fn study(pruner: Arc<dyn Pruner>) -> Study {
        Study::create_or_load(
            Arc::new(InMemoryStorage::new()),
            "cmd-test",
            Direction::Minimize,
            Arc::new(MidSampler),
            pruner,
            7,
        )
        .unwrap()
    }

    /// Builds an objective for `command` and runs it as one trial; returns the result, the
    /// trial as stored, and the temp dir holding the logs.
    fn run_trial(
        study: &Study,
        command: Value,
        config: Value,
        edit: impl FnOnce(&mut CommandSpec),
    ) -> (anyhow::Result<f64>, FrozenTrial, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(command, config.clone());
        edit(&mut s);
        let objective = CommandObjective::new(&s, &ctx(dir.path())).unwrap();
        let mut trial = study.ask().unwrap();
        let result = objective.run(&config, &mut trial);
        let id = trial.trial_id();
        drop(trial);
        let frozen = study.storage().get_trial(id).unwrap();
        (result, frozen, dir)
    }

    #[test]
    fn a_value_line_completes_the_trial() {
        let study = study(Arc::new(NopPruner));
        let (r, t, dir) = run_trial(&study, json!("echo starting; echo '@tune value 1.25'"), json!({}), |_| {});
        assert_eq!(r.unwrap(), 1.25);
        let trial_dir = dir.path().join("logs/trial-0");
        assert_eq!(t.user_attrs["log_dir"], json!(trial_dir.to_string_lossy()));
        assert_eq!(t.user_attrs["exit_code"], json!(0));
        let out = std::fs::read_to_string(trial_dir.join("stdout.log")).unwrap();
        assert_eq!(out, "starting\n@tune value 1.25\n");
        assert!(trial_dir.join("stderr.log").exists());
    }

    #[test]
    fn reports_and_the_last_value_are_recorded() {
        let study = study(Arc::new(NopPruner));
        let script =
            "for i in 0 1 2; do echo \"@tune report $i 1$i\"; done; echo '@tune value 5'; printf '@tune value 7'";
        let (r, t, _dir) = run_trial(&study, json!(script), json!({}), |_| {});
        assert_eq!(r.unwrap(), 7.0, "the last value wins, even without a final newline");
        assert_eq!(t.intermediate_values, BTreeMap::from([(0, 10.0), (1, 11.0), (2, 12.0)]));
    }

    #[test]
    fn the_program_sees_its_config_params_and_env() {
        let study = study(Arc::new(NopPruner));
        let dir = tempfile::tempdir().unwrap();
        let config = json!({"opt": {"lr": 0.5, "name": "adam"}});
        let mut s = spec(
            json!([
                "python3",
                "-c",
                "import json, os, sys\n\
                 c = json.load(open(sys.argv[1]))\n\
                 e = os.environ\n\
                 assert sys.argv[2] == c['opt']['name'] == 'adam', sys.argv\n\
                 assert e['TUNE_CONFIG'] == sys.argv[1]\n\
                 assert e['TUNE_TRIAL_NUMBER'] == '0' and e['TUNE_STUDY'] == 'cmd-test'\n\
                 assert e['TUNE_SEED'] == sys.argv[3]\n\
                 assert e['TUNE_PARAM_OPT_LR'] == '0.5', e.get('TUNE_PARAM_OPT_LR')\n\
                 assert e['EXTRA'] == '3' and e['PYTHONUNBUFFERED'] == '1'\n\
                 assert os.path.isdir(e['TUNE_TRIAL_DIR'])\n\
                 print('@tune value', c['opt']['lr'] * 2)",
                "{config}",
                "{opt.name}",
                "{seed}"
            ]),
            config.clone(),
        );
        s.env.insert("EXTRA".into(), json!(3));
        let objective = CommandObjective::new(&s, &ctx(dir.path())).unwrap();
        let mut trial = study.ask().unwrap();
        assert_eq!(trial.suggest_float("opt.lr", 0.0, 1.0).unwrap(), 0.5);
        let r = objective.run(&config, &mut trial);
        let stderr = std::fs::read_to_string(dir.path().join("logs/trial-0/stderr.log")).unwrap();
        assert_eq!(r.unwrap(), 1.0, "{stderr}");
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("logs/trial-0/config.json")).unwrap())
                .unwrap();
        assert_eq!(written, config);
    }

    #[test]
    fn a_failing_program_fails_with_its_stderr() {
        let study = study(Arc::new(NopPruner));
        let script = "echo 'Traceback: something broke' >&2; echo 'ValueError: bad lr' >&2; exit 3";
        let (r, t, _dir) = run_trial(&study, json!(script), json!({}), |_| {});
        let msg = format!("{:#}", r.unwrap_err());
        assert!(msg.contains("`sh` exited with status 3"), "{msg}");
        assert!(msg.contains("ValueError: bad lr") && msg.contains("Traceback"), "{msg}");
        assert_eq!(t.user_attrs["exit_code"], json!(3));
        assert!(matches!(outcome_of(Err(anyhow!(msg))), Outcome::Fail(_)));
    }

    #[test]
    fn exiting_without_a_value_says_what_to_print() {
        let study = study(Arc::new(NopPruner));
        let (r, _, _dir) = run_trial(&study, json!(["sh", "-c", "echo '@tune report 0 1'"]), json!({}), |_| {});
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("@tune value <number>"), "{msg}");
    }

    #[test]
    fn a_malformed_protocol_line_fails_the_trial() {
        let study = study(Arc::new(NopPruner));
        let start = Instant::now();
        let (r, _, _dir) = run_trial(&study, json!("echo '@tune value oops'; sleep 30"), json!({}), |_| {});
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("stdout line 1") && msg.contains("`oops` is not a number"), "{msg}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_missing_program_names_the_fix() {
        let study = study(Arc::new(NopPruner));
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("gone.sh");
        std::fs::write(&script, "#!/bin/sh\necho '@tune value 1'\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let objective = CommandObjective::new(&spec(json!(["./gone.sh"]), json!({})), &ctx(dir.path())).unwrap();
        std::fs::remove_file(&script).unwrap();
        let mut trial = study.ask().unwrap();
        let msg = objective.run(&json!({}), &mut trial).unwrap_err().to_string();
        assert!(msg.contains("cannot start `./gone.sh`") && msg.contains("PATH"), "{msg}");
    }

    #[test]
    fn a_script_path_is_relative_to_the_workdir() {
        let study = study(Arc::new(NopPruner));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        let script = dir.path().join("bin/run.sh");
        std::fs::write(&script, "#!/bin/sh\necho \"@tune value $1\"\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut s = spec(json!(["./run.sh", "{trial}"]), json!({}));
        s.workdir = Some("bin".into());
        let objective = CommandObjective::new(&s, &ctx(dir.path())).unwrap();
        let mut trial = study.ask().unwrap();
        assert_eq!(objective.run(&json!({}), &mut trial).unwrap(), 0.0);
    }

    #[test]
    fn a_timeout_kills_the_process_group() {
        let study = study(Arc::new(NopPruner));
        let start = Instant::now();
        // The shell's child `sleep` holds stdout open: only killing the group ends the trial.
        let (r, t, _dir) = run_trial(&study, json!("sleep 30; echo done"), json!({}), |s| s.timeout = Some(0.5));
        assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
        assert_eq!(r.unwrap_err().to_string(), "timed out after 0.5 s");
        assert_eq!(t.user_attrs["exit_code"], Value::Null);
    }

    #[test]
    fn background_leftovers_do_not_hold_the_trial() {
        let study = study(Arc::new(NopPruner));
        let start = Instant::now();
        let (r, _, _dir) = run_trial(&study, json!("sleep 30 & echo '@tune value 2'"), json!({}), |_| {});
        assert_eq!(r.unwrap(), 2.0);
        assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    }

    #[test]
    fn the_pruner_stops_a_long_reporter() {
        let study = study(Arc::new(AlwaysPrune));
        let start = Instant::now();
        let script = "i=0; while true; do echo \"@tune report $i 1\"; i=$((i+1)); sleep 0.05; done";
        let (r, t, _dir) = run_trial(&study, json!(script), json!({}), |_| {});
        assert!(r.unwrap_err().is::<TrialPruned>());
        assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
        assert_eq!(t.intermediate_values.len(), 1);
    }

    #[test]
    fn an_interrupt_kills_the_program_promptly() {
        let study = study(Arc::new(NopPruner));
        let stop = study.stop_flag().clone();
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
        });
        let start = Instant::now();
        let (r, _, _dir) = run_trial(&study, json!(["sleep", "30"]), json!({}), |_| {});
        setter.join().unwrap();
        assert!(r.unwrap_err().is::<Interrupted>());
        assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    }

    #[test]
    fn the_example_study_runs() {
        use crate::executor::{run_study, ProgressMode, RunOptions};
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("studies/command_quadratic.yaml");
        let spec = crate::spec::StudySpec::load(&file).unwrap();
        let logs = tempfile::tempdir().unwrap();
        let ctx = BuildContext { base_dir: file.parent().unwrap().to_path_buf(), log_dir: logs.path().to_path_buf() };
        let objective = spec.objective.build(&ctx).unwrap();
        let study = Study::create_or_load(
            Arc::new(InMemoryStorage::new()),
            &spec.name,
            spec.direction,
            spec.build_sampler(1).unwrap(),
            spec.build_pruner().unwrap(),
            1,
        )
        .unwrap();
        let opts = RunOptions { n_trials: Some(8), jobs: 2, progress: ProgressMode::Quiet, ..RunOptions::default() };
        let summary = run_study(&study, &opts, |trial| {
            let config = crate::spec::sample_config(&spec.params, objective.base_config(), trial)?;
            objective.run(&config, trial)
        })
        .unwrap();
        let reasons: Vec<_> =
            study.trials().unwrap().iter().filter_map(|t| t.system_attrs.get("fail_reason").cloned()).collect();
        assert_eq!(summary.failed, 0, "{reasons:?}");
        assert_eq!(summary.complete + summary.pruned, 8);
        assert!(logs.path().join("trial-7/config.json").exists());
    }
}
