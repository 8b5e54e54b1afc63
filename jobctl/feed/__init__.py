"""The live job feed: the trace over a websocket, and a timeline page.

::

    async with trio.open_nursery() as nursery:
        address = await nursery.start(partial(jobctl.feed.serve_feed, hub, http_port=8766))
        print("open", address.page_url)

:class:`Feed` is the websocket side alone (serve its
:meth:`~Feed.handle_stream` however you like); :class:`PageServer` serves the
page. The message schema is in :mod:`jobctl.feed._protocol` and
``jobctl/feed/SCHEMA.md``. It runs in trio (over trio-websocket: ``pip install
'virt-jobctl[trio]'``) and in asyncio applications (over wsproto: ``pip install
'virt-jobctl[feed]'``); :class:`FeedBackendError` says what is missing.

Under load and hostile clients (see :class:`Feed`): only a completed
handshake holds a client slot; unfinished handshakes have their own bounded
pool and a short timeout; a full feed drops its least responsive client
before it refuses a fresh one; job control never waits for any client.
"""

from __future__ import annotations

from jobctl._public import publish

from ._backend import FeedBackendError
from ._feed import (
    DEFAULT_BUFFER,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_HISTORY,
    DEFAULT_HISTORY_AGE,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    FEED_PATH,
    UNRESPONSIVE_AFTER,
    Feed,
    FeedStatistics,
)
from ._page import PageServer
from ._protocol import FEED_SCHEMA_VERSION, FeedProtocolError, Subscription
from ._serve import FeedAddress, FeedConfigError, check_listen, serve_feed
from ._state import FeedState

__all__ = [
    "DEFAULT_BUFFER",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_HISTORY",
    "DEFAULT_HISTORY_AGE",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_MAX_HANDSHAKES",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PING_TIMEOUT",
    "FEED_PATH",
    "FEED_SCHEMA_VERSION",
    "UNRESPONSIVE_AFTER",
    "Feed",
    "FeedAddress",
    "FeedBackendError",
    "FeedConfigError",
    "FeedProtocolError",
    "FeedState",
    "FeedStatistics",
    "PageServer",
    "Subscription",
    "check_listen",
    "serve_feed",
]


# The public names show their public path (this package's) in reprs,
# tracebacks, pickles and the reference, not the private module's.
publish(globals())
