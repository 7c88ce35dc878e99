//! The command line, generated from the settings table with clap's builder
//! API. The same command parses `GUNICORN_CMD_ARGS`.

use std::ffi::OsString;

use clap::{Arg, ArgAction, ArgMatches, Command};

use super::settings::{DefaultValue, Kind, Setting, Support, SETTINGS};
use super::value::{py_repr_str, CliRaw};

/// The clap id of the positional APP_MODULE arguments.
const APP: &str = "APP_MODULE";
/// The clap id of `-v/--version`.
const VERSION: &str = "version";

/// What one parse of a command line produced.
pub struct Parsed {
    /// (index in SETTINGS, raw value) for every setting given, in table order.
    pub values: Vec<(usize, CliRaw)>,
    /// Positional arguments (APP_MODULE).
    pub positionals: Vec<String>,
    /// `-v/--version` was given.
    pub version: bool,
}

impl Parsed {
    /// The raw `-c/--config` value, if given.
    pub fn config(&self) -> Option<&str> {
        self.values.iter().find_map(|(i, raw)| match raw {
            CliRaw::One(v) if SETTINGS[*i].name == "config" => Some(v.as_str()),
            _ => None,
        })
    }
}

/// The help's `[default]`, as gunicorn's `"%s [%s]" % (short, default)`.
pub(super) fn default_text(s: &Setting) -> String {
    match s.default {
        DefaultValue::None => "None".to_owned(),
        // `--no-metrics`: the flag turns off something that is on.
        DefaultValue::Bool(true) if s.kind == Kind::NoFlag => "on by default".to_owned(),
        DefaultValue::Bool(b) => if b { "True" } else { "False" }.to_owned(),
        DefaultValue::Int(i) => i.to_string(),
        DefaultValue::Str(v) => v.to_owned(),
        DefaultValue::List(l) => match s.kind {
            Kind::CommaList | Kind::AddrList | Kind::HttpProtocols => l.join(","),
            _ => {
                let items: Vec<String> = l.iter().map(|x| py_repr_str(x)).collect();
                format!("[{}]", items.join(", "))
            }
        },
        DefaultValue::Dict(_) | DefaultValue::Hook(_) => String::new(),
        DefaultValue::Cwd => "current directory".to_owned(),
        DefaultValue::Euid => "current user".to_owned(),
        DefaultValue::Egid => "current group".to_owned(),
        DefaultValue::ControlSocket => {
            "$XDG_RUNTIME_DIR/gunicorn.ctl or $HOME/.gunicorn/gunicorn.ctl".to_owned()
        }
    }
}

fn help_text(s: &Setting) -> String {
    let mut h = format!("{} [{}]", s.help, default_text(s));
    match s.support {
        Support::Supported | Support::Extension => {}
        Support::Ignored => h.push_str(" (ignored by ferrocorn)"),
        Support::NotYet => h.push_str(" (not implemented yet in ferrocorn)"),
    }
    h
}

fn arg_for(s: &'static Setting, order: usize) -> Arg {
    let mut arg = Arg::new(s.name)
        .help(help_text(s))
        .help_heading(s.section)
        .display_order(order);
    for flag in s.cli {
        if let Some(long) = flag.strip_prefix("--") {
            arg = if arg.get_long().is_none() {
                arg.long(long)
            } else {
                arg.visible_alias(long)
            };
        } else if let Some(short) = flag.strip_prefix('-').and_then(|f| f.chars().next()) {
            arg = arg.short(short);
        }
    }
    let meta = s
        .meta
        .map(str::to_owned)
        .unwrap_or_else(|| s.name.to_uppercase());
    match s.kind {
        Kind::Flag => arg.action(ArgAction::SetTrue),
        Kind::NoFlag => arg.action(ArgAction::SetFalse),
        Kind::List | Kind::RawEnv | Kind::Files => arg
            .action(ArgAction::Append)
            .num_args(1)
            .value_name(meta)
            .allow_negative_numbers(true),
        Kind::ProxyProtocol => arg
            .action(ArgAction::Set)
            .num_args(0..=1)
            .default_missing_value("auto")
            .value_name(meta),
        _ => arg
            .action(ArgAction::Set)
            .num_args(1)
            .value_name(meta)
            .allow_negative_numbers(true),
    }
}

/// The command. `prog` is the program name shown in the usage line.
pub fn command(prog: &str) -> Command {
    let mut cmd = Command::new("ferrocorn")
        .bin_name(prog.to_owned())
        .version(env!("CARGO_PKG_VERSION"))
        .disable_version_flag(true)
        .override_usage(format!("{prog} [OPTIONS] [APP_MODULE]"))
        .about("A pre-fork application server for Python web apps, a drop-in replacement for gunicorn.")
        .args_override_self(true)
        .infer_long_args(true)
        .max_term_width(100)
        .arg(
            Arg::new(VERSION)
                .short('v')
                .long("version")
                .action(ArgAction::SetTrue)
                .help("show program's version number and exit"),
        )
        .arg(
            Arg::new(APP)
                .action(ArgAction::Append)
                .num_args(0..)
                .value_name(APP)
                .help("The WSGI/ASGI application, as MODULE:VARIABLE (the first one is used)"),
        );
    for (order, s) in SETTINGS.iter().enumerate() {
        if !s.cli.is_empty() {
            cmd = cmd.arg(arg_for(s, order + 1));
        }
    }
    cmd
}

/// Parses `argv` (argv[0] included).
pub fn parse(cmd: Command, argv: Vec<OsString>) -> Result<Parsed, clap::Error> {
    let m = cmd.try_get_matches_from(argv)?;
    Ok(extract(&m))
}

fn given(m: &ArgMatches, id: &str) -> bool {
    matches!(
        m.value_source(id),
        Some(clap::parser::ValueSource::CommandLine)
    )
}

fn extract(m: &ArgMatches) -> Parsed {
    let mut values = Vec::new();
    for (i, s) in SETTINGS.iter().enumerate() {
        if s.cli.is_empty() || !given(m, s.name) {
            continue;
        }
        let raw = match s.kind {
            Kind::Flag | Kind::NoFlag => CliRaw::Flag,
            Kind::List | Kind::RawEnv | Kind::Files => CliRaw::Many(
                m.get_many::<String>(s.name)
                    .map(|v| v.cloned().collect())
                    .unwrap_or_default(),
            ),
            _ => match m.get_one::<String>(s.name) {
                Some(v) => CliRaw::One(v.clone()),
                None => continue,
            },
        };
        values.push((i, raw));
    }
    Parsed {
        values,
        positionals: m
            .get_many::<String>(APP)
            .map(|v| v.cloned().collect())
            .unwrap_or_default(),
        version: m.get_flag(VERSION),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Parsed {
        let argv: Vec<OsString> = std::iter::once("ferrocorn")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        parse(command("ferrocorn"), argv).unwrap()
    }

    fn one(p: &Parsed, name: &str) -> Option<String> {
        p.values.iter().find_map(|(i, raw)| match raw {
            CliRaw::One(v) if SETTINGS[*i].name == name => Some(v.clone()),
            _ => None,
        })
    }

    #[test]
    fn command_is_consistent() {
        command("ferrocorn").debug_assert();
    }

    #[test]
    fn flags_values_and_positionals() {
        let r = p(&[
            "-w",
            "3",
            "--bind=a:1",
            "-b",
            "b:2",
            "--preload",
            "app:app",
            "--no-sendfile",
        ]);
        assert_eq!(one(&r, "workers").as_deref(), Some("3"));
        assert_eq!(r.positionals, vec!["app:app"]);
        let bind = r
            .values
            .iter()
            .find(|(i, _)| SETTINGS[*i].name == "bind")
            .unwrap();
        assert!(matches!(&bind.1, CliRaw::Many(v) if v == &["a:1", "b:2"]));
        assert!(r
            .values
            .iter()
            .any(|(i, raw)| SETTINGS[*i].name == "preload_app" && matches!(raw, CliRaw::Flag)));
        assert!(r
            .values
            .iter()
            .any(|(i, raw)| SETTINGS[*i].name == "sendfile" && matches!(raw, CliRaw::Flag)));
        assert!(!r.version);
    }

    #[test]
    fn repeated_option_last_wins_and_prefixes() {
        let r = p(&["-w", "3", "--workers", "5", "--max-requests-j", "7"]);
        assert_eq!(one(&r, "workers").as_deref(), Some("5"));
        assert_eq!(one(&r, "max_requests_jitter").as_deref(), Some("7"));
        assert_eq!(one(&r, "errorlog"), None);
        let r = p(&["--log-file", "-", "--max-requests", "-1"]);
        assert_eq!(one(&r, "errorlog").as_deref(), Some("-"));
        assert_eq!(one(&r, "max_requests").as_deref(), Some("-1"));
    }

    #[test]
    fn proxy_protocol_optional_value() {
        let r = p(&["--proxy-protocol"]);
        assert_eq!(one(&r, "proxy_protocol").as_deref(), Some("auto"));
        let r = p(&["--proxy-protocol", "v2", "app:app"]);
        assert_eq!(one(&r, "proxy_protocol").as_deref(), Some("v2"));
        assert_eq!(r.positionals, vec!["app:app"]);
        let r = p(&["--proxy-protocol=v1"]);
        assert_eq!(one(&r, "proxy_protocol").as_deref(), Some("v1"));
        let r = p(&["--proxy-protocol", "--preload"]);
        assert_eq!(one(&r, "proxy_protocol").as_deref(), Some("auto"));
        let r = p(&[]);
        assert_eq!(one(&r, "proxy_protocol"), None);
    }

    #[test]
    fn version_flag() {
        assert!(p(&["-v"]).version);
        assert!(p(&["--version"]).version);
    }

    #[test]
    fn unknown_and_ambiguous_flags_fail() {
        let argv = |a: &[&str]| -> Vec<OsString> {
            std::iter::once("ferrocorn")
                .chain(a.iter().copied())
                .map(OsString::from)
                .collect()
        };
        assert!(parse(command("ferrocorn"), argv(&["--no-such-flag"])).is_err());
        assert!(parse(command("ferrocorn"), argv(&["--work", "2"])).is_err());
        assert!(parse(command("ferrocorn"), argv(&["-w"])).is_err());
    }

    #[test]
    fn help_is_grouped_by_section() {
        let help = command("ferrocorn").render_help().to_string();
        let mut last = 0;
        for section in [
            "Config File:",
            "Server Socket:",
            "Worker Processes:",
            "Security:",
            "Debugging:",
            "Server Mechanics:",
            "Logging:",
            "Process Naming:",
            "SSL:",
            "HTTP/2:",
            "Dirty Arbiters:",
            "Control:",
        ] {
            let at = help
                .find(section)
                .unwrap_or_else(|| panic!("no {section} in help"));
            assert!(at > last, "{section} out of order");
            last = at;
        }
        assert!(help.contains("--limit-request-field_size"));
        assert!(help.contains("--error-logfile"));
        assert!(help.contains("--log-file"));
        assert!(help.contains("[1]"));
        assert!(help.contains("not implemented yet in ferrocorn"));
    }
}
