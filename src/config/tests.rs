//! Tests of the configuration system. They use a captured [`Env`] instead of
//! the process environment so that they can run in parallel.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// gunicorn 27.0.1's settings, in `KNOWN_SETTINGS` order.
const GUNICORN_SETTINGS: &str = "config wsgi_app bind backlog workers worker_class threads \
worker_connections max_requests max_requests_jitter timeout graceful_timeout keepalive \
limit_request_line limit_request_fields limit_request_field_size reload reload_engine \
reload_extra_files spew check_config print_config preload_app sendfile reuse_port chdir daemon \
raw_env pidfile worker_tmp_dir user group umask initgroups tmp_upload_dir secure_scheme_headers \
forwarded_allow_ips accesslog disable_redirect_access_to_syslog access_log_format errorlog \
loglevel capture_output logger_class logconfig logconfig_dict logconfig_json syslog_addr syslog \
syslog_prefix syslog_facility enable_stdio_inheritance statsd_host dogstatsd_tags statsd_prefix \
enable_backlog_metric proc_name default_proc_name pythonpath paste on_starting on_reload \
when_ready pre_fork post_fork post_worker_init worker_int worker_abort pre_exec pre_request \
post_request child_exit worker_exit nworkers_changed on_exit ssl_context proxy_protocol \
proxy_allow_ips protocol uwsgi_allow_ips keyfile certfile ssl_version cert_reqs ca_certs \
suppress_ragged_eofs do_handshake_on_connect ciphers http_protocols http2_cleartext \
http2_max_concurrent_streams http2_initial_window_size http2_max_frame_size \
http2_max_header_list_size raw_paste_global_conf permit_obsolete_folding strip_header_spaces \
permit_unconventional_http_method permit_unconventional_http_version casefold_http_method \
forwarder_headers header_map asgi_loop asgi_lifespan asgi_disconnect_grace_period \
websocket_max_message_size http_parser root_path dirty_apps dirty_workers dirty_timeout \
dirty_threads dirty_graceful_timeout on_dirty_starting dirty_post_fork dirty_worker_init \
dirty_worker_exit control_socket control_socket_mode control_socket_disable";

/// ferrocorn's own settings (the metrics exporter), after gunicorn's.
const FERROCORN_SETTINGS: &str = "metrics prometheus_bind_address prometheus_metrics_port \
prometheus_ssl_certfile prometheus_ssl_keyfile prometheus_ssl_client_cafile \
prometheus_ssl_client_capath prometheus_ssl_client_auth_required prometheus_multiproc_dir \
cleanup_db_files metrics_duration_buckets keep_dead_worker_gauges redis_enabled redis_url redis_cluster_nodes redis_sentinel_nodes redis_sentinel_service redis_host redis_port \
redis_db redis_password redis_key_prefix redis_ttl_seconds redis_ttl_disabled \
redis_push_interval redis_instance max_worker_memory max_worker_lifetime \
max_worker_lifetime_jitter access_log_json preload_freeze reload_strategy";

/// A fresh, empty directory for one test.
fn tmpdir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "fc-config-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn env_in(cwd: &Path) -> Env {
    Env {
        cwd: cwd.to_path_buf(),
        ..Env::default()
    }
}

fn argv(args: &[&str]) -> Vec<OsString> {
    std::iter::once("ferrocorn")
        .chain(args.iter().copied())
        .map(OsString::from)
        .collect()
}

fn load_env(args: &[&str], env: Env) -> Result<Loaded, ConfigError> {
    Python::initialize();
    Python::attach(|py| Config::load_with(py, argv(args), env))
}

fn load(args: &[&str], env: Env) -> Config {
    match load_env(args, env) {
        Ok(Loaded::Run(c)) => c,
        Ok(Loaded::Exit(code)) => panic!("exit {code}"),
        Err(e) => panic!("error: {e}"),
    }
}

fn load_err(args: &[&str], env: Env) -> String {
    match load_env(args, env) {
        Err(e) => e.0,
        Ok(Loaded::Run(_)) => panic!("loaded"),
        Ok(Loaded::Exit(code)) => panic!("exit {code}"),
    }
}

fn load_exit(args: &[&str], env: Env) -> i32 {
    match load_env(args, env) {
        Ok(Loaded::Exit(code)) => code,
        Ok(Loaded::Run(_)) => panic!("loaded"),
        Err(e) => panic!("error: {e}"),
    }
}

// -- the table ---------------------------------------------------------------

#[test]
fn table_has_every_gunicorn_setting_once() {
    let names: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
    let want: Vec<&str> = GUNICORN_SETTINGS
        .split_whitespace()
        .chain(FERROCORN_SETTINGS.split_whitespace())
        .collect();
    assert_eq!(names, want);
    for s in SETTINGS {
        assert_eq!(
            s.support == Support::Extension,
            FERROCORN_SETTINGS.split_whitespace().any(|n| n == s.name),
            "{}",
            s.name
        );
    }
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len(), "duplicate names");
    for name in &names {
        assert!(settings::find(name).is_some());
    }
    assert!(settings::find("nope").is_none());
}

#[test]
fn cli_flags_are_unique_and_hooks_have_none() {
    let mut seen = std::collections::HashSet::new();
    seen.insert("-v");
    seen.insert("--version");
    seen.insert("-h");
    seen.insert("--help");
    for s in SETTINGS {
        for f in s.cli {
            assert!(f.starts_with('-'), "{f}");
            assert!(seen.insert(*f), "duplicate flag {f}");
        }
        if s.is_hook() {
            assert!(s.cli.is_empty(), "{} has a CLI", s.name);
            assert!(matches!(s.default, DefaultValue::Hook(_)));
        }
        assert!(!s.help.is_empty(), "{} has no help", s.name);
    }
}

#[test]
fn support_states() {
    use Support::*;
    for (name, want) in [
        ("workers", Supported),
        ("worker_tmp_dir", Ignored),
        ("disable_redirect_access_to_syslog", Supported),
        ("syslog", Supported),
        ("paste", Supported),
        ("statsd_host", Supported),
        ("http_protocols", NotYet),
        ("on_starting", Supported),
        ("post_request", Supported),
        ("ssl_context", Supported),
        ("certfile", Supported),
        ("ciphers", Supported),
        ("ssl_version", Ignored),
        ("logconfig", Supported),
        ("logconfig_dict", Supported),
        ("logconfig_json", Supported),
        ("logger_class", Supported),
    ] {
        assert_eq!(settings::find(name).unwrap().support, want, "{name}");
    }
}

// -- defaults and typed getters ---------------------------------------------

#[test]
fn defaults() {
    let c = Config::new();
    assert_eq!(c.bind(), vec!["127.0.0.1:8000"]);
    assert_eq!(c.workers(), 1);
    assert_eq!(c.threads(), 1);
    assert_eq!(c.worker_class(), "sync");
    assert_eq!(c.worker_connections(), 1000);
    assert_eq!(c.backlog(), 2048);
    assert_eq!(
        (c.timeout(), c.graceful_timeout(), c.keepalive()),
        (30, 30, 2)
    );
    assert_eq!((c.max_requests(), c.max_requests_jitter()), (0, 0));
    assert_eq!(c.parser_limits(), (4094, 100, 8190));
    assert_eq!(c.forwarded_allow_ips(), vec!["127.0.0.1", "::1"]);
    assert_eq!(c.proxy_allow_ips(), vec!["127.0.0.1", "::1"]);
    assert_eq!(c.forwarder_headers(), vec!["SCRIPT_NAME", "PATH_INFO"]);
    assert_eq!(c.secure_scheme_headers().len(), 3);
    assert_eq!(c.proxy_protocol(), "off");
    assert_eq!(c.header_map(), "drop");
    assert_eq!(c.loglevel(), "info");
    assert_eq!(c.errorlog(), "-");
    assert_eq!(c.accesslog(), None);
    assert!(c.access_log_format().starts_with("%(h)s"));
    assert_eq!((c.user(), c.group(), c.umask()), (None, None, 0));
    assert_eq!(c.uid(), nix::unistd::geteuid().as_raw());
    assert_eq!(c.proc_name(), "ferrocorn");
    assert!(c.chdir().is_some());
    assert!(c.pythonpath().is_empty() && c.raw_env().is_empty());
    assert!(!c.preload_app() && !c.daemon() && !c.reuse_port() && !c.capture_output());
    assert!(c.hook("on_starting").is_none());
    assert!(c.warnings().is_empty());
    assert_eq!(c.get("nope"), &Value::None);
    assert_eq!(c.app_uri(), None);
    assert_eq!(
        c.require_app_uri().unwrap_err().to_string(),
        "Error: No application module specified."
    );
    assert_eq!(
        c.require_app_uri().unwrap_err().0,
        "No application module specified."
    );
}

#[test]
fn parser_limits_are_clamped_like_gunicorn() {
    let mut c = Config::new();
    c.set("limit_request_line", Value::Int(0)).unwrap();
    c.set("limit_request_fields", Value::Int(0)).unwrap();
    c.set("limit_request_field_size", Value::Int(0)).unwrap();
    assert_eq!(c.parser_limits(), (0, 32768, 8190));
    c.set("limit_request_line", Value::Int(100_000)).unwrap();
    c.set("limit_request_fields", Value::Int(100_000)).unwrap();
    c.set("limit_request_field_size", Value::Int(100_000))
        .unwrap();
    assert_eq!(c.parser_limits(), (8190, 32768, 100_000));
}

#[test]
fn worker_class_with_threads_is_gthread() {
    let mut c = Config::new();
    c.set("threads", Value::Int(4)).unwrap();
    assert_eq!(c.worker_class(), "gthread");
    c.set(
        "worker_class",
        Value::Str("gunicorn.workers.sync.SyncWorker".into()),
    )
    .unwrap();
    assert_eq!(c.worker_class(), "gthread");
    c.set("worker_class", Value::Str(" gevent ".into()))
        .unwrap();
    assert_eq!(c.worker_class(), "gevent");
}

// -- precedence ----------------------------------------------------------------

/// gunicorn-prometheus-exporter's GUNICORN_WORKERS / GUNICORN_TIMEOUT /
/// GUNICORN_KEEPALIVE are environment-derived defaults: below the config
/// file, and GUNICORN_WORKERS below WEB_CONCURRENCY.
#[test]
fn gunicorn_exporter_variables_are_env_defaults() {
    let dir = tmpdir();
    let conf = write(&dir, "gpe.py", "workers = 3\ntimeout = 7\n");
    let conf = conf.to_str().unwrap();
    let env = |wc: Option<&str>| Env {
        web_concurrency: wc.map(str::to_owned),
        gunicorn_workers: Some("5".into()),
        gunicorn_timeout: Some("45".into()),
        gunicorn_keepalive: Some("6".into()),
        ..env_in(&dir)
    };
    let c = load(&[], env(None));
    assert_eq!((c.workers(), c.timeout(), c.keepalive()), (5, 45, 6));
    assert_eq!(c.origin("timeout"), Some(Origin::Environment));
    assert_eq!(load(&[], env(Some("2"))).workers(), 2);
    let c = load(&["-c", conf], env(None));
    assert_eq!((c.workers(), c.timeout(), c.keepalive()), (3, 7, 6));
    let c = load(&["-c", conf, "--keep-alive", "9", "-w", "4"], env(None));
    assert_eq!((c.workers(), c.keepalive()), (4, 9));
}

#[test]
fn precedence_default_env_file_cmdargs_cli() {
    let dir = tmpdir();
    let conf = write(
        &dir,
        "conf.py",
        "workers = 3\nbind = ['unix:/tmp/x.sock']\ntimeout = 7\n",
    );
    let conf = conf.to_str().unwrap();
    let env = |cmd: Option<&str>| Env {
        cmd_args: cmd.map(str::to_owned),
        web_concurrency: Some("2".into()),
        port: Some("9000".into()),
        forwarded_allow_ips: None,
        cwd: dir.clone(),
        ..Env::default()
    };

    let c = load(&[], env(None));
    assert_eq!(c.workers(), 2);
    assert_eq!(c.origin("workers"), Some(Origin::Environment));
    assert_eq!(c.bind(), vec!["0.0.0.0:9000"]);
    assert_eq!(c.timeout(), 30);

    let c = load(&["-c", conf], env(None));
    assert_eq!((c.workers(), c.timeout()), (3, 7));
    assert_eq!(c.bind(), vec!["unix:/tmp/x.sock"]);
    assert_eq!(c.origin("workers"), Some(Origin::File));

    let c = load(&["-c", conf], env(Some("-w 4 --bind=:1 --bind :2")));
    assert_eq!((c.workers(), c.timeout()), (4, 7));
    assert_eq!(c.bind(), vec![":1", ":2"]);
    assert_eq!(c.origin("workers"), Some(Origin::CmdArgsEnv));

    let c = load(
        &["-c", conf, "-w", "5", "-b", ":3"],
        env(Some("-w 4 --bind=:1")),
    );
    assert_eq!((c.workers(), c.timeout()), (5, 7));
    assert_eq!(c.bind(), vec![":3"]);
    assert_eq!(c.origin("workers"), Some(Origin::CommandLine));
    assert_eq!(c.str("config"), Some(conf));
}

#[test]
fn config_location_cli_then_cmd_args_then_default_file() {
    let dir = tmpdir();
    write(&dir, "gunicorn.conf.py", "workers = 11\n");
    let a = write(&dir, "a.py", "workers = 12\n");
    let b = write(&dir, "b.py", "workers = 13\n");
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());

    let c = load(&[], env_in(&dir));
    assert_eq!(c.workers(), 11);
    assert_eq!(
        c.config_file(),
        Some(dir.join("gunicorn.conf.py").as_path())
    );

    let env_b = Env {
        cmd_args: Some(format!("-c {b}")),
        ..env_in(&dir)
    };
    assert_eq!(load(&[], env_b.clone()).workers(), 13);
    assert_eq!(load(&["-c", a], env_b).workers(), 12);

    // No default file: nothing read.
    let empty = tmpdir();
    let c = load(&[], env_in(&empty));
    assert_eq!(c.workers(), 1);
    assert_eq!(c.config_file(), None);
}

#[test]
fn app_module_positional_and_wsgi_app_fallback() {
    let dir = tmpdir();
    let c = load(&["-w", "2", "myapp:app", "other:app"], env_in(&dir));
    assert_eq!(c.app_uri(), Some("myapp:app"));
    assert_eq!(c.proc_name(), "myapp:app");
    assert_eq!(c.str("default_proc_name"), Some("myapp:app"));

    let conf = write(
        &dir,
        "c.py",
        "wsgi_app = 'fromfile:app'\nproc_name = 'named'\n",
    );
    let c = load(&["-c", conf.to_str().unwrap()], env_in(&dir));
    assert_eq!(c.app_uri(), Some("fromfile:app"));
    assert_eq!(c.proc_name(), "named");
    let c = load(&["-c", conf.to_str().unwrap(), "cli:app"], env_in(&dir));
    assert_eq!(c.app_uri(), Some("cli:app"));

    // Positionals in GUNICORN_CMD_ARGS are ignored, as in gunicorn.
    let env = Env {
        cmd_args: Some("envapp:app".into()),
        ..env_in(&dir)
    };
    assert_eq!(load(&[], env).app_uri(), None);
}

// -- config files --------------------------------------------------------------

#[test]
fn python_config_file_namespace_and_hooks() {
    let dir = tmpdir();
    let conf = write(
        &dir,
        "gunicorn.conf.py",
        r#"
import os
here = os.path.dirname(__file__)
assert __name__ == "__config__"
workers = 2 + 1
Workers = 99          # not a setting: names match exactly
raw_env = ["A=1", "B=x=y"]
umask = 0o22
pidfile = os.path.join(here, "app.pid")
secure_scheme_headers = {"X-PROTO": "https", "X-N": 1}
forwarded_allow_ips = "10.0.0.0/8, 127.0.0.1"
proxy_protocol = True
preload_app = "true"
def on_starting(server):
    pass
def post_request(worker, req):
    pass
def _helper(): pass
os.environ["FC_CONFIG_TEST_VISIBLE"] = "yes"
"#,
    );
    let c = load(&[], env_in(&dir));
    assert_eq!(c.workers(), 3);
    assert_eq!(
        c.raw_env(),
        vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
    );
    assert_eq!(c.umask(), 0o22);
    assert_eq!(
        c.pidfile(),
        Some(dir.join("app.pid").to_string_lossy().into_owned())
    );
    assert_eq!(
        c.secure_scheme_headers(),
        vec![
            ("X-PROTO".into(), "https".into()),
            ("X-N".into(), "1".into())
        ]
    );
    assert_eq!(c.forwarded_allow_ips(), vec!["10.0.0.0/8", "127.0.0.1"]);
    assert_eq!(c.proxy_protocol(), "auto");
    assert!(c.preload_app());
    assert!(c.hook("on_starting").is_some());
    assert!(c.hook("when_ready").is_none());
    assert_eq!(c.config_file(), Some(conf.as_path()));
    // os.environ changes made by the config file are visible afterwards.
    assert_eq!(
        std::env::var("FC_CONFIG_TEST_VISIBLE").as_deref(),
        Ok("yes")
    );
    // post_request(worker, req) is wrapped to take 4 arguments.
    Python::attach(|py| {
        let hook = c.hook("post_request").unwrap().bind(py);
        hook.call1((1, 2, 3, 4)).unwrap();
        let q: String = hook.getattr("__qualname__").unwrap().extract().unwrap();
        assert_eq!(q, "validate_post_request.<locals>.<lambda>");
    });
}

#[test]
fn toml_config_file() {
    let dir = tmpdir();
    let conf = write(
        &dir,
        "ferrocorn.toml",
        r#"
bind = ["127.0.0.1:9001", "unix:/tmp/s"]
workers = 4
umask = "0o77"
preload_app = true
forwarded_allow_ips = ["10.0.0.0/8", "*"]
secure_scheme_headers = { "X-FORWARDED-PROTO" = "https" }
on_starting = "os.getcwd"
on_exit = "os.path.exists"
"#,
    );
    let conf = conf.to_str().unwrap();
    let c = match load_env(&["-c", conf], env_in(&dir)) {
        Err(e) => e.0,
        _ => String::new(),
    };
    // os.getcwd takes no argument: the hook arity check rejects it.
    assert!(
        c.starts_with(&format!("invalid value for on_starting in {conf}: ")),
        "{c}"
    );
    assert!(
        c.contains("takes 0 positional arguments, a callable taking 1 is required"),
        "{c}"
    );

    let text = std::fs::read_to_string(conf)
        .unwrap()
        .replace("on_starting = \"os.getcwd\"\n", "");
    std::fs::write(conf, text).unwrap();
    let c = load(&["-c", conf], env_in(&dir));
    assert_eq!(c.bind(), vec!["127.0.0.1:9001", "unix:/tmp/s"]);
    assert_eq!(c.workers(), 4);
    assert_eq!(c.umask(), 0o77);
    assert!(c.preload_app());
    assert_eq!(c.forwarded_allow_ips(), vec!["10.0.0.0/8", "*"]);
    assert_eq!(
        c.secure_scheme_headers(),
        vec![("X-FORWARDED-PROTO".into(), "https".into())]
    );
    assert!(c.hook("on_exit").is_some());

    write(&dir, "bad.toml", "wrokers = 2\n");
    let e = load_err(
        &["-c", dir.join("bad.toml").to_str().unwrap()],
        env_in(&dir),
    );
    assert!(e.starts_with("unknown setting 'wrokers' in "), "{e}");
    write(&dir, "broken.toml", "workers = 2\nbind = [\n");
    let e = load_err(
        &["-c", dir.join("broken.toml").to_str().unwrap()],
        env_in(&dir),
    );
    assert!(
        e.starts_with("invalid TOML in ") && !e.contains('\n'),
        "{e}"
    );
}

#[test]
fn python_module_config() {
    let dir = tmpdir();
    write(
        &dir,
        "fc_cfg_mod_test.py",
        "workers = 6\nloglevel = 'DEBUG'\nnot_a_setting = 1\n",
    );
    let c = load(&["-c", "python:fc_cfg_mod_test"], env_in(&dir));
    assert_eq!(c.workers(), 6);
    assert_eq!(c.loglevel(), "debug");
    assert_eq!(
        c.config_file(),
        Some(dir.join("fc_cfg_mod_test.py").as_path())
    );
    let e = load_err(&["-c", "python:fc_no_such_module_xyz"], env_in(&dir));
    assert_eq!(
        e,
        "cannot import config module 'fc_no_such_module_xyz': \
         ModuleNotFoundError: No module named 'fc_no_such_module_xyz'"
    );
}

#[test]
fn file_prefix_and_missing_file() {
    let dir = tmpdir();
    let conf = write(&dir, "x.py", "workers = 9\n");
    let c = load(&["-c", &format!("file:{}", conf.display())], env_in(&dir));
    assert_eq!(c.workers(), 9);
    let e = load_err(&["-c", "/nonexistent/fc.py"], env_in(&dir));
    assert_eq!(e, "'/nonexistent/fc.py' doesn't exist");
}

#[test]
fn failing_config_file_exits_1() {
    let dir = tmpdir();
    let conf = write(&dir, "boom.py", "workers = 2\nraise RuntimeError('boom')\n");
    assert_eq!(load_exit(&["-c", conf.to_str().unwrap()], env_in(&dir)), 1);
    let conf = write(&dir, "syntax.py", "workers = = 2\n");
    assert_eq!(load_exit(&["-c", conf.to_str().unwrap()], env_in(&dir)), 1);
}

// -- errors ------------------------------------------------------------------------

#[test]
fn bad_values_name_setting_value_and_what_is_allowed() {
    let dir = tmpdir();
    let cases: &[(&[&str], &str)] = &[
        (&["-w", "abc"], "invalid value for --workers (workers): 'abc' is not a positive integer"),
        (&["--workers=-2"], "invalid value for --workers (workers): '-2' is not a positive integer"),
        (&["--max-requests", "-1"], "invalid value for --max-requests (max_requests): '-1' is not a positive integer"),
        (&["-m", "089"], "invalid value for --umask (umask): '089' is not a positive integer (octal as 0o22 or 022, hex as 0x12)"),
        (&["-e", "NOEQUALS"], "invalid value for --env (raw_env): 'NOEQUALS' is not in KEY=VALUE form"),
        (&["--proxy-protocol", "v3"], "invalid value for --proxy-protocol (proxy_protocol): 'v3' is not one of: off, false, 0, none, v1, v2, auto, true, 1"),
        (&["--header-map", "keep"], "invalid value for --header-map (header_map): 'keep' is not one of: drop, refuse, dangerous"),
        (&["--forwarded-allow-ips", "10.0.0.1/8"], "invalid value for --forwarded-allow-ips (forwarded_allow_ips): '10.0.0.1/8' is not an IP address, a network such as 10.0.0.0/8 (without host bits set), or *"),
        (&["-u", "fc-no-such-user-xyz"], "invalid value for --user (user): no such user: 'fc-no-such-user-xyz'"),
        (&["-g", "fc-no-such-group-xyz"], "invalid value for --group (group): no such group: 'fc-no-such-group-xyz'"),
        (&["--chdir", "/nonexistent/dir"], "invalid value for --chdir (chdir): can't chdir to '/nonexistent/dir'"),
        (&["--http2-max-frame-size", "10"], "invalid value for --http2-max-frame-size (http2_max_frame_size): '10' is not an integer between 16384 and 16777215"),
        (&["--http-protocols", "h3"], "invalid value for --http-protocols (http_protocols): 'h3' is not a valid protocol (valid: h1, h2)"),
    ];
    for (args, want) in cases {
        assert_eq!(&load_err(args, env_in(&dir)), want, "{args:?}");
    }
    let env = Env {
        cmd_args: Some("--threads x".into()),
        ..env_in(&dir)
    };
    assert_eq!(
        load_err(&[], env),
        "invalid value for --threads (threads) in GUNICORN_CMD_ARGS: 'x' is not a positive integer"
    );
    let env = Env {
        web_concurrency: Some("many".into()),
        ..env_in(&dir)
    };
    assert_eq!(
        load_err(&[], env),
        "invalid value for WEB_CONCURRENCY (workers): 'many' is not a positive integer"
    );
    let env = Env {
        gunicorn_workers: Some("many".into()),
        ..env_in(&dir)
    };
    assert_eq!(
        load_err(&[], env),
        "invalid value for GUNICORN_WORKERS (workers): 'many' is not a positive integer"
    );
    let env = Env {
        gunicorn_timeout: Some("soon".into()),
        ..env_in(&dir)
    };
    assert_eq!(
        load_err(&[], env),
        "invalid value for GUNICORN_TIMEOUT (timeout): 'soon' is not an integer"
    );
    let env = Env {
        cmd_args: Some("-w 'unterminated".into()),
        ..env_in(&dir)
    };
    assert!(load_err(&[], env).starts_with("GUNICORN_CMD_ARGS is not valid shell syntax"));
}

#[test]
fn bad_values_in_config_file() {
    let dir = tmpdir();
    let cases = [
        ("workers = -1", "-1 is not a positive integer"),
        ("workers = 'x'", "'x' is not a positive integer"),
        ("workers = 2.5", "2.5 is not a positive integer"),
        ("umask = '022'", "'022' is not a positive integer (octal as 0o22 or 022, hex as 0x12)"),
        ("preload_app = 'yes'", "'yes' is not a boolean (true or false)"),
        ("preload_app = 1", "1 is not a boolean (True or False)"),
        ("bind = 5", "5 is not a string or a list of strings"),
        ("secure_scheme_headers = ['a']", "['a'] is not a dictionary"),
        ("loglevel = 3", "3 is not a string"),
        ("on_starting = 42", "42 is not callable"),
        ("on_starting = 'nodots'", "'nodots' is not an import string (module[.submodules...].object)"),
        ("pre_fork = lambda server: None", "takes 1 positional argument, a callable taking 2 is required"),
        ("def post_request(a): pass", "takes 1 positional argument, a callable taking 2, 3 or 4 (worker, req[, environ[, resp]]) is required"),
    ];
    for (i, (line, want)) in cases.iter().enumerate() {
        let conf = write(&dir, &format!("c{i}.py"), &format!("{line}\n"));
        let e = load_err(&["-c", conf.to_str().unwrap()], env_in(&dir));
        let name = line
            .split([' ', '('])
            .nth(if line.starts_with("def") { 1 } else { 0 })
            .unwrap();
        let prefix = format!("invalid value for {name} in {}: ", conf.display());
        assert!(e.starts_with(&prefix) && e.ends_with(want), "{line}: {e}");
        assert!(!e.contains('\n'));
    }
}

#[test]
fn set_validates() {
    let mut c = Config::new();
    assert_eq!(
        c.set("workers", Value::Str("abc".into())).unwrap_err().0,
        "invalid value for workers: 'abc' is not a positive integer"
    );
    c.set("workers", Value::Str("0x10".into())).unwrap();
    assert_eq!(c.workers(), 16);
    assert_eq!(
        c.set("bogus", Value::None).unwrap_err().0,
        "no configuration setting for: bogus"
    );
    c.set("proxy_protocol", Value::Str(" V2 ".into())).unwrap();
    assert_eq!(c.proxy_protocol(), "v2");
    c.set("proxy_protocol", Value::Bool(false)).unwrap();
    assert_eq!(c.proxy_protocol(), "off");
    c.set("user", Value::Str("0".into())).unwrap();
    assert_eq!(c.user(), Some(0));
    c.set("group", Value::Str("root".into())).unwrap();
    assert_eq!(c.group(), Some(0));
    c.set("bind", Value::Str(" 0.0.0.0:80 ".into())).unwrap();
    assert_eq!(c.bind(), vec!["0.0.0.0:80"]);
    c.set(
        "forwarder_headers",
        Value::Str("SCRIPT_NAME, ,REMOTE_USER".into()),
    )
    .unwrap();
    assert_eq!(
        c.forwarder_headers(),
        vec!["SCRIPT_NAME", "", "REMOTE_USER"]
    );
    c.set("http2_cleartext", Value::Bool(true)).unwrap();
    assert_eq!(c.str("http2_cleartext"), Some("prior-knowledge"));
    c.set("sendfile", Value::Bool(false)).unwrap();
    assert!(!c.sendfile());
}

#[test]
fn chdir_is_made_absolute() {
    let dir = tmpdir();
    std::fs::create_dir(dir.join("sub")).unwrap();
    let c = load(
        &["--chdir", &format!("{}/sub/../sub/.", dir.display())],
        env_in(&dir),
    );
    assert_eq!(c.chdir(), Some(format!("{}/sub", dir.display())));
}

// -- CLI behaviour -------------------------------------------------------------

#[test]
fn version_help_and_usage_errors_exit() {
    let dir = tmpdir();
    assert_eq!(load_exit(&["-v"], env_in(&dir)), 0);
    assert_eq!(load_exit(&["--version", "-w", "x"], env_in(&dir)), 0);
    assert_eq!(load_exit(&["--help"], env_in(&dir)), 0);
    assert_eq!(load_exit(&["--no-such-option"], env_in(&dir)), 2);
    let env = Env {
        cmd_args: Some("--bogus".into()),
        ..env_in(&dir)
    };
    assert_eq!(load_exit(&[], env), 2);
}

#[test]
fn cli_flags_and_values() {
    let dir = tmpdir();
    let c = load(
        &[
            "--preload",
            "--reuse-port",
            "-D",
            "--capture-output",
            "--no-sendfile",
            "--proxy-protocol",
            "--umask",
            "022",
            "--access-logfile",
            "-",
            "--log-level",
            "WARNING",
            "--limit-request-field_size",
            "100",
            "-k",
            "gthread",
            "--threads",
            "4",
            "--pythonpath",
            "a,b",
            "-n",
            "myname",
            "app:app",
        ],
        env_in(&dir),
    );
    assert!(c.preload_app() && c.reuse_port() && c.daemon() && c.capture_output());
    assert!(!c.sendfile());
    assert_eq!(c.proxy_protocol(), "auto");
    assert_eq!(c.umask(), 0o22);
    assert_eq!(c.accesslog().as_deref(), Some("-"));
    assert_eq!(c.loglevel(), "warning");
    assert_eq!(c.parser_limits().2, 100);
    assert_eq!(c.worker_class(), "gthread");
    assert_eq!(c.threads(), 4);
    assert_eq!(c.pythonpath(), vec!["a", "b"]);
    assert_eq!(c.proc_name(), "myname");
    assert_eq!(c.app_uri(), Some("app:app"));
    assert!(!c.print_config_requested() && !c.check_config());
    let c = load(&["--check-config", "--print-config"], env_in(&dir));
    assert!(c.check_config() && c.print_config_requested());
}

// -- warnings and printing ---------------------------------------------------

#[test]
fn warnings_for_ignored_and_not_yet_settings() {
    let dir = tmpdir();
    let conf = write(&dir, "w.py", "http_protocols = 'h2,h1'\nspew = False\n");
    let c = load(
        &[
            "-c",
            conf.to_str().unwrap(),
            "--worker-tmp-dir",
            "/dev/shm",
            "-w",
            "2",
        ],
        env_in(&dir),
    );
    let w = c.warnings();
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(
        w[0],
        "setting worker_tmp_dir (--worker-tmp-dir) is ignored by ferrocorn \
         (heartbeats live in shared memory, not in temporary files)"
    );
    assert_eq!(
        w[1],
        "setting http_protocols (--http-protocols) is not implemented yet in ferrocorn \
         (HTTP/2); it has no effect"
    );
}

#[test]
fn print_config_matches_gunicorn_format() {
    let dir = tmpdir();
    let conf = write(
        &dir,
        "p.py",
        "def when_ready(server): pass\nclass K:\n    def pre_fork(self, server, worker): pass\npre_fork = K().pre_fork\n",
    );
    let c = load(
        &["-c", conf.to_str().unwrap(), "-b", "a:1", "app:app"],
        env_in(&dir),
    );
    let out = Python::attach(|py| c.print_config(py));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), SETTINGS.len());
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, lines);
    // Names are padded to the longest one (a ferrocorn setting): compare
    // with the padding folded to one space.
    let fold = |l: &str| {
        l.split_once(" = ")
            .map(|(k, v)| format!("{} = {v}", k.trim_end()))
    };
    let folded: Vec<Option<String>> = lines.iter().map(|l| fold(l)).collect();
    let has = |l: &str| assert!(folded.contains(&fold(l)), "missing {l:?} in\n{out}");
    has("access_log_format                  = %(h)s %(l)s %(u)s %(t)s \"%(r)s\" %(s)s %(b)s \"%(f)s\" \"%(a)s\"");
    has("bind                               = ['a:1']");
    has("default_proc_name                  = app:app");
    has("dogstatsd_tags                     = ");
    has("on_starting                        = <OnStarting.on_starting()>");
    has("when_ready                         = <when_ready()>");
    has("pre_fork                           = <K.pre_fork()>");
    has("secure_scheme_headers              = {'X-FORWARDED-PROTOCOL': 'ssl', 'X-FORWARDED-PROTO': 'https', 'X-FORWARDED-SSL': 'on'}");
    has("sendfile                           = None");
    has("logconfig_dict                     = {}");
    has("proxy_protocol                     = off");
    has("ssl_version                        = 2");
    has("workers                            = 1");
    has("permit_unconventional_http_version = False");
}

// -- docs ----------------------------------------------------------------------

const START: &str = "<!-- settings-table:start -->\n";
const END: &str = "<!-- settings-table:end -->";

/// docs/compatibility.md lists every setting, generated from the table.
/// `UPDATE_COMPAT_DOC=1 cargo test compatibility_doc` rewrites it.
#[test]
fn compatibility_doc_is_in_sync() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/compatibility.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (head, rest) = doc.split_once(START).expect("start marker");
    let (_, tail) = rest.split_once(END).expect("end marker");
    let want = format!("{head}{START}{}{END}{tail}", compatibility_table());
    if std::env::var_os("UPDATE_COMPAT_DOC").is_some() {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    assert!(
        doc == want,
        "docs/compatibility.md is out of date: run UPDATE_COMPAT_DOC=1 cargo test"
    );
    for s in SETTINGS {
        assert!(
            doc.contains(&format!("| `{}` |", s.name)),
            "{} missing",
            s.name
        );
    }
}

#[test]
fn man_page_is_in_sync() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("man/ferrocorn.1");
    let want = super::man::man_page(env!("CARGO_PKG_VERSION"));
    if std::env::var_os("UPDATE_COMPAT_DOC").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let page = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        page == want,
        "man/ferrocorn.1 is out of date: run UPDATE_COMPAT_DOC=1 cargo test"
    );
    for s in SETTINGS {
        for f in s.cli {
            assert!(page.contains(&f.replace('-', "\\-")), "{f} missing");
        }
    }
}

#[test]
#[ignore]
fn show_help() {
    println!("{}", cli::command("gunicorn").render_help());
}

#[test]
fn paste_names_the_app_and_reads_its_globals_as_gunicorn() {
    let dir = tmpdir();
    std::fs::write(dir.join("app.ini"), "[app:main]\n").unwrap();
    let c = load(
        &[
            "--paste",
            "app.ini#main",
            "--paste-global",
            r"a\=b=c=d",
            "--paste-global",
            "k=v",
        ],
        env_in(&dir),
    );
    let file = dir.join("app.ini").to_string_lossy().into_owned();
    assert_eq!(c.app_uri(), Some(format!("{file}#main").as_str()));
    assert_eq!(c.proc_name(), file);
    assert_eq!(
        c.paste_global_conf(),
        Some(vec![("a=b".into(), "c=d".into()), ("k".into(), "v".into())])
    );
    let e = load_err(
        &["--paste", "app.ini", "--paste-global", "novalue"],
        env_in(&dir),
    );
    assert!(e.contains("'novalue' is not in KEY=VALUE form"), "{e}");
    let e = load_err(&["--paste", "nope.ini"], env_in(&dir));
    assert!(e.contains("nope.ini' not found"), "{e}");
}

#[test]
fn paste_ini_with_loggers_is_the_logconfig_unless_one_is_set() {
    let dir = tmpdir();
    std::fs::write(dir.join("plain.ini"), "[app:main]\n").unwrap();
    std::fs::write(
        dir.join("logs.ini"),
        "[app:main]\n\n  [loggers]  \nkeys=root\n",
    )
    .unwrap();
    let c = load(&["--paste", "plain.ini"], env_in(&dir));
    assert_eq!(c.str("logconfig"), None);
    let c = load(&["--paste", "logs.ini"], env_in(&dir));
    let file = dir.join("logs.ini").to_string_lossy().into_owned();
    assert_eq!(c.str("logconfig"), Some(file.as_str()));
    // an explicit logconfig wins, as gunicorn's config file and CLI do
    let c = load(
        &["--paste", "logs.ini", "--log-config", "mine.ini"],
        env_in(&dir),
    );
    assert_eq!(c.str("logconfig"), Some("mine.ini"));
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn logger_class_is_gunicorns_or_refused() {
    let dir = tmpdir();
    for ok in ["gunicorn.glogging.Logger", "simple", "egg:gunicorn#simple"] {
        load(&["--logger-class", ok, "app:app"], env_in(&dir));
    }
    let e = load_err(
        &["--logger-class", "my.JsonLogger", "app:app"],
        env_in(&dir),
    );
    assert!(
        e.starts_with("logger_class 'my.JsonLogger' is not supported by ferrocorn"),
        "{e}"
    );
    assert!(e.contains("logconfig_dict"), "{e}");
}

#[test]
fn statsd_addresses_as_gunicorn_validates_them() {
    use crate::config::{parse_statsd_address as parse, StatsdAddr};
    let udp = |h: &str, p| StatsdAddr::Udp {
        host: h.to_owned(),
        port: p,
    };
    assert_eq!(parse("localhost:8125"), Ok(udp("localhost", 8125)));
    assert_eq!(parse("StatsD.Local"), Ok(udp("statsd.local", 8125)));
    assert_eq!(parse("tcp://10.0.0.1:9125"), Ok(udp("10.0.0.1", 9125)));
    assert_eq!(parse("[::1]:9125"), Ok(udp("::1", 9125)));
    assert_eq!(parse("[::1]"), Ok(udp("::1", 8125)));
    assert_eq!(parse(""), Ok(udp("0.0.0.0", 8125)));
    // gunicorn's release-20 regression rule: unix:PORT is a host named unix.
    assert_eq!(parse("unix:8125"), Ok(udp("unix", 8125)));
    assert_eq!(
        parse("unix:///run/statsd.sock"),
        Ok(StatsdAddr::Unix("/run/statsd.sock".into()))
    );
    assert_eq!(
        parse("unix:statsd.sock"),
        Ok(StatsdAddr::Unix("statsd.sock".into()))
    );
    for bad in [
        "localhost:abc",
        "localhost:",
        "host:70000",
        "unix://",
        "fd://3",
        ":8125",
        "unix:99999",
    ] {
        let e = parse(bad).expect_err(bad);
        assert!(
            e.starts_with("is not 'host:port' or 'unix://PATH'"),
            "{bad}: {e}"
        );
    }
    let dir = tmpdir();
    assert_eq!(
        load_err(&["--statsd-host", "localhost:x"], env_in(&dir)),
        "invalid value for --statsd-host (statsd_host): 'localhost:x' is not 'host:port' \
         or 'unix://PATH': 'x' is not a valid port number"
    );
    let c = load(
        &[
            "--statsd-host",
            "unix:///s",
            "--statsd-prefix",
            "app",
            "--enable-backlog-metric",
        ],
        env_in(&dir),
    );
    let s = c.statsd().expect("valid").expect("on");
    assert_eq!(
        (s.addr, s.prefix.as_str(), s.backlog),
        (StatsdAddr::Unix("/s".into()), "app", true)
    );
    assert_eq!(load(&[], env_in(&dir)).statsd(), Ok(None));
}
