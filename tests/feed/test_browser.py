"""The timeline page in headless Chromium, over a live feed of real domains
(:func:`jobctl.demo.simulated_workload`: the QEMU flows on simulated hosts).

Needs Debian's ``chromium``: skipped with the reason when it is missing,
except under ``CI=true``, where it fails instead.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import trio

from jobctl import TraceHub
from jobctl.demo import simulated_workload
from jobctl.feed import serve_feed

from .._requires import require_chromium
from ._chromium import Page, open_page
from ._demo import serving_demo

pytestmark = [pytest.mark.anyio, pytest.mark.browser]

#: What the page shows, read from its DOM.
VIEW = """(() => {
  if (!document.getElementById("latency")) return { state: "loading" };
  const count = (g, selector) => g.querySelectorAll(selector).length;
  return {
    state: document.body.dataset.state,
    status: document.getElementById("status").textContent,
    events: Number(document.getElementById("n-events").textContent),
    lanes: [...document.querySelectorAll("svg g.lane")].map((g) => ({
      domain: g.dataset.domain,
      events: Number(g.dataset.events),
      async: count(g, "rect.async"),
      windows: count(g, "rect.window"),
      queries: count(g, "rect.job.query"),
      monitor: count(g, "rect.monitor"),
    })),
    latency: Object.fromEntries(
      [...document.querySelectorAll("#latency tr[data-stat]")].map(
        (row) => [row.dataset.stat, Number(row.querySelector("td").textContent)])),
  };
})()"""


@pytest.fixture
def anyio_backend() -> Any:
    return "trio"  # a real browser: the real clock


async def wait_for_view(
    page: Page, done: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60
) -> dict[str, Any]:
    """Poll the page's DOM until ``done``; fail with the last view if it never is."""
    view: dict[str, Any] = {}
    with trio.move_on_after(timeout):
        while True:
            view = await page.evaluate(VIEW)
            if done(view):
                return view
            await trio.sleep(0.25)
    pytest.fail(f"the page never showed {what}; last view: {view}")


def lanes_drawn(domains: list[str]) -> Callable[[dict[str, Any]], bool]:
    def done(view: dict[str, Any]) -> bool:
        if view["state"] != "live":
            return False
        lanes = view["lanes"]
        return (
            [lane["domain"] for lane in lanes] == domains
            and all(
                lane["async"] and lane["windows"] and lane["queries"] and lane["monitor"]
                for lane in lanes
            )
            and view["latency"]["query_idle"] + view["latency"]["query_async"] > 0
        )

    return done


async def test_lanes_and_events_appear_for_running_migrations() -> None:
    chromium = require_chromium()
    hub = TraceHub()
    async with trio.open_nursery() as nursery:
        address = await nursery.start(partial(serve_feed, hub))
        nursery.start_soon(partial(simulated_workload, hub, domains=2, seed=3))
        async with open_page(chromium, address.page_url) as page:
            # Each VM is a domain on each simulated host; it migrates back and forth.
            lanes = ["vm-1@host-a", "vm-1@host-b", "vm-2@host-a", "vm-2@host-b"]
            view = await wait_for_view(
                page, lanes_drawn(lanes), "a lane per domain with migrations"
            )
            assert all(lane["events"] > 0 for lane in view["lanes"])
            assert view["events"] == sum(lane["events"] for lane in view["lanes"])
            assert page.exceptions == []
        nursery.cancel_scope.cancel()


async def test_the_page_presents_the_token_from_its_address() -> None:
    chromium = require_chromium()
    hub = TraceHub()
    async with trio.open_nursery() as nursery:
        address = await nursery.start(partial(serve_feed, hub, token="s3cret"))
        nursery.start_soon(partial(simulated_workload, hub, domains=1, seed=4))
        async with open_page(chromium, address.page_url) as page:
            view = await wait_for_view(
                page, lambda v: v["state"] == "error", "that a token is needed"
            )
            assert "token" in view["status"]
        async with open_page(chromium, address.page_url + "#token=s3cret") as page:
            lanes = ["vm-1@host-a", "vm-1@host-b"]
            await wait_for_view(page, lanes_drawn(lanes), "the lanes, with the token")
            assert page.exceptions == []
        nursery.cancel_scope.cancel()


async def test_jobctl_demo_serve_shows_its_migrations() -> None:
    """``jobctl demo --serve`` as a user runs it: lanes and events for the
    migrations it is running, in the page it serves."""
    chromium = require_chromium()
    options = ("--domains", "2", "--migrations", "100000")
    async with serving_demo(*options) as (url, process), open_page(chromium, url) as page:

        def migrating(view: dict[str, Any]) -> bool:
            if view["state"] != "live" or len(view["lanes"]) < 2:
                return False
            busy = [lane for lane in view["lanes"] if lane["async"] and lane["monitor"]]
            return (
                len(busy) >= 2
                and any(lane["windows"] and lane["queries"] for lane in busy)
                and view["latency"]["query_async"] > 0
            )

        await wait_for_view(page, migrating, "lanes with the demo's migrations")
        assert page.exceptions == []
        assert process.returncode is None, "the demo stopped serving"
