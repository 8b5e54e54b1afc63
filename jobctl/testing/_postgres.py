"""A throwaway PostgreSQL server for tests: a cluster of its own in a temporary
directory, listening only on a unix socket there, removed on the way out."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Final, final

import attrs

__all__ = ["PostgresNotFoundError", "PostgresStartError", "ThrowawayPostgres", "throwaway_postgres"]

#: Seconds ``pg_ctl`` waits for the server to start or stop.
_PG_CTL_WAIT: Final = 60


class PostgresNotFoundError(FileNotFoundError):
    """PostgreSQL's server programs (``initdb``, ``pg_ctl``) are not installed
    (Debian: ``apt-get install postgresql``)."""


class PostgresStartError(RuntimeError):
    """The throwaway cluster could not be made or started; the message holds
    the server's own words."""


def find_postgres_bin() -> Path:
    """The directory of ``initdb`` and ``pg_ctl``: on ``PATH``, else the newest
    Debian ``/usr/lib/postgresql/<version>/bin``."""
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        return Path(os.path.realpath(initdb)).parent
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if not found:
        raise PostgresNotFoundError(
            "PostgreSQL's initdb is neither on PATH nor in /usr/lib/postgresql/*/bin"
            " (apt-get install postgresql)"
        )
    return Path(found[-1]).parent


@final
@attrs.frozen
class ThrowawayPostgres:
    """A running throwaway cluster. Connect through :meth:`conninfo`; make a
    fresh database per test with :meth:`create_database`."""

    #: The directory holding the cluster's data and its socket.
    directory: Path
    #: The unix socket's directory (``host=`` in a connection string).
    socket_dir: Path
    #: The port in the socket's name.
    port: int
    #: The role the server was made for (its superuser).
    user: str

    def conninfo(self, dbname: str = "postgres") -> str:
        """A libpq connection string for ``dbname`` on this server."""
        return f"host={self.socket_dir} port={self.port} user={self.user} dbname={dbname}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (named ``name``, or a fresh name) and
        return its connection string."""
        import psycopg
        import psycopg.sql

        dbname = name or f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.conninfo(), autocommit=True, connect_timeout=30) as conn:
            conn.execute(
                psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname))
            )
        return self.conninfo(dbname)


#: The watchdog, run by ``python -I -c``: it reads standard input until the
#: process that made the cluster closes its end (it is done, or it died,
#: even by SIGKILL: the kernel closes the pipe), then stops the server
#: (``argv[1:-1]``, pg_ctl stop) and removes the directory (``argv[-1]``).
_WATCHDOG: Final = """\
import shutil, subprocess, sys
sys.stdin.buffer.read()
subprocess.run(sys.argv[1:-1], capture_output=True, timeout=90)
shutil.rmtree(sys.argv[-1], ignore_errors=True)
"""


def _as_user(user: str | None, argv: list[str]) -> list[str]:
    return argv if user is None else ["runuser", "-u", user, "--", *argv]


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=_PG_CTL_WAIT + 30)
    if done.returncode != 0:
        raise PostgresStartError(f"{what} failed ({done.returncode}): {done.stderr or done.stdout}")


@contextlib.contextmanager
def throwaway_postgres(*, port: int = 5432) -> Iterator[ThrowawayPostgres]:
    """``with throwaway_postgres() as pg:`` a PostgreSQL cluster made by
    ``initdb`` in a temporary directory and started by ``pg_ctl``, listening
    on no TCP address, only on a unix socket in that directory; stopped
    (``pg_ctl stop -m immediate``) and removed on the way out, also when the
    body raises. Run as root, the cluster belongs to the ``postgres`` user
    (the server refuses to run as root), else to the current user. A
    watchdog process stops and removes it if this process dies without
    getting there (killed by SIGKILL, say).

    Raises :class:`PostgresNotFoundError` when the server programs are
    missing and :class:`PostgresStartError` when they fail.
    """
    bindir = find_postgres_bin()
    run_as = "postgres" if os.geteuid() == 0 else None
    user = run_as or pwd.getpwuid(os.geteuid()).pw_name
    directory = Path(tempfile.mkdtemp(prefix="jobctl-pg-"))
    data = directory / "data"
    stack = contextlib.ExitStack()
    try:
        if run_as is not None:
            entry = pwd.getpwnam(run_as)
            os.chown(directory, entry.pw_uid, entry.pw_gid)
        _run(
            _as_user(
                run_as,
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-A",
                    "trust",
                    "-U",
                    user,
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
            ),
            "initdb",
        )
        stop = _as_user(
            run_as,
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-m",
                "immediate",
                "-w",
                "-t",
                str(_PG_CTL_WAIT),
                "stop",
            ],
        )
        # Started before the server, in a session of its own (a signal to
        # this process group does not reach it): if this process dies
        # without its ``finally``, the watchdog stops the server and removes
        # the directory.
        watchdog = subprocess.Popen(
            [sys.executable, "-I", "-c", _WATCHDOG, *stop, str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        stack.callback(_dismiss, watchdog)
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{directory}' -p {port}"
            " -c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        _run(
            _as_user(
                run_as,
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(directory / "log"),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(_PG_CTL_WAIT),
                    "start",
                ],
            ),
            "pg_ctl start",
        )
        try:
            yield ThrowawayPostgres(directory=directory, socket_dir=directory, port=port, user=user)
        finally:
            _run(stop, "pg_ctl stop")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        stack.close()


def _dismiss(watchdog: subprocess.Popen[bytes]) -> None:
    """The cluster is gone: let the watchdog find it so and end."""
    assert watchdog.stdin is not None
    watchdog.stdin.close()
    try:
        watchdog.wait(timeout=_PG_CTL_WAIT + 30)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()
