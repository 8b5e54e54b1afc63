"""A small fork server for the crash tests.

``python -m tests.journal._forkserver`` imports everything once, then for
each JSON request line on stdin forks a child and answers with one JSON line.
Forking from a warm, single-threaded server makes a kill point cost
milliseconds instead of an interpreter start.

Requests:

* ``run``: run one worker phase in a work directory, with a kill point
  (:mod:`._killpoint`); answers how the child ended (``{"code": 0}`` or
  ``{"signal": 9, "code": null}``).
* ``simulator``: start ``python -m jobctl_simulators.qemu`` with the given
  arguments as a forked child that outlives the workers; answers its pid
  once its monitor listens.
* ``wait``: wait until these simulators exit; answers how each ended.
* ``reap``: SIGKILL and reap these simulators.

:class:`ForkServer` is the test side.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import anyio

from jobctl_simulators.qemu import main as simulator_main

from . import _corpus, _killpoint, _migration, _remove_vm

ROOT = Path(__file__).resolve().parents[2]
KILLED: Mapping[str, Any] = {"signal": 9, "code": None}
DONE: Mapping[str, Any] = {"code": 0}

Phase = Callable[[Path, Any], Awaitable[None]]
PHASES: Mapping[str, Phase] = {
    "command": _remove_vm.run_command,
    "recover": _remove_vm.run_recovery,
    "migrate": _migration.run_migration,
    "recover-migration": _migration.run_recovery,
    "probe": _migration.probe,
    "corpus": _corpus.corpus,
    "intrude": _corpus.intrude,
}


def _status(status: int) -> dict[str, Any]:
    answer: dict[str, Any] = {}
    if os.WIFSIGNALED(status):
        answer["signal"] = os.WTERMSIG(status)
    answer["code"] = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    return answer


def _log(workdir: str) -> int:
    return os.open(Path(workdir) / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def _child(body: Callable[[], int], stdout: int | None, workdir: str) -> None:  # pragma: no cover
    """Run ``body`` in a forked child and exit with its status, never return."""
    code = 1
    try:
        os.dup2(_log(workdir), 2)
        if stdout is not None:
            os.dup2(stdout, 1)
        code = body()
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run(request: Mapping[str, Any]) -> dict[str, Any]:
    workdir = Path(request["workdir"])

    def body() -> int:
        _killpoint.install(request["kill_at"])
        anyio.run(PHASES[request["phase"]], workdir, request.get("scenario"))
        (workdir / "points").write_text(str(_killpoint.passed()))
        return 0

    pid = os.fork()
    if pid == 0:  # pragma: no cover
        _child(body, None, str(workdir))
    return _status(os.waitpid(pid, 0)[1])


class _Simulators:
    """The simulators this server started, and what they printed."""

    def __init__(self) -> None:
        self.outputs: dict[int, IO[str]] = {}
        self.statuses: dict[int, dict[str, Any]] = {}

    def start(self, request: Mapping[str, Any]) -> dict[str, Any]:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover
            os.close(read)
            _child(lambda: simulator_main(request["argv"]), write, request["workdir"])
        os.close(write)
        output = os.fdopen(read)
        self.outputs[pid] = output
        line = output.readline()
        if not line.startswith("QMP "):
            return {"error": f"the simulator printed {line!r}", **self.reap([pid])}
        return {"pid": pid}

    def wait(self, pids: Sequence[int]) -> dict[str, Any]:
        for pid in pids:
            if pid not in self.statuses:
                self.statuses[pid] = _status(os.waitpid(pid, 0)[1])
        return {"exited": {str(pid): self.statuses[pid] for pid in pids}}

    def reap(self, pids: Sequence[int]) -> dict[str, Any]:
        for pid in pids:
            if pid not in self.statuses:
                os.kill(pid, signal.SIGKILL)
                self.statuses[pid] = _status(os.waitpid(pid, 0)[1])
            self.outputs.pop(pid).close()
        return {"reaped": [str(pid) for pid in pids]}


def serve() -> None:
    """Answer request lines until stdin closes; then reap every simulator."""
    simulators = _Simulators()
    try:
        for line in sys.stdin:
            request = json.loads(line)
            kind = request.pop("request")
            if kind == "run":
                answer = _run(request)
            elif kind == "simulator":
                answer = simulators.start(request)
            elif kind == "wait":
                answer = simulators.wait(request["pids"])
            else:
                answer = simulators.reap(request["pids"])
            print(json.dumps(answer), flush=True)
    finally:
        simulators.reap(list(simulators.outputs))


class ForkServer:
    """The test side: one warm server process, closed by :meth:`close`."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.journal._forkserver"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        #: Kill points of an uninterrupted run, per scenario (it is deterministic).
        self.points: dict[str, int] = {}

    def _ask(self, request: Mapping[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the fork server died"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def run(
        self, phase: str, workdir: Path, scenario: Any = None, kill_at: int | None = None
    ) -> dict[str, Any]:
        """Run a worker phase; fails the test if it ended other than by
        success or the SIGKILL it was given."""
        answer = self._ask(
            {
                "request": "run",
                "phase": phase,
                "workdir": str(workdir),
                "scenario": scenario,
                "kill_at": kill_at,
            }
        )
        if answer not in (KILLED, DONE):
            log = (workdir / "worker.log").read_text()
            raise AssertionError(f"{phase} worker ended with {answer}:\n{log}")
        return answer

    def simulator(self, workdir: Path, *argv: str) -> int:
        answer = self._ask({"request": "simulator", "workdir": str(workdir), "argv": argv})
        if "pid" not in answer:
            log = (workdir / "worker.log").read_text()
            raise AssertionError(f"simulator {argv} did not start: {answer}\n{log}")
        pid: int = answer["pid"]
        return pid

    def wait(self, pids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Wait until these simulators exit; how each one ended."""
        answer = self._ask({"request": "wait", "pids": list(pids)})
        return {int(pid): status for pid, status in answer["exited"].items()}

    def reap(self, pids: Sequence[int]) -> None:
        self._ask({"request": "reap", "pids": list(pids)})

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        finally:
            if self.process.returncode is None:
                self.process.kill()
                self.process.wait()
            self.process.stdout.close()


if __name__ == "__main__":
    serve()
