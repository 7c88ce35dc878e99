//! `ferrocorn ctl`: gunicorn's `gunicornc` without gunicorn installed. The
//! same options (`-s/--socket`, `-c/--command`, `-j/--json`,
//! `-v/--version`), the same default socket, the same output.

use std::ffi::OsString;
use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

/// gunicornc's client timeout.
const TIMEOUT: Duration = Duration::from_secs(30);

struct Client {
    path: PathBuf,
    sock: Option<UnixStream>,
    id: u64,
}

impl Client {
    fn connect(&mut self) -> Result<(), String> {
        if self.sock.is_some() {
            return Ok(());
        }
        let s = UnixStream::connect(&self.path)
            .map_err(|e| format!("Failed to connect to {}: {e}", self.path.display()))?;
        s.set_read_timeout(Some(TIMEOUT))
            .and_then(|()| s.set_write_timeout(Some(TIMEOUT)))
            .map_err(|e| format!("Failed to connect to {}: {e}", self.path.display()))?;
        self.sock = Some(s);
        Ok(())
    }

    /// One request and its reply's data (an error reply is an Err).
    fn send(&mut self, command: &str) -> Result<Value, String> {
        self.connect()?;
        self.id += 1;
        let req = json!({"id": self.id, "command": command, "args": []});
        let reply = match self.sock.as_mut() {
            Some(s) => exchange(s, &req),
            None => Err("not connected".to_owned()),
        };
        let reply = reply.map_err(|e| {
            self.sock = None;
            format!("Communication error: {e}")
        })?;
        if reply.get("status").and_then(Value::as_str) == Some("error") {
            return Err(reply
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("Unknown error")
                .to_owned());
        }
        Ok(reply.get("data").cloned().unwrap_or_else(|| json!({})))
    }
}

fn exchange(s: &mut UnixStream, req: &Value) -> Result<Value, String> {
    s.write_all(&super::encode(req))
        .map_err(|e| e.to_string())?;
    let mut prefix = [0u8; 4];
    s.read_exact(&mut prefix).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "Connection closed".to_owned(),
        _ => e.to_string(),
    })?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > super::MAX_MESSAGE_SIZE {
        return Err(format!("Message too large: {len}"));
    }
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)
        .map_err(|_| "Incomplete payload".to_owned())?;
    serde_json::from_slice(&payload).map_err(|e| format!("Invalid JSON: {e}"))
}

/// gunicornc's `parse_command`: the command words, then the arguments
/// (from the first number or `-...` on).
fn parse_line(line: &str) -> Result<(String, Vec<String>), String> {
    let parts = shlex::split(line).ok_or("No closing quotation")?;
    let mut words = Vec::new();
    let mut args = Vec::new();
    for p in parts {
        let digits = !p.is_empty() && p.chars().all(|c| c.is_ascii_digit());
        if args.is_empty() && !digits && !p.starts_with('-') {
            words.push(p);
        } else {
            args.push(p);
        }
    }
    Ok((words.join(" "), args))
}

fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "?".to_owned(),
        Some(Value::String(t)) => t.clone(),
        Some(other) => other.to_string(),
    }
}

fn heartbeat(w: &Value) -> String {
    match w.get("last_heartbeat") {
        Some(Value::Number(n)) => format!("{}s ago", py_float(n)),
        _ => "n/a".to_owned(),
    }
}

/// A JSON number as Python prints it (floats keep a `.0`).
fn py_float(n: &serde_json::Number) -> String {
    match n.as_f64() {
        Some(f) if n.is_f64() && f.fract() == 0.0 => format!("{f:.1}"),
        _ => n.to_string(),
    }
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn count(v: &Value, key: &str, n: usize) -> String {
    v.get(key).map_or_else(|| n.to_string(), |c| c.to_string())
}

fn format_workers(d: &Value) -> String {
    let ws = list(d, "workers");
    if ws.is_empty() {
        return "No workers running".to_owned();
    }
    let mut l = vec![
        format!("{:<10} {:<6} {:<8} LAST_BEAT", "PID", "AGE", "BOOTED"),
        "-".repeat(40),
    ];
    for w in ws {
        let booted = if truthy(w.get("booted")) { "yes" } else { "no" };
        l.push(format!(
            "{:<10} {:<6} {:<8} {}",
            s(w, "pid"),
            s(w, "age"),
            booted,
            heartbeat(w)
        ));
    }
    l.push(String::new());
    l.push(format!("Total: {} workers", count(d, "count", ws.len())));
    l.join("\n")
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(t)) => !t.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

fn format_stats(d: &Value) -> String {
    let uptime = match d.get("uptime").and_then(Value::as_f64) {
        Some(u) if u != 0.0 => {
            let (h, m, sec) = (
                (u / 3600.0) as u64,
                ((u % 3600.0) / 60.0) as u64,
                (u % 60.0) as u64,
            );
            if h > 0 {
                format!("{h}h {m}m {sec}s")
            } else if m > 0 {
                format!("{m}m {sec}s")
            } else {
                format!("{sec}s")
            }
        }
        _ => "unknown".to_owned(),
    };
    let or0 = |k: &str| d.get(k).map_or_else(|| "0".to_owned(), py_str);
    let mut l = vec![
        format!("Uptime:           {uptime}"),
        format!(
            "PID:              {}",
            d.get("pid").map_or_else(|| "unknown".to_owned(), py_str)
        ),
        format!("Workers current:  {}", or0("workers_current")),
        format!("Workers target:   {}", or0("workers_target")),
        format!("Workers spawned:  {}", or0("workers_spawned")),
        format!("Workers killed:   {}", or0("workers_killed")),
        format!("Reloads:          {}", or0("reloads")),
    ];
    if truthy(d.get("dirty_arbiter_pid")) {
        l.push(format!("Dirty arbiter:    {}", s(d, "dirty_arbiter_pid")));
    }
    l.join("\n")
}

fn format_listeners(d: &Value) -> String {
    let ls = list(d, "listeners");
    if ls.is_empty() {
        return "No listeners bound".to_owned();
    }
    let mut l = vec![
        format!("{:<40} {:<8} FD", "ADDRESS", "TYPE"),
        "-".repeat(55),
    ];
    for x in ls {
        l.push(format!(
            "{:<40} {:<8} {}",
            s(x, "address"),
            s(x, "type"),
            s(x, "fd")
        ));
    }
    l.push(String::new());
    l.push(format!("Total: {} listeners", count(d, "count", ls.len())));
    l.join("\n")
}

/// Python's `str()` of a JSON value.
fn py_str(v: &Value) -> String {
    match v {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::String(t) => t.clone(),
        Value::Number(n) => py_float(n),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("'{k}': {}", py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn py_repr(v: &Value) -> String {
    match v {
        Value::String(t) => format!("'{t}'"),
        other => py_str(other),
    }
}

fn format_config(d: &Value) -> String {
    let Some(o) = d.as_object() else {
        return String::new();
    };
    let mut keys: Vec<&String> = o.keys().collect();
    keys.sort();
    keys.iter()
        .map(|k| {
            let v = match &o[k.as_str()] {
                Value::Array(a) => a.iter().map(py_str).collect::<Vec<_>>().join(", "),
                other => py_str(other),
            };
            format!("{k}: {v}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn format_help(d: &Value) -> String {
    let mut l = vec!["Available commands:".to_owned(), String::new()];
    if let Some(cmds) = d.get("commands").and_then(Value::as_object) {
        let width = cmds.keys().map(|k| k.chars().count()).max().unwrap_or(0) + 2;
        let mut keys: Vec<&String> = cmds.keys().collect();
        keys.sort();
        for k in keys {
            l.push(format!("  {k:<width$} {}", py_str(&cmds[k.as_str()])));
        }
    }
    l.join("\n")
}

fn format_all(d: &Value) -> String {
    let arb = d.get("arbiter").cloned().unwrap_or_else(|| json!({}));
    let mut l = vec![
        "ARBITER (master)".to_owned(),
        format!("  PID: {}", s(&arb, "pid")),
        String::new(),
    ];
    let ws = list(d, "web_workers");
    l.push(format!(
        "WEB WORKERS ({})",
        d.get("web_worker_count")
            .map_or_else(|| "0".to_owned(), py_str)
    ));
    if ws.is_empty() {
        l.push("  (none)".to_owned());
    } else {
        l.push(format!(
            "  {:<10} {:<6} {:<8} LAST_BEAT",
            "PID", "AGE", "BOOTED"
        ));
        l.push(format!("  {}", "-".repeat(38)));
        for w in ws {
            let booted = if truthy(w.get("booted")) { "yes" } else { "no" };
            l.push(format!(
                "  {:<10} {:<6} {:<8} {}",
                s(w, "pid"),
                s(w, "age"),
                booted,
                heartbeat(w)
            ));
        }
    }
    l.push(String::new());
    l.push("DIRTY ARBITER".to_owned());
    match d.get("dirty_arbiter") {
        Some(a) if truthy(Some(a)) => l.push(format!("  PID: {}", s(a, "pid"))),
        _ => l.push("  (not running)".to_owned()),
    }
    l.join("\n")
}

/// gunicornc's `format_response`.
fn format_response(cmd: &str, d: &Value) -> String {
    match cmd.trim().to_lowercase().as_str() {
        "show all" => format_all(d),
        "show workers" => format_workers(d),
        "show stats" => format_stats(d),
        "show listeners" => format_listeners(d),
        "show config" => format_config(d),
        "help" => format_help(d),
        _ if truthy(Some(d)) => pretty(d),
        _ => "OK".to_owned(),
    }
}

fn pretty(d: &Value) -> String {
    serde_json::to_string_pretty(d).unwrap_or_else(|_| d.to_string())
}

/// One line: parsed, sent, printed. Err is the message to show.
fn run_line(client: &mut Client, line: &str, json_out: bool) -> Result<(), String> {
    let (cmd, args) = parse_line(line)?;
    let full = if args.is_empty() {
        cmd.clone()
    } else {
        format!("{cmd} {}", args.join(" ")).trim().to_owned()
    };
    let data = client.send(&full)?;
    if json_out {
        println!("{}", pretty(&data));
    } else {
        println!("{}", format_response(&cmd, &data));
    }
    Ok(())
}

fn interactive(mut client: Client, json_out: bool) -> i32 {
    if let Err(e) = client.connect() {
        eprintln!("Error: {e}");
        return 1;
    }
    println!("Connected to {}", client.path.display());
    println!("Type 'help' for available commands, 'quit' to exit.");
    println!();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock();
    loop {
        print!("ferrocorn> ");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        match lines.read_line(&mut line) {
            Ok(0) | Err(_) => {
                println!();
                return 0;
            }
            Ok(_) => {}
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if matches!(line.to_lowercase().as_str(), "quit" | "exit" | "q") {
            return 0;
        }
        if let Err(e) = run_line(&mut client, line, json_out) {
            println!("Error: {e}");
            client.sock = None;
            if client.connect().is_err() {
                println!("Connection lost. Exiting.");
                return 1;
            }
        }
        println!();
    }
}

fn cli() -> clap::Command {
    use clap::{Arg, ArgAction};
    clap::Command::new("ferrocorn ctl")
        .about("ferrocorn control interface (gunicorn's gunicornc)")
        .disable_version_flag(true)
        .after_help(
            "Examples:\n  ferrocorn ctl                      # Interactive mode (default socket)\n  \
             ferrocorn ctl -s /tmp/myapp.ctl    # Interactive mode with custom socket\n  \
             ferrocorn ctl -c \"show workers\"    # Single command mode\n  \
             ferrocorn ctl -c \"worker add 2\"    # Add 2 workers\n  \
             ferrocorn ctl -c \"show stats\" -j   # Output stats as JSON",
        )
        .arg(
            Arg::new("socket")
                .short('s')
                .long("socket")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Control socket path (default: $XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl)"),
        )
        .arg(Arg::new("command").short('c').long("command").help("Execute single command and exit"))
        .arg(Arg::new("json").short('j').long("json").action(ArgAction::SetTrue).help("Output raw JSON (for scripting)"))
        .arg(Arg::new("version").short('v').long("version").action(ArgAction::SetTrue).help("Show version and exit"))
}

/// `ferrocorn ctl ARGS`: the exit status.
pub fn main(args: &[OsString]) -> i32 {
    let argv = std::iter::once(OsString::from("ferrocorn ctl")).chain(args.iter().cloned());
    let m = match cli().try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    if m.get_flag("version") {
        println!("ferrocorn ctl (ferrocorn {})", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    let path = m
        .get_one::<PathBuf>("socket")
        .cloned()
        .unwrap_or_else(crate::config::default_control_socket);
    let path = if path.is_absolute() {
        path
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let json_out = m.get_flag("json");
    let mut client = Client {
        path,
        sock: None,
        id: 0,
    };
    match m.get_one::<String>("command") {
        Some(c) => match run_line(&mut client, c, json_out) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("Error: {e}");
                1
            }
        },
        None => interactive(client, json_out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_as_gunicornc() {
        assert_eq!(
            parse_line("worker add 2").unwrap(),
            ("worker add".into(), vec!["2".into()])
        );
        assert_eq!(
            parse_line("show workers").unwrap(),
            ("show workers".into(), vec![])
        );
        assert_eq!(
            parse_line("shutdown quick").unwrap(),
            ("shutdown quick".into(), vec![])
        );
    }

    #[test]
    fn stats_and_workers_print_as_gunicornc() {
        let d = json!({"uptime": 3725.5, "pid": 7, "workers_current": 2, "workers_target": 2,
            "workers_spawned": 3, "workers_killed": 1, "reloads": 0, "dirty_arbiter_pid": null});
        let out = format_stats(&d);
        assert!(
            out.starts_with("Uptime:           1h 2m 5s\nPID:              7\n"),
            "{out}"
        );
        assert!(out.ends_with("Reloads:          0"), "{out}");
        let d = json!({"workers": [{"pid": 11, "age": 1, "booted": true, "last_heartbeat": 0.5},
            {"pid": 12, "age": 2, "booted": false, "last_heartbeat": null}], "count": 2});
        let out = format_workers(&d);
        assert!(out.contains("11         1      yes      0.5s ago"), "{out}");
        assert!(out.contains("12         2      no       n/a"), "{out}");
        assert!(out.ends_with("Total: 2 workers"), "{out}");
    }
}
