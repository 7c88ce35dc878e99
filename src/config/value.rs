//! Setting values and gunicorn's validators.
//!
//! Values arrive as strings (command line, `GUNICORN_CMD_ARGS`), as Python
//! objects (a `gunicorn.conf.py`, a TOML file converted to Python objects) or
//! as [`Value`]s (the Rust API). All of them go through [`validate`], which
//! follows gunicorn 27's validator for the setting's [`Kind`]. A validation
//! error is a one-line reason that names the offending value and what is
//! allowed; the caller prefixes the setting's name and where it came from.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use super::settings::{IntRule, IntSyntax, Kind, NoneRule, Setting};

/// A setting's value.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<String>),
    Dict(Vec<(String, String)>),
    /// A Python callable: a hook, or a class given as `worker_class`.
    Callable(Arc<Py<PyAny>>),
    /// Any other Python object a setting may hold (`logconfig_dict`, an
    /// `ssl_version` enum, ...).
    Object(Arc<Py<PyAny>>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::None, Value::None) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a == b,
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::List(a), Value::List(b)) => a == b,
            (Value::Dict(a), Value::Dict(b)) => a == b,
            (Value::Callable(a), Value::Callable(b)) | (Value::Object(a), Value::Object(b)) => {
                a.as_ptr() == b.as_ptr()
            }
            _ => false,
        }
    }
}

impl Value {
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Converts a Python object by its type alone: `None`, `bool`, `int`,
    /// `float`, `str`, lists/tuples of `str`, dicts of `str` to `str`,
    /// callables; anything else is kept as an `Object`.
    pub fn from_py(obj: &Bound<'_, PyAny>) -> Value {
        if obj.is_none() {
            return Value::None;
        }
        if let Ok(b) = obj.cast::<PyBool>() {
            return Value::Bool(b.is_true());
        }
        if obj.is_instance_of::<PyInt>() {
            return match obj.extract::<i64>() {
                Ok(i) => Value::Int(i),
                Err(_) => Value::Object(Arc::new(obj.clone().unbind())),
            };
        }
        if obj.is_instance_of::<PyFloat>() {
            if let Ok(f) = obj.extract::<f64>() {
                return Value::Float(f);
            }
        }
        if let Ok(s) = obj.cast::<PyString>() {
            if let Ok(s) = s.to_str() {
                return Value::Str(s.to_owned());
            }
        }
        if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
            let items: Option<Vec<String>> = obj.try_iter().ok().and_then(|it| {
                it.map(|x| x.ok().and_then(|x| x.extract::<String>().ok()))
                    .collect()
            });
            if let Some(items) = items {
                return Value::List(items);
            }
        }
        if let Ok(d) = obj.cast::<PyDict>() {
            let items: Option<Vec<(String, String)>> = d
                .iter()
                .map(|(k, v)| Some((k.extract::<String>().ok()?, v.extract::<String>().ok()?)))
                .collect();
            if let Some(items) = items {
                return Value::Dict(items);
            }
        }
        if obj.is_callable() {
            return Value::Callable(Arc::new(obj.clone().unbind()));
        }
        Value::Object(Arc::new(obj.clone().unbind()))
    }

    /// The value as a Python object (e.g. to expose the configuration to
    /// Python code).
    pub fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self {
            Value::None => py.None().into_bound(py),
            Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
            Value::Int(i) => i.into_pyobject(py)?.into_any(),
            Value::Float(f) => PyFloat::new(py, *f).into_any(),
            Value::Str(s) => PyString::new(py, s).into_any(),
            Value::List(l) => PyList::new(py, l)?.into_any(),
            Value::Dict(d) => {
                let dict = PyDict::new(py);
                for (k, v) in d {
                    dict.set_item(k, v)?;
                }
                dict.into_any()
            }
            Value::Callable(o) | Value::Object(o) => o.bind(py).clone(),
        })
    }

    /// Python's `repr()` of the value, for error messages.
    pub fn repr(&self) -> String {
        match self {
            Value::Str(s) => py_repr_str(s),
            Value::List(l) => {
                let items: Vec<String> = l.iter().map(|s| py_repr_str(s)).collect();
                format!("[{}]", items.join(", "))
            }
            Value::Callable(o) | Value::Object(o) => Python::attach(|py| {
                o.bind(py)
                    .repr()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|_| "<object>".to_owned())
            }),
            other => other.display(),
        }
    }

    /// Python's `str()` of the value, as `--print-config` shows it.
    pub fn display(&self) -> String {
        match self {
            Value::None => "None".to_owned(),
            Value::Bool(true) => "True".to_owned(),
            Value::Bool(false) => "False".to_owned(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => py_float(*f),
            Value::Str(s) => s.clone(),
            Value::List(_) => self.repr(),
            Value::Dict(d) => {
                let items: Vec<String> = d
                    .iter()
                    .map(|(k, v)| format!("{}: {}", py_repr_str(k), py_repr_str(v)))
                    .collect();
                format!("{{{}}}", items.join(", "))
            }
            Value::Callable(o) | Value::Object(o) => Python::attach(|py| {
                o.bind(py)
                    .str()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|_| "<object>".to_owned())
            }),
        }
    }
}

fn py_float(f: f64) -> String {
    if f.is_nan() {
        "nan".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "inf" } else { "-inf" }.to_owned()
    } else if f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

/// Python's `repr()` of a string.
pub fn py_repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

// ---------------------------------------------------------------------------
// Integers, the way Python's int() reads them.

/// Digits in `radix`, with single underscores between digits (Python's
/// rule); `lead_underscore` allows one right at the start (after `0x`).
fn parse_digits(s: &str, radix: u32, lead_underscore: bool) -> Option<i128> {
    let s = match s.strip_prefix('_') {
        Some(rest) if lead_underscore => rest,
        _ => s,
    };
    if s.is_empty() || s.starts_with('_') || s.ends_with('_') || s.contains("__") {
        return None;
    }
    let mut n: i128 = 0;
    for c in s.chars().filter(|&c| c != '_') {
        let d = c.to_digit(radix)?;
        n = n
            .checked_mul(i128::from(radix))?
            .checked_add(i128::from(d))?;
    }
    Some(n)
}

/// A boolean environment variable as gunicorn-prometheus-exporter reads
/// them (any case): true/1/yes/on or false/0/no/off.
pub fn env_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A text environment variable as the REDIS_* and PROMETHEUS_* readers take
/// them: `None` when unset or blank, else trimmed; an error naming the
/// variable when it is not UTF-8.
pub fn env_text(
    get: &impl Fn(&str) -> Option<OsString>,
    name: &str,
) -> Result<Option<String>, String> {
    match get(name) {
        None => Ok(None),
        Some(v) => v
            .into_string()
            .map(|s| {
                let t = s.trim();
                (!t.is_empty()).then(|| t.to_owned())
            })
            .map_err(|v| format!("{name}={v:?} is not valid UTF-8")),
    }
}

/// `scheme://user:secret@host/db` -> `scheme://user:***@host/db` (a URL
/// without a password is returned as it is).
pub fn redact_url(u: &str) -> String {
    let Some((scheme, rest)) = u.split_once("://") else {
        return u.to_owned();
    };
    let (auth_end, _) = rest
        .char_indices()
        .find(|(_, c)| *c == '/' || *c == '?')
        .unwrap_or((rest.len(), ' '));
    let authority = &rest[..auth_end];
    match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{scheme}://{hidden}@{hostport}{}", &rest[auth_end..])
        }
        None => u.to_owned(),
    }
}

/// Settings whose value is a secret, or may hold one in a URL.
const SECRET_SETTINGS: [&str; 1] = ["redis_password"];
const URL_SETTINGS: [&str; 3] = ["redis_url", "redis_cluster_nodes", "redis_sentinel_nodes"];

/// How `--print-config` (and the debug log of the configuration) shows a
/// setting's value: a password as `***`, the passwords inside URLs (one or
/// a comma-separated list) redacted, every other value as it is.
pub fn redact_setting(name: &str, shown: String) -> String {
    if SECRET_SETTINGS.contains(&name) {
        if shown == "None" || shown.is_empty() {
            return shown;
        }
        return "***".to_owned();
    }
    if URL_SETTINGS.contains(&name) && shown.contains('@') {
        return shown
            .split(',')
            .map(redact_url)
            .collect::<Vec<_>>()
            .join(",");
    }
    shown
}

/// Python's `int(s)` (`base0 == false`) or `int(s, 0)` (`base0 == true`).
pub fn py_int(s: &str, base0: bool) -> Option<i64> {
    let t = s.trim();
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let n = if base0 {
        let lower = t.get(..2).map(|p| p.to_ascii_lowercase());
        match lower.as_deref() {
            Some("0x") => parse_digits(&t[2..], 16, true)?,
            Some("0o") => parse_digits(&t[2..], 8, true)?,
            Some("0b") => parse_digits(&t[2..], 2, true)?,
            _ => {
                let n = parse_digits(t, 10, false)?;
                // int("010", 0) is an error; int("00", 0) is 0.
                if t.starts_with('0') && n != 0 {
                    return None;
                }
                n
            }
        }
    } else {
        parse_digits(t, 10, false)?
    };
    i64::try_from(if neg { -n } else { n }).ok()
}

/// gunicorn's `auto_int`: a leading `0` followed by a digit means octal.
pub fn auto_int(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() >= 2 && b[0] == b'0' && b[1].is_ascii_digit() {
        py_int(&format!("0o{}", &s[1..]), true)
    } else {
        py_int(s, true)
    }
}

fn int_rule_text(rule: &IntRule) -> String {
    let base = if rule.min == 0 && rule.max == i64::MAX {
        "a positive integer".to_owned()
    } else if rule.max == i64::MAX {
        format!("an integer of at least {}", rule.min)
    } else {
        format!("an integer between {} and {}", rule.min, rule.max)
    };
    match rule.syntax {
        IntSyntax::Auto => format!("{base} (octal as 0o22 or 022, hex as 0x12)"),
        _ => base,
    }
}

fn check_int(rule: &IntRule, shown: &str, n: Option<i64>) -> Result<Value, String> {
    match n {
        Some(n) if n >= rule.min && n <= rule.max => Ok(Value::Int(n)),
        _ => Err(format!("{shown} is not {}", int_rule_text(rule))),
    }
}

// ---------------------------------------------------------------------------
// Entry points.

/// A value from the command line (or `GUNICORN_CMD_ARGS`) for `s`.
pub enum CliRaw {
    /// A flag without value was given (`store_true`, `store_const`).
    Flag,
    /// One value (the last one if the flag was repeated).
    One(String),
    /// Every value of an `append` flag.
    Many(Vec<String>),
}

/// Converts a command-line value as gunicorn's argparse `type=` does, then
/// validates it.
pub fn from_cli(s: &Setting, raw: CliRaw) -> Result<Value, String> {
    match (s.kind, raw) {
        (Kind::Flag, CliRaw::Flag) => Ok(Value::Bool(true)),
        (Kind::NoFlag, CliRaw::Flag) => Ok(Value::Bool(false)),
        (Kind::Int(rule), CliRaw::One(v)) => match rule.syntax {
            IntSyntax::Decimal => check_int(&rule, &py_repr_str(&v), py_int(&v, false)),
            IntSyntax::Auto => check_int(&rule, &py_repr_str(&v), auto_int(&v)),
            IntSyntax::Base0 => validate(s, Value::Str(v)),
        },
        (_, CliRaw::One(v)) => validate(s, Value::Str(v)),
        (_, CliRaw::Many(v)) => validate(s, Value::List(v)),
        (_, CliRaw::Flag) => Err("a value is required".to_owned()),
    }
}

/// A value from a Python config file (or a TOML value converted to Python).
pub fn from_py(s: &Setting, obj: &Bound<'_, PyAny>) -> Result<Value, String> {
    match s.kind {
        Kind::Dict => {
            let d = obj
                .cast::<PyDict>()
                .map_err(|_| format!("{} is not a dictionary", py_repr(obj)))?;
            let mut out = Vec::new();
            for (k, v) in d.iter() {
                out.push((py_str(&k), py_str(&v)));
            }
            Ok(Value::Dict(out))
        }
        Kind::AnyDict => {
            if obj.is_instance_of::<PyDict>() {
                Ok(Value::Object(Arc::new(obj.clone().unbind())))
            } else {
                Err(format!("{} is not a dictionary", py_repr(obj)))
            }
        }
        _ => validate(s, Value::from_py(obj)),
    }
}

fn py_repr(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<object>".to_owned())
}

fn py_str(obj: &Bound<'_, PyAny>) -> String {
    obj.str()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<object>".to_owned())
}

/// Whether a value is "falsy" in Python (for `validate_list_string`).
fn falsy(v: &Value) -> bool {
    match v {
        Value::None => true,
        Value::Bool(b) => !b,
        Value::Int(i) => *i == 0,
        Value::Float(f) => *f == 0.0,
        Value::Str(s) => s.is_empty(),
        Value::List(l) => l.is_empty(),
        Value::Dict(d) => d.is_empty(),
        Value::Callable(_) | Value::Object(_) => false,
    }
}

fn string(v: Value) -> Result<Option<String>, String> {
    match v {
        Value::None => Ok(None),
        Value::Str(s) => Ok(Some(s.trim().to_owned())),
        other => Err(format!("{} is not a string", other.repr())),
    }
}

fn list_string(v: Value) -> Result<Vec<String>, String> {
    if falsy(&v) {
        return Ok(Vec::new());
    }
    match v {
        Value::Str(s) => Ok(vec![s.trim().to_owned()]),
        Value::List(l) => Ok(l.into_iter().map(|s| s.trim().to_owned()).collect()),
        other => Err(format!(
            "{} is not a string or a list of strings",
            other.repr()
        )),
    }
}

/// `validate_string_to_list`; a list is accepted too (TOML arrays).
fn comma_list(v: Value) -> Result<Vec<String>, String> {
    match v {
        Value::List(l) => Ok(l
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()),
        v => match string(v).map_err(|e| format!("{e} (a comma-separated list is expected)"))? {
            None => Ok(Vec::new()),
            Some(s) => Ok(s
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| p.trim().to_owned())
                .collect()),
        },
    }
}

/// gunicorn's `util.getcwd()`: `$PWD` when it is the current directory.
pub fn getcwd() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let real = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    if let Some(pwd) = std::env::var_os("PWD") {
        if let (Ok(a), Ok(b)) = (std::fs::metadata(&pwd), std::fs::metadata(&real)) {
            if a.ino() == b.ino() && a.dev() == b.dev() {
                return PathBuf::from(pwd);
            }
        }
    }
    real
}

/// `os.path.abspath(os.path.normpath(os.path.join(cwd, p)))`.
pub fn abspath(cwd: &Path, p: &str) -> PathBuf {
    let joined = cwd.join(p);
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn user_or_group(v: Value, group: bool) -> Result<Value, String> {
    let what = if group { "group" } else { "user" };
    match v {
        Value::None => Ok(Value::Int(if group {
            i64::from(nix::unistd::getegid().as_raw())
        } else {
            i64::from(nix::unistd::geteuid().as_raw())
        })),
        Value::Int(i) if (0..=i64::from(u32::MAX)).contains(&i) => Ok(Value::Int(i)),
        Value::Bool(b) => Ok(Value::Int(i64::from(b))),
        Value::Str(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) => {
            match s.parse::<u32>() {
                Ok(n) => Ok(Value::Int(i64::from(n))),
                Err(_) => Err(format!("{} is not a valid {what} id", py_repr_str(&s))),
            }
        }
        Value::Str(s) => {
            let id = if group {
                nix::unistd::Group::from_name(&s)
                    .ok()
                    .flatten()
                    .map(|g| g.gid.as_raw())
            } else {
                nix::unistd::User::from_name(&s)
                    .ok()
                    .flatten()
                    .map(|u| u.uid.as_raw())
            };
            id.map(|id| Value::Int(i64::from(id)))
                .ok_or_else(|| format!("no such {what}: {}", py_repr_str(&s)))
        }
        other => Err(format!(
            "{} is not a {what} name or a numeric {what} id",
            other.repr()
        )),
    }
}

fn choice(v: Value, values: &[&str], fold: bool, none: NoneRule) -> Result<Value, String> {
    let allowed = || values.join(", ");
    match v {
        Value::None => match none {
            NoneRule::Keep => Ok(Value::None),
            NoneRule::To(d) => Ok(Value::Str(d.to_owned())),
            NoneRule::Reject => Err(format!("None is not one of: {}", allowed())),
        },
        Value::Str(s) => {
            let key = if fold {
                s.trim().to_lowercase()
            } else {
                s.clone()
            };
            if values.contains(&key.as_str()) {
                Ok(Value::Str(key))
            } else {
                Err(format!("{} is not one of: {}", py_repr_str(&s), allowed()))
            }
        }
        other => Err(format!("{} is not one of: {}", other.repr(), allowed())),
    }
}

fn proxy_protocol(v: Value) -> Result<Value, String> {
    const ALLOWED: &str = "off, false, 0, none, v1, v2, auto, true, 1";
    let out = match v {
        Value::None => "off",
        Value::Bool(b) => {
            if b {
                "auto"
            } else {
                "off"
            }
        }
        Value::Str(s) => match s.trim().to_lowercase().as_str() {
            "false" | "off" | "0" | "none" => "off",
            "true" | "auto" | "1" => "auto",
            "v1" => "v1",
            "v2" => "v2",
            _ => return Err(format!("{} is not one of: {ALLOWED}", py_repr_str(&s))),
        },
        other => return Err(format!("{} is not one of: {ALLOWED}", other.repr())),
    };
    Ok(Value::Str(out.to_owned()))
}

fn http_protocols(v: Value) -> Result<Value, String> {
    let items: Vec<String> = match v {
        Value::None => Vec::new(),
        Value::Str(s) => s
            .split(',')
            .map(|p| p.trim().to_lowercase())
            .filter(|p| !p.is_empty())
            .collect(),
        Value::List(l) => l
            .iter()
            .map(|p| p.trim().to_lowercase())
            .filter(|p| !p.is_empty())
            .collect(),
        other => {
            return Err(format!(
                "{} is not a comma-separated list of h1, h2",
                other.repr()
            ))
        }
    };
    if items.is_empty() {
        return Ok(Value::List(vec!["h1".to_owned()]));
    }
    for (i, p) in items.iter().enumerate() {
        if p != "h1" && p != "h2" {
            return Err(format!(
                "{} is not a valid protocol (valid: h1, h2)",
                py_repr_str(p)
            ));
        }
        if items[..i].contains(p) {
            return Err(format!("protocol {} is listed twice", py_repr_str(p)));
        }
    }
    Ok(Value::List(items))
}

fn http2_cleartext(v: Value) -> Result<Value, String> {
    const ALLOWED: [&str; 4] = ["off", "prior-knowledge", "upgrade", "both"];
    match v {
        Value::None => Ok(Value::Str("off".to_owned())),
        Value::Bool(b) => Ok(Value::Str(
            if b { "prior-knowledge" } else { "off" }.to_owned(),
        )),
        v => choice(v, &ALLOWED, true, NoneRule::To("off")),
    }
}

fn statsd_addr(v: Value) -> Result<Value, String> {
    let Some(s) = string(v)? else {
        return Ok(Value::None);
    };
    parse_statsd_address(&s).map_err(|why| format!("{} {why}", py_repr_str(&s)))?;
    Ok(Value::Str(s))
}

/// Where statsd datagrams go (`statsd_host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatsdAddr {
    /// UDP to a host name or address literal (IPv6 without brackets).
    Udp { host: String, port: u16 },
    /// A unix datagram socket.
    Unix(PathBuf),
}

/// gunicorn 27's `validate_statsd_address`: `unix:PATH` / `unix://PATH`, or
/// `[tcp://]HOST[:PORT]` with port 8125 by default (sent over UDP, as
/// gunicorn does whatever the scheme says). `unix:NNNN` is UDP to the host
/// named `unix`, the backward-compatibility rule gunicorn keeps from
/// release 20. Stricter than gunicorn where its value could only fail
/// later and silently (gunicorn then sends nothing): an empty unix path, a
/// `fd://` address, an empty host.
pub fn parse_statsd_address(s: &str) -> Result<StatsdAddr, String> {
    const FORMS: &str = "is not 'host:port' or 'unix://PATH'";
    if let Some(port) = s.strip_prefix("unix:") {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("{FORMS}: port {port} is out of range"))?;
            return Ok(StatsdAddr::Udp {
                host: "unix".to_owned(),
                port,
            });
        }
        let path = port.strip_prefix("//").unwrap_or(port);
        if path.is_empty() {
            return Err(format!("{FORMS}: the unix socket path is empty"));
        }
        return Ok(StatsdAddr::Unix(PathBuf::from(path)));
    }
    if s.starts_with("fd://") {
        return Err(format!(
            "{FORMS}: statsd cannot be sent to a file descriptor"
        ));
    }
    let netloc = s.strip_prefix("tcp://").unwrap_or(s);
    // util.parse_address: brackets for IPv6, else the first two
    // colon-separated fields (as gunicorn splits them).
    let (host, port) = if let (Some(open), Some(close)) = (netloc.find('['), netloc.find(']')) {
        let host = netloc.get(open + 1..close).unwrap_or("");
        let port = netloc.split_once("]:").map(|(_, p)| p);
        (host, port)
    } else if let Some((h, rest)) = netloc.split_once(':') {
        (h, Some(rest.split(':').next().unwrap_or(rest)))
    } else if netloc.is_empty() {
        ("0.0.0.0", None)
    } else {
        (netloc, None)
    };
    let port = match port {
        None => 8125,
        Some(p) => p
            .trim()
            .parse::<u16>()
            .map_err(|_| format!("{FORMS}: {} is not a valid port number", py_repr_str(p)))?,
    };
    if host.is_empty() {
        return Err(format!("{FORMS}: the host is empty"));
    }
    Ok(StatsdAddr::Udp {
        host: host.to_lowercase(),
        port,
    })
}

fn class(v: Value) -> Result<Value, String> {
    match v {
        Value::Callable(obj) | Value::Object(obj) => Python::attach(|py| {
            let inspect = py.import("inspect").map_err(|e| e.to_string())?;
            let is = |f: &str, o: &Bound<'_, PyAny>| -> bool {
                inspect
                    .call_method1(f, (o,))
                    .and_then(|r| r.is_truthy())
                    .unwrap_or(false)
            };
            let mut o = obj.bind(py).clone();
            if is("isfunction", &o) || is("ismethod", &o) {
                o = o
                    .call0()
                    .map_err(|e| format!("calling {}: {e}", py_repr(&o)))?;
            }
            if is("isclass", &o) {
                return Ok(Value::Callable(Arc::new(o.unbind())));
            }
            match Value::from_py(&o) {
                Value::Str(s) => Ok(Value::Str(s.trim().to_owned())),
                Value::None => Ok(Value::None),
                _ => Err(format!(
                    "{} is not a class or a dotted path to one",
                    py_repr(&o)
                )),
            }
        }),
        v => string(v).map(|s| s.map_or(Value::None, Value::Str)),
    }
}

/// Counts the positional parameters of a callable as gunicorn's
/// `util.get_arity` does.
fn arity(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    let py = obj.py();
    let inspect = py.import("inspect")?;
    let param = inspect.getattr("Parameter")?;
    let pos_only = param.getattr("POSITIONAL_ONLY")?;
    let pos_kw = param.getattr("POSITIONAL_OR_KEYWORD")?;
    let sig = inspect.call_method1("signature", (obj,))?;
    let mut n = 0;
    for p in sig
        .getattr("parameters")?
        .call_method0("values")?
        .try_iter()?
    {
        let kind = p?.getattr("kind")?;
        if kind.eq(&pos_only)? || kind.eq(&pos_kw)? {
            n += 1;
        }
    }
    Ok(n)
}

/// `module.object` → the object, as gunicorn's `validate_callable` imports it.
fn import_string<'py>(py: Python<'py>, s: &str) -> Result<Bound<'py, PyAny>, String> {
    let Some((module, name)) = s.rsplit_once('.') else {
        return Err(format!(
            "{} is not an import string (module[.submodules...].object)",
            py_repr_str(s)
        ));
    };
    let m = py
        .import(module)
        .map_err(|e| format!("cannot import {}: {e}", py_repr_str(s)))?;
    m.getattr(name).map_err(|_| {
        format!(
            "cannot load {} from {}",
            py_repr_str(name),
            py_repr_str(module)
        )
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `validate_callable(arity)`, and `validate_post_request` (`want == None`).
fn hook(v: Value, want: Option<u8>) -> Result<Value, String> {
    Python::attach(|py| {
        let obj = match v {
            Value::None => return Ok(Value::None),
            Value::Str(s) => import_string(py, s.trim())?,
            Value::Callable(o) | Value::Object(o) => o.bind(py).clone(),
            other => return Err(format!("{} is not callable", other.repr())),
        };
        if !obj.is_callable() {
            return Err(format!("{} is not callable", py_repr(&obj)));
        }
        let n = arity(&obj).map_err(|e| format!("cannot inspect {}: {e}", py_repr(&obj)))?;
        match want {
            Some(want) if n == usize::from(want) => Ok(Value::Callable(Arc::new(obj.unbind()))),
            Some(want) => Err(format!(
                "{} takes {n} positional argument{}, a callable taking {want} is required",
                py_repr(&obj),
                plural(n)
            )),
            None if n == 4 => Ok(Value::Callable(Arc::new(obj.unbind()))),
            None if n == 2 || n == 3 => wrap_post_request(py, &obj, n)
                .map(|w| Value::Callable(Arc::new(w.unbind())))
                .map_err(|e| e.to_string()),
            None => Err(format!(
                "{} takes {n} positional argument{}, a callable taking 2, 3 or 4 \
                 (worker, req[, environ[, resp]]) is required",
                py_repr(&obj),
                plural(n)
            )),
        }
    })
}

/// Wraps a 2- or 3-argument `post_request` so that it is always called with
/// (worker, req, environ, resp), as gunicorn does.
fn wrap_post_request<'py>(
    py: Python<'py>,
    f: &Bound<'py, PyAny>,
    n: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let ns = PyDict::new(py);
    ns.set_item("val", f)?;
    let code = if n == 3 {
        c"lambda worker, req, env, _r: val(worker, req, env)"
    } else {
        c"lambda worker, req, _e, _r: val(worker, req)"
    };
    let w = py.eval(code, Some(&ns), None)?;
    w.setattr("__qualname__", "validate_post_request.<locals>.<lambda>")?;
    Ok(w)
}

/// Validates `v` for setting `s` as gunicorn's validator would, returning the
/// normalised value.
pub fn validate(s: &Setting, v: Value) -> Result<Value, String> {
    match s.kind {
        Kind::Flag | Kind::NoFlag => match v {
            Value::None => Ok(Value::None),
            Value::Bool(b) => Ok(Value::Bool(b)),
            Value::Str(ref t) => match t.trim().to_lowercase().as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(format!("{} is not a boolean (true or false)", v.repr())),
            },
            other => Err(format!("{} is not a boolean (True or False)", other.repr())),
        },
        Kind::Int(rule) => match v {
            Value::Int(i) => check_int(&rule, &i.to_string(), Some(i)),
            Value::Bool(b) => check_int(&rule, &i64::from(b).to_string(), Some(i64::from(b))),
            Value::Str(ref t) => check_int(&rule, &v.repr(), py_int(t, true)),
            other => Err(format!("{} is not {}", other.repr(), int_rule_text(&rule))),
        },
        Kind::Str => string(v).map(|s| s.map_or(Value::None, Value::Str)),
        Kind::List => list_string(v).map(Value::List),
        Kind::RawEnv => {
            let l = list_string(v)?;
            if let Some(bad) = l.iter().find(|e| !e.contains('=')) {
                return Err(format!("{} is not in KEY=VALUE form", py_repr_str(bad)));
            }
            Ok(Value::List(l))
        }
        Kind::Files => {
            let l = list_string(v)?;
            for f in &l {
                let glob = f.contains(['*', '?', '[']);
                if !glob && !Path::new(f).exists() {
                    return Err(format!("file {} does not exist", py_repr_str(f)));
                }
            }
            Ok(Value::List(l))
        }
        Kind::CommaList => comma_list(v).map(Value::List),
        Kind::AddrList => {
            let l = comma_list(v)?;
            // The workers parse the list with the same function, so a value
            // accepted here always boots.
            crate::http::allowlist::AllowList::parse(&l)
                .map_err(|bad| bad.message(&py_repr_str(&bad.0)))?;
            Ok(Value::List(l))
        }
        Kind::Dict => match v {
            Value::Dict(d) => Ok(Value::Dict(d)),
            other => Err(format!("{} is not a dictionary", other.repr())),
        },
        Kind::AnyDict => match v {
            Value::Dict(d) => Ok(Value::Dict(d)),
            Value::Object(o) => Python::attach(|py| {
                if o.bind(py).is_instance_of::<PyDict>() {
                    Ok(Value::Object(o.clone()))
                } else {
                    Err(format!("{} is not a dictionary", py_repr(o.bind(py))))
                }
            }),
            other => Err(format!("{} is not a dictionary", other.repr())),
        },
        Kind::Class => class(v),
        Kind::Hook(n) => hook(v, Some(n)),
        Kind::PostRequestHook => hook(v, None),
        Kind::User => user_or_group(v, false),
        Kind::Group => user_or_group(v, true),
        Kind::Chdir => {
            let Some(p) = string(v)? else {
                return Err("None is not a directory".to_owned());
            };
            let path = abspath(&getcwd(), &p);
            if path.exists() {
                Ok(Value::Str(path.to_string_lossy().into_owned()))
            } else {
                Err(format!("can't chdir to {}", py_repr_str(&p)))
            }
        }
        Kind::Choice { values, fold, none } => choice(v, values, fold, none),
        Kind::ProxyProtocol => proxy_protocol(v),
        Kind::HttpProtocols => http_protocols(v),
        Kind::Http2Cleartext => http2_cleartext(v),
        Kind::StatsdAddr => statsd_addr(v),
        Kind::Any => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_int_syntax() {
        assert_eq!(py_int(" 12 ", false), Some(12));
        assert_eq!(py_int("1_000", false), Some(1000));
        assert_eq!(py_int("007", false), Some(7));
        assert_eq!(py_int("0x10", false), None);
        assert_eq!(py_int("1__0", false), None);
        assert_eq!(py_int("_1", false), None);
        assert_eq!(py_int("-3", false), Some(-3));
        assert_eq!(py_int("0x10", true), Some(16));
        assert_eq!(py_int("0X_1f", true), Some(31));
        assert_eq!(py_int("0o17", true), Some(15));
        assert_eq!(py_int("0b101", true), Some(5));
        assert_eq!(py_int("010", true), None);
        assert_eq!(py_int("00", true), Some(0));
        assert_eq!(py_int("abc", true), None);
        assert_eq!(py_int("99999999999999999999", true), None);
        assert_eq!(auto_int("022"), Some(0o22));
        assert_eq!(auto_int("0o22"), Some(0o22));
        assert_eq!(auto_int("0x12"), Some(0x12));
        assert_eq!(auto_int("18"), Some(18));
        assert_eq!(auto_int("0"), Some(0));
        assert_eq!(auto_int("08"), None);
    }

    #[test]
    fn repr_of_strings() {
        assert_eq!(py_repr_str("abc"), "'abc'");
        assert_eq!(py_repr_str("it's"), "\"it's\"");
        assert_eq!(py_repr_str("a\\b\n"), "'a\\\\b\\n'");
        assert_eq!(
            Value::List(vec!["a".into(), "b".into()]).display(),
            "['a', 'b']"
        );
        assert_eq!(
            Value::Dict(vec![("X".into(), "y".into())]).display(),
            "{'X': 'y'}"
        );
        assert_eq!(Value::Float(2.0).display(), "2.0");
        assert_eq!(Value::Bool(true).display(), "True");
    }

    #[test]
    fn normpath() {
        assert_eq!(
            abspath(Path::new("/a/b"), "../c/./d"),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(abspath(Path::new("/a/b"), "/x//y/"), PathBuf::from("/x/y"));
        assert_eq!(abspath(Path::new("/"), "../.."), PathBuf::from("/"));
    }
}
