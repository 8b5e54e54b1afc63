"""The exceptions of the blocking facade."""

from __future__ import annotations

from typing import final

__all__ = ["BlockingError", "LoopNotRunningError", "LoopThreadError"]


class BlockingError(Exception):
    """The root of the blocking facade's own errors.

    The facade raises what the wrapped call raises (job errors, QMP errors,
    flow errors) unchanged; only misuse of the facade itself is a
    :class:`BlockingError`.
    """


@final
class LoopThreadError(BlockingError, RuntimeError):
    """A blocking call was made from the event loop thread itself.

    It would wait for the loop it blocks: a deadlock. Inside the loop, call
    the async API (``jobctl``, ``jobctl.qemu``) directly.
    """


@final
class LoopNotRunningError(BlockingError, RuntimeError):
    """The :class:`EventLoopThread` was not entered yet, or has been closed."""
