"""The ``jobctl`` command reads as plain text and its options are named for
what they set (issue 17, point 4): ``--version``; a description for the
command and each subcommand, with no reStructuredText markup; ``--port`` is
the page's port (the URL printed), ``--feed-port`` the websocket's; the old
names still work, with a warning on standard error."""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import socket
import subprocess
import sys

import pytest

import jobctl
from jobctl.cli import build_parser, main

JOBCTL = [sys.executable, "-m", "jobctl"]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_version_is_the_installed_distributions() -> None:
    version = importlib.metadata.version("virt-jobctl")
    assert jobctl.__version__ == version
    result = subprocess.run(
        [*JOBCTL, "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout == f"jobctl {version}\n"


@pytest.mark.parametrize("argv", [[], ["demo"], ["serve"]])
def test_help_is_plain_text_with_a_description(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for markup in ("``", "`", ":func:", ":data:", ":class:"):
        assert markup not in text, f"{markup!r} in jobctl {' '.join(argv)} --help"
    # The usage, then a description paragraph of a few words at least.
    paragraphs = text.split("\n\n")
    assert paragraphs[0].startswith("usage: jobctl")
    assert len(paragraphs[1].split()) >= 10, paragraphs[1]


def test_every_subcommand_has_a_description_and_a_help_line() -> None:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    for name, chosen in _subcommands().items():
        assert chosen.description, name
        assert helps.get(name), name


@pytest.mark.parametrize("command", ["demo", "serve"])
def test_port_is_the_pages_and_feed_port_the_websockets(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args([command, "--port", "1234", "--feed-port", "2345"])
    assert (args.http_port, args.ws_port) == (1234, 2345)
    defaults = build_parser().parse_args([command])
    assert (defaults.http_port, defaults.ws_port) == (8766, 8765)
    assert capsys.readouterr().err == ""  # the new names warn of nothing


@pytest.mark.parametrize(
    ("command", "old", "dest", "new"),
    [
        ("serve", "--http-port", "http_port", "--port"),
        ("serve", "--ws-port", "ws_port", "--feed-port"),
        ("demo", "--http-port", "http_port", "--port"),
        ("demo", "--ws-port", "ws_port", "--feed-port"),
        ("demo", "--serve-port", "ws_port", "--feed-port"),
    ],
)
def test_an_old_port_name_works_and_warns(
    command: str, old: str, dest: str, new: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args([command, old, "4321"])
    assert getattr(args, dest) == 4321
    other = {"http_port": "ws_port", "ws_port": "http_port"}[dest]
    assert getattr(args, other) == {"http_port": 8766, "ws_port": 8765}[other]
    err = capsys.readouterr().err
    assert err.startswith(f"jobctl {command}: warning: {old} is deprecated, use {new}")
    assert err.count("\n") == 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_the_printed_page_url_has_the_port_given() -> None:
    port = _free_port()
    command = [*JOBCTL, "serve", "--port", str(port), "--feed-port", "0"]
    command += ["--duration", "0.2", "--domains", "1", "--seed", "1"]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    page = re.search(r"timeline page (http://\S+)", result.stdout)
    assert page is not None, result.stdout
    assert page.group(1) == f"http://127.0.0.1:{port}/"
    feed = re.search(r"websocket feed ws://127\.0\.0\.1:(\d+)/", result.stdout)
    assert feed is not None and int(feed.group(1)) not in (0, port), result.stdout
