"""The exporter's PrometheusMaster (a gunicorn Arbiter subclass)."""


class PrometheusMaster:
    """Importable for configs that name it. ferrocorn's master is not a
    gunicorn Arbiter: it counts signals and worker restarts itself
    (``gunicorn_master_signals_total``, ``gunicorn_master_worker_restarts_total``),
    so there is nothing to instantiate."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(
            "PrometheusMaster is gunicorn's Arbiter with metrics; ferrocorn's master is "
            "its own and already records the master metrics: nothing to run")
