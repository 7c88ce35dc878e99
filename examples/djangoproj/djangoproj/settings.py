"""Minimal Django settings for the ferrocorn example project (no database)."""
import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "ferrocorn-example-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = []
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "djangoproj.urls"
WSGI_APPLICATION = "djangoproj.wsgi.application"
DATABASES = {}
USE_TZ = True
TEMPLATES = []
# Uploads of any size stay readable in the view (big ones spool to a temp file).
DATA_UPLOAD_MAX_MEMORY_SIZE = None
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django": {"handlers": ["console"], "level": "ERROR"}},
}
