"""An app module that fails to import."""
raise ImportError("broken.py fails on purpose")
