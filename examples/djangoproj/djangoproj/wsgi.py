"""WSGI entry point: ferrocorn djangoproj.wsgi:application (run from examples/djangoproj)."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoproj.settings")

application = get_wsgi_application()
