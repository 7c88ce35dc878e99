"""The exporter's metrics registry. Under ferrocorn the metrics families
(gunicorn_worker_*, gunicorn_master_*) are recorded by the server itself
and served by its exporter process; ``registry`` stands for that exporter."""

from . import _ferrocorn


class _Registry:
    """``registry`` / ``get_shared_registry()``: ferrocorn's exporter."""

    def _target(self):
        exporter = _ferrocorn.exporter()
        if exporter is None:
            raise RuntimeError(
                "gunicorn_prometheus_exporter.registry: not running inside ferrocorn "
                "(its exporter process holds the metrics)")
        return _ferrocorn.ExporterRegistry(exporter)

    def register(self, collector):
        self._target().register(collector)

    def unregister(self, collector):
        self._target().unregister(collector)

    def collect(self):
        return iter(())

    def __repr__(self):
        try:
            return repr(self._target())
        except RuntimeError:
            return "<gunicorn_prometheus_exporter registry: not inside ferrocorn>"


registry = _Registry()


def get_shared_registry():
    return registry
