"""Rust and Python workers sharing one queue; transactional enqueue from the app's own
transaction."""

import time

import psycopg
import pytest

from conftest import wait_for
from jobcast import APIError, Client, enqueue, job_spec

JOBS = 200


def test_rust_and_python_workers_run_every_job_exactly_once(procs, marker_dir):
    server = procs.serve()
    workers = [procs.rust_worker("--concurrency", "4"),
               procs.python_worker(markers=marker_dir, mixed=1, concurrency=4)]
    for worker in workers:
        wait_for(lambda: "worker started" in worker.log_text(), what="both workers")
    with Client(server.url) as client:
        ids = []
        for _ in range(0, JOBS, 100):
            ids += [j.id for j in client.submit_many(
                [job_spec("demo.steps", {"steps": 1, "step_ms": 10}) for _ in range(100)])]
    db = procs.db
    wait_for(lambda: db.scalar("select count(*) from jobcast.jobs where status = 'succeeded'")
             == JOBS, timeout=30, what="every job to succeed")
    rows = db.query("""
        select j.attempt, count(*) filter (where e.type = 'started'),
               count(*) filter (where e.type = 'succeeded')
          from jobcast.jobs j join jobcast.events e on e.job_id = j.id group by j.id""")
    assert len(rows) == JOBS
    assert all(row == (1, 1, 1) for row in rows), "each job started once and succeeded once"
    by_python = (marker_dir / "ran-by-python").read_text().split()
    assert len(by_python) == len(set(by_python)), "no job ran twice in Python"
    assert 0 < len(by_python) < JOBS, f"both workers took jobs (Python: {len(by_python)})"


def test_rolled_back_enqueue_leaves_nothing_and_wakes_nobody(db):
    with db.connect() as listener:
        listener.execute("listen jobcast_jobs")
        listener.execute("listen jobcast_events")
        with psycopg.connect(db.url) as app:
            with app.transaction():
                app.execute("create table orders (id int primary key)")
            with pytest.raises(RuntimeError):
                with app.transaction():
                    app.execute("insert into orders values (1)")
                    job = enqueue(app, "report.build", {"order": 1})
                    assert job["status"] == "queued" and job["created"] is True
                    raise RuntimeError("the app's request failed")
        assert db.scalar("select count(*) from orders") == 0
        assert db.query("select (select count(*) from jobcast.jobs),"
                        " (select count(*) from jobcast.events)") == [(0, 0)]
        assert list(listener.notifies(timeout=0.5)) == [], "no worker or stream was woken"


def test_committed_enqueue_is_picked_up_and_streamed(procs, marker_dir):
    server = procs.serve()
    procs.python_worker(markers=marker_dir)
    db = procs.db
    with db.connect() as listener, Client(server.url) as client:
        listener.execute("listen jobcast_jobs")
        with psycopg.connect(db.url) as app:  # not autocommit: the app's own transaction
            job = enqueue(app, "py.steps", {"steps": 2, "step_ms": 10}, queue="default",
                          priority=3, max_attempts=2, idempotency_key="order-42")
            time.sleep(0.2)
            # Not visible before commit: the HTTP API does not know the job yet, and no
            # worker has started it.
            with pytest.raises(APIError) as unseen:
                client.get(job["id"])
            assert unseen.value.status_code == 404
            assert list(listener.notifies(timeout=0.1)) == []
            app.commit()
            again = enqueue(app, "py.steps", {"steps": 2}, idempotency_key="order-42")
            app.commit()
            assert again["id"] == job["id"] and again["created"] is False
            with pytest.raises(psycopg.errors.CheckViolation):
                enqueue(app, "not a kind!")
            app.rollback()
        notes = list(listener.notifies(timeout=2, stop_after=1))
        assert [(n.channel, n.payload) for n in notes] == [("jobcast_jobs", "default")]
        events = list(client.follow(job["id"]))
        assert [e.type for e in events] == ["queued", "started", "py.note", "progress",
                                            "progress", "succeeded"]
        done = client.get(job["id"])
        assert done.priority == 3 and done.max_attempts == 2 and done.result == {"steps": 2}
    assert db.scalar("select count(*) from jobcast.jobs") == 1


def test_a_key_used_by_enqueue_is_a_replay_over_http_with_the_same_body(procs):
    server = procs.serve()
    run_at = "2100-01-02T03:04:05.5+02:00"
    with psycopg.connect(procs.db.url) as app:
        job = enqueue(app, "report", {"rows": 5, "title": "Q3 – ünïcode"}, priority=2,
                      run_at=run_at, idempotency_key="invoice-9")
    with Client(server.url) as client:
        replay = client.submit("report", {"title": "Q3 – ünïcode", "rows": 5}, priority=2,
                               run_at=run_at, idempotency_key="invoice-9")
        assert replay.id == job["id"]
        with pytest.raises(APIError) as conflict:
            client.submit("report", {"rows": 6}, idempotency_key="invoice-9")
        assert conflict.value.status_code == 409
    assert procs.db.scalar("select count(*) from jobcast.jobs") == 1


def test_enqueue_async_joins_the_callers_transaction(db):
    import asyncio

    from jobcast import enqueue_async

    async def scenario():
        async with await psycopg.AsyncConnection.connect(db.url) as app:
            async with app.transaction(force_rollback=True):
                await enqueue_async(app, "report.build", {"n": 1})
            async with app.transaction():
                return await enqueue_async(app, "report.build", {"n": 2}, max_attempts=1)

    job = asyncio.run(scenario())
    assert db.query("select id::text, args, max_attempts from jobcast.jobs") == [
        (job["id"], {"n": 2}, 1)]
    assert db.query("select type from jobcast.events") == [("queued",)]
