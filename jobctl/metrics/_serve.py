"""``serve_metrics``: a registry over HTTP, with ``prometheus_client``'s own server."""

from __future__ import annotations

import ipaddress
from functools import partial
from typing import Final, NoReturn, final

import anyio
import anyio.abc
import anyio.to_thread
import attrs
from prometheus_client import CollectorRegistry, start_http_server

from ._errors import MetricsConfigError

__all__ = ["DEFAULT_METRICS_HOST", "METRICS_PATH", "MetricsAddress", "serve_metrics"]

DEFAULT_METRICS_HOST: Final = "127.0.0.1"
#: The path Prometheus scrapes (prometheus_client's server answers any path
#: but ``/favicon.ico`` with the metrics).
METRICS_PATH: Final = "/metrics"
_MAX_PORT: Final = 65535


@final
@attrs.frozen
class MetricsAddress:
    """Where a metrics endpoint listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """The endpoint Prometheus scrapes."""
        try:
            literal = ipaddress.ip_address(self.host)
        except ValueError:
            host = self.host
        else:
            host = f"[{literal}]" if literal.version == 6 else str(literal)
        return f"http://{host}:{self.port}{METRICS_PATH}"


async def serve_metrics(
    registry: CollectorRegistry,
    *,
    host: str = DEFAULT_METRICS_HOST,
    port: int = 0,
    task_status: anyio.abc.TaskStatus[MetricsAddress] = anyio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``registry`` at ``http://host:port/metrics`` until cancelled.

    The server is ``prometheus_client.start_http_server``'s, in threads of
    its own, so a scrape never runs on the event loop (a
    :class:`~jobctl.metrics.JobMetrics` in the registry reads its domains in
    their loop all the same). ``port`` 0 picks a free one; use ``address =
    await task_group.start(serve_metrics, registry)`` to learn it. Loopback by
    default: metrics carry no secret, but they name every VM; put a proxy
    with authentication in front of one that listens on the network.

    Raises :class:`MetricsConfigError` for a port outside 0..65535, OSError
    when it cannot listen. Cancelled, it stops the server (within its poll
    interval, half a second) and closes its socket before it returns.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= _MAX_PORT:
        raise MetricsConfigError(f"a port is 0 (any free one) to {_MAX_PORT}, not {port!r}")
    server, thread = await anyio.to_thread.run_sync(
        partial(start_http_server, port, addr=host, registry=registry)
    )
    try:
        task_status.started(MetricsAddress(host, server.server_port))
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.shutdown)
            server.server_close()
            await anyio.to_thread.run_sync(thread.join)
    raise AssertionError("unreachable")  # pragma: no cover
