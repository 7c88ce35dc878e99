"""ferrocorn: a Rust pre-fork application server for Python web apps, run
like gunicorn, with Prometheus metrics built in.

This package is what the wheel installs: the ``ferrocorn`` console script and
``python -m ferrocorn`` call :func:`main`, which runs ferrocorn's Rust main
(the same as the standalone binary's) in this interpreter. The master is
then this Python process; it never returns to Python.
"""

from ferrocorn._ferrocorn import BUILT_FOR, VERSION, run

__version__ = VERSION
__all__ = ["BUILT_FOR", "__version__", "main", "run"]


def main():
    """The ``ferrocorn`` command: serves with the arguments ``sys.argv[1:]``
    and exits the process with the server's exit code (never returns)."""
    run()
