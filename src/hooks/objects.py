"""Objects that ferrocorn hands to gunicorn server hooks.

Loaded once by the master as the module ``_ferrocorn_hooks``. The Rust side
(src/hooks/mod.rs) owns the server and its workers; these classes only look
like gunicorn 27's ``Config``, ``glogging.Logger``, ``Arbiter``, ``Worker``,
``http.Request`` and ``http.wsgi.Response`` to the code of a hook. State the
Rust side tracks (pids, ages, request counters...) is copied onto them before
every hook call; methods that would change the server in gunicorn act on the
Rust processes with the signal gunicorn's own handler would run.
"""

import logging
import os
import signal
import socket
import sys
import tempfile
import time
import traceback

# Set by the Rust side (see mod.rs) before anything here is used:
#   _write(levelno, msg, traceback_or_None), _enabled(levelno) -> bool,
#   _reopen() -> None, _stderr(text) -> None.
_write = None
_stderr = None
_enabled = None
_reopen = None

SERVER = "gunicorn"

SUPPORTED_WORKERS = {
    "sync": "gunicorn.workers.sync.SyncWorker",
    "gevent": "gunicorn.workers.ggevent.GeventWorker",
    "gevent_wsgi": "gunicorn.workers.ggevent.GeventPyWSGIWorker",
    "gevent_pywsgi": "gunicorn.workers.ggevent.GeventPyWSGIWorker",
    "tornado": "gunicorn.workers.gtornado.TornadoWorker",
    "gthread": "gunicorn.workers.gthread.ThreadWorker",
    "asgi": "gunicorn.workers.gasgi.ASGIWorker",
    "eventlet": "gunicorn.workers.geventlet.EventletWorker",
}


def format_exception(exc, tb=None):
    """A raised exception as the text ``logging`` prints for it."""
    if tb is None:
        tb = exc.__traceback__
    return "".join(
        traceback.format_exception(type(exc), exc, tb)
    ).rstrip("\n")


def system_exit_code(exc):
    """(exit status, text to print on stderr or None) for a SystemExit,
    as the interpreter computes them at exit."""
    code = exc.code
    if code is None:
        return 0, None
    if isinstance(code, int):
        return code, None
    return 1, str(code)


# -- util.parse_address (gunicorn 27) ---------------------------------------

def parse_address(netloc, default_port="8000"):
    import re
    if re.match(r"unix:(//)?", netloc):
        return re.split(r"unix:(//)?", netloc)[-1]
    if netloc.startswith("fd://"):
        fd = netloc[5:]
        try:
            return int(fd)
        except ValueError:
            raise RuntimeError("%r is not a valid file descriptor." % fd) from None
    if netloc.startswith("tcp://"):
        netloc = netloc.split("tcp://")[1]
    host, port = netloc, default_port
    if "[" in netloc and "]" in netloc:
        host = netloc.split("]")[0][1:]
        port = (netloc.split("]:") + [default_port])[1]
    elif ":" in netloc:
        host, port = (netloc.split(":") + [default_port])[:2]
    elif netloc == "":
        host, port = "0.0.0.0", default_port
    try:
        port = int(port)
    except ValueError:
        raise RuntimeError("%r is not a valid port number." % port)
    return host.lower(), port


# -- Config -----------------------------------------------------------------

class Setting:
    """What ``cfg.settings[name]`` holds in gunicorn (name, section, value)."""

    def __init__(self, name, section, value):
        self.name = name
        self.section = section
        self.value = value

    def get(self):
        return self.value

    def set(self, val):
        raise AttributeError(
            "ferrocorn: settings cannot be changed from a hook; "
            "the configuration is owned by the master")

    def __lt__(self, other):
        return (self.section == other.section and self.name < other.name) \
            or self.section < other.section

    def __repr__(self):
        return "<%s %s=%r>" % (type(self).__name__, self.name, self.value)


class Config:
    """gunicorn's ``Config`` as hooks read it: every setting is an attribute
    (``cfg.workers``), plus the computed properties gunicorn defines. It is
    read-only: assigning a setting raises ``AttributeError("Invalid
    access!")`` as in gunicorn, and ``set()`` raises too, because the values
    live in the Rust master and a change here would have no effect."""

    def __init__(self, settings, computed):
        object.__setattr__(self, "settings", settings)
        object.__setattr__(self, "_computed", computed)
        object.__setattr__(self, "env_orig", os.environ.copy())
        object.__setattr__(self, "usage", None)
        object.__setattr__(self, "prog", "gunicorn")

    def __getattr__(self, name):
        if name == "settings":
            raise AttributeError()
        if name not in self.settings:
            raise AttributeError("No configuration setting for: %s" % name)
        return self.settings[name].get()

    def __setattr__(self, name, value):
        if name != "settings" and name in self.settings:
            raise AttributeError("Invalid access!")
        object.__setattr__(self, name, value)

    def set(self, name, value):
        if name not in self.settings:
            raise AttributeError("No configuration setting for: %s" % name)
        self.settings[name].set(value)

    def __str__(self):
        lines = []
        kmax = max(len(k) for k in self.settings)
        for k in sorted(self.settings):
            v = self.settings[k].value
            if callable(v):
                v = "<{}()>".format(getattr(v, "__qualname__", type(v).__name__))
            lines.append("{k:{kmax}} = {v}".format(k=k, v=v, kmax=kmax))
        return "\n".join(lines)

    @property
    def worker_class_str(self):
        uri = self.settings["worker_class"].get()
        if isinstance(uri, str):
            is_sync = uri.endswith("SyncWorker") or uri == "sync"
            if is_sync and self.threads > 1:
                return "gthread"
            return uri
        return uri.__name__

    @property
    def worker_class(self):
        """The class given in the config file, else a stand-in class named
        as gunicorn's (``SyncWorker`` in ``gunicorn.workers.sync``...):
        ferrocorn does not run gunicorn's worker classes."""
        uri = self.settings["worker_class"].get()
        if not isinstance(uri, str):
            return uri
        is_sync = uri.endswith("SyncWorker") or uri == "sync"
        if is_sync and self.threads > 1:
            uri = "gunicorn.workers.gthread.ThreadWorker"
        return worker_stand_in(uri)

    @property
    def address(self):
        return [parse_address(b) for b in self.settings["bind"].get()]

    @property
    def uid(self):
        return self.settings["user"].get()

    @property
    def gid(self):
        return self.settings["group"].get()

    @property
    def proc_name(self):
        pn = self.settings["proc_name"].get()
        if pn is not None:
            return pn
        return self.settings["default_proc_name"].get()

    @property
    def is_ssl(self):
        return self.certfile or self.keyfile

    @property
    def ssl_options(self):
        return {name: s.get() for name, s in self.settings.items()
                if s.section == "SSL"}

    @property
    def env(self):
        env = {}
        for e in self.settings["raw_env"].get() or []:
            try:
                k, v = e.split("=", 1)
            except ValueError:
                raise RuntimeError("environment setting %r invalid" % e)
            env[k] = v
        return env

    @property
    def sendfile(self):
        # What ferrocorn does (Config::sendfile), computed by the master.
        return self._computed["sendfile"]

    @property
    def reuse_port(self):
        return self.settings["reuse_port"].get()

    @property
    def paste_global_conf(self):
        import re
        raw = self.settings["raw_paste_global_conf"].get()
        if raw is None:
            return None
        conf = {}
        for e in raw:
            try:
                k, v = re.split(r"(?<!\\)=", e, maxsplit=1)
            except ValueError:
                raise RuntimeError("environment setting %r invalid" % e)
            conf[k.replace("\\=", "=")] = v.replace("\\=", "=")
        return conf

    def forwarded_allow_networks(self):
        import ipaddress
        return [ipaddress.ip_network(a) for a in self.forwarded_allow_ips if a != "*"]

    def proxy_allow_networks(self):
        import ipaddress
        return [ipaddress.ip_network(a) for a in self.proxy_allow_ips if a != "*"]


# -- Logger -------------------------------------------------------------------

LOG_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}


def _exc_text(exc_info):
    if isinstance(exc_info, BaseException):
        return format_exception(exc_info)
    if isinstance(exc_info, tuple):
        return "".join(traceback.format_exception(*exc_info)).rstrip("\n")
    return traceback.format_exc().rstrip("\n")


class Logger:
    """gunicorn's ``glogging.Logger`` as hooks use it: the messages go to
    ferrocorn's error log, formatted as ``logging`` does (``msg % args``)."""

    LOG_LEVELS = LOG_LEVELS

    def __init__(self, cfg):
        self.cfg = cfg
        self.error_log = logging.getLogger("gunicorn.error")
        self.access_log = logging.getLogger("gunicorn.access")

    def _emit(self, lvl, msg, args, exc_info=None, **kwargs):
        if not _enabled(lvl):
            return
        boot = sys.modules.get("_ferrocorn_boot")
        if boot is not None and boot.LOGGING_ACTIVE:
            # A logging configuration is in force: the record goes to
            # gunicorn.error as gunicorn's Logger sends it (msg, args,
            # exc_info and extra kept for the user's formatters).
            self.error_log.log(lvl, msg, *args, exc_info=exc_info, **kwargs)
            return
        try:
            if args:
                if (len(args) == 1 and isinstance(args[0], dict) and args[0]):
                    args = args[0]
                text = str(msg) % args
            else:
                text = str(msg)
        except Exception:
            # logging's Handler.handleError: report, drop the record, go on.
            _stderr("--- Logging error ---\n%s\nMessage: %r\nArguments: %s\n"
                    % (traceback.format_exc().rstrip("\n"), msg, args))
            return
        tb = _exc_text(exc_info) if exc_info else None
        _write(lvl, text, tb)

    def critical(self, msg, *args, **kwargs):
        self._emit(logging.CRITICAL, msg, args, **kwargs)

    def error(self, msg, *args, **kwargs):
        self._emit(logging.ERROR, msg, args, **kwargs)

    def warning(self, msg, *args, **kwargs):
        self._emit(logging.WARNING, msg, args, **kwargs)

    warn = warning

    def info(self, msg, *args, **kwargs):
        self._emit(logging.INFO, msg, args, **kwargs)

    def debug(self, msg, *args, **kwargs):
        self._emit(logging.DEBUG, msg, args, **kwargs)

    def exception(self, msg, *args, **kwargs):
        kwargs.setdefault("exc_info", True)
        self._emit(logging.ERROR, msg, args, **kwargs)

    def log(self, lvl, msg, *args, **kwargs):
        if isinstance(lvl, str):
            lvl = self.LOG_LEVELS.get(lvl.lower(), logging.INFO)
        self._emit(lvl, msg, args, **kwargs)

    def access(self, resp, req, environ, request_time):
        """ferrocorn writes the access log itself; a hook calling this is a
        no-op."""

    def reopen_files(self):
        _reopen()

    def close_on_exec(self):
        pass


# -- Arbiter ------------------------------------------------------------------

class Pidfile:
    """gunicorn's ``pidfile.Pidfile`` as a hook sees it (``fname``,
    ``validate()``); ferrocorn's master writes and removes the file."""

    def __init__(self, fname, pid):
        self.fname = fname
        self.pid = pid

    def validate(self):
        if not self.fname:
            return None
        try:
            with open(self.fname) as f:
                wpid = int(f.read())
        except (OSError, ValueError):
            return None
        try:
            os.kill(wpid, 0)
            return wpid
        except OSError:
            return None


class Listener:
    """One listening socket (gunicorn's ``sock.BaseSocket``): ``str()`` is
    its URL, ``fileno()`` its descriptor. The descriptor stays owned by
    ferrocorn; ``getsockname()`` and other socket methods work on a
    duplicate."""

    def __init__(self, fd, url):
        self._fd = fd
        self._url = url

    def fileno(self):
        return self._fd

    def __str__(self):
        return self._url

    def __repr__(self):
        return "<Listener %s>" % self._url

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        s = socket.socket(fileno=os.dup(self._fd))
        try:
            value = getattr(s, name)
            if not callable(value):
                return value
        except Exception:
            s.close()
            raise

        def call(*args, **kwargs):
            try:
                return value(*args, **kwargs)
            finally:
                s.close()
        return call

    @property
    def sock(self):
        return self

    def close(self):
        """The listener belongs to ferrocorn: closing it from a hook is a
        no-op."""


class App:
    """gunicorn's ``Application`` as a hook sees it (``cfg``,
    ``callable``, ``wsgi()``)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.callable = None

    def wsgi(self):
        if self.callable is None:
            raise RuntimeError(
                "ferrocorn: the application is loaded by the worker, "
                "not from a hook")
        return self.callable


class Arbiter:
    """gunicorn's ``Arbiter`` (the ``server`` argument of the master's
    hooks). Its state is copied from the Rust master before every hook.

    ``reload()`` and ``stop()``/``halt()`` send the master the signal whose
    gunicorn handler does the same thing (HUP; TERM for a graceful stop,
    QUIT for a quick one), so the master acts on them once the hook
    returns. ``kill_worker``/``kill_workers`` signal worker processes
    directly, as gunicorn does. Assigning ``num_workers`` records the
    request for the master (``Hooks::take_num_workers``)."""

    WORKER_BOOT_ERROR = 3
    APP_LOAD_ERROR = 4
    SIGNALS = [getattr(signal, "SIG%s" % x)
               for x in "HUP QUIT INT TERM TTIN TTOU USR1 USR2 WINCH".split()]
    SIG_NAMES = dict(
        (getattr(signal, name), name[3:].lower()) for name in dir(signal)
        if name[:3] == "SIG" and name[3] != "_"
    )

    def __init__(self, cfg, log, app):
        self.cfg = cfg
        self.log = log
        self.app = app
        self.WORKERS = {}
        self.LISTENERS = []
        self.pid = os.getpid()
        self.pidfile = None
        self.systemd = False
        self.worker_age = 0
        self.reexec_pid = 0
        self.master_pid = 0
        self.master_name = "Master"
        self.address = cfg.address
        self.timeout = cfg.timeout
        self.proc_name = cfg.proc_name
        self.worker_class = cfg.worker_class
        self._num_workers = None
        self._num_workers_request = None
        self.START_CTX = {"args": [sys.executable] + sys.argv[:],
                          "cwd": os.getcwd(), 0: sys.executable}

    @property
    def num_workers(self):
        return self._num_workers

    @num_workers.setter
    def num_workers(self, value):
        self._num_workers = value
        self._num_workers_request = value

    def reload(self):
        os.kill(self.pid, signal.SIGHUP)

    def stop(self, graceful=True):
        os.kill(self.pid, signal.SIGTERM if graceful else signal.SIGQUIT)

    def halt(self, reason=None, exit_status=0):
        os.kill(self.pid, signal.SIGTERM)

    def wakeup(self):
        pass

    def kill_worker(self, pid, sig):
        try:
            os.kill(pid, sig)
        except OSError as e:
            import errno
            if e.errno == errno.ESRCH:
                self.WORKERS.pop(pid, None)
                return
            raise

    def kill_workers(self, sig):
        for pid in list(self.WORKERS.keys()):
            self.kill_worker(pid, sig)


# -- Worker -------------------------------------------------------------------

class WorkerTmp:
    """gunicorn's ``WorkerTmp``. ferrocorn's heartbeat lives in shared memory
    and is kept by the Rust worker loop, so ``notify()`` does nothing; a real
    (unlinked) file is opened on first ``fileno()`` for code that wants one."""

    def __init__(self, cfg):
        self._cfg = cfg
        self._file = None

    def notify(self):
        pass

    def last_update(self):
        return time.monotonic()

    def fileno(self):
        if self._file is None:
            d = self._cfg.worker_tmp_dir
            self._file = tempfile.TemporaryFile(prefix="wgunicorn-", dir=d or None)
        return self._file.fileno()

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


class Worker:
    """gunicorn's ``Worker`` (the ``worker`` argument of hooks). One object
    per worker process, kept across hook calls (attributes a hook stores on
    it stay), inherited by the worker through fork. Its state is copied
    from Rust before every hook call.

    Setting ``alive = False`` in the worker process asks for a graceful exit
    after the current request, as in gunicorn: ferrocorn sends the worker
    SIGTERM (gunicorn's ``handle_exit``). ``handle_quit``/``handle_exit``/
    ``handle_abort`` send SIGQUIT/SIGTERM/SIGABRT to the worker's own
    process, whose Rust handler does what gunicorn's method does."""

    SIGNALS = [getattr(signal, "SIG%s" % x) for x in (
        "ABRT HUP QUIT INT TERM USR1 USR2 WINCH CHLD".split()
    )]
    PIPE = []

    def __init__(self, age, ppid, sockets, app, timeout, cfg, log):
        self.age = age
        self.pid = "[booting]"
        self.ppid = ppid
        self.sockets = sockets
        self.app = app
        self.timeout = timeout
        self.cfg = cfg
        self.booted = False
        self.aborted = False
        self.reloader = None
        self.nr = 0
        self.max_requests = sys.maxsize
        self._alive = True
        self.log = log
        self.tmp = WorkerTmp(cfg)

    def __str__(self):
        return "<Worker %s>" % self.pid

    @property
    def wsgi(self):
        return self.app.callable

    @property
    def alive(self):
        return self._alive

    @alive.setter
    def alive(self, value):
        was = self._alive
        self._alive = value
        if was and not value and self.pid == os.getpid():
            os.kill(self.pid, signal.SIGTERM)

    def notify(self):
        self.tmp.notify()

    def handle_usr1(self, sig, frame):
        self.log.reopen_files()

    def handle_exit(self, sig=None, frame=None):
        os.kill(os.getpid(), signal.SIGTERM)

    def handle_quit(self, sig=None, frame=None):
        os.kill(os.getpid(), signal.SIGQUIT)

    def handle_abort(self, sig=None, frame=None):
        os.kill(os.getpid(), signal.SIGABRT)

    def handle_winch(self, sig, fname):
        self.log.debug("worker: SIGWINCH ignored.")


_stand_ins = {}


def with_worker(cls):
    """A worker class of ferrocorn's compatibility packages (marked
    ``_ferrocorn_worker_mixin``, e.g. gunicorn_prometheus_exporter's
    PrometheusWorker) combined with ``Worker``: the hook's worker object is
    an instance of the configured class, with its methods."""
    mixed = _stand_ins.get(cls)
    if mixed is None:
        mixed = type(cls.__name__, (cls, Worker),
                     {"__module__": cls.__module__, "__qualname__": cls.__qualname__})
        _stand_ins[cls] = mixed
    return mixed


def _compat_class(module, name):
    """The class `module.name` if ferrocorn's compatibility packages define
    it as a worker mixin (their modules are built in: importing them runs
    nothing of the venv's)."""
    if module.partition(".")[0] != "gunicorn_prometheus_exporter":
        return None
    try:
        import importlib
        cls = getattr(importlib.import_module(module), name, None)
    except Exception:
        return None
    if isinstance(cls, type) and getattr(cls, "_ferrocorn_worker_mixin", False):
        return cls
    return None


def worker_stand_in(uri):
    """A subclass of ``Worker`` named as gunicorn's class for ``uri``
    (``sync`` -> ``gunicorn.workers.sync.SyncWorker``; a dotted path keeps
    its module and name; ``egg:gunicorn#gevent`` its entry point)."""
    cls = _stand_ins.get(uri)
    if cls is not None:
        return cls
    path = uri
    if path.startswith("egg:"):
        path = path.split("#", 1)[-1] if "#" in path else "sync"
    path = SUPPORTED_WORKERS.get(path, path)
    module, _, name = path.rpartition(".")
    compat = _compat_class(module, name)
    if compat is not None:
        cls = _stand_ins[uri] = with_worker(compat)
        return cls
    if not name.isidentifier():
        name = "Worker"
    cls = type(name, (Worker,), {"__module__": module or __name__,
                                 "__qualname__": name})
    _stand_ins[uri] = cls
    return cls


# -- Request / Response -------------------------------------------------------

class Request:
    """gunicorn's ``http.message.Request`` after parsing: strings are the
    latin-1 decoding of the bytes on the wire, header names are upper case,
    ``peer_addr``/``remote_addr`` are the accepted address (``''`` for a
    Unix socket). The body is not exposed: the application reads it."""

    def __init__(self, cfg, method, uri, path, query, fragment, version,
                 headers, scheme, peer_addr, req_number):
        self.cfg = cfg
        self.method = method
        self.uri = uri
        self.path = path
        self.query = query
        self.fragment = fragment
        self.version = version
        self.headers = headers
        self.trailers = []
        self.scheme = scheme
        self.peer_addr = peer_addr
        self.remote_addr = peer_addr
        self.req_number = req_number
        self.must_close = False
        self.proxy_protocol_info = None

    def force_close(self):
        self.must_close = True

    def should_close(self):
        if self.must_close:
            return True
        if self.method == "CONNECT":
            return True
        for (h, v) in self.headers:
            if h == "CONNECTION":
                v = v.lower().strip(" \t")
                if v == "close":
                    return True
                elif v == "keep-alive":
                    return False
                break
        return self.version <= (1, 0)


class Response:
    """gunicorn's ``http.wsgi.Response`` as ``post_request`` sees it.
    ``status_code`` exists only once the application called
    ``start_response``, as in gunicorn."""

    def __init__(self, req, cfg, status, status_code, headers, sent,
                 response_length, headers_sent, chunked, must_close):
        self.req = req
        self.cfg = cfg
        self.version = SERVER
        self.status = status
        if status is not None:
            self.status_code = status_code
        self.headers = headers
        self.sent = sent
        self.response_length = response_length
        self.headers_sent = headers_sent
        self.chunked = chunked
        self.must_close = must_close
        self.upgrade = False

    def force_close(self):
        self.must_close = True

    def should_close(self):
        if self.must_close or self.req.should_close():
            return True
        if self.response_length is not None or self.chunked:
            return False
        if self.req.method == "HEAD":
            return False
        if self.status_code is not None and (self.status_code < 200
                                             or self.status_code in (204, 304)):
            return False
        return True


# -- the runtime the Rust side drives -----------------------------------------

# The Runtime of this process (the latest made), for ferrocorn's
# compatibility packages: they read the server's configuration from it.
RUNTIME = None


class Runtime:
    """Holds cfg, log, server and the worker objects (by age) of one
    process; called by mod.rs."""

    def __init__(self, settings, computed):
        global RUNTIME
        RUNTIME = self
        self.cfg = Config(settings, computed)
        self.log = Logger(self.cfg)
        self.app = App(self.cfg)
        self.server = Arbiter(self.cfg, self.log, self.app)
        self.workers = {}  # age -> Worker

    def set_config(self, settings, computed):
        cfg = Config(settings, computed)
        self.cfg = cfg
        self.log.cfg = cfg
        self.app.cfg = cfg
        s = self.server
        s.cfg = cfg
        s.address = cfg.address
        s.timeout = cfg.timeout
        s.proc_name = cfg.proc_name
        s.worker_class = cfg.worker_class

    # views arrive as tuples:
    #   worker: (pid, ppid, age, nr, alive, booted, aborted, max_requests, timeout)
    #   server: (pid, num_workers, (worker, ...), pidfile, proc_name,
    #            ((fd, url), ...) or None)

    def worker(self, wv):
        pid, ppid, age, nr, alive, booted, aborted, max_requests, timeout = wv
        w = self.workers.get(age)
        if w is None:
            cls = self.cfg.worker_class
            if not isinstance(cls, type):
                cls = worker_stand_in(self.cfg.worker_class_str)
            elif getattr(cls, "_ferrocorn_worker_mixin", False) and not issubclass(cls, Worker):
                cls = with_worker(cls)
            elif not issubclass(cls, Worker):
                # A class from the config file (e.g. a subclass of
                # gunicorn's SyncWorker): a stand-in with its name.
                cls = worker_stand_in("%s.%s" % (cls.__module__, cls.__name__))
            w = cls.__new__(cls)
            Worker.__init__(w, age, ppid, self.server.LISTENERS, self.app,
                            timeout / 2.0, self.cfg, self.log)
            self.workers[age] = w
        d = w.__dict__
        d["pid"] = pid if pid else "[booting]"
        d["ppid"] = ppid
        d["age"] = age
        d["nr"] = nr
        d["_alive"] = alive
        d["booted"] = booted
        d["aborted"] = aborted
        d["max_requests"] = max_requests if max_requests else sys.maxsize
        d["timeout"] = timeout / 2.0
        return w

    def refresh_server(self, sv, extra=None):
        pid, num_workers, workers, pidfile, proc_name, listeners = sv
        s = self.server
        s.pid = pid
        s._num_workers = num_workers
        s._num_workers_request = None
        s.proc_name = proc_name
        if pidfile is None:
            s.pidfile = None
        elif s.pidfile is None or s.pidfile.fname != pidfile:
            s.pidfile = Pidfile(pidfile, pid)
        if listeners is not None:
            s.LISTENERS[:] = [Listener(fd, url) for fd, url in listeners]
        keep = {}
        table = {}
        for wv in workers:
            w = self.worker(wv)
            keep[wv[2]] = w
            if wv[0]:
                table[wv[0]] = w
        if extra is not None:
            keep[extra[2]] = self.worker(extra)
        # Objects of workers that are gone are dropped here, after the
        # hook that reported their exit (child_exit) has run.
        self.workers = keep
        s.WORKERS = table
        if workers:
            s.worker_age = max(s.worker_age, max(wv[2] for wv in workers))
        return s

    def call_server(self, fn, sv, wv, *extra):
        s = self.refresh_server(sv, wv)
        if wv is None:
            return fn(s, *extra)
        return fn(s, self.workers[wv[2]], *extra)

    def call_worker(self, fn, wv, *extra):
        return fn(self.worker(wv), *extra)

    def request(self, *args):
        return Request(self.cfg, *args)

    def post_request(self, fn, wv, req, environ, resp):
        w = self.worker(wv)
        if resp is not None:
            resp = Response(req, self.cfg, *resp)
        return fn(w, req, environ, resp)

    def set_wsgi(self, app):
        self.app.callable = app

    def take_num_workers(self):
        n = self.server._num_workers_request
        self.server._num_workers_request = None
        return n
