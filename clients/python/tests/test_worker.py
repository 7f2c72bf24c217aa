"""The Python Worker as a real process: outcomes, cancellation, crashes, fencing, drain."""

import signal
import time

from conftest import sigkill, wait_for
from jobcast import Client


def events_of(db, job_id):
    return db.query("select seq, type, data from jobcast.events where job_id = %s order by seq",
                    (int(job_id),))


def test_async_and_plain_handlers_report_progress_events_and_results(procs, marker_dir):
    server = procs.serve()
    procs.python_worker(markers=marker_dir)
    with Client(server.url) as client:
        job = client.submit("py.steps", {"steps": 3, "step_ms": 10})
        events = list(client.follow(job.id))
        assert [e.type for e in events] == ["queued", "started", "py.note", "progress",
                                            "progress", "progress", "succeeded"]
        assert events[2].data["data"] == {"worker": "python"}
        assert [e.data["message"] for e in events[3:6]] == ["step 1/3", "step 2/3", "step 3/3"]
        assert events[5].data["data"] == {"i": 3} and events[5].data["progress"] == 100
        assert events[-1].data["result"] == {"steps": 3}

        plain = client.submit("py.sync_steps", {"steps": 2, "step_ms": 10})
        assert [e.type for e in client.follow(plain.id)][-3:] == ["progress", "progress",
                                                                  "succeeded"]
        assert client.get(plain.id).result == {"steps": 2, "thread": True}

        # A worker claims only the kinds it has handlers for.
        foreign = client.submit("someone.elses")
        list(client.follow(client.submit("py.echo").id))
        assert client.get(foreign.id).status == "queued" and client.get(foreign.id).attempt == 0


def test_heartbeats_keep_a_long_attempt_leased(procs, marker_dir):
    server = procs.serve()
    procs.python_worker(markers=marker_dir, lease_secs=0.6)
    with Client(server.url) as client:
        job = client.submit("py.steps", {"steps": 4, "step_ms": 500})  # 2 s, over 3 leases
        events = [e.type for e in client.follow(job.id)]
        assert "retrying" not in events and events[-1] == "succeeded"
        assert client.get(job.id).attempt == 1


def test_fatal_fails_at_once_and_exceptions_retry_with_backoff(procs, marker_dir):
    server = procs.serve()
    procs.python_worker(markers=marker_dir, retry_base_ms=200)
    with Client(server.url) as client:
        fatal = client.submit("py.fatal", max_attempts=5)
        assert [e.type for e in client.follow(fatal.id)] == ["queued", "started", "failed"]
        failed = client.get(fatal.id)
        assert failed.status == "failed" and failed.attempt == 1
        assert failed.error == {"message": "bad input: no such report", "fatal": True}

        flaky = client.submit("py.flaky", {"succeed_at": 3}, max_attempts=3)
        events = list(client.follow(flaky.id))
        assert [e.type for e in events] == ["queued", "started", "retrying", "started",
                                            "retrying", "started", "succeeded"]
        retrying = [e for e in events if e.type == "retrying"]
        assert retrying[0].data["error"]["message"] == "flaky on attempt 1"
        assert retrying[0].data["error"]["exception"] == "ValueError"
        # base 200 ms · 2^(attempt−1), ±20 %: the second wait is about twice the first.
        waits = []
        for r in retrying:
            row = events_of(procs.db, flaky.id)
            at = {e[0]: e[2] for e in row}
            waits.append(_ms_between(at[r.id]["at"], at[r.id]["run_at"]))
        assert 100 <= waits[0] <= 260 < waits[1] <= 500, waits
        assert client.get(flaky.id).result == {"attempt": 3}

        exhausted = client.submit("py.flaky", {"succeed_at": 9}, max_attempts=2)
        assert [e.type for e in client.follow(exhausted.id)][-1] == "failed"
        assert client.get(exhausted.id).error["message"] == "flaky on attempt 2"

        retry = client.submit("py.retry", {"delay": 0.3})
        events = list(client.follow(retry.id))
        assert [e.type for e in events][-2:] == ["started", "succeeded"]
        assert client.get(retry.id).result == {"attempt": 2}


def _ms_between(start: str, end: str) -> float:
    from datetime import datetime

    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds() * 1000


def test_cancel_stops_the_running_handler(procs, marker_dir):
    server = procs.serve()
    procs.python_worker(markers=marker_dir)
    with Client(server.url) as client:
        job = client.submit("py.steps", {"steps": 100, "step_ms": 50})
        follow = client.follow(job.id)
        for event in follow:
            if event.type == "progress":
                break
        cancelled_at = time.monotonic()
        client.cancel(job.id)
        assert [e.type for e in follow][-1] == "cancelled"
        wait_for(lambda: (marker_dir / f"{job.id}.stopped").exists(), timeout=2,
                 what="the handler to be stopped")
        assert time.monotonic() - cancelled_at < 2.0, "stopped long before its 5 s of steps"
        count = len(events_of(procs.db, job.id))
        time.sleep(0.3)
        assert len(events_of(procs.db, job.id)) == count
        final = client.get(job.id)
        assert final.status == "cancelled" and final.attempt == 1


def test_timeout_fails_the_attempt(procs, marker_dir):
    server = procs.serve()
    procs.python_worker(markers=marker_dir)
    with Client(server.url) as client:
        job = client.submit("py.hang", {"hang_attempts": 9}, timeout_secs=1, max_attempts=1)
        assert [e.type for e in client.follow(job.id)][-1] == "failed"
        error = client.get(job.id).error
        assert error == {"message": "timed out after 1 s", "timeout": True}


def test_a_killed_worker_job_is_taken_up_again_after_its_lease(procs, marker_dir):
    server = procs.serve()
    doomed = procs.python_worker(markers=marker_dir, lease_secs=1)
    with Client(server.url) as client:
        job = client.submit("py.hang")
        wait_for(lambda: (marker_dir / f"{job.id}.started").exists(), what="attempt 1")
        sigkill(doomed)
        procs.python_worker(markers=marker_dir, lease_secs=1)
        events = list(client.follow(job.id))
        assert [e.type for e in events] == ["queued", "started", "retrying", "started",
                                            "succeeded"]
        assert events[2].data["error"]["lease_expired"] is True
        assert client.get(job.id).result == {"attempt": 2}


def test_a_fenced_out_worker_stops_and_its_late_writes_are_refused(procs, marker_dir):
    server = procs.serve()
    stale = procs.python_worker(markers=marker_dir, lease_secs=1)
    with Client(server.url) as client:
        job = client.submit("py.fence")
        follow = client.follow(job.id)
        for event in follow:
            if event.type == "progress":
                break
        # The worker freezes (a long GC pause, a stopped VM): its lease runs out.
        stale.signal(signal.SIGSTOP)
        procs.python_worker(markers=marker_dir, lease_secs=1)
        rest = [e.type for e in follow]
        assert rest[-3:] == ["retrying", "started", "succeeded"]
        stale.signal(signal.SIGCONT)
        wait_for(lambda: (marker_dir / f"{job.id}.refused").exists(), timeout=5,
                 what="the stale handler to be refused")
        time.sleep(0.3)
        rows = events_of(procs.db, job.id)
        retrying_seq = next(seq for seq, type_, _ in rows if type_ == "retrying")
        assert all(seq < retrying_seq for seq, _, data in rows if data["attempt"] == 1 and
                   data["type"] == "progress"), "no event of attempt 1 after it was taken"
        final = client.get(job.id)
        assert final.status == "succeeded" and final.result == {"attempt": 2}
    assert stale.child.poll() is None, "the stale worker itself keeps running"


def test_sigterm_finishes_short_jobs_and_hands_back_long_ones(procs, marker_dir):
    server = procs.serve()
    worker = procs.python_worker(markers=marker_dir, grace_secs=2)
    with Client(server.url) as client:
        short = client.submit("py.steps", {"steps": 3, "step_ms": 100})
        long = client.submit("py.hang")
        wait_for(lambda: (marker_dir / f"{long.id}.started").exists(), what="the long job")
        wait_for(lambda: client.get(short.id).status == "running", what="the short job")
        worker.signal(signal.SIGTERM)
        assert worker.wait(10) == 0
        assert client.get(short.id).status == "succeeded"
        handed_back = client.get(long.id)
        assert handed_back.status == "queued" and handed_back.attempt == 0
        last = events_of(procs.db, long.id)[-1]
        assert last[1] == "queued" and last[2]["message"] == "released by a stopping worker"
    assert "worker stopped" in worker.log_text()


def test_the_worker_announces_its_kinds_and_leaves_the_list_when_stopped(procs, marker_dir):
    server = procs.serve()
    worker = procs.python_worker(markers=marker_dir)

    def listed():
        import httpx
        workers = httpx.get(f"{server.url}/v1/workers").json()["workers"]
        return [w for w in workers if "py.steps" in w["kinds"]]

    seen = wait_for(listed, timeout=10.0, what="the Python worker in GET /v1/workers")
    assert seen[0]["queues"] == ["default"] and seen[0]["alive"]
    worker.child.send_signal(signal.SIGTERM)
    wait_for(lambda: not listed(), timeout=10.0, what="the stopped worker gone from the list")


def test_a_failed_handler_keeps_its_traceback(procs, marker_dir):
    server = procs.serve()
    procs.python_worker(markers=marker_dir)
    with Client(server.url) as client:
        job = client.submit("py.flaky", {"succeed_at": 9}, max_attempts=1)
        assert [e.type for e in client.follow(job.id)][-1] == "failed"
        error = client.get(job.id).error
        assert error["message"] == "flaky on attempt 1"
        assert error["exception"] == "ValueError"
        trace = error["traceback"]
        assert trace.startswith("Traceback (most recent call last):")
        assert 'worker_app.py", line' in trace and "in flaky" in trace
        assert trace.rstrip().endswith("ValueError: flaky on attempt 1")


STARTS_SILENTLY = """
import os
from jobcast import Worker

worker = Worker(os.environ["DATABASE_URL"], queues=["default", "reports"], concurrency=2)

@worker.handler("report.build")
async def build(ctx, args):
    return args

@worker.handler("mail.send")
def send(ctx, args):
    return args

worker.run()
"""


def test_the_worker_says_it_started_even_without_logging_configured(procs, tmp_path):
    script = tmp_path / "silent_worker.py"
    script.write_text(STARTS_SILENTLY)
    worker = procs.python_script(script)
    line = wait_for(lambda: next((l for l in worker.log_text().splitlines()
                                  if "worker started" in l), None),
                    what="the start line on stderr")
    assert line.startswith("jobcast: worker started: id=")
    assert "queues=default,reports" in line and "kinds=mail.send,report.build" in line
    assert "concurrency=2" in line
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert "jobcast: worker stopped" in worker.log_text()
