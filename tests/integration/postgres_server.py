"""A real Postgres for the tests: `initdb` and `pg_ctl` (Debian's `postgresql` package, which
`.ci/run` installs) on 127.0.0.1, as the `postgres` user when the tests run as root (Postgres
refuses to run as root), with trust authentication on loopback only."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from test_service_support import free_port

SERVER_USER = "postgres"


def _bindir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, else Debian's versioned folder (newest first)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(candidates[-1]).parent if candidates else None


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", SERVER_USER, "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_server() -> Iterator[str]:
    """A fresh cluster; yields the admin URL (postgresql://postgres@127.0.0.1:PORT/postgres)."""
    bindir = _bindir()
    if bindir is None:
        message = "Postgres is not installed (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: .ci/run installs it")
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="mmfuse-pg-"))  # under /tmp, which the server user can reach
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, SERVER_USER)
    run = {"check": True, "capture_output": True}
    subprocess.run(
        _as_server_user(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]
        ),
        **run,
    )
    port = free_port()
    options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off"
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log")]
    subprocess.run(_as_server_user([*pg_ctl, "-o", options, "-w", "-t", "60", "start"]), **run)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_server_user([*pg_ctl, "-m", "immediate", "-w", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(admin_url: str) -> str:
    """A new, empty database on the server; its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return admin_url.rsplit("/", 1)[0] + f"/{name}"
