"""The metrics endpoint over real sockets: ``serve_metrics`` in a process, and
``jobctl serve`` / ``jobctl demo --metrics-port`` as an operator runs them."""

from __future__ import annotations

import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import IO

import anyio
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from jobctl import Domain, Job, TraceHub
from jobctl.cli import build_parser
from jobctl.metrics import JobMetrics, MetricsAddress, MetricsConfigError, serve_metrics
from jobctl.testing import ScriptedMonitor

from ._support import scraped
from .test_collector import FAMILIES

JOBCTL = [sys.executable, "-m", "jobctl"]
#: Real seconds a command may take to say what these tests wait for.
PATIENCE = 60.0
_METRICS_URL = re.compile(r"metrics (http://\S+/metrics)")
#: The families as the text format names them: it has no info type, so an
#: info family is a gauge named with its ``_info`` suffix.
INFOS = {"jobctl_async_job", "jobctl_vm_status", "jobctl_vm_migration"}
SCRAPED = FAMILIES - INFOS | {f"{name}_info" for name in INFOS}


@pytest.fixture
def anyio_backend() -> str:
    """Real sockets and threads: trio on the real clock."""
    return "trio"


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=PATIENCE) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text: str = reply.read().decode()
        return text


def family_names(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


@pytest.mark.anyio
async def test_serve_metrics_serves_a_registry_until_cancelled() -> None:
    hub = TraceHub()
    dom = Domain("vm-1", monitor=ScriptedMonitor(), trace=hub)
    registry = CollectorRegistry()
    with JobMetrics(hub) as metrics:
        registry.register(metrics)
        metrics.add(dom)
        async with dom.job(Job.QUERY) as job, job.monitor() as mon:
            await mon.execute("query-status")
        async with anyio.create_task_group() as tg:
            address = await tg.start(partial(serve_metrics, registry))
            assert address == MetricsAddress("127.0.0.1", address.port) and address.port > 0
            assert address.url == f"http://127.0.0.1:{address.port}/metrics"
            text = await anyio.to_thread.run_sync(fetch, address.url)
            assert family_names(text) == SCRAPED
            assert scraped(text)[("jobctl_monitor_commands_total", (("domain", "vm-1"),))] == 1
            tg.cancel_scope.cancel()
    # Cancelled, it has closed its socket.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", address.port), timeout=PATIENCE).close()


@pytest.mark.anyio
async def test_serve_metrics_refuses_a_bad_port_and_reports_a_taken_one() -> None:
    registry = CollectorRegistry()
    for port in (-1, 65536, True):
        with pytest.raises(MetricsConfigError, match="0 \\(any free one\\) to 65535"):
            await serve_metrics(registry, port=port)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="in use"):
            await serve_metrics(registry, port=taken.getsockname()[1])


def test_ipv6_addresses_are_bracketed() -> None:
    assert MetricsAddress("::1", 9100).url == "http://[::1]:9100/metrics"
    assert MetricsAddress("localhost", 9100).url == "http://localhost:9100/metrics"


# -- the commands ------------------------------------------------------------------


@contextmanager
def running(argv: list[str]) -> Iterator[subprocess.Popen[str]]:
    """``jobctl ARGV`` in a process of its own, stopped by SIGINT at the end."""
    with subprocess.Popen(
        [*JOBCTL, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            try:
                process.communicate(timeout=PATIENCE)
            finally:
                if process.poll() is None:
                    process.kill()


def read_until(stream: IO[str], pattern: str) -> list[str]:
    """Lines of ``stream`` up to the first that matches ``pattern`` (included)."""
    lines: list[str] = []
    deadline = time.monotonic() + PATIENCE
    while not lines or not re.search(pattern, lines[-1]):
        left = deadline - time.monotonic()
        assert left > 0 and select.select([stream], [], [], left)[0], f"only {lines!r}"
        line = stream.readline()
        assert line, f"the stream ended after {lines!r}"
        lines.append(line)
    return lines


def metrics_url(lines: list[str]) -> str:
    (url,) = [m.group(1) for line in lines if (m := _METRICS_URL.search(line))]
    return url


def test_jobctl_serve_serves_prometheus_metrics_over_http() -> None:
    argv = ["serve", "--feed-port", "0", "--port", "0", "--metrics-port", "0", "--domains", "1"]
    with running(argv) as process:
        assert process.stdout is not None
        url = metrics_url(read_until(process.stdout, r"jobctl serve: metrics "))
        text = fetch(url)
        assert family_names(text) == SCRAPED
        domains = {
            labels["domain"]
            for family in text_string_to_metric_families(text)
            for labels in (s.labels for s in family.samples)
        }
        assert domains <= {"vm-1@host-a", "vm-1@host-b"}
    assert process.returncode == 0


def test_jobctl_demo_metrics_count_what_the_demo_did() -> None:
    argv = ["demo", "--migrations", "2", "--metrics-port", "0", "--json"]
    argv += ["--serve", "--feed-port", "0", "--port", "0"]
    with running(argv) as process:
        assert process.stderr is not None
        lines = read_until(process.stderr, r"serving the feed until interrupted")
        samples = scraped(fetch(metrics_url(lines)))

        def total(name: str, **labels: str) -> float:
            wanted = set(labels.items())
            return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))

        # Two migrations of one VM, there and back: one out and one in per host.
        for kind in ("migration_out", "migration_in"):
            for host in ("host-a", "host-b"):
                labels = {"domain": f"vm1@{host}", "kind": kind}
                assert total("jobctl_jobs_begun_by_kind_total", **labels) == 1, labels
        assert total("jobctl_jobs_begun_by_kind_total", kind="start") == 1
        assert total("jobctl_jobs_begun_total", type="async") == 5
        # Each VM was added before its first job: the trace's count by kind
        # adds up to the domains' own count.
        assert total("jobctl_jobs_begun_by_kind_total") == total("jobctl_jobs_begun_total")
        assert total("jobctl_jobs_begun_by_kind_total", kind="query") > 0
        commands = total("jobctl_monitor_commands_total")
        assert commands > 0
        assert total("jobctl_monitor_command_seconds_count") == commands
        assert total("jobctl_async_job_running") == 0
    assert process.returncode == 0


@pytest.mark.parametrize(
    ("command", "value"), [("serve", "70000"), ("serve", "x"), ("demo", "-1"), ("demo", "65536")]
)
def test_a_bad_metrics_port_is_a_one_line_usage_error(command: str, value: str) -> None:
    result = subprocess.run(
        [*JOBCTL, command, "--metrics-port", value],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        stdin=subprocess.DEVNULL,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"jobctl {command}: error: argument --metrics-port: ")
    assert "0 (any free one) to 65535" in result.stderr and repr(value) in result.stderr
    assert result.stderr.count("\n") == 1


def test_the_metrics_port_is_parsed_with_the_others() -> None:
    assert build_parser().parse_args(["serve"]).metrics_port is None
    assert build_parser().parse_args(["serve", "--metrics-port", "0"]).metrics_port == 0
    assert build_parser().parse_args(["demo", "--metrics-port", "65535"]).metrics_port == 65535


def test_a_taken_metrics_port_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = subprocess.run(
            [*JOBCTL, "serve", "--feed-port", "0", "--port", "0", "--metrics-port", port],
            capture_output=True,
            text=True,
            timeout=PATIENCE,
            stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 1
    assert result.stderr.startswith("jobctl serve: cannot listen: ")
    assert result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_without_prometheus_client_the_option_says_what_to_install(command: str) -> None:
    probe = (
        "import sys\n"
        "sys.modules['prometheus_client'] = None  # as if it were not installed\n"
        "from jobctl.cli import main\n"
        f"sys.exit(main([{command!r}, '--metrics-port', '0']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        stdin=subprocess.DEVNULL,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"jobctl {command}: error: --metrics-port: ")
    assert "pip install 'virt-jobctl[metrics]'" in result.stderr
    assert result.stderr.count("\n") == 1
