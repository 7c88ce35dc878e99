"""ASGI entry point: ferrocorn -k asgi djangoproj.asgi:application (run from examples/djangoproj)."""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoproj.settings")

application = get_asgi_application()
