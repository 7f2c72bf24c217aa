"""Writes PostgreSQL refuses, and the commit ledger that makes a retried batch safe."""

import asyncio

import psycopg

from jobcast import Client
from jobcast._db import Connector
from jobcast._writer import EventOp, Writer

# migrations/V3 on main creates it; older schemas lack it (the writer then goes without).
LEDGER = """create table if not exists jobcast.worker_writes (
    id text primary key, accepted boolean[], at timestamptz not null default now())"""


def test_a_result_postgresql_refuses_fails_the_job_with_the_reason(procs, marker_dir):
    server = procs.serve()
    procs.python_worker(markers=marker_dir)
    with Client(server.url) as client:
        job = client.submit("py.nul_result", max_attempts=3)
        assert [e.type for e in client.follow(job.id)] == ["queued", "started", "failed"]
        error = client.get(job.id).error
        assert error["fatal"] is True
        assert error["message"].startswith("PostgreSQL refused the attempt's result: ")
        assert "22P05" in error["message"]
        fine = client.submit("py.echo", {"still": "working"})
        assert [e.type for e in client.follow(fine.id)][-1] == "succeeded"


def test_a_retried_batch_finds_its_committed_outcome_instead_of_writing_twice(db):
    with db.connect() as conn:
        conn.execute(LEDGER)
    with db.connect() as conn:
        conn.execute("select jobcast.enqueue_jobs('[{\"kind\": \"report\"}]')")
        (job_id, attempt), = conn.execute(
            "select id, attempt from jobcast.claim_jobs('{default}', null, 'w1', 1, 30)"
        ).fetchall()

    async def write_twice():
        writer = Writer(Connector(db.url, "test"), "w1")
        loop = asyncio.get_running_loop()
        batch = [(EventOp(job_id, attempt, {"type": "progress", "progress": 50.0,
                                            "message": "half"}), loop.create_future()),
                 (EventOp(job_id, attempt + 1, {"type": "progress", "progress": 60.0}),
                  loop.create_future())]
        first = await writer._write(batch, "w1/1")
        # The COMMIT went through but its answer was lost: the same batch is written again.
        second = await writer._write(batch, "w1/1")
        await writer._connector.close()
        return first, second

    first, second = asyncio.run(write_twice())
    assert first == second == [True, False], "the stale attempt's event is fenced out"
    assert db.query("select seq, type from jobcast.events where job_id = %s order by seq",
                    (job_id,)) == [(1, "queued"), (2, "started"), (3, "progress")]
    assert db.query("select id, accepted from jobcast.worker_writes") == [("w1/1", [True, False])]


def test_workers_record_their_batches_in_the_ledger(procs, marker_dir):
    with procs.db.connect() as conn:
        conn.execute(LEDGER)
    server = procs.serve()
    procs.python_worker(markers=marker_dir)
    with Client(server.url) as client:
        job = client.submit("py.steps", {"steps": 2, "step_ms": 10})
        assert [e.type for e in client.follow(job.id)][-1] == "succeeded"
    rows = procs.db.query("select id, accepted from jobcast.worker_writes")
    assert rows and all(accepted and all(accepted) for _, accepted in rows)
    assert len({row[0].rsplit("/", 1)[0] for row in rows}) == 1, "one worker's batch ids"
