"""Python half of ferrocorn's embedded interpreter.

Loaded once by the master as the module ``_ferrocorn_boot``. Holds the pieces
that are naturally Python: importing the application the way gunicorn does
(``module:name``, ``module:factory(args)``, default name ``application``) and
formatting tracebacks for the error log. Nothing here runs per request.
"""

import ast
import importlib
import os
import sys
import traceback


class AppImportError(Exception):
    """The app module imported but the object named by APP_MODULE is unusable."""


def _parse_target(target, module):
    """Split ``name`` or ``factory(literal, key=literal)`` into (name, args, kwargs)."""
    try:
        node = ast.parse(target, mode="eval").body
    except SyntaxError:
        raise AppImportError(
            "Failed to parse %r as an attribute name or function call." % target)
    if isinstance(node, ast.Name):
        return node.id, None, None
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise AppImportError("Function reference must be a simple name: %r" % target)
        try:
            args = [ast.literal_eval(a) for a in node.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        except ValueError:
            raise AppImportError(
                "Failed to parse arguments as literal values: %r" % target)
        return node.func.id, args, kwargs
    raise AppImportError(
        "Failed to parse %r as an attribute name or function call." % target)


def _wrong_arguments(func, exc):
    """True when a TypeError came from calling ``func`` itself (bad arguments),
    not from code inside it: then its frame is the innermost one."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    code = getattr(func, "__code__", None)
    return tb is None or code is None or tb.tb_frame.f_code is not code


def import_app(uri):
    module, _, target = uri.partition(":")
    target = target or "application"
    try:
        mod = importlib.import_module(module)
    except ImportError:
        if module.endswith(".py") and os.path.exists(module):
            raise ImportError("Failed to find application, did you mean '%s:%s'?"
                              % (module.rsplit(".", 1)[0], target))
        raise
    name, args, kwargs = _parse_target(target, module)
    try:
        app = getattr(mod, name)
    except AttributeError:
        raise AppImportError("Failed to find attribute %r in %r." % (name, module))
    if args is not None:
        try:
            app = app(*args, **kwargs)
        except TypeError as exc:
            if _wrong_arguments(app, exc):
                raise AppImportError(
                    "".join(traceback.format_exception_only(TypeError, exc)).strip())
            raise
    if app is None:
        raise AppImportError("Failed to find application object: %r" % target)
    if not callable(app):
        raise AppImportError("Application object must be callable.")
    return app


# -- gunicorn_compat/: packages served from the binary ---------------------------
#
# The compatibility packages (gunicorn_prometheus_exporter, ...) are built
# into ferrocorn (build.rs embeds every .py under gunicorn_compat/). A
# meta-path finder placed first on sys.meta_path serves them, so they import
# with nothing installed, and a copy of the original package in the venv is
# never executed (its import-time patching of gunicorn never runs): finders
# after this one, site-packages' included, are not asked for these names.

COMPAT_ORIGIN = "ferrocorn:gunicorn_compat/"


class CompatImporter:
    """Finder and loader of the embedded compatibility packages. Modules get
    ``__file__ = "ferrocorn:gunicorn_compat/<path>"`` and ``get_source``, so
    tracebacks show their lines."""

    def __init__(self, files):
        self.modules = {}
        for rel, text in files:
            if not rel.endswith(".py"):
                continue
            parts = rel[:-3].split("/")
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            if parts:
                self.modules[".".join(parts)] = (is_pkg, COMPAT_ORIGIN + rel, text)

    def top_level(self):
        return sorted({name.split(".", 1)[0] for name in self.modules})

    def find_spec(self, fullname, path=None, target=None):
        entry = self.modules.get(fullname)
        if entry is None:
            return None
        import importlib.util
        spec = importlib.util.spec_from_loader(
            fullname, self, origin=entry[1], is_package=entry[0])
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        is_pkg, origin, text = self.modules[module.__name__]
        module.__file__ = origin
        exec(compile(text, origin, "exec", dont_inherit=True), module.__dict__)

    def get_source(self, fullname):
        entry = self.modules.get(fullname)
        return entry[2] if entry else None

    def is_package(self, fullname):
        entry = self.modules.get(fullname)
        if entry is None:
            raise ImportError(fullname, name=fullname)
        return entry[0]

    def get_code(self, fullname):
        entry = self.modules[fullname]
        return compile(entry[2], entry[1], "exec", dont_inherit=True)


def install_compat(files):
    """Puts the importer of `files` ((path under gunicorn_compat/, source)
    pairs) first on sys.meta_path; drops a copy of the same packages that
    something imported before (none normally: this runs at interpreter
    start)."""
    importer = CompatImporter(files)
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, CompatImporter)]
    sys.meta_path.insert(0, importer)
    for top in importer.top_level():
        for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            del sys.modules[name]
    return importer


def prepare_paths(chdir, pythonpath):
    """gunicorn puts the working directory first on sys.path, then --pythonpath
    entries in front of it, so that the app's own modules win."""
    if chdir:
        os.chdir(chdir)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for entry in reversed(pythonpath):
        entry = os.path.abspath(entry)
        if entry not in sys.path:
            sys.path.insert(0, entry)


def format_exception(exc, tb=None):
    """The traceback text of `exc`. `tb` is passed explicitly because on
    Python < 3.12 a fetched exception value may not carry __traceback__."""
    tb = tb if tb is not None else exc.__traceback__
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip("\n")


def _request_of(frame):
    """The request a thread serves, from its frames: the outermost frame
    with a WSGI environ or an ASGI scope among its locals."""
    found = None
    while frame is not None:
        try:
            values = list(frame.f_locals.values())
        except Exception:  # noqa: BLE001 (a frame mid-teardown)
            values = []
        for v in values:
            if type(v) is dict:
                if "REQUEST_METHOD" in v and "PATH_INFO" in v:
                    q = v.get("QUERY_STRING")
                    found = "%s %s%s" % (v["REQUEST_METHOD"], v.get("SCRIPT_NAME", "") + v["PATH_INFO"],
                                         "?" + q if q else "")
                elif v.get("type") in ("http", "websocket") and "path" in v:
                    found = "%s %s" % (v.get("method", "WEBSOCKET"), v["path"])
        frame = frame.f_back
    return found


def _stack_text(frame):
    if frame is None:
        return "  (no Python code running: the worker's own loop)\n"
    return "".join(traceback.format_list(traceback.extract_stack(frame)))


def dump_stacks(why, here):
    """The Python stack of every thread of this worker (oldest call first,
    as tracebacks), with the request each thread serves; then the asyncio
    Tasks and greenlets that are suspended. `here` is the frame the signal
    handler interrupted on this thread (its own frames are left out)."""
    import threading
    names = {t.ident: t.name for t in threading.enumerate()}
    me = threading.get_ident()
    out = ["%s: Python stacks of worker %d" % (why, os.getpid())]
    for ident, frame in sys._current_frames().items():
        if ident == me:
            frame = here
        req = _request_of(frame)
        name = names.get(ident)
        out.append("Thread %d%s%s:\n%s" % (ident, " (%s)" % name if name else "",
                                            ", serving " + req if req else "", _stack_text(frame)))
    try:
        tasks = _running_tasks()
    except Exception:  # noqa: BLE001
        tasks = []
    for t in tasks:
        stack = t.get_stack()
        if not stack:
            continue
        req = _request_of(stack[-1])
        out.append("Task %s%s:\n%s" % (t.get_name(), ", serving " + req if req else "", _stack_text(stack[-1])))
    gr = sys.modules.get("greenlet")
    if gr is not None:
        import gc
        for g in gc.get_objects():
            if isinstance(g, gr.greenlet) and getattr(g, "gr_frame", None) is not None:
                req = _request_of(g.gr_frame)
                out.append("Greenlet %r%s:\n%s" % (g, ", serving " + req if req else "", _stack_text(g.gr_frame)))
    return "\n".join(out).rstrip("\n")


def _running_tasks():
    """The suspended Tasks of the event loop running on this thread (the
    asgi and tornado kinds; a signal handler runs inside it)."""
    asyncio = sys.modules.get("asyncio")
    loop = asyncio and asyncio._get_running_loop()
    if loop is None:
        return []
    current = asyncio.current_task(loop)
    return [t for t in asyncio.all_tasks(loop) if not t.done() and t is not current]

# SIGRTMIN+1 asks a worker for its stacks (docs/operations): no signal
# gunicorn gives a meaning to.
DUMP_SIGNAL_OFFSET = 1


def make_fail_app(text, asgi):
    """gunicorn's util.make_fail_app: every request gets 500 with `text`
    (a SyntaxError's traceback, under --reload, until the file is fixed)."""
    body = text.encode("utf-8")
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]

    def app(environ, start_response):
        start_response("500 Internal Server Error", headers)
        return [body]

    async def asgi_app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 500,
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers]})
        await send({"type": "http.response.body", "body": body})

    return asgi_app if asgi else app


def start_reloader(engine, extra_files, on_change, log_warning):
    """gunicorn's reloader (--reload, --reload-engine, --reload-extra-file):
    a daemon thread watches the files of every loaded module and the extra
    files (glob patterns expanded at each look), by polling their mtimes
    once a second or with inotify (the `inotify` package, as gunicorn);
    `on_change(path)` is called once, at the first change. 'auto' is
    inotify when that package is installed, else polling."""
    import fnmatch
    import glob
    import re
    import threading
    import time

    compiled = re.compile(r"py[co]$")
    files, patterns = set(), set()
    for entry in extra_files or ():
        (patterns if glob.has_magic(entry) else files).add(entry)

    def current():
        names = [compiled.sub("py", m.__file__) for m in tuple(sys.modules.values())
                 if isinstance(getattr(m, "__file__", None), str)]
        names.extend(files)
        for p in patterns:
            names.extend(sorted(glob.glob(p, recursive=True)))
        return names

    inotify = None
    if engine in ("auto", "inotify"):
        try:
            import inotify.adapters
            import inotify.constants
        except ImportError:
            if engine == "inotify":
                raise ImportError("You must have the inotify module installed to use the inotify reloader")
            inotify = None

    def poll():
        mtimes = {}
        while True:
            for name in current():
                try:
                    mtime = os.stat(name).st_mtime
                except OSError:
                    continue
                old = mtimes.setdefault(name, mtime)
                if mtime > old:
                    on_change(name)
                    return
            time.sleep(1)

    def watch():
        mask = (inotify.constants.IN_CREATE | inotify.constants.IN_DELETE | inotify.constants.IN_DELETE_SELF
                | inotify.constants.IN_MODIFY | inotify.constants.IN_MOVE_SELF | inotify.constants.IN_MOVED_FROM
                | inotify.constants.IN_MOVED_TO)
        watcher = inotify.adapters.Inotify()
        dirs = set()
        while True:
            for d in {os.path.dirname(f) for f in current()} - dirs:
                if os.path.isdir(d):
                    watcher.add_watch(d, mask=mask)
                    dirs.add(d)
            watched = set(current())
            for event in watcher.event_gen(timeout_s=1, yield_nones=False):
                path = os.path.join(event[2], event[3])
                if path in watched or any(fnmatch.fnmatch(path, p) for p in patterns):
                    on_change(path)
                    return
                break

    def run():
        # The thread's name in ps/top (and for the tests' worker-kind proof).
        try:
            with open("/proc/self/task/%d/comm" % threading.get_native_id(), "w") as f:
                f.write("fc-reloader")
        except OSError:
            pass
        (watch if inotify is not None else poll)()

    log_warning("Reloader is on. Use in development only!")
    threading.Thread(target=run, name="fc-reloader", daemon=True).start()


def install_abort_handler(on_abort, log_stacks):
    """gunicorn's handle_abort: SIGABRT from the master (worker timeout) ends
    the worker with SystemExit(1), raised wherever Python code is running;
    first the error log gets every thread's stack and the request in flight
    (log_stacks(why, frame, is_error): dump_stacks's text to the error
    log). SIGRTMIN+1 logs the same for a live worker, which goes on."""
    import signal

    def handle_abort(sig, frame):
        log_stacks("WORKER TIMEOUT", frame, True)
        on_abort()
        sys.exit(1)

    def handle_dump(sig, frame):
        log_stacks("Stack dump (SIGRTMIN+%d)" % DUMP_SIGNAL_OFFSET, frame, False)

    signal.signal(signal.SIGABRT, handle_abort)
    signal.signal(signal.SIGRTMIN + DUMP_SIGNAL_OFFSET, handle_dump)


def install_quit_handler(on_quit):
    """gunicorn's handle_quit for SIGINT and SIGQUIT in a worker: a quick
    exit, interrupting the app if it is running (SystemExit(0))."""
    import signal

    quitting = []

    def handle_quit(sig, frame):
        # A second SIGINT/SIGQUIT while worker_int runs (a hook that calls
        # worker.handle_quit(), as gunicorn-prometheus-exporter's
        # default_worker_int does) is the same quick exit: no second
        # worker_int, the first one finishes, then the worker exits.
        if quitting:
            return
        quitting.append(sig)
        on_quit(sig)
        sys.exit(0)

    signal.signal(signal.SIGINT, handle_quit)
    signal.signal(signal.SIGQUIT, handle_quit)


def spew():
    """`--spew`: every line of Python this thread (and the workers forked
    from it) runs is printed on stdout as `module:lineno: source`, like
    gunicorn's debug.spew (without values)."""
    import linecache

    def trace(frame, event, arg):
        if event == "line":
            g = frame.f_globals
            name = g.get("__name__", "[unknown]") if "__file__" in g else "[unknown]"
            source = linecache.getline(frame.f_code.co_filename, frame.f_lineno).rstrip()
            print("%s:%s: %s" % (name, frame.f_lineno, source), flush=True)
        return trace

    sys.settrace(trace)


def load_paste(uri, global_conf):
    """`--paste`: the WSGI app of a PasteDeploy file, `config:` URI relative
    to the working directory, `--paste-global` values as its globals."""
    from paste.deploy import loadapp

    if ":" not in uri:
        uri = "config:" + uri
    return loadapp(uri, relative_to=os.getcwd(), global_conf=global_conf or None)


# -- Python logging configuration (logconfig, logconfig_dict, logconfig_json) --
#
# With one of those settings the error and access records go through Python's
# logging, under the loggers gunicorn uses, configured as gunicorn 27's
# glogging.Logger.setup configures them; the master runs setup_logging at
# start and on HUP, the workers inherit the result through fork. Without them
# none of this runs: Rust writes the logs itself.

LOGGING_ACTIVE = False

# gunicorn.glogging.CONFIG_DEFAULTS, which the user's configuration is merged
# into (a shallow update, as gunicorn does).
CONFIG_DEFAULTS = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "INFO", "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {
            "level": "INFO",
            "handlers": ["error_console"],
            "propagate": True,
            "qualname": "gunicorn.error"
        },
        "gunicorn.access": {
            "level": "INFO",
            "handlers": ["console"],
            "propagate": True,
            "qualname": "gunicorn.access"
        }
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "generic",
            "stream": "ext://sys.stdout"
        },
        "error_console": {
            "class": "logging.StreamHandler",
            "formatter": "generic",
            "stream": "ext://sys.stderr"
        },
    },
    "formatters": {
        "generic": {
            "format": "%(asctime)s [%(process)d] [%(levelname)s] %(message)s",
            "datefmt": "[%Y-%m-%d %H:%M:%S %z]",
            "class": "logging.Formatter"
        }
    }
}

_LOG_LEVELS = {"critical": 50, "error": 40, "warning": 30, "info": 20, "debug": 10}
_ERROR_FMT = r"%(asctime)s [%(process)d] [%(levelname)s] %(message)s"
_DATEFMT = r"[%Y-%m-%d %H:%M:%S %z]"
_ACCESS_FORMAT = ""
_loggers = None


class SafeAtoms(dict):
    """gunicorn.glogging.SafeAtoms: the `args` of an access record. The
    values arrive already escaped (`"` as `\\"`) from ferrocorn, so the
    constructor only copies; lookups are gunicorn's."""

    def __getitem__(self, k):
        if k.startswith("{"):
            kl = k.lower()
            if kl in self:
                return super().__getitem__(kl)
            return "-"
        if k in self:
            return super().__getitem__(k)
        return "-"


def _set_handler(log, output, fmt, stream=None):
    """glogging.Logger._set_handler: the errorlog / accesslog handler,
    marked as gunicorn's own so that the next setup replaces it."""
    import logging
    for h in list(log.handlers):
        if getattr(h, "_gunicorn", False):
            log.removeHandler(h)
    if output is None:
        return
    if output == "-":
        h = logging.StreamHandler(stream)
    else:
        h = logging.FileHandler(output)
    h.setFormatter(fmt)
    h._gunicorn = True
    log.addHandler(h)


def _config_error(exc):
    """gunicorn's message (str of dictConfig's error), with the cause
    dictConfig chains to it ("Unable to configure formatter 'json'" says
    which, not why)."""
    msg = str(exc)
    cause = exc.__cause__
    if cause is not None:
        msg = "%s: %s: %s" % (msg, type(cause).__name__, cause)
    return msg


def setup_logging(loglevel, errorlog, accesslog, access_format, logconfig,
                  logconfig_dict, logconfig_json):
    """gunicorn 27's Logger.__init__ + setup (capture_output and syslog are
    ferrocorn's Rust side). Returns the effective level of gunicorn.error,
    which the Rust side uses to skip records that would be dropped; raises
    RuntimeError with gunicorn's message when the configuration is bad."""
    import json
    import logging
    import logging.config
    global LOGGING_ACTIVE, _ACCESS_FORMAT, _loggers

    if _loggers is None:
        error_log = logging.getLogger("gunicorn.error")
        error_log.propagate = False
        access_log = logging.getLogger("gunicorn.access")
        access_log.propagate = False
        _loggers = (error_log, access_log)
    error_log, access_log = _loggers
    error_log.setLevel(_LOG_LEVELS.get(loglevel.lower(), logging.INFO))
    access_log.setLevel(logging.INFO)
    _set_handler(error_log, errorlog, logging.Formatter(_ERROR_FMT, _DATEFMT))
    _set_handler(access_log, accesslog, logging.Formatter("%(message)s"), stream=sys.stdout)

    if logconfig_dict:
        config = CONFIG_DEFAULTS.copy()
        config.update(logconfig_dict)
        try:
            logging.config.dictConfig(config)
        except (AttributeError, ImportError, ValueError, TypeError) as exc:
            raise RuntimeError(_config_error(exc)) from exc
    elif logconfig_json:
        config = CONFIG_DEFAULTS.copy()
        if os.path.exists(logconfig_json):
            try:
                with open(logconfig_json) as f:
                    config.update(json.load(f))
                logging.config.dictConfig(config)
            except (json.JSONDecodeError, AttributeError, ImportError, ValueError,
                    TypeError) as exc:
                raise RuntimeError(_config_error(exc)) from exc
    elif logconfig:
        if os.path.exists(logconfig):
            defaults = CONFIG_DEFAULTS.copy()
            defaults["__file__"] = logconfig
            defaults["here"] = os.path.dirname(logconfig)
            try:
                logging.config.fileConfig(logconfig, defaults=defaults,
                                          disable_existing_loggers=False)
            except Exception as exc:
                # gunicorn lets this escape as a traceback; one line naming
                # the file and the reason says the same.
                raise RuntimeError("log config %r: %s: %s" % (
                    logconfig, type(exc).__name__, exc)) from exc
        else:
            raise RuntimeError("Error: log config '%s' not found" % logconfig)
    _ACCESS_FORMAT = access_format
    LOGGING_ACTIVE = True
    return error_log.getEffectiveLevel()


def stop_logging():
    """The configuration no longer sets logconfig*: Rust logs again."""
    global LOGGING_ACTIVE
    LOGGING_ACTIVE = False


def log_error(levelno, msg):
    """One error-log record from ferrocorn."""
    _loggers[0].log(levelno, msg)


def log_exception(msg, etype, value, tb):
    """gunicorn's log.exception(msg) from ferrocorn: the record carries the
    exception as exc_info, for handlers that want it (Sentry's, JSON
    formatters)."""
    _loggers[0].error(msg, exc_info=(etype, value, tb))


def log_access(atoms, environ):
    """One access record, as glogging.Logger.access logs it: the message is
    access_log_format, `args` the SafeAtoms (with `{key}e` environ atoms when
    the worker has the environ)."""
    if environ is not None:
        for k, v in environ.items():
            atoms["{%s}e" % k.lower()] = v.replace('"', '\\"') if isinstance(v, str) else v
    try:
        _loggers[1].info(_ACCESS_FORMAT, SafeAtoms(atoms))
    except Exception:
        _loggers[0].error(traceback.format_exc())


def log_access_line(line):
    """One access record under --access-log-json: the message is the JSON
    line ferrocorn made (no args, so logging does not %-format it)."""
    try:
        _loggers[1].info(line)
    except Exception:
        _loggers[0].error(traceback.format_exc())


def reopen_logging():
    """glogging.Logger.reopen_files (USR1): every FileHandler reopens."""
    import logging
    for name in list(logging.root.manager.loggerDict):
        for handler in getattr(logging.getLogger(name), "handlers", []):
            if isinstance(handler, logging.FileHandler):
                handler.acquire()
                try:
                    if handler.stream:
                        handler.close()
                        handler.stream = handler._open()
                finally:
                    handler.release()
