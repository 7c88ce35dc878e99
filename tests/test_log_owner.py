"""Log files and --user/--group: gunicorn's Logger.setup (in the master)
opens the error and access logs and chowns them to the worker user and group,
so that workers that dropped privileges can open and reopen them (USR1)."""
import grp
import os
import pwd
import signal
import tempfile
import time

import pytest
import requests


def ids():
    try:
        return pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    except KeyError:
        return None


pytestmark = pytest.mark.skipif(os.geteuid() != 0 or ids() is None,
                                reason="needs root and the nobody user / nogroup group")


def wait_for(path, needle, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        with open(path) as f:
            text = f.read()
        if needle in text:
            return text
        if time.monotonic() > deadline:
            raise AssertionError("%r not in %s within %ss:\n%s" % (needle, path, timeout, text))
        time.sleep(0.05)


def test_log_files_given_to_worker_user(server):
    uid, gid = ids()
    d = tempfile.mkdtemp(prefix="fc-logowner-")
    # Root's directory: the workers can reach files in it but not create any.
    os.chmod(d, 0o755)
    err, acc = os.path.join(d, "error.log"), os.path.join(d, "access.log")
    # --preload: the app is imported by the master (root), as the Python
    # installation of a test machine may not be readable by nobody.
    s = server(["-w", "1", "--preload", "--user", "nobody", "--group", "nogroup",
                "--error-logfile", err, "--access-logfile", acc, "wsgiapp:app"])
    assert requests.get(s.url + "/?owner=1", timeout=10).status_code == 200
    wait_for(acc, "owner=1")
    for path in (err, acc):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (uid, gid), path

    # USR1: the workers (as nobody) reopen both files and keep logging.
    s.signal(signal.SIGUSR1)
    time.sleep(0.5)
    assert requests.get(s.url + "/?owner=2", timeout=10).status_code == 200
    wait_for(acc, "owner=2")
    with open(err) as f:
        log = f.read()
    assert "reopening" not in log, log
    assert "isn't writable" not in log, log
