"""Prometheus metrics of jobctl's domains, with the official ``prometheus_client``.

::

    registry = prometheus_client.CollectorRegistry()
    with jobctl.metrics.JobMetrics(hub) as metrics:
        registry.register(metrics)
        metrics.add(vm)                 # each VM (or jobctl.Domain) to export
        address = await task_group.start(jobctl.metrics.serve_metrics, registry)
        print("scrape", address.url)

:class:`JobMetrics` is a custom collector: each scrape reads every added
domain (:meth:`jobctl.Domain.statistics`, :meth:`jobctl.Domain.info`) in its
event loop, plus what it kept of the trace since (a monitor latency histogram
per domain, jobs begun by kind). :func:`serve_metrics` serves a registry with
``prometheus_client``'s own HTTP server; a manager with a web server of its
own mounts the registry instead (``prometheus_client.make_asgi_app(registry)``
or ``make_wsgi_app``). ``jobctl serve --metrics-port`` and ``jobctl demo
--metrics-port`` use both.

Needs the ``metrics`` extra (``pip install 'virt-jobctl[metrics]'``); nothing
below the faces imports it.
"""

from __future__ import annotations

try:
    import prometheus_client as _prometheus_client
except ModuleNotFoundError as exc:  # pragma: no cover (the test extra installs it)
    raise ModuleNotFoundError(
        "jobctl.metrics needs prometheus_client: pip install 'virt-jobctl[metrics]'", name=exc.name
    ) from exc


from jobctl._public import publish

from ._collector import DEFAULT_LATENCY_BUCKETS, MAX_BUCKETS, JobMetrics
from ._errors import (
    DomainNameTakenError,
    MetricsConfigError,
    MetricsError,
    MetricsLoopError,
    UnknownDomainError,
)
from ._serve import DEFAULT_METRICS_HOST, METRICS_PATH, MetricsAddress, serve_metrics

del _prometheus_client

__all__ = [
    "DEFAULT_LATENCY_BUCKETS",
    "DEFAULT_METRICS_HOST",
    "MAX_BUCKETS",
    "METRICS_PATH",
    "DomainNameTakenError",
    "JobMetrics",
    "MetricsAddress",
    "MetricsConfigError",
    "MetricsError",
    "MetricsLoopError",
    "UnknownDomainError",
    "serve_metrics",
]


# The public names show their public path (this package's) in reprs,
# tracebacks, pickles and the reference, not the private module's.
publish(globals())
