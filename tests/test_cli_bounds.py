"""Every numeric option of ``jobctl demo`` and ``jobctl serve`` has a range,
checked at parse time; Ctrl-C ends a demo quickly, with a report (issue 14,
point 6)."""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobctl.cli import build_parser, main

#: Options that take text, not numbers.
TEXT_OPTIONS = {"--listen", "--token"}


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    chosen = sub.choices[name]
    assert isinstance(chosen, argparse.ArgumentParser)
    return chosen


def stated_maximum(command: str, option: str) -> int:
    """The largest value ``jobctl COMMAND --help`` states for ``option``."""
    (action,) = (a for a in subcommand(command)._actions if option in a.option_strings)
    found = re.search(r"\.\.(\d+)", action.help or "")
    assert found is not None, action.help
    return int(found.group(1))


MAX_DOMAINS = stated_maximum("demo", "--domains")
MAX_BANDWIDTH = stated_maximum("demo", "--bandwidth")
#: ``jobctl demo``'s promise: seconds from Ctrl-C to its exit, every VM
#: stopped (on the simulator, at the most ``--domains``).
INTERRUPT_BOUND = 5.0


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Parse ``jobctl argv`` as ``jobctl`` does (parsing only: a value let
    through must not start a run); expect exit status 2 and one line on
    stderr; return it."""
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    return captured.err


FEED_CASES = [
    ("--feed-port", "65536", "65535"),
    ("--feed-port", "-1", "65535"),
    ("--port", "70000", "65535"),
    ("--ws-port", "65536", "65535"),  # the old names, deprecated
    ("--http-port", "-1", "65535"),
    ("--buffer", "0", "at most 65536"),
    ("--buffer", "65537", "at most 65536"),
    ("--max-clients", "0", "at most 4096"),
    ("--max-clients", "4097", "at most 4096"),
    ("--max-handshakes", "100000", "at most 4096"),
    ("--handshake-timeout", "0.05", "from 0.1 to 3600 seconds"),
    ("--handshake-timeout", "nan", "from 0.1 to 3600 seconds"),
    ("--ping-interval", "inf", "from 0.1 to 3600 seconds"),
    ("--ping-interval", "3601", "from 0.1 to 3600 seconds"),
    ("--ping-timeout", "-1", "from 0.1 to 3600 seconds"),
]
DEMO_CASES = [
    ("--migrations", "0", "at most 100000"),
    ("--migrations", "100001", "at most 100000"),
    ("--domains", "100000", f"at most {MAX_DOMAINS}"),
    ("--domains", "x", f"at most {MAX_DOMAINS}"),
    ("--ram", "4097", "at most 4096 MiB"),
    ("--bandwidth", "99999999999999999", f"at most {MAX_BANDWIDTH} MiB/s"),
    ("--bandwidth", str(MAX_BANDWIDTH + 1), f"at most {MAX_BANDWIDTH} MiB/s"),
    ("--bandwidth", "0", f"at most {MAX_BANDWIDTH} MiB/s"),
    ("--serve-port", "65536", "65535"),
    *FEED_CASES,
]
SERVE_CASES = [
    ("--domains", "257", "at most 256"),
    ("--domains", "0", "at most 256"),
    ("--seed", "-1", f"at most {2**64 - 1}"),
    ("--seed", str(2**64), f"at most {2**64 - 1}"),
    ("--duration", "0", "from 0.001 to 2592000 seconds"),
    ("--duration", "inf", "from 0.001 to 2592000 seconds"),
    *FEED_CASES,
]


@pytest.mark.parametrize(
    ("command", "option", "value", "bound"),
    [("demo", *case) for case in DEMO_CASES] + [("serve", *case) for case in SERVE_CASES],
)
def test_a_value_out_of_range_is_a_one_line_usage_error(
    command: str, option: str, value: str, bound: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = usage_error([command, f"{option}={value}"], capsys)
    assert err.startswith(f"jobctl {command}: error: argument {option}")
    assert repr(value) in err  # the value
    assert bound in err  # and the range


@pytest.mark.parametrize(
    "argv",
    [["demo", "--bandwidth", "99999999999999999"], ["demo", "--domains", "100000"]],
)
def test_the_command_itself_exits_2_at_once(argv: list[str]) -> None:
    """Those used to start a run (all migrations failing; a Ctrl-C of 20-40 s)."""
    result = subprocess.run(
        [*_jobctl(), *argv], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"jobctl demo: error: argument {argv[1]}: at most ")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("command", ["demo", "serve"])
def test_every_numeric_option_has_a_range(command: str) -> None:
    """Each option that takes a value either is text or refuses values below
    and above its range, and its help states the range."""
    for action in subcommand(command)._actions:
        if not action.option_strings or action.nargs == 0 or action.choices:
            continue  # flags, --help, --job
        (name, *_) = action.option_strings
        if action.type is None:
            assert name in TEXT_OPTIONS, f"{name} takes a value of no checked type"
            continue
        assert callable(action.type)
        for value in ("-1", "9" * 30, "nan", "x"):
            with pytest.raises(argparse.ArgumentTypeError):
                action.type(value)
        if action.help == argparse.SUPPRESS:
            continue  # a deprecated alias, hidden: its new name states the range
        assert action.help is not None and re.search(r"\d\.\.\d", action.help), name


def test_the_bounds_themselves_are_accepted() -> None:
    argv = "--migrations 100000 --ram 4096 --feed-port 65535 --port 0 --buffer 65536"
    argv += " --max-clients 4096 --max-handshakes 1 --handshake-timeout 0.1"
    argv += f" --ping-interval 3600 --ping-timeout 0.1 --domains {MAX_DOMAINS}"
    demo = build_parser().parse_args(["demo", *argv.split(), "--bandwidth", str(MAX_BANDWIDTH)])
    assert (demo.domains, demo.bandwidth, demo.max_clients) == (MAX_DOMAINS, MAX_BANDWIDTH, 4096)
    serve = build_parser().parse_args(
        ["serve", "--domains", "1", "--seed", str(2**64 - 1), "--duration", "2592000"]
    )
    assert (serve.seed, serve.duration) == (2**64 - 1, 2592000.0)


def test_the_largest_bandwidth_is_one_qemu_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    """The cap is usable: a migration at it completes (the simulator checks
    ``max-bandwidth`` as QEMU does, a uint64 of bytes/s)."""
    assert MAX_BANDWIDTH * 2**20 <= 2**64 - 1
    assert main(["demo", "--migrations", "1", "--bandwidth", str(MAX_BANDWIDTH), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["jobs"]["completed"] == 1 and report["jobs"]["failures"] == []


# -- Ctrl-C on a running demo, in a real process ---------------------------------------

_BAR = re.compile(rb"(\d+)/(\d+) migrations, (\d+) failed")


def _jobctl() -> list[str]:
    script = Path(sys.executable).with_name("jobctl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "jobctl"]


@pytest.mark.parametrize(
    ("when", "domains", "as_json"),
    [("setting up", 64, True), ("migrating", 64, True), ("migrating", MAX_DOMAINS, False)],
)
def test_ctrl_c_ends_a_demo_quickly_with_a_report(when: str, domains: int, as_json: bool) -> None:
    # stderr on a terminal, so that the demo draws its progress bar: it tells
    # when the demo has started, and how far it got.
    master, slave = pty.openpty()
    command = [*_jobctl(), "demo", "--domains", str(domains), "--migrations", "100000"]
    process = subprocess.Popen(
        command + (["--json"] if as_json else []),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    seen = b""

    def drain(timeout: float) -> None:
        nonlocal seen
        if select.select([master], [], [], timeout)[0]:
            try:
                seen += os.read(master, 65536)
            except OSError:  # EIO: the process has gone
                time.sleep(timeout)

    try:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, f"the demo never got going: {seen[-300:]!r}"
            assert process.poll() is None, f"the demo ended early: {seen[-300:]!r}"
            bars = _BAR.findall(seen)
            if bars and (when == "setting up" or int(bars[-1][0]) >= 1):
                break
            drain(0.05)
        process.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        while process.poll() is None and time.monotonic() - interrupted < INTERRUPT_BOUND:
            drain(0.05)  # keep reading: a full terminal would stall the demo
        took = time.monotonic() - interrupted
        assert process.poll() is not None, f"still running {INTERRUPT_BOUND} s after Ctrl-C"
        assert process.stdout is not None
        out = process.stdout.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        os.close(master)
    print(f"{domains} VMs, {when}: exited {took:.2f} s after Ctrl-C")
    assert process.returncode == 130, seen[-500:]
    assert took < INTERRUPT_BOUND
    completed = int(_BAR.findall(seen)[-1][0])
    if as_json:
        report = json.loads(out)
        assert report["ok"] is False and report["interrupted"] == "SIGINT"
        assert report["domains"] == domains and report["jobs"]["requested"] == domains * 100_000
        assert report["jobs"]["completed"] >= completed
    else:
        assert out.startswith("interrupted by SIGINT after ")
        assert f"/{domains * 100_000} completed" in out and f"({domains} VM(s)" in out
        assert out.rstrip().endswith("result: INTERRUPTED")
    assert b"jobctl demo: interrupted" in seen
