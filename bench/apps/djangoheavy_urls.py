"""URLs of bench/apps/djangoheavy.py: the example's pages (with /__gc) and the admin's."""
from django.contrib import admin
from django.urls import path

from djangobench_urls import urlpatterns as example

urlpatterns = example + [path("admin/", admin.site.urls)]
