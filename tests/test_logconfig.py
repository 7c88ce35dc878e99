"""Python logging configuration (logconfig .ini, logconfig_dict, logconfig_json,
a --paste ini's [loggers]): the error and access records go through Python's
logging under gunicorn.error and gunicorn.access, with gunicorn 27's record
fields, and the configuration is applied again on HUP. logger_class other than
gunicorn's own is refused at start by ferrocorn."""
import json
import os
import signal
import textwrap
import time

import pytest
import requests

from conftest import APPS, IS_GUNICORN, free_port
from helpers import wait_until

# A logging.Filter given as a callable in logconfig_dict: it copies atoms of an
# access record's args (gunicorn's SafeAtoms) onto the record, so the JSON
# formatter shows that `args` holds them.
CONFIG_HEAD = '''
import logging

class Atoms(logging.Filter):
    def filter(self, record):
        if record.name == "gunicorn.access":
            a = record.args
            record.atoms = {
                "type": type(a).__name__,
                "h": a["h"], "s": a["s"], "m": a["m"], "U": a["U"], "q": a["q"],
                "B": a["B"], "D_is_int": isinstance(a["D"], int),
                "ua": a["{user-agent}i"], "X-Test": a["{X-Test}i"],
                "ctype": a["{content-type}o"], "missing": a["nope"],
                "method_e": a["{request_method}e"],
            }
        return True
'''


def json_config(path, fmt="%(asctime)s %(name)s %(levelname)s %(process)d %(message)s"):
    return CONFIG_HEAD + textwrap.dedent('''
        logconfig_dict = {
            "root": {"level": "INFO", "handlers": []},
            "filters": {"atoms": {"()": Atoms}},
            "formatters": {"json": {"()": "pythonjsonlogger.json.JsonFormatter",
                                    "format": %r}},
            "handlers": {"file": {"class": "logging.FileHandler", "filename": %r,
                                  "formatter": "json", "filters": ["atoms"]}},
            "loggers": {
                "gunicorn.error": {"handlers": ["file"], "level": "INFO", "propagate": False},
                "gunicorn.access": {"handlers": ["file"], "level": "INFO", "propagate": False},
            },
        }
        ''' % (fmt, path))


def read_lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def json_records(path):
    return [json.loads(line) for line in read_lines(path)]


def wait_records(path, pred, timeout=10.0):
    return wait_until(lambda: json_records(path), lambda recs: any(pred(r) for r in recs), timeout)


def test_logconfig_dict_json_formatter_to_a_file(server, tmp_path):
    out = str(tmp_path / "log.jsonl")
    hook = ("\ndef when_ready(server):\n"
            "    server.log.info('hook says %s', 'hi', extra={'from_hook': True})\n")
    s = server(["-w", "1", "wsgiapp:app"], config_text=json_config(out) + hook)
    resp = requests.get(s.url + "/pid?x=1", headers={"User-Agent": 'ua "quoted"', "X-Test": "t1"},
                        timeout=10)
    assert resp.status_code == 200
    worker_pid = int(resp.text)
    assert requests.get(s.url + "/error", timeout=10).status_code == 500
    recs = wait_records(out, lambda r: r["name"] == "gunicorn.access" and "/error" in r["message"])
    # every line is one JSON object with the formatter's fields
    assert len(read_lines(out)) == len(recs)
    for r in recs:
        assert set(r) >= {"asctime", "name", "levelname", "process", "message"}, r
    boot = [r for r in recs if r["name"] == "gunicorn.error" and "Booting worker" in r["message"]]
    assert boot and boot[0]["levelname"] == "INFO" and boot[0]["process"] == worker_pid, recs
    assert any(r["name"] == "gunicorn.error" and r["message"].startswith("Listening at: ")
               and r["process"] == s.proc.pid for r in recs), recs
    access = [r for r in recs if r["name"] == "gunicorn.access" and "/pid" in r["message"]]
    assert len(access) == 1, recs
    a = access[0]
    assert a["levelname"] == "INFO" and a["process"] == worker_pid
    # the message is access_log_format with the atoms (SafeAtoms escapes '"')
    assert '"GET /pid?x=1 HTTP/1.1" 200 %d "-" "ua \\"quoted\\""' % len(resp.content) in a["message"], a
    assert a["atoms"] == {
        "type": "SafeAtoms", "h": "127.0.0.1", "s": "200", "m": "GET", "U": "/pid", "q": "x=1",
        "B": len(resp.content), "D_is_int": True, "ua": 'ua \\"quoted\\"', "X-Test": "t1",
        "ctype": "text/plain", "missing": "-", "method_e": "GET",
    }, a
    errors = [r for r in recs if r["levelname"] == "ERROR" and "Error handling request" in r["message"]]
    assert errors and errors[0]["process"] == worker_pid, recs
    assert "Traceback" in json.dumps(errors[0]), errors[0]
    # the hooks' server.log logs to gunicorn.error too, with its `extra`
    hooked = [r for r in recs if r["message"] == "hook says hi"]
    assert hooked and hooked[0]["from_hook"] is True and hooked[0]["name"] == "gunicorn.error", recs
    # nothing of it went to the default stderr handler
    assert "Booting worker" not in s.stderr()


INI = """
[loggers]
keys=root,error,access

[handlers]
keys=file

[formatters]
keys=plain

[logger_root]
level=WARNING
handlers=

[logger_error]
level=INFO
handlers=file
propagate=0
qualname=gunicorn.error

[logger_access]
level=INFO
handlers=file
propagate=0
qualname=gunicorn.access

[handler_file]
class=FileHandler
formatter=plain
args=(%(logfile)r,)

[formatter_plain]
format=%(levelname)s|%(name)s|%(process)d|%(message)s
"""


def test_logconfig_ini(server, tmp_path):
    out = str(tmp_path / "log.txt")
    ini = tmp_path / "logging.ini"
    ini.write_text(INI.replace("%(logfile)r", repr(out)))
    s = server(["-w", "1", "--log-config", str(ini), "wsgiapp:app"])
    pid = int(requests.get(s.url + "/pid", timeout=10).text)
    lines = wait_until(lambda: read_lines(out), lambda ls: any("/pid" in x for x in ls), 10)
    assert "INFO|gunicorn.error|%d|Booting worker with pid: %d" % (pid, pid) in lines, lines
    access = [x for x in lines if x.startswith("INFO|gunicorn.access|%d|" % pid) and "/pid" in x]
    assert len(access) == 1 and '"GET /pid HTTP/1.1" 200' in access[0], lines


def test_logconfig_json(server, tmp_path):
    out = str(tmp_path / "log.txt")
    conf = tmp_path / "logging.json"
    conf.write_text(json.dumps({
        "root": {"level": "INFO", "handlers": []},
        "formatters": {"f": {"format": "json-conf %(name)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": out, "formatter": "f"}},
        "loggers": {"gunicorn.error": {"handlers": ["file"], "propagate": False},
                    "gunicorn.access": {"handlers": ["file"], "propagate": False}},
    }))
    s = server(["-w", "1", "--log-config-json", str(conf), "wsgiapp:app"])
    requests.get(s.url + "/pid", timeout=10)
    lines = wait_until(lambda: read_lines(out), lambda ls: any("/pid" in x for x in ls), 10)
    assert any(x.startswith("json-conf gunicorn.error Booting worker") for x in lines), lines
    assert any(x.startswith("json-conf gunicorn.access ") and "GET /pid" in x for x in lines), lines


def test_hup_applies_a_changed_logging_config(server, tmp_path):
    first, second = str(tmp_path / "first.jsonl"), str(tmp_path / "second.jsonl")
    s = server(["-w", "1", "wsgiapp:app"], config_text=json_config(first))
    requests.get(s.url + "/pid?n=1", timeout=10)
    wait_records(first, lambda r: "/pid?n=1" in r["message"])
    with open(s.config_path, "w") as f:
        f.write(json_config(second, fmt="%(name)s %(levelname)s %(message)s"))
    old = set(s.children())
    s.signal(signal.SIGHUP)
    wait_until(lambda: set(s.children()), lambda now: now and not (now & old), 20)
    requests.get(s.url + "/pid?n=2", timeout=10)
    recs = wait_records(second, lambda r: "/pid?n=2" in r["message"])
    # the new format (no asctime, no process) and the new file
    assert all("asctime" not in r and "process" not in r for r in recs), recs
    assert any(r["name"] == "gunicorn.error" and "Booting worker" in r["message"] for r in recs)
    assert not any("/pid?n=2" in r["message"] for r in json_records(first))


def test_hup_with_a_broken_logging_config_keeps_the_previous_one(server, tmp_path):
    out = str(tmp_path / "log.jsonl")
    s = server(["-w", "1", "wsgiapp:app"], config_text=json_config(out))
    with open(s.config_path, "w") as f:
        f.write("logconfig_dict = {'handlers': {'h': {'class': 'no.such.Handler'}}}\n")
    s.signal(signal.SIGHUP)
    time.sleep(2)
    assert s.proc.poll() is None
    requests.get(s.url + "/pid?after=1", timeout=10)
    wait_records(out, lambda r: "/pid?after=1" in r["message"])
    assert "reloading the logger configuration failed, keeping the previous one" in s.stderr()


def test_paste_ini_loggers_section(server, tmp_path):
    out = str(tmp_path / "log.txt")
    ini = tmp_path / "app.ini"
    ini.write_text("[app:main]\npaste.app_factory = pasteapp:make_app\nname = main\n"
                   + INI.replace("%(logfile)r", repr(out).replace("%", "%%")))
    s = server(["-w", "1", "--paste", str(ini)], cwd=APPS)
    assert requests.get(s.url + "/", timeout=10).status_code == 200
    lines = wait_until(lambda: read_lines(out), lambda ls: any("GET / HTTP" in x for x in ls), 10)
    assert any(x.startswith("INFO|gunicorn.error|") and "Booting worker" in x for x in lines), lines
    assert any(x.startswith("INFO|gunicorn.access|") for x in lines), lines


def test_missing_logconfig_file_stops_the_start(run_cmd, tmp_path):
    missing = str(tmp_path / "nope.ini")
    r = run_cmd(["-w", "1", "--log-config", missing, "-b", "127.0.0.1:%d" % free_port(),
                 "wsgiapp:app"])
    assert r.returncode == 1, r
    assert "Error: log config '%s' not found" % missing in r.output, r


def test_bad_logconfig_dict_stops_the_start(run_cmd):
    r = run_cmd(["-w", "1", "-b", "127.0.0.1:%d" % free_port(), "wsgiapp:app"],
                config_text="logconfig_dict = {'root': {'handlers': ['nope']}}\n")
    assert r.returncode == 1, r
    assert "Unable to configure root logger" in r.output, r


def test_gunicorns_logger_class_is_accepted(server):
    s = server(["-w", "1", "--logger-class", "gunicorn.glogging.Logger", "wsgiapp:app"])
    assert requests.get(s.url + "/", timeout=10).status_code == 200
    assert "logger_class" not in s.log()


@pytest.mark.ferrocorn_only
def test_other_logger_class_is_refused_at_start(run_cmd):
    r = run_cmd(["-w", "1", "--logger-class", "mylogging.JsonLogger",
                 "-b", "127.0.0.1:%d" % free_port(), "wsgiapp:app"])
    assert r.returncode == 1, r
    assert "logger_class 'mylogging.JsonLogger' is not supported by ferrocorn" in r.output, r
    assert "logconfig_dict" in r.output, r


@pytest.mark.parametrize("kind", [
    ["-k", "gthread", "--threads", "4", "wsgiapp:app"],
    pytest.param(["-k", "asgi", "asgiapp:app"], marks=pytest.mark.ferrocorn_only),
], ids=["gthread", "asgi"])
def test_access_and_error_records_from_other_worker_kinds(server, tmp_path, kind):
    out = str(tmp_path / "log.jsonl")
    # the Atoms filter reads `{request_method}e`, which the asgi kind has not
    # (no environ): a plain JSON configuration here
    s = server(["-w", "1"] + kind, config_text=json_config(out).replace(
        ', "filters": ["atoms"]', ""))
    for i in range(5):
        requests.get(s.url + "/?n=%d" % i, timeout=10)
    recs = wait_records(out, lambda r: "/?n=4" in r["message"])
    access = [r for r in recs if r["name"] == "gunicorn.access" and "/?n=" in r["message"]]
    assert len(access) == 5, recs
    assert any(r["name"] == "gunicorn.error" and "Booting worker" in r["message"] for r in recs)


def test_usr1_reopens_the_configured_log_files(server, tmp_path):
    out = str(tmp_path / "log.jsonl")
    s = server(["-w", "1", "wsgiapp:app"], config_text=json_config(out))
    requests.get(s.url + "/pid?n=1", timeout=10)
    wait_records(out, lambda r: "/pid?n=1" in r["message"])
    os.rename(out, out + ".1")
    s.signal(signal.SIGUSR1)
    # the worker reopens on its next turn: retry until a line lands in the new file
    wait_until(lambda: requests.get(s.url + "/pid?n=2", timeout=10) and json_records(out),
               lambda recs: any("/pid?n=2" in r["message"] for r in recs), 10)
    assert any("/pid?n=1" in r["message"] for r in json_records(out + ".1"))


@pytest.mark.ferrocorn_only
def test_access_log_json_under_a_logging_configuration(server, tmp_path):
    """--access-log-json with logconfig_json: the gunicorn.access record's
    message is the JSON object (the formatter sees it whole)."""
    out = str(tmp_path / "log.txt")
    conf = tmp_path / "logging.json"
    conf.write_text(json.dumps({
        "root": {"level": "INFO", "handlers": []},
        "formatters": {"f": {"format": "%(name)s|%(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": out, "formatter": "f"}},
        "loggers": {"gunicorn.access": {"handlers": ["file"], "propagate": False}},
    }))
    s = server(["-w", "1", "--log-config-json", str(conf), "--access-log-json", "wsgiapp:app"])
    requests.get(s.url + "/pid?a=%22b", headers={"X-Test": 'say "100%"'}, timeout=10)
    lines = wait_until(lambda: read_lines(out), lambda ls: any("/pid" in x for x in ls), 10)
    [line] = [x for x in lines if "/pid" in x]
    name, _, msg = line.partition("|")
    rec = json.loads(msg)
    assert name == "gunicorn.access"
    assert rec["r"] == "GET /pid?a=%22b HTTP/1.1" and rec["{x-test}i"] == 'say "100%"', rec


EXC_CONFIG = '''
import logging, json

class ExcInfo(logging.Handler):
    """Writes, for each gunicorn.error record at ERROR, what its exc_info
    holds: the exception object itself, as Sentry's handler takes it."""
    def emit(self, record):
        if record.levelno < logging.ERROR:
            return
        e = record.exc_info
        with open(%r, "a") as f:
            f.write(json.dumps({
                "message": record.getMessage(),
                "exc_type": e[0].__name__ if e else None,
                "exc_str": str(e[1]) if e else None,
                "tb_frames": len(__import__("traceback").extract_tb(e[2])) if e else 0,
            }) + "\\n")

logconfig_dict = {
    "root": {"level": "INFO", "handlers": []},
    "handlers": {"exc": {"()": ExcInfo}},
    "loggers": {"gunicorn.error": {"handlers": ["exc"], "level": "INFO", "propagate": False}},
}

def pre_request(worker, req):
    if req.path == "/hook-raises":
        raise KeyError("from pre_request")
'''


@pytest.mark.parametrize("kind,path,message,exc", [
    (["wsgiapp:app"], "/error", "Error handling request GET /error",
     ("RuntimeError", "intentional error from /error")),
    (["wsgiapp:app"], "/hook-raises", "Error handling request GET /hook-raises",
     ("KeyError", "'from pre_request'")),
    (["-k", "gthread", "wsgiapp:app"], "/error", "Error handling request GET /error",
     ("RuntimeError", "intentional error from /error")),
    (["-k", "asgi", "asgiapp:app"], "/raise", "Error in ASGI application", ("ValueError", "boom")),
], ids=["sync-app", "sync-hook", "gthread-app", "asgi-app"])
def test_exception_records_carry_exc_info(server, tmp_path, kind, path, message, exc):
    """An app's or a hook's exception reaches the configured handlers with
    exc_info set to the exception (type, value, traceback), as gunicorn's
    log.exception gives it, not only as text in the message."""
    out = str(tmp_path / "exc.jsonl")
    s = server(["-w", "1"] + kind, config_text=EXC_CONFIG % out)
    assert requests.get(s.url + path, timeout=10).status_code == 500
    recs = wait_until(lambda: [json.loads(x) for x in read_lines(out)],
                      lambda rs: any(r["message"].startswith(message) for r in rs), 10)
    [r] = [r for r in recs if r["message"].startswith(message)]
    assert (r["exc_type"], r["exc_str"]) == exc, r
    assert r["tb_frames"] >= 1, r
    # the message is the message: the traceback is in exc_info, not appended
    assert "Traceback" not in r["message"], r
