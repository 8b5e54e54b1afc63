"""The timeline page in headless Chromium, over a live feed of real domains
(:func:`jobctl.demo.simulated_workload`: the QEMU flows on simulated hosts).

Needs Debian's ``chromium``: skipped with the reason when it is missing,
except under ``CI=true``, where it fails instead.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

import pytest
import trio

from jobctl import TraceHub
from jobctl.demo import simulated_workload
from jobctl.feed import serve_feed
from jobctl.qemu import VM

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


#: What the page tells a person, read from its DOM.
STORY = """(() => {
  if (!document.getElementById("domains")) return { state: "loading", domains: [], commands: 0 };
  const fail = getComputedStyle(document.body).getPropertyValue("--fail").trim();
  const commands = [...document.querySelectorAll("svg line.command")];
  const swatches = [...document.querySelectorAll(".legend .sw")].map(
    (i) => getComputedStyle(i).backgroundColor);
  return {
    state: document.body.dataset.state,
    past: Number(document.getElementById("n-past").textContent),
    times: [...document.querySelectorAll("#recent time")].map((t) => [t.textContent, t.dateTime]),
    recent: [...document.querySelectorAll("#recent li b")].map((b) => b.textContent),
    legend: [...document.querySelectorAll(".legend li")].map((li) => li.textContent),
    swatches,
    fail,
    commandStrokes: [...new Set(commands.map((l) => getComputedStyle(l).stroke))],
    commands: commands.length,
    domains: [...document.querySelectorAll("#domains tbody tr")].map((tr) => ({
      domain: tr.dataset.domain,
      host: tr.querySelector(".host").textContent,
      state: tr.querySelector(".state").textContent,
      run: tr.querySelector(".run").textContent,
      phase: tr.querySelector(".phase").textContent,
      destination: tr.querySelector(".destination").textContent,
      error: tr.querySelector(".error").textContent,
    })),
  };
})()"""


async def test_the_page_tells_the_story_in_wall_clock_time_from_before_it_opened() -> None:
    """Wall-clock times, the recent past on connecting, a legend whose
    colours mean one thing each (monitor commands are not the failure
    colour), and per domain its host, state, phase with progress,
    destination and last error in plain words."""
    chromium = require_chromium()
    hub = TraceHub()
    vms: dict[str, VM] = {}

    def describe(name: str) -> dict[str, Any] | None:
        """Host and run state, from the VM's observed state."""
        vm = vms.get(name)
        if vm is None or vm.observed.run is None:
            return None
        return {"host": vm.host.name, "run_state": vm.observed.run.status}

    def keep(vm: VM) -> None:
        vms[vm.domain.name] = vm

    async with trio.open_nursery() as nursery:
        address = await nursery.start(partial(serve_feed, hub, describe=describe))
        nursery.start_soon(partial(simulated_workload, hub, domains=2, seed=3, on_vm=keep))
        await trio.sleep(3)  # the workload runs before the page is opened
        opened = time.time()
        async with open_page(chromium, address.page_url) as page:
            seen: dict[str, Any] = {"phase": set(), "destination": set(), "error": set()}
            story: dict[str, Any] = {}
            with trio.move_on_after(60):
                while True:
                    story = await page.evaluate(STORY)
                    for row in story.get("domains", []):
                        for key in seen:
                            if row[key]:
                                seen[key].add(row[key])
                    if story.get("state") == "live" and all(seen.values()) and story["commands"]:
                        break
                    await trio.sleep(0.25)
            assert all(seen.values()), f"the panel never showed all of {seen}; {story}"
            assert story["past"] > 0, "nothing from before the page was opened"
            # Local wall-clock times with milliseconds; their UTC instant is now.
            assert story["times"]
            for text, iso in story["times"]:
                assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", text), text
                instant = datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
                assert opened - 30 < instant < time.time() + 5
            # Plain words, not trace kinds.
            assert not any(
                re.search(r"\b(gate|barrier|job|monitor)\.[a-z_]+", w) for w in story["recent"]
            )
            # The legend: each colour once; commands drawn in their own colour.
            assert "command sent to QEMU" in story["legend"]
            assert "failed" in story["legend"]
            assert len(set(story["swatches"])) == len(story["swatches"]), story["swatches"]
            assert story["commandStrokes"] and all(
                stroke != _rgb(story["fail"]) for stroke in story["commandStrokes"]
            )
            domains = {row["domain"]: row for row in story["domains"]}
            assert set(domains) == {"vm-1@host-a", "vm-1@host-b", "vm-2@host-a", "vm-2@host-b"}
            assert {row["host"] for row in story["domains"]} == {"host-a", "host-b"}
            assert seen["destination"] <= {"host-a", "host-b"}
            # The run state, from the VMs' observed state (the feed's ``status``).
            states = {row["run"] for row in story["domains"]}
            assert states & {"running", "paused", "inmigrate", "postmigrate", "shutoff"}, states
            assert any("%" in phase for phase in seen["phase"]), seen["phase"]
            assert any("abort" in error for error in seen["error"]), seen["error"]
            assert page.exceptions == []
        nursery.cancel_scope.cancel()


def _rgb(hex_colour: str) -> str:
    """``#rrggbb`` as the browser's computed ``rgb(r, g, b)``."""
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"
