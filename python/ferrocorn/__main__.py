"""``python -m ferrocorn``: the ``ferrocorn`` command."""

from ferrocorn import run

if __name__ == "__main__":
    run("python -m ferrocorn")
