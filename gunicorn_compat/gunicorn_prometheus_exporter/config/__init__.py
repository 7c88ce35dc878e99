"""The configuration API of gunicorn-prometheus-exporter (ferrocorn's
compatibility package)."""

from .loader import load_yaml_config
from .manager import (
    ConfigManager,
    ConfigState,
    cleanup_config,
    get_config,
    get_config_manager,
    initialize_config,
)
from .settings import ExporterConfig

__all__ = [
    "ExporterConfig",
    "ConfigManager",
    "ConfigState",
    "get_config_manager",
    "initialize_config",
    "get_config",
    "cleanup_config",
    "load_yaml_config",
]
