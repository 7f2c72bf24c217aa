"""The producer client against the real `jobcast serve` and `jobcast work`."""

import asyncio
import signal
import threading
from datetime import datetime, timedelta, timezone
from typing import List

import pytest

from conftest import free_port, wait_for
from jobcast import APIError, AsyncClient, Client, Event, job_spec


def test_submit_follow_and_get_round_trip(procs):
    server = procs.serve()
    procs.rust_worker()
    with Client(server.url) as client:
        job = client.submit("demo.steps", {"steps": 3, "step_ms": 20}, queue="default",
                            priority=5, max_attempts=2, timeout_secs=30)
        assert job.status == "queued" and job.priority == 5 and job.max_attempts == 2
        events = list(client.follow(job.id))
        assert [e.id for e in events] == list(range(1, len(events) + 1))
        assert [e.type for e in events] == ["queued", "started", "progress", "progress",
                                            "progress", "succeeded"]
        assert [e.data["progress"] for e in events if e.type == "progress"] == [
            pytest.approx(100 / 3), pytest.approx(200 / 3), 100.0]
        done = client.get(job.id)
        assert done.status == "succeeded" and done.result == {"steps": 3}
        assert done.last_event_id == events[-1].id
        # Following a finished job from its end: a 204, nothing more.
        assert list(client.follow(job.id, last_event_id=events[-1].id)) == []

        batch = client.submit_many([job_spec("demo.echo", {"n": n}) for n in range(3)])
        assert [j.args for j in batch] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert [e.type for e in client.follow(batch[2].id)][-1] == "succeeded"
        assert client.get(batch[2].id).result == {"n": 2}


def test_errors_carry_the_problem_document(procs):
    server = procs.serve()
    with Client(server.url) as client:
        with pytest.raises(APIError) as missing:
            client.get("999999")
        assert missing.value.status_code == 404
        assert missing.value.problem["status"] == 404
        with pytest.raises(APIError) as bad:
            client.submit("not a kind!")
        assert bad.value.status_code == 422 and "kind" in bad.value.detail
        with pytest.raises(APIError) as bad_batch:
            client.submit_many([job_spec("demo.echo"), job_spec("demo.echo", max_attempts=0)])
        assert bad_batch.value.status_code == 422 and "1" in bad_batch.value.detail
        with pytest.raises(APIError) as unknown_stream:
            list(client.follow("999999"))
        assert unknown_stream.value.status_code == 404
    assert procs.db.scalar("select count(*) from jobcast.jobs") == 0


def test_idempotency_key_and_cancel(procs):
    server = procs.serve()
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    with Client(server.url) as client:
        first = client.submit("demo.echo", {"a": 1}, run_at=later, idempotency_key="order-7")
        again = client.submit("demo.echo", {"a": 1}, run_at=later, idempotency_key="order-7")
        assert again.id == first.id
        with pytest.raises(APIError) as conflict:
            client.submit("demo.echo", {"a": 2}, run_at=later, idempotency_key="order-7")
        assert conflict.value.status_code == 409
        cancelled = client.cancel(first.id)
        assert cancelled.status == "cancelled"
        assert [e.type for e in client.follow(first.id)] == ["queued", "cancelled"]
        with pytest.raises(APIError) as twice:
            client.cancel(first.id)
        assert twice.value.status_code == 409
        with pytest.raises(ValueError):
            client.submit("demo.echo", run_at=datetime.now())


def test_async_client_has_the_same_methods(procs):
    server = procs.serve()
    procs.rust_worker()

    async def scenario() -> List[Event]:
        async with AsyncClient(server.url) as client:
            job = await client.submit("demo.steps", {"steps": 2, "step_ms": 10})
            events = [e async for e in client.follow(job.id)]
            assert (await client.get(job.id)).result == {"steps": 2}
            jobs = await client.submit_many([job_spec("demo.echo", {"x": 1}, run_at=
                                                      "2100-01-01T00:00:00Z")])
            assert (await client.cancel(jobs[0].id)).status == "cancelled"
            with pytest.raises(APIError):
                await client.get("424242")
            return events

    events = asyncio.run(scenario())
    assert [e.type for e in events] == ["queued", "started", "progress", "progress",
                                        "succeeded"]


def test_follow_resumes_across_a_serve_restart(procs):
    port = free_port()
    server = procs.serve(port)
    procs.rust_worker()
    client = Client(server.url)
    job = client.submit("demo.steps", {"steps": 12, "step_ms": 150})
    seen: List[Event] = []
    failure: List[BaseException] = []

    def follow() -> None:
        try:
            for event in client.follow(job.id):
                seen.append(event)
        except BaseException as e:  # noqa: BLE001 — reported by the test
            failure.append(e)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    wait_for(lambda: len(seen) >= 4, what="the first events")
    server.signal(signal.SIGKILL)
    server.wait(5)
    cut_at = len(seen)
    procs.serve(port)
    reader.join(30)
    assert not reader.is_alive() and not failure, failure
    assert cut_at < len(seen), "events arrived after the restart"
    assert [e.id for e in seen] == list(range(1, len(seen) + 1)), "no gap, no repeat"
    assert seen[-1].type == "succeeded"
    assert len([e for e in seen if e.type == "progress"]) == 12
    client.close()


def test_retry_puts_a_failed_job_back(procs):
    server = procs.serve()
    procs.rust_worker()
    with Client(server.url) as client:
        job = client.submit("demo.steps", {"steps": 2, "step_ms": 1, "fail_at": 1},
                            max_attempts=1)
        first = list(client.follow(job.id))
        assert first[-1].type == "failed"
        again = client.retry(job.id)
        assert again.id == job.id and again.status in ("queued", "running")  # a worker is up
        events = list(client.follow(job.id, last_event_id=first[-1].id))
        assert [e.type for e in events][:2] == ["retried", "started"]
        assert events[-1].type == "failed"
        assert client.get(job.id).attempt == 2
        with pytest.raises(APIError) as running:
            client.retry(client.submit("demo.echo", run_at="2100-01-01T00:00:00Z").id)
        assert running.value.status_code == 409
