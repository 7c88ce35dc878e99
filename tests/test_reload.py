"""--reload (gunicorn's reloader): a change to a loaded module or to a
--reload-extra-file restarts the worker, which imports the new code; with
--reload a module with a SyntaxError is served as a 500 with its traceback
until it is fixed. Both engines: poll and inotify (the `inotify` package)."""
import os
import time

import pytest
import requests

from helpers import wait_until

APP = '''
import os
VERSION = %r
def app(environ, start_response):
    body = ("%%s %%d" %% (VERSION, os.getpid())).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
'''


def write(path, text):
    path.write_text(text)
    # a later mtime than any earlier write, whatever the clock's granularity
    t = time.time() + 2
    os.utime(path, (t, t))


def get(s):
    try:
        r = requests.get(s.url + "/", timeout=5)
        return r.status_code, r.text
    except requests.RequestException as e:
        return None, repr(e)


@pytest.mark.parametrize("engine", ["poll", "inotify"])
def test_a_changed_module_reloads_the_worker(server, tmp_path, engine):
    mod = tmp_path / "reloadapp.py"
    write(mod, APP % "v1")
    extra = tmp_path / "settings.txt"
    extra.write_text("a")
    s = server(["-w", "1", "--reload", "--reload-engine", engine, "--reload-extra-file", str(extra),
                "reloadapp:app"], cwd=str(tmp_path))
    status, text = get(s)
    assert status == 200 and text.startswith("v1 "), text
    first = text.split()[1]
    time.sleep(1.5)  # the watcher has looked at the files once
    write(mod, APP % "v2")
    status, text = wait_until(lambda: get(s), lambda r: r[0] == 200 and r[1].startswith("v2 "), timeout=15)
    assert text.split()[1] != first
    assert "Worker reloading: %s modified" % mod in s.log()
    assert "Reloader is on. Use in development only!" in s.log()
    second = text.split()[1]
    time.sleep(1.5)
    write(extra, "b")
    wait_until(lambda: get(s), lambda r: r[0] == 200 and r[1].split()[1] != second, timeout=15)
    assert "Worker reloading: %s modified" % extra in s.log()


def test_syntax_error_is_served_until_fixed(server, tmp_path):
    mod = tmp_path / "reloadapp.py"
    write(mod, "def app(environ, start_response) oops\n")
    s = server(["-w", "1", "--reload", "--reload-engine", "poll", "reloadapp:app"], cwd=str(tmp_path),
               ready="tcp")
    status, text = wait_until(lambda: get(s), lambda r: r[0] is not None, timeout=15)
    assert status == 500 and "SyntaxError" in text, text
    time.sleep(1.5)
    write(mod, APP % "fixed")
    wait_until(lambda: get(s), lambda r: r[0] == 200 and r[1].startswith("fixed "), timeout=15)


def test_inotify_engine_without_the_package_is_refused(run_cmd, tmp_path):
    """gunicorn's message when --reload-engine inotify has no `inotify`
    package (hidden here by a stand-in on PYTHONPATH that fails to import)."""
    hide = tmp_path / "hide" / "inotify"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    r = run_cmd(["-w", "1", "--reload", "--reload-engine", "inotify", "wsgiapp:app"],
                env={"PYTHONPATH": str(tmp_path / "hide")}, timeout=30)
    assert r.returncode != 0
    assert "You must have the inotify module installed to use the inotify reloader" in r.output, r
