"""``JobMetrics``: a ``prometheus_client`` collector over jobctl domains.

On each scrape it reads every domain it exports, in the event loop that runs
them: the counters of :meth:`jobctl.Domain.statistics`, the gauges of
:meth:`jobctl.Domain.info`, and what it kept of the trace since the domain was
added (each monitor command's time, from ``command.sent`` to
``command.answered``, in a histogram; the jobs begun, by kind; the replies, by
outcome). Between scrapes it computes nothing: the trace listener only files
a command's send time and bumps a few counters, in bounded memory per domain.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Final, TypeVar, final

import anyio
import anyio.from_thread
import anyio.lowlevel
import attrs
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from jobctl import (
    TRACE_VALUES,
    AsyncJob,
    Domain,
    DomainInfo,
    DomainStatistics,
    Job,
    TraceEvent,
    TraceHub,
    TraceKind,
    TraceSubscription,
    default_trace_hub,
)
from jobctl.qemu import VM, ObservedState

from ._errors import DomainNameTakenError, MetricsConfigError, MetricsLoopError, UnknownDomainError
from ._observed import observed_families

__all__ = ["DEFAULT_LATENCY_BUCKETS", "MAX_BUCKETS", "JobMetrics"]

#: Upper bounds, in seconds, of the monitor latency histogram's buckets (and
#: ``+Inf``): from half a millisecond (a local QMP socket) to a minute (a
#: stalled QEMU).
DEFAULT_LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
#: The most buckets a histogram may have (each is a time series per domain).
MAX_BUCKETS: Final = 64

#: ``job.begin`` / ``async.begin`` carry the kind's name; the label is its value.
_KIND_LABELS: Final = {kind.name: kind.value for kind in (*Job, *AsyncJob)}
_REPLY_OUTCOMES: Final = TRACE_VALUES[TraceKind.COMMAND_ANSWERED]["outcome"]
#: Replies whose time is the monitor's: a cancelled command's is its caller's.
_TIMED_OUTCOMES: Final = frozenset({"ok", "error"})

_T = TypeVar("_T")


def _check_buckets(buckets: Sequence[float]) -> tuple[float, ...]:
    try:
        bounds = tuple(float(b) for b in buckets)
    except (TypeError, ValueError):
        raise MetricsConfigError(f"bucket bounds are numbers of seconds, not {buckets!r}") from None
    if not 1 <= len(bounds) <= MAX_BUCKETS:
        raise MetricsConfigError(f"a histogram has 1 to {MAX_BUCKETS} buckets, not {len(bounds)}")
    if not all(math.isfinite(b) and b > 0 for b in bounds) or any(
        a >= b for a, b in itertools.pairwise(bounds)
    ):
        raise MetricsConfigError(
            f"bucket bounds are finite positive seconds in increasing order, not {buckets!r}"
        )
    return bounds


@final
class _Watch:
    """What the collector keeps of one domain between scrapes. Its size is
    fixed by the bucket count, the job kinds and the reply outcomes."""

    __slots__ = ("buckets", "domain", "kinds", "latency_sum", "replies", "sent", "vm")

    def __init__(self, domain: Domain, vm: VM | None, buckets: int) -> None:
        self.domain = domain
        self.vm = vm
        #: Commands answered, per bucket (not cumulative); the last is +Inf.
        self.buckets = [0] * (buckets + 1)
        self.latency_sum = 0.0
        #: The command in flight: its job id and when it was sent. The
        #: monitor lock keeps one in flight per domain.
        self.sent: tuple[int | None, float] | None = None
        self.kinds: dict[str, int] = {}
        self.replies: dict[str, int] = {}


@final
@attrs.frozen
class _Sample:
    """One domain as one scrape saw it (taken in the event loop)."""

    name: str
    now: float
    statistics: DomainStatistics
    info: DomainInfo
    buckets: tuple[int, ...]
    latency_sum: float
    kinds: tuple[tuple[str, int], ...]
    replies: tuple[tuple[str, int], ...]
    #: The VM's observed state, for a domain added as a VM.
    observed: ObservedState | None


@final
class JobMetrics:
    """A ``prometheus_client`` collector of the domains added to it.

    ::

        registry = prometheus_client.CollectorRegistry()
        with JobMetrics(hub) as metrics:
            registry.register(metrics)
            metrics.add(vm)            # a jobctl.qemu.VM, or a jobctl.Domain
            ...                        # serve registry (serve_metrics, make_asgi_app, ...)

    Make it inside the event loop that runs the domains (else
    :class:`MetricsLoopError`), with the :class:`~jobctl.TraceHub` they emit
    on (default :data:`jobctl.default_trace_hub`). Names are unique among the
    added domains (:class:`DomainNameTakenError`): a name is the ``domain``
    label, and the trace tells domains apart by name.

    Guarantees:

    * A scrape reads the domains in their event loop's thread: from another
      thread (``prometheus_client.start_http_server``'s, say) it waits for
      the loop to run one short, non-blocking read of every domain, so the
      families of one domain are one consistent view and nothing races the
      job core. A scrape after the loop has ended gets the families, empty.
    * Between scrapes nothing is computed: the trace listener files each
      command's send time and, when it is answered, adds it to a fixed
      array of buckets; it bumps a counter per job kind and per reply
      outcome; the memory per domain is bounded by those. It never raises.
    * Counters from :meth:`~jobctl.Domain.statistics` count since the domain
      was made; those from the trace (``jobctl_jobs_begun_by_kind_total``,
      ``jobctl_monitor_replies_total``, the histogram) since it was added.

    The families, all with a ``domain`` label:

    * counters: ``jobctl_jobs_begun_total{type="regular"|"async"}``,
      ``jobctl_jobs_begun_by_kind_total{kind}``, ``jobctl_job_waits_total``,
      ``jobctl_job_wait_timeouts_total``, ``jobctl_job_wait_cancellations_total``,
      ``jobctl_job_refusals_total{reason="busy"|"queue_full"}``,
      ``jobctl_barrier_waits_total``, ``jobctl_barrier_wait_seconds_total``,
      ``jobctl_aborts_total``, ``jobctl_destroys_total``,
      ``jobctl_monitor_commands_total``, ``jobctl_monitor_replies_total{outcome}``;
    * the histogram ``jobctl_monitor_command_seconds``: send to reply of each
      command answered (``ok``) or failed (``error``); a cancelled command's
      time is its caller's, not the monitor's, and is left out;
    * gauges: ``jobctl_job_waiters``, ``jobctl_job_oldest_wait_seconds``,
      ``jobctl_regular_jobs``, ``jobctl_monitor_held``,
      ``jobctl_barrier_pending_jobs``, ``jobctl_async_job_running``,
      ``jobctl_async_job_interruptible``, ``jobctl_async_job_seconds`` (since
      it began), and the info ``jobctl_async_job_info{kind, phase}`` while
      one runs;
    * for a domain added as a VM, its observed state
      (:attr:`jobctl.qemu.VM.observed`, never a monitor command): the info
      ``jobctl_vm_status_info{status}`` and the gauge ``jobctl_vm_running``;
      ``jobctl_vm_migration_info{status}`` and the migration's figures
      (``jobctl_vm_migration_{transferred,remaining,total}_bytes``,
      ``..._passes``, ``..._dirty_bytes_per_second``,
      ``..._expected_downtime_seconds``, ``..._downtime_seconds``); the
      block devices' counters (``jobctl_vm_block_{read,written}_bytes_total``,
      ``jobctl_vm_block_{reads,writes,flushes}_total``, by ``device``);
      ``jobctl_vm_job_phase_seconds``; and
      ``jobctl_vm_observation_age_seconds{observation="run"|"migration"|
      "migration_figures"|"block"}``, how old each one is. What was never
      observed has no sample.
    """

    __slots__ = ("_bounds", "_hub", "_subscription", "_thread", "_token", "_watches")

    def __init__(
        self, hub: TraceHub | None = None, *, buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS
    ) -> None:
        self._bounds = _check_buckets(buckets)
        try:
            self._token = anyio.lowlevel.current_token()
        except RuntimeError:  # anyio's NoEventLoopError
            raise MetricsLoopError(
                "make JobMetrics inside the event loop that runs its domains"
            ) from None
        self._thread = threading.get_ident()
        self._hub = default_trace_hub if hub is None else hub
        self._watches: dict[str, _Watch] = {}
        self._subscription: TraceSubscription | None = self._hub.subscribe(self._on_event)

    # -- the domains -----------------------------------------------------------

    @property
    def domains(self) -> tuple[str, ...]:
        """The names of the domains exported, in the order they were added."""
        return tuple(self._watches)

    @property
    def buckets(self) -> tuple[float, ...]:
        """The latency histogram's upper bounds (``+Inf`` not included)."""
        return self._bounds

    def add(self, target: Domain | VM) -> None:
        """Export ``target``'s domain (and a VM's observed state) from now on.

        Raises :class:`DomainNameTakenError` if a domain of that name is
        exported already, TypeError for anything but a Domain or a VM.
        """
        if isinstance(target, VM):
            domain, vm = target.domain, target
        elif isinstance(target, Domain):
            domain, vm = target, None
        else:
            raise TypeError(f"JobMetrics exports a jobctl.Domain or a VM, not {target!r}")
        if domain.name in self._watches:
            raise DomainNameTakenError(f"a domain named {domain.name!r} is exported already")
        self._watches[domain.name] = _Watch(domain, vm, len(self._bounds))

    def remove(self, target: Domain | VM | str) -> None:
        """Stop exporting a domain (given as itself, its VM or its name); its
        series leave the next scrape. Raises :class:`UnknownDomainError` if
        it is not exported."""
        name = target if isinstance(target, str) else target.name
        if self._watches.pop(name, None) is None:
            raise UnknownDomainError(f"no domain named {name!r} is exported")

    def close(self) -> None:
        """Stop listening to the trace and forget every domain. Idempotent."""
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        self._watches.clear()

    def __enter__(self) -> JobMetrics:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the trace ---------------------------------------------------------------

    def _on_event(self, event: TraceEvent) -> None:
        watch = self._watches.get(event.domain)
        if watch is None:
            return
        kind = event.kind
        if kind is TraceKind.COMMAND_SENT:
            watch.sent = (event.job_id, event.time)
        elif kind is TraceKind.COMMAND_ANSWERED:
            sent, watch.sent = watch.sent, None
            outcome = event.detail.get("outcome")
            if outcome not in _REPLY_OUTCOMES:
                return
            watch.replies[outcome] = watch.replies.get(outcome, 0) + 1
            if sent is None or sent[0] != event.job_id or outcome not in _TIMED_OUTCOMES:
                return
            seconds = max(0.0, event.time - sent[1])
            watch.buckets[bisect.bisect_left(self._bounds, seconds)] += 1
            watch.latency_sum += seconds
        elif kind is TraceKind.JOB_BEGIN or kind is TraceKind.ASYNC_BEGIN:
            label = _KIND_LABELS.get(event.job or "")
            if label is not None:
                watch.kinds[label] = watch.kinds.get(label, 0) + 1

    # -- scrapes ---------------------------------------------------------------

    def _in_loop(self, read: Callable[[], _T]) -> _T | None:
        """``read()`` in the domains' event loop; None if that loop has ended."""
        if threading.get_ident() == self._thread:
            try:
                token = anyio.lowlevel.current_token()
            except RuntimeError:  # anyio's NoEventLoopError: the loop has ended
                return None
            # Another loop in this thread, later: the domains' loop has ended.
            return read() if token == self._token else None
        try:
            return anyio.from_thread.run_sync(read, token=self._token)
        except anyio.RunFinishedError:
            return None

    def _read(self) -> list[_Sample]:
        now = anyio.current_time()
        return [
            _Sample(
                name=name,
                now=now,
                statistics=watch.domain.statistics(),
                info=watch.domain.info(),
                buckets=tuple(watch.buckets),
                latency_sum=watch.latency_sum,
                kinds=tuple(sorted(watch.kinds.items())),
                replies=tuple(sorted(watch.replies.items())),
                observed=None if watch.vm is None else watch.vm.observed,
            )
            for name, watch in self._watches.items()
        ]

    def collect(self) -> list[Metric]:
        """Every family, with one sample set per exported domain (the
        ``prometheus_client`` collector protocol)."""
        samples = self._in_loop(self._read)
        return _families(self._bounds, samples or ())

    def describe(self) -> list[Metric]:
        """Every family, without samples: what a registry checks names with,
        without reading a domain."""
        return _families(self._bounds, ())

    def __repr__(self) -> str:
        return f"<JobMetrics of {len(self._watches)} domain(s)>"


def _counter(name: str, documentation: str, *labels: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, labels=("domain", *labels))


def _gauge(name: str, documentation: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=("domain", *labels))


def _families(bounds: tuple[float, ...], samples: Iterable[_Sample]) -> list[Metric]:
    begun = _counter(
        "jobctl_jobs_begun", "Jobs begun since the domain was made, regular or async.", "type"
    )
    by_kind = _counter(
        "jobctl_jobs_begun_by_kind", "Jobs begun since the domain was added, by kind.", "kind"
    )
    waits = _counter("jobctl_job_waits", "Job requests that had to queue before beginning.")
    timeouts = _counter("jobctl_job_wait_timeouts", "Job requests that timed out while queued.")
    cancellations = _counter(
        "jobctl_job_wait_cancellations", "Queued job requests cancelled by their caller."
    )
    refusals = _counter(
        "jobctl_job_refusals",
        "Job requests refused at once: busy (nowait) or queue_full (max_queued).",
        "reason",
    )
    barrier_waits = _counter(
        "jobctl_barrier_waits", "Times an async job waited at a barrier for the jobs of a section."
    )
    barrier_seconds = _counter(
        "jobctl_barrier_wait_seconds", "Time async jobs spent waiting at barriers."
    )
    aborts = _counter("jobctl_aborts", "Aborts delivered to async jobs.")
    destroys = _counter("jobctl_destroys", "Async jobs pre-empted by a DESTROY.")
    commands = _counter("jobctl_monitor_commands", "Commands sent to the monitor.")
    replies = _counter(
        "jobctl_monitor_replies",
        "Monitor commands ended since the domain was added: ok, error or cancelled.",
        "outcome",
    )
    latency = HistogramMetricFamily(
        "jobctl_monitor_command_seconds",
        "Monitor commands from send to reply (ok or error), since the domain was added.",
        labels=("domain",),
    )
    waiters = _gauge("jobctl_job_waiters", "Job requests queued now.")
    oldest = _gauge(
        "jobctl_job_oldest_wait_seconds", "How long the oldest queued request has waited (0: none)."
    )
    regular = _gauge("jobctl_regular_jobs", "Regular jobs running now.")
    held = _gauge("jobctl_monitor_held", "Whether a job holds the monitor now (1) or not (0).")
    pending = _gauge(
        "jobctl_barrier_pending_jobs", "Jobs of a closed section its async job still waits for."
    )
    running = _gauge("jobctl_async_job_running", "Whether an async job runs now (1) or not (0).")
    interruptible = _gauge(
        "jobctl_async_job_interruptible",
        "Whether the async job is in an interruptible section now (1) or not (0).",
    )
    age = _gauge("jobctl_async_job_seconds", "How long the running async job has run (0: none).")
    phase = InfoMetricFamily(
        "jobctl_async_job", "The running async job's kind and phase.", labels=("domain",)
    )
    upper = [repr(b) for b in bounds] + ["+Inf"]
    observed: list[ObservedState] = []
    for s in samples:
        d = (s.name,)
        st, info = s.statistics, s.info
        begun.add_metric((*d, "regular"), st.begins)
        begun.add_metric((*d, "async"), st.async_begins)
        for kind, count in s.kinds:
            by_kind.add_metric((*d, kind), count)
        waits.add_metric(d, st.waits)
        timeouts.add_metric(d, st.timeouts)
        cancellations.add_metric(d, st.cancelled_waits)
        refusals.add_metric((*d, "busy"), st.busy)
        refusals.add_metric((*d, "queue_full"), st.queue_full)
        barrier_waits.add_metric(d, st.barrier_waits)
        barrier_seconds.add_metric(d, st.barrier_wait_time)
        aborts.add_metric(d, st.aborts)
        destroys.add_metric(d, st.destroys)
        commands.add_metric(d, st.commands)
        for outcome, count in s.replies:
            replies.add_metric((*d, outcome), count)
        cumulative, total = [], 0
        for bound, count in zip(upper, s.buckets, strict=True):
            total += count
            cumulative.append((bound, float(total)))
        latency.add_metric(d, cumulative, s.latency_sum)
        waiters.add_metric(d, len(info.waiters))
        oldest.add_metric(d, max((s.now - w.since for w in info.waiters), default=0.0))
        regular.add_metric(d, len(info.regular_jobs))
        held.add_metric(d, info.monitor_holder is not None)
        pending.add_metric(d, len(info.barrier_pending))
        ajob = info.async_job
        running.add_metric(d, ajob is not None)
        interruptible.add_metric(d, ajob is not None and ajob.interruptible)
        age.add_metric(d, 0.0 if ajob is None else s.now - ajob.started)
        if ajob is not None:
            phase.add_metric(d, {"kind": ajob.kind.value, "phase": ajob.phase})
        if s.observed is not None:
            observed.append(s.observed)
    return [
        begun,
        by_kind,
        waits,
        timeouts,
        cancellations,
        refusals,
        barrier_waits,
        barrier_seconds,
        aborts,
        destroys,
        commands,
        replies,
        latency,
        waiters,
        oldest,
        regular,
        held,
        pending,
        running,
        interruptible,
        age,
        phase,
        *observed_families(observed),
    ]
