"""Small helpers of gunicorn-prometheus-exporter."""

import os


def get_multiprocess_dir():
    """PROMETHEUS_MULTIPROC_DIR, or None."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def ensure_multiprocess_dir(mp_dir):
    """Creates `mp_dir` if needed; False when it is empty."""
    if not mp_dir:
        return False
    os.makedirs(mp_dir, exist_ok=True)
    return True
