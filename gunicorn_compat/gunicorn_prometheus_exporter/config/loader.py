"""YAML configuration files (the exporter's ``load_yaml_config``)."""


def load_yaml_config(config_file_path):
    """Not provided by ferrocorn's compatibility package."""
    raise NotImplementedError(
        "load_yaml_config(%r): YAML configuration files of gunicorn-prometheus-exporter "
        "are not supported by ferrocorn's compatibility package; set the environment "
        "variables (or initialize_config(NAME=value, ...)) instead" % (config_file_path,))
