"""The monitor interface: the VM's serial control channel, as the job core sees it.

The job core knows nothing of QMP: it only needs something that executes one
named command with arguments and returns the reply. ``jobctl.qmp`` implements
this over a real socket; tests may use an in-memory one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["Monitor"]


@runtime_checkable
class Monitor(Protocol):
    """A VM control channel that runs one command at a time.

    Contract for implementations:

    * ``execute`` sends ``command`` with ``arguments`` and returns the reply's
      value. An error reply, or a channel that is gone (end of stream, reset,
      dead process, broken reply), raises the channel's own exception for it:
      the job core passes that on to the caller unchanged, and never raises
      one of its own for it.
    * Cancellation: if ``execute`` is cancelled after the command was written,
      the command is still in flight. The implementation must not write
      another command on this channel until that reply has arrived or the
      channel is closed, so that the job core's guarantee of one command in
      flight holds even across cancellation.
    """

    async def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Run one command and return its reply."""
        ...
