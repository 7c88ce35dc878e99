"""bench/preload_pss.py: the Django example's settings (examples/djangoproj)
with one more URL, /__gc, for the measurement (bench/apps/djangobench_urls.py)."""
from djangoproj.settings import *  # noqa: F401,F403

ROOT_URLCONF = "djangobench_urls"
