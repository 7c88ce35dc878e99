"""The app's settings module: the development example's reload_extra_files
names it (with app.py), as the guide's does."""

GREETING = "Hello"
