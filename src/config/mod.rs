//! Configuration: gunicorn 27's settings, sources and precedence.
//!
//! Precedence, lowest first, exactly as gunicorn 27's
//! `Application.load_config`:
//!
//! 1. defaults ([`settings::SETTINGS`]);
//! 2. environment-derived defaults: `WEB_CONCURRENCY` (workers), `PORT`
//!    (bind `0.0.0.0:$PORT`), and gunicorn-prometheus-exporter's
//!    `GUNICORN_WORKERS` (workers, when `WEB_CONCURRENCY` is unset),
//!    `GUNICORN_TIMEOUT` (timeout) and `GUNICORN_KEEPALIVE` (keepalive);
//! 3. the config file: `-c` from the command line, else `-c` from
//!    `GUNICORN_CMD_ARGS`, else `./gunicorn.conf.py` when it exists;
//! 4. `GUNICORN_CMD_ARGS`;
//! 5. the command line.
//!
//! The first positional argument is the application (APP_MODULE); the
//! `wsgi_app` setting is the fallback.

mod cli;
pub mod settings;
mod source;
mod value;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use pyo3::prelude::*;

pub use settings::{Setting, Support};
pub use value::{env_bool, env_text, parse_statsd_address, redact_url, StatsdAddr, Value};

use settings::{DefaultValue, SETTINGS};
use value::CliRaw;

/// A configuration error: one line, naming the setting, the value and what
/// is allowed. `.0` is the bare message; `Display` adds gunicorn's `Error: `
/// prefix, so print it with `eprintln!("{err}")` and exit 1 (as gunicorn).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The result of [`Config::load`].
pub enum Loaded {
    /// Run with this configuration.
    Run(Config),
    /// Exit now with this code: `--version`/`--help` were printed (0), a
    /// command-line syntax error was printed by clap (2), or the config file
    /// raised and its traceback was printed (1).
    Exit(i32),
}

/// Where a setting's current value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The table's default.
    Default,
    /// An environment-derived default (WEB_CONCURRENCY, PORT, GUNICORN_WORKERS, ...).
    Environment,
    /// The config file.
    File,
    /// `GUNICORN_CMD_ARGS`.
    CmdArgsEnv,
    /// The command line.
    CommandLine,
    /// Derived from the application argument (default_proc_name).
    App,
    /// [`Config::set`] (tests).
    #[cfg(test)]
    Api,
}

impl Origin {
    fn explicit(self) -> bool {
        match self {
            Origin::File | Origin::CmdArgsEnv | Origin::CommandLine => true,
            #[cfg(test)]
            Origin::Api => true,
            Origin::Default | Origin::Environment | Origin::App => false,
        }
    }
}

/// The parts of the process environment that configuration reads, captured
/// once at the start of loading (gunicorn reads them when `gunicorn.config`
/// is imported / the `Config` is created, before the config file runs).
#[derive(Clone, Debug, Default)]
struct Env {
    cmd_args: Option<String>,
    web_concurrency: Option<String>,
    /// gunicorn-prometheus-exporter's GUNICORN_WORKERS, GUNICORN_TIMEOUT,
    /// GUNICORN_KEEPALIVE.
    gunicorn_workers: Option<String>,
    gunicorn_timeout: Option<String>,
    gunicorn_keepalive: Option<String>,
    port: Option<String>,
    forwarded_allow_ips: Option<String>,
    cwd: PathBuf,
}

impl Env {
    fn capture() -> Env {
        let var = |k: &str| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
        Env {
            cmd_args: var("GUNICORN_CMD_ARGS"),
            web_concurrency: var("WEB_CONCURRENCY"),
            gunicorn_workers: var("GUNICORN_WORKERS"),
            gunicorn_timeout: var("GUNICORN_TIMEOUT"),
            gunicorn_keepalive: var("GUNICORN_KEEPALIVE"),
            port: var("PORT"),
            forwarded_allow_ips: var("FORWARDED_ALLOW_IPS"),
            cwd: value::getcwd(),
        }
    }
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    values: Vec<Value>,
    origins: Vec<Origin>,
    app_uri: Option<String>,
    config_file: Option<PathBuf>,
}

static NONE: Value = Value::None;

fn default_value(s: &Setting, cwd: &Path) -> Value {
    match s.default {
        DefaultValue::None | DefaultValue::Hook(_) => Value::None,
        DefaultValue::Bool(b) => Value::Bool(b),
        DefaultValue::Int(i) => Value::Int(i),
        DefaultValue::Str(v) => Value::Str(v.to_owned()),
        DefaultValue::List(l) => Value::List(l.iter().map(|x| (*x).to_owned()).collect()),
        DefaultValue::Dict(d) => Value::Dict(
            d.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        DefaultValue::Cwd => Value::Str(cwd.to_string_lossy().into_owned()),
        DefaultValue::Euid => Value::Int(i64::from(nix::unistd::geteuid().as_raw())),
        DefaultValue::Egid => Value::Int(i64::from(nix::unistd::getegid().as_raw())),
        DefaultValue::ControlSocket => {
            let xdg = std::env::var_os("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .filter(|p| !p.as_os_str().is_empty() && p.is_dir());
            let path = match xdg {
                Some(dir) => dir.join("ferrocorn.ctl"),
                None => {
                    let home = std::env::var_os("HOME")
                        .map(PathBuf::from)
                        .unwrap_or_default();
                    home.join(".ferrocorn").join("ferrocorn.ctl")
                }
            };
            Value::Str(path.to_string_lossy().into_owned())
        }
    }
}

fn idx(name: &str) -> usize {
    settings::index(name).unwrap_or_else(|| panic!("unknown setting {name}"))
}

fn flag_label(s: &Setting) -> String {
    match s.long_flag().or_else(|| s.cli.first().copied()) {
        Some(flag) => format!("{flag} ({})", s.name),
        None => s.name.to_owned(),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

impl Config {
    /// gunicorn's defaults, without the environment-derived ones, with the
    /// current directory as `chdir`.
    pub fn new() -> Config {
        let cwd = value::getcwd();
        Config {
            values: SETTINGS.iter().map(|s| default_value(s, &cwd)).collect(),
            origins: vec![Origin::Default; SETTINGS.len()],
            app_uri: None,
            config_file: None,
        }
    }

    fn with_env(env: &Env) -> Result<Config, ConfigError> {
        let mut cfg = Config {
            values: SETTINGS
                .iter()
                .map(|s| default_value(s, &env.cwd))
                .collect(),
            origins: vec![Origin::Default; SETTINGS.len()],
            app_uri: None,
            config_file: None,
        };
        // WEB_CONCURRENCY is gunicorn's own: it wins over the exporter's
        // GUNICORN_WORKERS when both are set.
        let workers = [
            ("WEB_CONCURRENCY", &env.web_concurrency),
            ("GUNICORN_WORKERS", &env.gunicorn_workers),
        ]
        .into_iter()
        .find_map(|(var, v)| v.as_ref().map(|v| (var, v)));
        let int_vars = [
            ("workers", workers),
            (
                "timeout",
                env.gunicorn_timeout
                    .as_ref()
                    .map(|v| ("GUNICORN_TIMEOUT", v)),
            ),
            (
                "keepalive",
                env.gunicorn_keepalive
                    .as_ref()
                    .map(|v| ("GUNICORN_KEEPALIVE", v)),
            ),
        ];
        for (name, source) in int_vars {
            let Some((var, text)) = source else { continue };
            let i = idx(name);
            let v = match value::py_int(text, false) {
                Some(n) => value::validate(&SETTINGS[i], Value::Int(n)),
                None => Err(format!(
                    "{} is not {}",
                    value::py_repr_str(text),
                    if name == "workers" {
                        "a positive integer"
                    } else {
                        "an integer"
                    }
                )),
            }
            .map_err(|e| ConfigError(format!("invalid value for {var} ({name}): {e}")))?;
            cfg.values[i] = v;
            cfg.origins[i] = Origin::Environment;
        }
        if let Some(ips) = &env.forwarded_allow_ips {
            let i = idx("forwarded_allow_ips");
            cfg.values[i] =
                value::validate(&SETTINGS[i], Value::Str(ips.clone())).map_err(|e| {
                    ConfigError(format!(
                        "invalid value for FORWARDED_ALLOW_IPS (forwarded_allow_ips): {e}"
                    ))
                })?;
            cfg.origins[i] = Origin::Environment;
        }
        if let Some(port) = &env.port {
            let i = idx("bind");
            cfg.values[i] = Value::List(vec![format!("0.0.0.0:{port}")]);
            cfg.origins[i] = Origin::Environment;
        }
        Ok(cfg)
    }

    /// Loads the configuration from all of gunicorn's sources. `argv`
    /// includes argv[0]. Reads `GUNICORN_CMD_ARGS`, `WEB_CONCURRENCY`,
    /// `GUNICORN_WORKERS`, `GUNICORN_TIMEOUT`, `GUNICORN_KEEPALIVE` and
    /// `PORT` from the process environment before the config file runs.
    /// Does not change directory (`python::prepare_paths` applies `chdir`
    /// afterwards); puts the current directory on `sys.path` as gunicorn
    /// does before it reads the config file.
    pub fn load(py: Python<'_>, argv: Vec<OsString>) -> Result<Loaded, ConfigError> {
        Self::load_with(py, argv, Env::capture())
    }

    fn load_with(py: Python<'_>, argv: Vec<OsString>, env: Env) -> Result<Loaded, ConfigError> {
        let prog = argv
            .first()
            .and_then(|a| Path::new(a).file_name())
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_else(|| "ferrocorn".to_owned());
        let args = match cli::parse(cli::command(&prog), argv) {
            Ok(p) => p,
            Err(e) => return Ok(clap_exit(&e)),
        };
        if args.version {
            print_version(py);
            return Ok(Loaded::Exit(0));
        }

        let mut cfg = Config::with_env(&env)?;
        if let Some(app) = args.positionals.first() {
            let i = idx("default_proc_name");
            cfg.values[i] = Value::Str(app.clone());
            cfg.origins[i] = Origin::App;
            cfg.app_uri = Some(app.clone());
        }
        source::add_sys_path(py, &env.cwd)
            .map_err(|e| ConfigError(format!("cannot set up sys.path: {e}")))?;

        let env_args = match &env.cmd_args {
            None => None,
            Some(s) => {
                let words = shlex::split(s).ok_or_else(|| {
                    ConfigError(format!(
                        "GUNICORN_CMD_ARGS is not valid shell syntax: {}",
                        value::py_repr_str(s)
                    ))
                })?;
                let argv = std::iter::once(OsString::from(&prog))
                    .chain(words.into_iter().map(OsString::from))
                    .collect();
                match cli::parse(cli::command(&prog), argv) {
                    Ok(p) if p.version => {
                        print_version(py);
                        return Ok(Loaded::Exit(0));
                    }
                    Ok(p) => Some(p),
                    Err(e) => {
                        if e.use_stderr() {
                            eprintln!("{prog}: in GUNICORN_CMD_ARGS:");
                        }
                        return Ok(clap_exit(&e));
                    }
                }
            }
        };

        let location = args
            .config()
            .filter(|c| !c.is_empty())
            .or_else(|| {
                env_args
                    .as_ref()
                    .and_then(|p| p.config())
                    .filter(|c| !c.is_empty())
            })
            .map(str::to_owned)
            .or_else(|| {
                let default = env.cwd.join("gunicorn.conf.py");
                default
                    .exists()
                    .then(|| default.to_string_lossy().into_owned())
            });
        if let Some(location) = location {
            match source::load(py, &location).map_err(ConfigError)? {
                source::FileOutcome::Failed => return Ok(Loaded::Exit(1)),
                source::FileOutcome::Loaded {
                    path,
                    items,
                    strict,
                } => {
                    let shown = path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| location.clone());
                    for (k, obj) in &items {
                        let Some(i) = settings::index(k) else {
                            if strict {
                                return Err(ConfigError(format!(
                                    "unknown setting {} in {shown}",
                                    value::py_repr_str(k)
                                )));
                            }
                            continue;
                        };
                        let v = value::from_py(&SETTINGS[i], obj).map_err(|e| {
                            ConfigError(format!("invalid value for {k} in {shown}: {e}"))
                        })?;
                        cfg.values[i] = v;
                        cfg.origins[i] = Origin::File;
                    }
                    cfg.config_file = path;
                }
            }
        }

        if let Some(p) = env_args {
            cfg.apply_cli(p.values, Origin::CmdArgsEnv, " in GUNICORN_CMD_ARGS")?;
        }
        cfg.apply_cli(args.values, Origin::CommandLine, "")?;
        cfg.apply_paste(&env.cwd)?;
        cfg.check_logger_class()?;
        Ok(Loaded::Run(cfg))
    }

    /// `--paste FILE.ini[#section]`: the application is that PasteDeploy
    /// file's (made absolute), which must exist, and names the processes,
    /// as gunicorn's WSGIApplication.init.
    fn apply_paste(&mut self, cwd: &Path) -> Result<(), ConfigError> {
        let Some(paste) = self.str("paste") else {
            return Ok(());
        };
        let uri = cwd.join(paste).to_string_lossy().into_owned();
        let file = uri.split('#').next().unwrap_or(&uri).to_owned();
        if !Path::new(&file).exists() {
            return Err(ConfigError(format!(
                "{} not found",
                value::py_repr_str(&file)
            )));
        }
        // gunicorn's WSGIApplication.init: a file with a [loggers] section
        // is the logconfig too, unless the configuration sets one.
        let l = idx("logconfig");
        if !self.origins[l].explicit() && has_loggers_section(Path::new(&file)) {
            self.values[l] = Value::Str(file.clone());
            self.origins[l] = Origin::App;
        }
        let i = idx("default_proc_name");
        self.values[i] = Value::Str(file);
        self.origins[i] = Origin::App;
        self.app_uri = Some(uri);
        Ok(())
    }

    /// The PasteDeploy globals (`--paste-global KEY=VALUE`), as gunicorn's
    /// `paste_global_conf`; None when `--paste` is not set.
    /// (Entries are validated to hold a '='; `\=` is a literal '=', as in
    /// gunicorn.)
    pub fn paste_global_conf(&self) -> Option<Vec<(String, String)>> {
        self.str("paste")?;
        let unescape = |s: &str| s.replace("\\=", "=");
        Some(
            self.list("raw_paste_global_conf")
                .iter()
                .filter_map(|kv| {
                    let at = kv
                        .match_indices('=')
                        .find(|(i, _)| !kv[..*i].ends_with('\\'))?
                        .0;
                    Some((unescape(&kv[..at]), unescape(&kv[at + 1..])))
                })
                .collect(),
        )
    }

    fn apply_cli(
        &mut self,
        values: Vec<(usize, CliRaw)>,
        origin: Origin,
        suffix: &str,
    ) -> Result<(), ConfigError> {
        for (i, raw) in values {
            let s = &SETTINGS[i];
            let v = value::from_cli(s, raw).map_err(|e| {
                ConfigError(format!("invalid value for {}{suffix}: {e}", flag_label(s)))
            })?;
            self.values[i] = v;
            self.origins[i] = origin;
        }
        Ok(())
    }

    /// Reads the environment variables that feed the metrics settings
    /// (PROMETHEUS_METRICS_PORT, ...) into the settings still at their
    /// defaults. Called after the config file ran and `raw_env` was applied,
    /// because gunicorn-prometheus-exporter configs set these variables with
    /// `os.environ.setdefault`. A setting given in the config file or on the
    /// command line wins over its variable; an empty variable counts as unset.
    pub fn apply_env_sources(&mut self) -> Result<(), ConfigError> {
        self.apply_env_sources_from(|k| std::env::var_os(k))
    }

    fn apply_env_sources_from(
        &mut self,
        get: impl Fn(&str) -> Option<OsString>,
    ) -> Result<(), ConfigError> {
        for (i, s) in SETTINGS.iter().enumerate() {
            let Some(var) = s.env else { continue };
            if s.support != Support::Extension
                || !matches!(self.origins[i], Origin::Default | Origin::Environment)
            {
                continue;
            }
            let Some(raw) = get(var) else { continue };
            let bad = |e: String| ConfigError(format!("invalid value for {var} ({}): {e}", s.name));
            let text = raw
                .into_string()
                .map_err(|v| bad(format!("{v:?} is not valid UTF-8")))?;
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let v = match s.kind {
                // gunicorn-prometheus-exporter's booleans; anything else is
                // an error so that a typo never turns client auth off.
                settings::Kind::Flag | settings::Kind::NoFlag => match value::env_bool(text) {
                    Some(b) => Value::Bool(b),
                    None => {
                        return Err(bad(format!(
                            "{} is not a boolean (true/false, 1/0, yes/no, on/off)",
                            value::py_repr_str(text)
                        )))
                    }
                },
                _ => value::validate(s, Value::Str(text.to_owned())).map_err(bad)?,
            };
            self.values[i] = v;
            self.origins[i] = Origin::Environment;
        }
        Ok(())
    }

    /// The value of a setting; the default when unset. Unknown names give
    /// `Value::None`.
    pub fn get(&self, name: &str) -> &Value {
        settings::index(name).map_or(&NONE, |i| &self.values[i])
    }

    /// Where a setting's value came from (`None` for unknown names).
    #[cfg(test)]
    pub fn origin(&self, name: &str) -> Option<Origin> {
        settings::index(name).map(|i| self.origins[i])
    }

    /// Sets a setting, validated as gunicorn's `Config.set` does (tests
    /// adjust loaded configurations with it).
    #[cfg(test)]
    pub fn set(&mut self, name: &str, v: Value) -> Result<(), ConfigError> {
        let i = settings::index(name)
            .ok_or_else(|| ConfigError(format!("no configuration setting for: {name}")))?;
        let v = value::validate(&SETTINGS[i], v)
            .map_err(|e| ConfigError(format!("invalid value for {name}: {e}")))?;
        self.values[i] = v;
        self.origins[i] = Origin::Api;
        Ok(())
    }

    /// The application: the first positional APP_MODULE, else `wsgi_app`.
    pub fn app_uri(&self) -> Option<&str> {
        self.app_uri.as_deref().or_else(|| self.str("wsgi_app"))
    }

    /// [`Config::app_uri`], or gunicorn's error when there is none.
    pub fn require_app_uri(&self) -> Result<&str, ConfigError> {
        self.app_uri()
            .ok_or_else(|| ConfigError("No application module specified.".to_owned()))
    }

    /// The config file that was read, made absolute (for `python:MODULE`,
    /// the module's file).
    #[cfg(test)]
    pub fn config_file(&self) -> Option<&Path> {
        self.config_file.as_deref()
    }

    /// One line per Ignored or NotYet setting that was set explicitly (config
    /// file, GUNICORN_CMD_ARGS, command line, [`Config::set`]) to something
    /// other than its default.
    pub fn warnings(&self) -> Vec<String> {
        let cwd = value::getcwd();
        let mut out = Vec::new();
        for (i, s) in SETTINGS.iter().enumerate() {
            if matches!(s.support, Support::Supported | Support::Extension)
                || !self.origins[i].explicit()
                || self.values[i] == default_value(s, &cwd)
            {
                continue;
            }
            let what = match s.cli.first() {
                Some(_) => format!("setting {} ({})", s.name, s.cli.join("/")),
                None => format!("setting {}", s.name),
            };
            let note = if s.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", s.note)
            };
            out.push(match s.support {
                Support::NotYet => {
                    format!("{what} is not implemented yet in ferrocorn{note}; it has no effect")
                }
                _ => format!("{what} is ignored by ferrocorn{note}"),
            });
        }
        out
    }

    /// gunicorn's `Config.__str__`: sorted `name = value` lines, names padded
    /// to the longest, callables as `<qualname()>`.
    pub fn print_config(&self, py: Python<'_>) -> String {
        let width = SETTINGS.iter().map(|s| s.name.len()).max().unwrap_or(0);
        let mut order: Vec<usize> = (0..SETTINGS.len()).collect();
        order.sort_by_key(|&i| SETTINGS[i].name);
        let mut lines = Vec::with_capacity(order.len());
        for i in order {
            let s = &SETTINGS[i];
            let shown = match (&self.values[i], s.default) {
                (Value::None, DefaultValue::Hook(q)) => format!("<{q}()>"),
                (Value::Callable(o) | Value::Object(o), _) => {
                    let o = o.bind(py);
                    if o.is_callable() {
                        let q = o
                            .getattr("__qualname__")
                            .and_then(|q| q.extract::<String>())
                            .unwrap_or_else(|_| {
                                o.get_type()
                                    .name()
                                    .map(|n| n.to_string())
                                    .unwrap_or_default()
                            });
                        format!("<{q}()>")
                    } else {
                        self.values[i].display()
                    }
                }
                (v, _) => v.display(),
            };
            let shown = value::redact_setting(s.name, shown);
            lines.push(format!("{:width$} = {shown}", s.name));
        }
        lines.join("\n")
    }

    pub fn check_config(&self) -> bool {
        self.bool("check_config")
    }

    pub fn print_config_requested(&self) -> bool {
        self.bool("print_config")
    }

    /// A server hook, `None` when unset (gunicorn's no-op defaults count as
    /// unset). `post_request` is always callable with (worker, req, environ,
    /// resp): 2- and 3-argument functions are wrapped as gunicorn does.
    pub fn hook(&self, name: &str) -> Option<&Py<PyAny>> {
        match self.get(name) {
            Value::Callable(o) => Some(o),
            _ => None,
        }
    }

    // -- generic getters ----------------------------------------------------

    pub fn bool(&self, name: &str) -> bool {
        self.get(name).as_bool().unwrap_or(false)
    }

    pub fn int(&self, name: &str) -> i64 {
        self.get(name).as_int().unwrap_or(0)
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.get(name).as_str()
    }

    pub fn list(&self, name: &str) -> Vec<String> {
        match self.get(name) {
            Value::List(l) => l.clone(),
            Value::Str(s) => vec![s.clone()],
            _ => Vec::new(),
        }
    }

    fn uint(&self, name: &str) -> u64 {
        u64::try_from(self.int(name)).unwrap_or(0)
    }

    fn usize(&self, name: &str) -> usize {
        usize::try_from(self.int(name)).unwrap_or(0)
    }

    // -- typed getters -------------------------------------------------------

    pub fn bind(&self) -> Vec<String> {
        self.list("bind")
    }

    pub fn workers(&self) -> usize {
        self.usize("workers")
    }

    pub fn threads(&self) -> usize {
        self.usize("threads")
    }

    /// The worker class name, with gunicorn's rule that `sync` (or a
    /// `...SyncWorker` path) with more than one thread means `gthread`. A
    /// class object given in a config file is named `module.QualName`.
    pub fn worker_class(&self) -> String {
        match self.get("worker_class") {
            Value::Str(s) => {
                let is_sync = s == "sync" || s.ends_with("SyncWorker");
                if is_sync && self.threads() > 1 {
                    "gthread".to_owned()
                } else {
                    s.clone()
                }
            }
            Value::Callable(o) | Value::Object(o) => class_path(o),
            _ => "sync".to_owned(),
        }
    }

    /// `logger_class` must be gunicorn's own Logger (by path, gunicorn's
    /// short name `simple`, or the class object): ferrocorn's records go
    /// through Python's logging under gunicorn's loggers, configured by
    /// the logconfig settings, but it does not call a Logger class of the
    /// user's, so one is refused rather than ignored.
    fn check_logger_class(&self) -> Result<(), ConfigError> {
        let name = match self.get("logger_class") {
            Value::Str(s) => s.clone(),
            Value::Callable(o) | Value::Object(o) => class_path(o),
            _ => return Ok(()),
        };
        const GUNICORNS: [&str; 3] = ["gunicorn.glogging.Logger", "simple", "egg:gunicorn#simple"];
        if GUNICORNS.contains(&name.as_str()) {
            return Ok(());
        }
        Err(ConfigError(format!(
            "logger_class {} is not supported by ferrocorn: only gunicorn.glogging.Logger \
             is. ferrocorn's error and access records go through Python's logging (loggers \
             gunicorn.error and gunicorn.access) when logconfig, logconfig_dict or \
             logconfig_json is set: configure the handlers and formatters there.",
            value::py_repr_str(&name)
        )))
    }

    pub fn worker_connections(&self) -> usize {
        self.usize("worker_connections")
    }

    pub fn backlog(&self) -> i32 {
        i32::try_from(self.int("backlog")).unwrap_or(i32::MAX)
    }

    pub fn reuse_port(&self) -> bool {
        self.bool("reuse_port")
    }

    /// Seconds; 0 disables the worker timeout.
    pub fn timeout(&self) -> u64 {
        self.uint("timeout")
    }

    pub fn graceful_timeout(&self) -> u64 {
        self.uint("graceful_timeout")
    }

    pub fn keepalive(&self) -> u64 {
        self.uint("keepalive")
    }

    pub fn max_requests(&self) -> u64 {
        self.uint("max_requests")
    }

    pub fn max_requests_jitter(&self) -> u64 {
        self.uint("max_requests_jitter")
    }

    /// max_worker_memory, in MB (0: no limit).
    pub fn max_worker_memory(&self) -> u64 {
        self.uint("max_worker_memory")
    }

    /// max_worker_lifetime and max_worker_lifetime_jitter, in seconds.
    pub fn max_worker_lifetime(&self) -> (u64, u64) {
        (
            self.uint("max_worker_lifetime"),
            self.uint("max_worker_lifetime_jitter"),
        )
    }

    /// The absolute directory to change to (default: the start directory).
    pub fn chdir(&self) -> Option<String> {
        self.str("chdir").map(str::to_owned)
    }

    /// `pythonpath` split on commas, as given (gunicorn makes each absolute
    /// against the directory it runs in, after `chdir`, and inserts it first
    /// on `sys.path`).
    pub fn pythonpath(&self) -> Vec<String> {
        self.str("pythonpath")
            .map(|p| p.split(',').map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// `-e KEY=VALUE` pairs, split at the first `=`.
    pub fn raw_env(&self) -> Vec<(String, String)> {
        self.list("raw_env")
            .iter()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    pub fn preload_app(&self) -> bool {
        self.bool("preload_app")
    }

    pub fn daemon(&self) -> bool {
        self.bool("daemon")
    }

    pub fn pidfile(&self) -> Option<String> {
        self.str("pidfile").map(str::to_owned)
    }

    /// The configured uid, `None` when `user` was not set (the tests check
    /// what validation made of a value; the server uses [`Config::uid`]).
    #[cfg(test)]
    pub fn user(&self) -> Option<u32> {
        self.configured_id("user")
    }

    /// The configured gid, `None` when `group` was not set.
    #[cfg(test)]
    pub fn group(&self) -> Option<u32> {
        self.configured_id("group")
    }

    #[cfg(test)]
    fn configured_id(&self, name: &str) -> Option<u32> {
        let i = idx(name);
        if self.origins[i] == Origin::Default {
            return None;
        }
        self.values[i].as_int().and_then(|v| u32::try_from(v).ok())
    }

    /// gunicorn's `cfg.uid`: the configured uid, else the effective uid.
    pub fn uid(&self) -> u32 {
        u32::try_from(self.int("user")).unwrap_or(0)
    }

    /// gunicorn's `cfg.gid`: the configured gid, else the effective gid.
    pub fn gid(&self) -> u32 {
        u32::try_from(self.int("group")).unwrap_or(0)
    }

    pub fn umask(&self) -> u32 {
        u32::try_from(self.int("umask")).unwrap_or(0)
    }

    pub fn initgroups(&self) -> bool {
        self.bool("initgroups")
    }

    /// `--log-syslog` and its settings (None: off), as gunicorn's
    /// `Logger._set_syslog_handler` reads them.
    pub fn syslog(&self) -> Option<crate::log::syslog::Settings> {
        if !self.bool("syslog") {
            return None;
        }
        Some(crate::log::syslog::Settings {
            addr: self
                .str("syslog_addr")
                .unwrap_or("udp://localhost:514")
                .to_owned(),
            prefix: match self.str("syslog_prefix") {
                Some(p) => p.to_owned(),
                None => self.proc_name().replace(':', "."),
            },
            facility: self.str("syslog_facility").unwrap_or("user").to_owned(),
            access: !self.bool("disable_redirect_access_to_syslog"),
        })
    }

    /// `statsd_host` and its settings (None: statsd off). The address was
    /// validated when it was set, so an error here means a value that
    /// bypassed validation.
    pub fn statsd(&self) -> Result<Option<Statsd>, String> {
        let Some(host) = self.str("statsd_host") else {
            return Ok(None);
        };
        let addr = parse_statsd_address(host)
            .map_err(|why| format!("statsd_host {}: {why}", value::py_repr_str(host)))?;
        Ok(Some(Statsd {
            addr,
            prefix: self.str("statsd_prefix").unwrap_or("").to_owned(),
            tags: self.str("dogstatsd_tags").unwrap_or("").to_owned(),
            backlog: self.bool("enable_backlog_metric"),
        }))
    }

    /// `proc_name`, else `default_proc_name` (the application argument).
    pub fn proc_name(&self) -> String {
        self.str("proc_name")
            .or_else(|| self.str("default_proc_name"))
            .unwrap_or("ferrocorn")
            .to_owned()
    }

    /// One of debug, info, warning, error, critical: gunicorn's logger maps
    /// any other value to info.
    pub fn loglevel(&self) -> String {
        let l = self.str("loglevel").unwrap_or("info").to_lowercase();
        match l.as_str() {
            "debug" | "info" | "warning" | "error" | "critical" => l,
            _ => "info".to_owned(),
        }
    }

    /// `-` means stderr.
    pub fn errorlog(&self) -> String {
        self.str("errorlog").unwrap_or("-").to_owned()
    }

    /// `None`: no access log; `-`: stdout.
    pub fn accesslog(&self) -> Option<String> {
        self.str("accesslog").map(str::to_owned)
    }

    pub fn access_log_format(&self) -> String {
        self.str("access_log_format").unwrap_or_default().to_owned()
    }

    pub fn capture_output(&self) -> bool {
        self.bool("capture_output")
    }

    /// (limit_request_line, limit_request_fields, limit_request_field_size)
    /// after gunicorn's clamping: line 0 means unlimited and is capped at
    /// 8190; fields 0 or above 32768 means 32768; field size 0 means 8190.
    pub fn parser_limits(&self) -> (usize, usize, usize) {
        let line = self.usize("limit_request_line").min(8190);
        let fields = match self.usize("limit_request_fields") {
            0 => 32768,
            n => n.min(32768),
        };
        let field_size = match self.usize("limit_request_field_size") {
            0 => 8190,
            n => n,
        };
        (line, fields, field_size)
    }

    pub fn forwarded_allow_ips(&self) -> Vec<String> {
        self.list("forwarded_allow_ips")
    }

    pub fn secure_scheme_headers(&self) -> Vec<(String, String)> {
        match self.get("secure_scheme_headers") {
            Value::Dict(d) => d.clone(),
            _ => Vec::new(),
        }
    }

    /// off, v1, v2 or auto.
    pub fn proxy_protocol(&self) -> String {
        self.str("proxy_protocol").unwrap_or("off").to_owned()
    }

    /// `protocol`: "http" or "uwsgi".
    pub fn protocol(&self) -> String {
        self.str("protocol").unwrap_or("http").to_owned()
    }

    pub fn uwsgi_allow_ips(&self) -> Vec<String> {
        self.list("uwsgi_allow_ips")
    }

    pub fn proxy_allow_ips(&self) -> Vec<String> {
        self.list("proxy_allow_ips")
    }

    /// drop, refuse or dangerous.
    pub fn header_map(&self) -> String {
        self.str("header_map").unwrap_or("drop").to_owned()
    }

    pub fn forwarder_headers(&self) -> Vec<String> {
        self.list("forwarder_headers")
    }

    // -- metrics (ferrocorn settings) ------------------------------------------

    /// Whether the built-in metrics are on (`--no-metrics` turns them off).
    pub fn metrics(&self) -> bool {
        self.get("metrics").as_bool().unwrap_or(true)
    }

    /// The value of the metrics setting fed by environment variable `var`
    /// (PROMETHEUS_METRICS_PORT, ...), as that variable's text; `None` when
    /// unset. Lets the exporter's settings be parsed by one set of rules
    /// whichever source they came from.
    pub fn metrics_var(&self, var: &str) -> Option<OsString> {
        let s = SETTINGS
            .iter()
            .find(|s| s.env == Some(var) && s.support == Support::Extension)?;
        match self.get(s.name) {
            Value::None => None,
            Value::Bool(b) => Some(OsString::from(if *b { "true" } else { "false" })),
            Value::Int(i) => Some(OsString::from(i.to_string())),
            Value::Str(t) => Some(OsString::from(t)),
            _ => None,
        }
    }

    /// The request duration histogram's upper bounds: finite, ascending,
    /// 1 to 32 of them.
    pub fn metrics_duration_buckets(&self) -> Result<Vec<f64>, ConfigError> {
        let bad = |why: String| {
            ConfigError(format!(
                "invalid value for --metrics-duration-buckets (metrics_duration_buckets): {why}"
            ))
        };
        let mut out = Vec::new();
        for t in self.list("metrics_duration_buckets") {
            match t.trim().parse::<f64>() {
                Ok(b) if b.is_finite() => out.push(b),
                _ => {
                    return Err(bad(format!(
                        "{} is not a number of seconds",
                        value::py_repr_str(&t)
                    )))
                }
            }
        }
        // What a histogram in shared memory can hold is the histogram's rule.
        crate::metrics::store::check_duration_bounds(&out).map_err(bad)?;
        Ok(out)
    }

    /// Whether to use sendfile: the explicit setting, else the `SENDFILE`
    /// environment variable (y, 1, yes, true), else true.
    pub fn sendfile(&self) -> bool {
        match self.get("sendfile") {
            Value::Bool(b) => *b,
            _ => match std::env::var("SENDFILE") {
                Ok(v) => matches!(v.to_lowercase().as_str(), "y" | "1" | "yes" | "true"),
                Err(_) => true,
            },
        }
    }
}

/// `-v/--version`: gunicorn's line, then the Python ferrocorn runs (its
/// version and `sys.executable`), since that is the interpreter the app
/// gets.
fn print_version(py: Python<'_>) {
    println!("ferrocorn (version {})", env!("CARGO_PKG_VERSION"));
    let get = |name: &str| -> String {
        py.import("sys")
            .and_then(|m| m.getattr(name))
            .and_then(|v| v.str())
            .map(|v| v.to_string())
            .unwrap_or_else(|_| "?".into())
    };
    let version = get("version");
    let version = version.split_whitespace().next().unwrap_or("?");
    println!("Python {version} ({})", get("executable"));
}

fn clap_exit(e: &clap::Error) -> Loaded {
    let _ = e.print();
    Loaded::Exit(e.exit_code())
}

/// `module.qualname` of a class object given as a setting.
fn class_path(o: &Py<PyAny>) -> String {
    Python::attach(|py| {
        let o = o.bind(py);
        let module = o
            .getattr("__module__")
            .and_then(|m| m.extract::<String>())
            .unwrap_or_default();
        let name = o
            .getattr("__qualname__")
            .and_then(|m| m.extract::<String>())
            .unwrap_or_default();
        if module.is_empty() {
            name
        } else {
            format!("{module}.{name}")
        }
    })
}

/// gunicorn's `has_logging_config`: the ini file has a `[loggers]`
/// section (configparser's section header, surrounding blanks allowed).
/// An unreadable file has none, as configparser's `read` skips it.
fn has_loggers_section(file: &Path) -> bool {
    std::fs::read(file).is_ok_and(|b| {
        String::from_utf8_lossy(&b)
            .lines()
            .any(|l| l.trim() == "[loggers]")
    })
}

/// The settings table of `docs/compatibility.md`, generated from
/// [`settings::SETTINGS`] (a test keeps the page in step with the table).
#[cfg(test)]
pub fn compatibility_table() -> String {
    let mut out = String::from("| Setting | CLI flags | ferrocorn | Notes |\n|---|---|---|---|\n");
    let mut section = "";
    for s in SETTINGS {
        if s.section != section {
            section = s.section;
            out.push_str(&format!("| **{section}** | | | |\n"));
        }
        let flags = if s.cli.is_empty() {
            "(config file only)".to_owned()
        } else {
            s.cli
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let state = match s.support {
            Support::Supported => "supported",
            Support::Ignored => "accepted, ignored (warns)",
            Support::NotYet => "not yet (warns)",
            Support::Extension => "ferrocorn setting",
        };
        let note = if s.note.is_empty() { s.help } else { s.note };
        out.push_str(&format!(
            "| `{}` | {flags} | {state} | {} |\n",
            s.name,
            note.replace('|', "\\|")
        ));
    }
    out
}

/// The statsd settings (`statsd_host`, `statsd_prefix`, `dogstatsd_tags`,
/// `enable_backlog_metric`), as the exporter process sends them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statsd {
    pub addr: StatsdAddr,
    /// As given: the exporter applies gunicorn's trailing-dot rule.
    pub prefix: String,
    /// Appended as `|#tags` when not empty.
    pub tags: String,
    pub backlog: bool,
}

#[cfg(test)]
mod tests;
