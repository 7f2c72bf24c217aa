"""No-op drain rate: the Python Worker beside `jobcast work`, same run, same database.

    DATABASE_URL=postgres://…/postgres JOBCAST_BIN=target/debug/jobcast \
        python clients/python/benchmarks/drain.py [JOBS] [CONCURRENCY]

For each worker: a fresh database, JOBS `demo.echo` jobs enqueued in one statement, then
one worker process with CONCURRENCY slots started and timed until every job succeeded.
"""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[3]
BIN = os.environ.get("JOBCAST_BIN", str(REPO / "target" / "debug" / "jobcast"))
WORKER = """
import os, sys
from jobcast import Worker
worker = Worker(os.environ["DATABASE_URL"], concurrency=int(sys.argv[1]))
@worker.handler("demo.echo")
async def echo(ctx, args):
    return args
worker.run()
"""


def database(admin: str) -> str:
    name = f"jobcast_drain_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"create database {name}")
    url = f"{admin.rpartition('/')[0]}/{name}"
    subprocess.run([BIN, "migrate", "--database-url", url], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return url


def drain(url: str, jobs: int, command: list) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select count(*) from jobcast.enqueue_jobs(("
                     " select jsonb_agg(jsonb_build_object('kind', 'demo.echo', 'args',"
                     "   jsonb_build_object('n', i))) from generate_series(1, %s) i))", (jobs,))
        env = {**os.environ, "DATABASE_URL": url, "RUST_LOG": "warn"}
        started = time.monotonic()
        worker = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        try:
            while conn.execute("select count(*) from jobcast.jobs where status = 'succeeded'"
                               ).fetchone()[0] < jobs:
                time.sleep(0.02)
            return time.monotonic() - started
        finally:
            worker.terminate()
            worker.wait(30)


def main() -> None:
    admin = os.environ["DATABASE_URL"]
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    concurrency = sys.argv[2] if len(sys.argv) > 2 else "32"
    runs = {
        "python Worker": [sys.executable, "-c", WORKER, concurrency],
        "jobcast work": [BIN, "work", "--concurrency", concurrency],
    }
    for name, command in runs.items():
        seconds = drain(database(admin), jobs, command)
        print(f"{name:>14}: {jobs} no-op jobs at concurrency {concurrency} in {seconds:.2f} s"
              f" = {jobs / seconds:,.0f} jobs/s (including process start)")


if __name__ == "__main__":
    main()
