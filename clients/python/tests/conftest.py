"""Harness: a fresh database per test (a copy of one migrated with `jobcast migrate`), the
real `jobcast` binary as `serve`/`work`, and Python workers as real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[3]
TESTS = Path(__file__).resolve().parent
BIN = os.environ.get("JOBCAST_BIN", str(REPO / "target" / "debug" / "jobcast"))
LOGS = Path(tempfile.gettempdir()) / "jobcast-py-logs"


def admin_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        pytest.exit("DATABASE_URL must point at a PostgreSQL server "
                    "(scripts/python-tests starts a throwaway one)", returncode=2)
    return url


def url_for(database: str) -> str:
    base, _, _ = admin_url().rpartition("/")
    return f"{base}/{database}"


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Polls until ``condition()`` is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Proc:
    """A child process, killed at the end of its test; stderr goes to a log file."""

    def __init__(self, args: List[str], name: str, env: Optional[Dict[str, str]] = None,
                 wait_for_url: bool = False) -> None:
        LOGS.mkdir(exist_ok=True)
        self.log = LOGS / f"{name}-{uuid.uuid4().hex[:8]}.log"
        child_env = {**os.environ, "RUST_LOG": "info", **(env or {})}
        child_env.pop("DATABASE_URL", None)
        if env and "DATABASE_URL" in env:
            child_env["DATABASE_URL"] = env["DATABASE_URL"]
        self.child = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=open(self.log, "wb"), env=child_env, text=True)
        self.url: Optional[str] = None
        self.stdout_lines: List[str] = []
        if wait_for_url:
            assert self.child.stdout is not None
            for line in self.child.stdout:
                if line.startswith("jobcast listening on "):
                    self.url = line.split("jobcast listening on ", 1)[1].strip()
                    break
            assert self.url, f"{name} exited before listening; see {self.log}"
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        if self.child.stdout is not None:
            for line in self.child.stdout:
                self.stdout_lines.append(line)

    @property
    def pid(self) -> int:
        return self.child.pid

    def signal(self, sig: int) -> None:
        self.child.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.child.wait(timeout)

    def kill(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait(5)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class Db:
    """One test's database."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = url_for(name)

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True, **kwargs)

    def query(self, sql: str, params: Any = None) -> List[Any]:
        with self.connect() as conn:
            return conn.execute(sql, params).fetchall()

    def scalar(self, sql: str, params: Any = None) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None


@pytest.fixture(scope="session")
def template() -> Iterator[str]:
    if not os.access(BIN, os.X_OK):
        pytest.exit(f"no jobcast binary at {BIN}: run `cargo build` or set JOBCAST_BIN",
                    returncode=2)
    name = f"jobcast_py_template_{os.getpid()}"
    with psycopg.connect(admin_url(), autocommit=True) as admin:
        admin.execute(f"drop database if exists {name}")
        admin.execute(f"create database {name}")
    subprocess.run([BIN, "migrate", "--database-url", url_for(name)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    yield name
    with psycopg.connect(admin_url(), autocommit=True) as admin:
        admin.execute(f"drop database if exists {name} with (force)")


@pytest.fixture
def db(template: str) -> Iterator[Db]:
    name = f"jobcast_py_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url(), autocommit=True) as admin:
        admin.execute(f"create database {name} template {template}")
    yield Db(name)
    with psycopg.connect(admin_url(), autocommit=True) as admin:
        admin.execute(f"drop database if exists {name} with (force)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Procs:
    """Starts the processes of a test and kills whatever is left at its end."""

    def __init__(self, db: Db) -> None:
        self.db = db
        self.started: List[Proc] = []

    def _track(self, proc: Proc) -> Proc:
        self.started.append(proc)
        return proc

    def serve(self, port: int = 0, *extra: str) -> Proc:
        return self._track(Proc([BIN, "serve", "--listen", f"127.0.0.1:{port}",
                                 "--database-url", self.db.url, *extra], "serve",
                                wait_for_url=True))

    def rust_worker(self, *extra: str) -> Proc:
        return self._track(Proc([BIN, "work", "--database-url", self.db.url, *extra], "work"))

    def python_worker(self, **settings: Any) -> Proc:
        """tests/worker_app.py with the given Worker settings (see that file)."""
        env = {"DATABASE_URL": self.db.url, "PYTHONUNBUFFERED": "1"}
        for key, value in settings.items():
            env[f"APP_{key.upper()}"] = str(value)
        return self._track(Proc([sys.executable, str(TESTS / "worker_app.py")], "pyworker",
                                env=env))

    def python_script(self, path: Path, env: Optional[Dict[str, str]] = None) -> Proc:
        env = {"DATABASE_URL": self.db.url, "PYTHONUNBUFFERED": "1", **(env or {})}
        return self._track(Proc([sys.executable, str(path)], path.stem, env=env))

    def kill_all(self) -> None:
        for proc in self.started:
            proc.kill()


@pytest.fixture
def procs(db: Db) -> Iterator[Procs]:
    started = Procs(db)
    yield started
    started.kill_all()


@pytest.fixture
def marker_dir(tmp_path: Path) -> Path:
    """Where worker_app handlers leave files that tell what they saw."""
    return tmp_path


def sigkill(proc: Proc) -> None:
    proc.signal(signal.SIGKILL)
    proc.wait(5)
