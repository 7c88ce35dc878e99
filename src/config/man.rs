//! man/ferrocorn.1, generated from the settings table (a test keeps the
//! file in sync, as docs/compatibility.md): every option with its value
//! name, help and default, grouped by gunicorn's sections, the
//! environment variables that feed settings, the signals and the files.

use super::cli::default_text;
use super::settings::{Support, SETTINGS};

/// roff-escapes one line of text: backslashes, and a leading `.` or `'`
/// (which roff would read as a request).
fn esc(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// The page's roff source.
pub fn man_page(version: &str) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        ".TH FERROCORN 1 \"\" \"ferrocorn {}\" \"User Commands\"\n",
        esc(version)
    ));
    out.push_str(".SH NAME\nferrocorn \\- a pre\\-fork application server for Python web apps, a drop\\-in replacement for gunicorn, with Prometheus metrics built in\n");
    out.push_str(".SH SYNOPSIS\n.B ferrocorn\n[\\fIOPTIONS\\fR] [\\fIAPP_MODULE\\fR]\n.br\n.B ferrocorn exporter\n[\\fIOPTIONS\\fR]\n.br\n.B ferrocorn top\n[\\fB\\-\\-pid\\fR \\fIFILE\\fR | \\fB\\-\\-master\\fR \\fIPID\\fR | \\fB\\-\\-metrics\\fR \\fIADDRESS\\fR] [\\fB\\-\\-once\\fR] [\\fB\\-\\-interval\\fR \\fISECONDS\\fR]\n.br\n.B ferrocorn ctl\n[\\fB\\-s\\fR \\fISOCKET\\fR] [\\fB\\-c\\fR \\fICOMMAND\\fR] [\\fB\\-j\\fR]\n");
    out.push_str(".SH DESCRIPTION\nferrocorn serves the WSGI or ASGI application \\fIAPP_MODULE\\fR (\\fIMODULE\\fR:\\fIVARIABLE\\fR) with a Rust master process that forks workers embedding CPython. It reads gunicorn's command line, \\fBGUNICORN_CMD_ARGS\\fR and \\fBgunicorn.conf.py\\fR files, runs gunicorn's server hooks and answers gunicorn's signals. Metrics are served on \\fBPROMETHEUS_METRICS_PORT\\fR (9090) unless \\fB\\-\\-no\\-metrics\\fR is given.\n.PP\nSettings come, from lowest to highest precedence, from their defaults, the environment variables named below, the config file, \\fBGUNICORN_CMD_ARGS\\fR and the command line. docs/compatibility.md says which of gunicorn 27's settings are supported.\n");
    out.push_str(".PP\n\\fBferrocorn top\\fR shows a running server live: one row per worker with its pid, kind, state, requests served, requests per second, resident memory, CPU and the request in flight (method, path, running time), and the master's worker restarts by reason; it finds the server by its pid file, its master's pid, its metrics address or, by default, the only process titled \\fBferrocorn: master\\fR, and reads the exporter's /workers. \\fB\\-\\-once\\fR prints the same as a plain table.\n");
    out.push_str(".PP\n\\fBferrocorn ctl\\fR is gunicorn's \\fBgunicornc\\fR: it sends commands (show workers, worker add \\fIN\\fR, reload, ...; \\fBhelp\\fR lists them) to the control socket the master serves (\\fB\\-\\-control\\-socket\\fR, by default \\fB$XDG_RUNTIME_DIR/gunicorn.ctl\\fR); \\fB\\-c\\fR runs one command, without it the commands are read from standard input; \\fB\\-j\\fR prints the JSON replies.\n");
    out.push_str(".SH OPTIONS\n");
    let mut section = "";
    for s in SETTINGS.iter().filter(|s| !s.cli.is_empty()) {
        if s.section != section {
            section = s.section;
            out.push_str(&format!(".SS {}\n", esc(section)));
        }
        let flags: Vec<String> = s
            .cli
            .iter()
            .map(|f| match s.meta {
                Some(m) => format!("\\fB{}\\fR \\fI{}\\fR", esc(f), esc(m)),
                None => format!("\\fB{}\\fR", esc(f)),
            })
            .collect();
        out.push_str(&format!(".TP\n{}\n", flags.join(", ")));
        let mut text = esc(s.help);
        let default = default_text(s);
        if !default.is_empty() {
            text.push_str(&format!(" Default: {}.", esc(&default)));
        }
        match s.support {
            Support::Supported | Support::Extension => {}
            Support::Ignored => text.push_str(" Accepted and ignored (a warning says so)."),
            Support::NotYet => text.push_str(" Not implemented yet (a warning says so)."),
        }
        if let Some(env) = s.env {
            text.push_str(&format!(" Environment: \\fB{}\\fR.", esc(env)));
        }
        out.push_str(&text);
        out.push('\n');
    }
    out.push_str(".SH ENVIRONMENT\n");
    out.push_str(".TP\n.B GUNICORN_CMD_ARGS\nOptions read as if given on the command line, before the real command line.\n");
    let mut envs: Vec<(&str, &str)> = SETTINGS
        .iter()
        .filter_map(|s| s.env.map(|e| (e, s.name)))
        .collect();
    envs.sort_unstable();
    envs.dedup_by_key(|(e, _)| *e);
    for (env, name) in envs {
        out.push_str(&format!(
            ".TP\n.B {}\nThe setting \\fB{}\\fR.\n",
            esc(env),
            esc(name)
        ));
    }
    out.push_str(".SH SIGNALS\nTo the master: \\fBHUP\\fR reloads the configuration and replaces the workers; \\fBTERM\\fR stops gracefully; \\fBINT\\fR and \\fBQUIT\\fR stop at once; \\fBTTIN\\fR and \\fBTTOU\\fR add and remove a worker; \\fBUSR1\\fR reopens the log files; \\fBUSR2\\fR starts a new master from the new binary; \\fBWINCH\\fR stops the workers of a daemonized master. To a worker: \\fBSIGRTMIN+1\\fR logs the Python stack of each of its threads with the request it serves.\n");
    out.push_str(".SH FILES\n.TP\n.B ./gunicorn.conf.py\nThe config file read when \\fB\\-c\\fR is not given.\n");
    out.push_str(".SH SEE ALSO\n\\fBgunicorn\\fR(1); docs/compatibility.md, docs/metrics.md and docs/redis.md in ferrocorn's source.\n");
    out
}
