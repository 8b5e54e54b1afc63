"""An async QMP client: QEMU's machine protocol over anyio streams.

It knows nothing of jobs: a :class:`QMPClient` is a :class:`jobctl.Monitor`
that the job core drives like any other.

```python
async with open_qmp_unix("/run/vm/qmp.sock") as qmp:
    with qmp.subscribe({"STOP", "RESUME"}) as events:
        await qmp.execute("stop", timeout=5)
        event = await events.receive()
    status = await qmp.execute("query-status")
```
"""

from jobctl._public import publish
from jobctl.qmp._client import (
    DEFAULT_CONNECT_TIMEOUT,
    MAX_COMMAND_BYTES,
    QMPClient,
    QMPStatistics,
    open_qmp_stream,
)
from jobctl.qmp._connect import open_qmp_tcp, open_qmp_unix
from jobctl.qmp._errors import (
    CommandNotFoundError,
    DeviceNotActiveError,
    DeviceNotFoundError,
    GenericError,
    KVMMissingCapError,
    QMPClosedError,
    QMPCommandError,
    QMPConnectTimeoutError,
    QMPError,
    QMPProtocolError,
    QMPTimeoutError,
)
from jobctl.qmp._events import (
    EventFilter,
    EventListener,
    EventSubscription,
    QMPEvent,
    SubscriptionStatistics,
)
from jobctl.qmp._framing import DEFAULT_MAX_LINE, MAX_NUMBER_CHARS, LineReader, encode_command
from jobctl.qmp._greeting import QMPGreeting

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_LINE",
    "MAX_COMMAND_BYTES",
    "MAX_NUMBER_CHARS",
    "CommandNotFoundError",
    "DeviceNotActiveError",
    "DeviceNotFoundError",
    "EventFilter",
    "EventListener",
    "EventSubscription",
    "GenericError",
    "KVMMissingCapError",
    "LineReader",
    "QMPClient",
    "QMPClosedError",
    "QMPCommandError",
    "QMPConnectTimeoutError",
    "QMPError",
    "QMPEvent",
    "QMPGreeting",
    "QMPProtocolError",
    "QMPStatistics",
    "QMPTimeoutError",
    "SubscriptionStatistics",
    "encode_command",
    "open_qmp_stream",
    "open_qmp_tcp",
    "open_qmp_unix",
]


# The public names show their public path (this package's) in reprs,
# tracebacks, pickles and the reference, not the private module's.
publish(globals())
