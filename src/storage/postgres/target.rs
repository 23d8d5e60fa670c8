//! Where a `postgresql://` URL points, filled in the way libpq fills a connection string: what
//! the URL leaves out comes from `PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`,
//! `PGCONNECT_TIMEOUT` and the password file (`PGPASSFILE`, else `~/.pgpass`), so that the
//! password never has to be on a command line. The URL shown to users never holds the password.

use std::path::{Path, PathBuf};
use std::time::Duration;

use postgres::config::Host;
use postgres::Config;

use crate::storage::StorageError;

/// The schemes that select PostgreSQL: libpq's two, and SQLAlchemy's `postgresql+DRIVER` (the
/// URL an Optuna user already has works unchanged).
pub fn is_postgres_url(url: &str) -> bool {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    scheme == "postgres" || scheme == "postgresql" || scheme.starts_with("postgresql+")
}

/// A resolved connection target.
pub struct Target {
    /// The configuration to connect with (password included).
    pub config: Config,
    /// `postgresql://user@host:port/db`, for messages: no password, ever.
    pub shown: String,
    /// The database name.
    pub dbname: String,
    /// The role name.
    pub user: String,
    /// The first host (a name, an address or a socket folder).
    pub host: String,
    /// The first port.
    pub port: u16,
}

/// Looks an environment variable up.
pub type VarFn = Box<dyn Fn(&str) -> Option<String>>;

/// Reads the process environment (what libpq reads), for `Target::resolve`.
pub struct Env {
    /// A variable's value.
    pub var: VarFn,
    /// The home folder (for `~/.pgpass`).
    pub home: Option<PathBuf>,
}

impl Env {
    /// The real environment.
    pub fn process() -> Env {
        Env {
            var: Box::new(|k| std::env::var(k).ok().filter(|v| !v.is_empty())),
            home: std::env::var_os("HOME").map(PathBuf::from),
        }
    }
}

impl Target {
    /// Parses `url` and fills in what it leaves out from `env`. Errors are `BadUrl` with the
    /// password masked.
    pub fn resolve(url: &str, env: &Env) -> Result<Target, StorageError> {
        let bad = |why: String| StorageError::BadUrl(format!("{} ({why})", mask(url)));
        let rest = url.split_once("://").map(|(_, r)| r).ok_or_else(|| bad("no scheme".into()))?;
        let normalised = format!("postgresql://{rest}");
        let mut config: Config = normalised.parse().map_err(|e| bad(format!("{e}")))?;
        if config.get_hosts().is_empty() {
            match (env.var)("PGHOST") {
                Some(hosts) => {
                    for h in hosts.split(',') {
                        config.host(h);
                    }
                }
                // libpq's default on Debian is the local socket folder; TCP localhost otherwise.
                None if Path::new("/var/run/postgresql").is_dir() => {
                    config.host_path("/var/run/postgresql");
                }
                None => {
                    config.host("localhost");
                }
            }
        }
        if config.get_ports().is_empty() {
            let port = match (env.var)("PGPORT") {
                Some(p) => p.parse::<u16>().map_err(|_| bad(format!("PGPORT `{p}` is not a port number")))?,
                None => 5432,
            };
            config.port(port);
        }
        let user = match config.get_user() {
            Some(u) => u.to_string(),
            None => (env.var)("PGUSER").or_else(|| (env.var)("USER")).unwrap_or_else(|| "postgres".to_string()),
        };
        config.user(&user);
        let dbname = match config.get_dbname() {
            Some(d) => d.to_string(),
            None => (env.var)("PGDATABASE").unwrap_or_else(|| user.clone()),
        };
        config.dbname(&dbname);
        if config.get_connect_timeout().is_none() {
            let secs = (env.var)("PGCONNECT_TIMEOUT").and_then(|s| s.parse::<u64>().ok()).unwrap_or(10);
            config.connect_timeout(Duration::from_secs(secs.max(2)));
        }
        if config.get_application_name().is_none() {
            config.application_name("tune");
        }
        let host = host_text(config.get_hosts().first());
        let port = config.get_ports().first().copied().unwrap_or(5432);
        if config.get_password().is_none() {
            let password = (env.var)("PGPASSWORD").or_else(|| {
                let file = (env.var)("PGPASSFILE")
                    .map(PathBuf::from)
                    .or_else(|| env.home.as_ref().map(|h| h.join(".pgpass")))?;
                pgpass_lookup(&file, &host, port, &dbname, &user)
            });
            if let Some(p) = password {
                config.password(p);
            }
        }
        let shown =
            format!("postgresql://{user}@{}:{port}/{dbname}", if host.starts_with('/') { "localhost" } else { &host });
        Ok(Target { config, shown, dbname, user, host, port })
    }
}

fn host_text(h: Option<&Host>) -> String {
    match h {
        Some(Host::Tcp(name)) => name.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    }
}

/// The URL with any password replaced by `***`, for messages and listings.
pub fn mask(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (auth, tail) = match rest.find('@') {
        // Only an `@` before the path separates credentials.
        Some(at) if rest[..at].find('/').is_none() => (&rest[..at], &rest[at..]),
        _ => return mask_query(url),
    };
    let user = auth.split(':').next().unwrap_or("");
    let masked = if auth.contains(':') { format!("{scheme}://{user}:***{tail}") } else { url.to_string() };
    mask_query(&masked)
}

/// Masks a `password=` query parameter.
fn mask_query(url: &str) -> String {
    let Some((head, query)) = url.split_once('?') else { return url.to_string() };
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| if kv.starts_with("password=") { "password=***".to_string() } else { kv.to_string() })
        .collect();
    format!("{head}?{}", parts.join("&"))
}

/// libpq's password file: lines `hostname:port:database:username:password`, `*` matching
/// anything, `\:` and `\\` escaped, `#` comments; the first matching line wins. Like libpq, a
/// file that others may read is ignored, with a warning.
fn pgpass_lookup(file: &Path, host: &str, port: u16, dbname: &str, user: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(file) {
            if m.permissions().mode() & 0o077 != 0 {
                eprintln!(
                    "warning: password file {} has group or world access and is ignored; run `chmod 0600 {}`",
                    file.display(),
                    file.display()
                );
                return None;
            }
        }
    }
    // libpq matches a socket connection against `localhost`.
    let host = if host.starts_with('/') { "localhost" } else { host };
    let port = port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = |pat: &str, v: &str| pat == "*" || pat == v;
        if matches(&fields[0], host)
            && matches(&fields[1], &port)
            && matches(&fields[2], dbname)
            && matches(&fields[3], user)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    fields.last_mut().unwrap().push(n);
                }
            }
            // The password is the rest of the line, colons and all (libpq).
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)], home: Option<PathBuf>) -> Env {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Env { var: Box::new(move |k| map.get(k).cloned()), home }
    }

    #[test]
    fn schemes() {
        for u in ["postgresql://h/db", "postgres://h/db", "postgresql+psycopg2://u@h:5/db"] {
            assert!(is_postgres_url(u), "{u}");
        }
        for u in ["sqlite:///x.db", "x.db", "memory", "mysql://h/db"] {
            assert!(!is_postgres_url(u), "{u}");
        }
    }

    #[test]
    fn the_url_wins_then_the_environment_then_libpq_defaults() {
        let e = env(&[("PGHOST", "envhost"), ("PGPORT", "6000"), ("PGUSER", "envuser"), ("PGPASSWORD", "pw")], None);
        let t = Target::resolve("postgresql+psycopg2://alice@db.example:5433/optuna", &e).unwrap();
        assert_eq!(t.shown, "postgresql://alice@db.example:5433/optuna");
        assert_eq!(t.config.get_password(), Some(&b"pw"[..]));
        let t = Target::resolve("postgresql:///", &e).unwrap();
        assert_eq!(t.shown, "postgresql://envuser@envhost:6000/envuser");
        let t = Target::resolve("postgresql://bob:secret@h/d", &e).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"secret"[..]));
        assert!(!t.shown.contains("secret"));
    }

    #[test]
    fn pgpass_is_read_with_wildcards_and_escapes_and_ignored_when_readable_by_others() {
        let dir = std::env::temp_dir().join(format!("tune-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(".pgpass");
        std::fs::write(&file, "# comment\nother:*:*:*:no\ndb.example:5433:*:alice:a\\:b:c\n*:*:*:*:fallback\n")
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = env(&[], Some(dir.clone()));
        let t = Target::resolve("postgresql://alice@db.example:5433/optuna", &e).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"a:b:c"[..]));
        let t = Target::resolve("postgresql://carol@elsewhere:5432/x", &e).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"fallback"[..]));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let t = Target::resolve("postgresql://carol@elsewhere:5432/x", &e).unwrap();
        assert_eq!(t.config.get_password(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn masking_hides_passwords() {
        assert_eq!(mask("postgresql://u:pw@h:1/d"), "postgresql://u:***@h:1/d");
        assert_eq!(mask("postgresql://u@h/d?password=pw&x=1"), "postgresql://u@h/d?password=***&x=1");
        assert_eq!(mask("postgresql://h/d"), "postgresql://h/d");
        assert_eq!(mask("sqlite:///a@b.db"), "sqlite:///a@b.db");
        let e = env(&[], None);
        let err = Target::resolve("postgresql://u:pw@h:notaport/d", &e).err().unwrap().to_string();
        assert!(!err.contains("pw@"), "{err}");
    }
}
