"""--paste FILE.ini[#name]: a PasteDeploy application, its globals from the
file and from --paste-global, as gunicorn 27 loads it."""
import os

import requests

from conftest import APPS, free_port

INI = os.path.join("paste", "app.ini")


def test_paste_app_with_globals(server):
    s = server(["-w", "1", "--paste", INI, "--paste-global", "greeting=hi", "--paste-global", "extra=1"],
               cwd=APPS)
    conf = requests.get(s.url + "/", timeout=10).json()
    assert conf["local"] == {"name": "main"}
    # --paste-global overrides the file's [DEFAULT]; __file__ and here are PasteDeploy's
    assert conf["global"]["greeting"] == "hi" and conf["global"]["extra"] == "1"
    assert conf["global"]["__file__"] == os.path.join(APPS, INI)


def test_paste_named_section(server):
    s = server(["-w", "1", "--paster", INI + "#other"], cwd=APPS)
    conf = requests.get(s.url + "/", timeout=10).json()
    assert conf["local"] == {"name": "other"}
    assert conf["global"]["greeting"] == "hello"


def test_paste_file_missing_stops_the_start(run_cmd):
    r = run_cmd(["--paste", "nope.ini", "-b", "127.0.0.1:%d" % free_port()], cwd=APPS)
    assert r.returncode == 1, r
    assert "%r not found" % os.path.join(APPS, "nope.ini") in r.output, r
