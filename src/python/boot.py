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


def install_abort_handler(on_abort):
    """gunicorn's handle_abort: SIGABRT from the master (worker timeout) ends
    the worker with SystemExit(1), raised wherever Python code is running."""
    import signal

    def handle_abort(sig, frame):
        on_abort()
        sys.exit(1)

    signal.signal(signal.SIGABRT, handle_abort)


def install_quit_handler(on_quit):
    """gunicorn's handle_quit for SIGINT and SIGQUIT in a worker: a quick
    exit, interrupting the app if it is running (SystemExit(0))."""
    import signal

    def handle_quit(sig, frame):
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
