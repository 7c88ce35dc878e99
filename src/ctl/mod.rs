//! gunicorn 27's control socket (`gunicornc`): the wire protocol, the
//! commands, and the master's side of the socket.
//!
//! The protocol is gunicorn's (`gunicorn/ctl/protocol.py`): every message is
//! a 4-byte big-endian length and that many bytes of JSON. A request is
//! `{"id": 1, "command": "show workers", "args": []}`, a reply
//! `{"id": 1, "status": "ok", "data": {...}}` or
//! `{"id": 1, "status": "error", "error": "..."}`.
//!
//! The master serves the socket on its own thread, in its mio loop
//! ([`Server`]): the listener and each connection are non-blocking sources
//! of the master's `Poll`, so a client that sends nothing, sends garbage or
//! never reads its replies costs the master nothing but a buffer, and the
//! commands run where the arbiter's state lives (src/arbiter/ctl.rs). The
//! client side, `ferrocorn ctl`, is [`client`].

pub mod client;
mod server;

pub use server::Server;

use serde_json::{json, Value};

/// gunicorn's `ControlProtocol.MAX_MESSAGE_SIZE` (16 MB).
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// A message on the wire: the length prefix and the JSON.
pub fn encode(msg: &Value) -> Vec<u8> {
    let payload = msg.to_string().into_bytes();
    // Replies are far below 4 GB; a longer one would be cut by the
    // receiver's limit anyway: saturate rather than wrap.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Why a message could not be read: gunicorn's `ProtocolError`s.
#[derive(Debug, PartialEq)]
pub enum FrameError {
    TooLarge(usize),
    InvalidJson(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge(n) => write!(f, "Message too large: {n}"),
            FrameError::InvalidJson(e) => write!(f, "Invalid JSON: {e}"),
        }
    }
}

/// One complete message at the front of `buf`: `Ok(Some((message, bytes
/// used)))`, `Ok(None)` while incomplete.
pub fn decode(buf: &[u8]) -> Result<Option<(Value, usize)>, FrameError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(prefix);
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > MAX_MESSAGE_SIZE {
        return Err(FrameError::TooLarge(len));
    }
    let Some(end) = len.checked_add(4) else {
        return Err(FrameError::TooLarge(len));
    };
    let Some(payload) = buf.get(4..end) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(payload).map_err(|e| FrameError::InvalidJson(e.to_string()))?;
    let value = serde_json::from_str(text).map_err(|e| FrameError::InvalidJson(e.to_string()))?;
    Ok(Some((value, end)))
}

/// gunicorn's `make_response`.
pub fn ok_reply(id: &Value, data: Value) -> Value {
    json!({"id": id, "status": "ok", "data": data})
}

/// gunicorn's `make_error_response`.
pub fn error_reply(id: &Value, error: &str) -> Value {
    json!({"id": id, "status": "error", "error": error})
}

/// A command, as gunicorn's `ControlSocketServer._execute_command` routes it.
#[derive(Debug, PartialEq)]
pub enum Command {
    ShowAll,
    ShowWorkers,
    ShowDirty,
    ShowConfig,
    ShowStats,
    ShowListeners,
    WorkerAdd(u64),
    WorkerRemove(u64),
    WorkerKill(i64),
    DirtyAdd,
    DirtyRemove,
    Reload,
    Reopen,
    /// `graceful` unless the argument is `quick` (any other word is echoed
    /// back as the mode, as gunicorn does).
    Shutdown(String),
    Help,
}

/// A command's failure, worded as gunicorn's `_dispatch` words it.
#[derive(Debug, PartialEq)]
pub enum CommandError {
    /// gunicorn's ValueError: "Invalid argument: ...".
    Invalid(String),
    /// Any other failure: "Command failed: ...".
    Failed(String),
    /// A reply worded in full ("Empty command").
    Plain(String),
}

impl CommandError {
    pub fn message(&self) -> String {
        match self {
            CommandError::Invalid(m) => format!("Invalid argument: {m}"),
            CommandError::Failed(m) => format!("Command failed: {m}"),
            CommandError::Plain(m) => m.clone(),
        }
    }
}

/// What ferrocorn answers to the dirty-arbiter commands.
pub const DIRTY_NOT_IMPLEMENTED: &str =
    "dirty arbiters (dirty_apps, dirty_workers) are not implemented in ferrocorn";

/// Python's `int()` of a command argument, with its error text.
fn py_int(s: &str) -> Result<i64, CommandError> {
    let t = s.trim().replace('_', "");
    t.parse::<i64>().map_err(|_| {
        CommandError::Invalid(format!("invalid literal for int() with base 10: '{s}'"))
    })
}

/// gunicorn's `max(1, int(count))`, the argument defaulting to 1.
fn count(arg: Option<&String>) -> Result<u64, CommandError> {
    match arg {
        None => Ok(1),
        Some(a) => Ok(py_int(a)?.max(1).unsigned_abs()),
    }
}

/// A request's command: its `command` string split as a shell would
/// (gunicorn's `shlex.split`), then its `args`.
pub fn parse_request(msg: &Value) -> Result<Command, CommandError> {
    let Some(obj) = msg.as_object() else {
        return Err(CommandError::Failed("a request is a JSON object".into()));
    };
    let command = match obj.get("command") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.trim(),
        Some(_) => return Err(CommandError::Failed("\"command\" is not a string".into())),
    };
    if command.is_empty() {
        return Err(CommandError::Plain("Empty command".into()));
    }
    let mut parts = shlex::split(command)
        .ok_or_else(|| CommandError::Invalid("No closing quotation".into()))?;
    match obj.get("args") {
        None | Some(Value::Null) => {}
        Some(Value::Array(args)) => parts.extend(args.iter().map(|a| match a {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })),
        Some(_) => return Err(CommandError::Failed("\"args\" is not a list".into())),
    }
    parse_command(&parts)
}

/// gunicorn's `_execute_command` routing.
pub fn parse_command(parts: &[String]) -> Result<Command, CommandError> {
    let Some((cmd, rest)) = parts.split_first() else {
        return Err(CommandError::Plain("Empty command".into()));
    };
    let target = rest.first().map(|s| s.to_lowercase());
    match cmd.to_lowercase().as_str() {
        "show" => match target.as_deref() {
            None => Err(CommandError::Invalid(
                "Missing show target (all|workers|dirty|config|stats|listeners)".into(),
            )),
            Some("all") => Ok(Command::ShowAll),
            Some("workers") => Ok(Command::ShowWorkers),
            Some("dirty") => Ok(Command::ShowDirty),
            Some("config") => Ok(Command::ShowConfig),
            Some("stats") => Ok(Command::ShowStats),
            Some("listeners") => Ok(Command::ShowListeners),
            Some(t) => Err(CommandError::Invalid(format!("Unknown show target: {t}"))),
        },
        "worker" => match target.as_deref() {
            None => Err(CommandError::Invalid(
                "Missing worker action (add|remove|kill)".into(),
            )),
            Some("add") => Ok(Command::WorkerAdd(count(rest.get(1))?)),
            Some("remove") => Ok(Command::WorkerRemove(count(rest.get(1))?)),
            Some("kill") => match rest.get(1) {
                None => Err(CommandError::Invalid("Missing PID for worker kill".into())),
                Some(p) => Ok(Command::WorkerKill(py_int(p)?)),
            },
            Some(a) => Err(CommandError::Invalid(format!("Unknown worker action: {a}"))),
        },
        "dirty" => match target.as_deref() {
            None => Err(CommandError::Invalid(
                "Missing dirty action (add|remove)".into(),
            )),
            Some("add") => count(rest.get(1)).map(|_| Command::DirtyAdd),
            Some("remove") => count(rest.get(1)).map(|_| Command::DirtyRemove),
            Some(a) => Err(CommandError::Invalid(format!("Unknown dirty action: {a}"))),
        },
        "reload" => Ok(Command::Reload),
        "reopen" => Ok(Command::Reopen),
        "shutdown" => Ok(Command::Shutdown(
            rest.first().cloned().unwrap_or_else(|| "graceful".into()),
        )),
        "help" => Ok(Command::Help),
        other => Err(CommandError::Invalid(format!("Unknown command: {other}"))),
    }
}

/// gunicorn's `help` reply; the dirty commands say they are not implemented.
pub fn help() -> Value {
    let dirty = " (dirty arbiters: not implemented in ferrocorn)";
    json!({"commands": {
        "show all": "Show all processes (arbiter, web workers, dirty workers)",
        "show workers": "List HTTP workers with their status",
        "show dirty": format!("List dirty workers and apps{dirty}"),
        "show config": "Show current effective configuration",
        "show stats": "Show server statistics",
        "show listeners": "Show bound sockets",
        "worker add [N]": "Spawn N workers (default 1)",
        "worker remove [N]": "Remove N workers (default 1)",
        "worker kill <PID>": "Gracefully terminate specific worker",
        "dirty add [N]": format!("Spawn N dirty workers (default 1){dirty}"),
        "dirty remove [N]": format!("Remove N dirty workers (default 1){dirty}"),
        "reload": "Graceful reload (HUP)",
        "reopen": "Reopen log files (USR1)",
        "shutdown [graceful|quick]": "Shutdown server (TERM/INT)",
        "help": "Show this help message",
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn frames_round_trip_and_wait_for_the_rest() {
        let msg = json!({"id": 3, "command": "show workers", "args": []});
        let wire = encode(&msg);
        assert_eq!(&wire[..4], &(wire.len() as u32 - 4).to_be_bytes());
        for cut in 0..wire.len() {
            assert_eq!(decode(&wire[..cut]), Ok(None), "cut at {cut}");
        }
        let mut two = wire.clone();
        two.extend_from_slice(&wire);
        assert_eq!(decode(&two), Ok(Some((msg, wire.len()))));
    }

    #[test]
    fn bad_frames_are_refused() {
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::TooLarge(0xffff_ffff))
        );
        let mut junk = 3u32.to_be_bytes().to_vec();
        junk.extend_from_slice(b"{{{");
        assert!(matches!(decode(&junk), Err(FrameError::InvalidJson(_))));
        let mut bad_utf8 = 2u32.to_be_bytes().to_vec();
        bad_utf8.extend_from_slice(&[0xc3, 0x28]);
        assert!(matches!(decode(&bad_utf8), Err(FrameError::InvalidJson(_))));
    }

    #[test]
    fn commands_route_as_gunicorn() {
        assert_eq!(
            parse_command(&parts("SHOW Workers")),
            Ok(Command::ShowWorkers)
        );
        assert_eq!(
            parse_command(&parts("worker add")),
            Ok(Command::WorkerAdd(1))
        );
        assert_eq!(
            parse_command(&parts("worker add 3")),
            Ok(Command::WorkerAdd(3))
        );
        assert_eq!(
            parse_command(&parts("worker remove -4")),
            Ok(Command::WorkerRemove(1))
        );
        assert_eq!(
            parse_command(&parts("worker kill 12")),
            Ok(Command::WorkerKill(12))
        );
        assert_eq!(
            parse_command(&parts("shutdown")),
            Ok(Command::Shutdown("graceful".into()))
        );
        assert_eq!(
            parse_command(&parts("shutdown quick")),
            Ok(Command::Shutdown("quick".into()))
        );
        assert_eq!(
            parse_command(&parts("worker add x")).map_err(|e| e.message()),
            Err("Invalid argument: invalid literal for int() with base 10: 'x'".into())
        );
        assert_eq!(
            parse_command(&parts("frobnicate")).map_err(|e| e.message()),
            Err("Invalid argument: Unknown command: frobnicate".into())
        );
        assert_eq!(
            parse_command(&parts("show")).map_err(|e| e.message()),
            Err(
                "Invalid argument: Missing show target (all|workers|dirty|config|stats|listeners)"
                    .into()
            )
        );
    }

    #[test]
    fn requests_split_their_command_and_append_args() {
        let req = json!({"id": 1, "command": "worker  add", "args": [2]});
        assert_eq!(parse_request(&req), Ok(Command::WorkerAdd(2)));
        let req = json!({"id": 1, "command": "  "});
        assert_eq!(
            parse_request(&req).map_err(|e| e.message()),
            Err("Empty command".into())
        );
        let req = json!({"id": 1, "command": "show 'workers"});
        assert!(matches!(parse_request(&req), Err(CommandError::Invalid(_))));
        assert!(parse_request(&json!([1, 2])).is_err());
        assert!(parse_request(&json!({"command": 5})).is_err());
    }
}
