"""The Django example's pages, plus /__gc for bench/preload_pss.py: a full
collection (gc.collect()) in the worker that serves it, which answers its
pid. A long-running worker gets full collections on its own once enough
long-lived objects accumulate (caches, sessions, ...) or when a library
calls gc.collect(); this makes the moment come now. The worker then stays
busy 0.2 s, so that concurrent calls reach every worker."""
import gc
import os
import time

from django.http import HttpResponse
from django.urls import path

from djangoproj.urls import urlpatterns as example


def collect(request):
    gc.collect()
    time.sleep(0.2)  # busy a moment: the next /__gc goes to another worker
    return HttpResponse(str(os.getpid()), content_type="text/plain")


urlpatterns = example + [path("__gc", collect)]
