"""The producer client's tags, waiting, tag streams, stream tokens and schedules against the
real binary (API.md "Following many jobs at once: tags", "Waiting for a result",
"Schedules")."""

import asyncio
import re
import threading
import time
from typing import List

import httpx
import psycopg
import pytest
from httpx_sse import connect_sse

from conftest import wait_for
from jobcast import APIError, AsyncClient, Client, Event, enqueue, job_spec

KEY = "acme-key-0123456789abcdef"


def open_streams(server_url: str) -> float:
    text = httpx.get(f"{server_url}/metrics").text
    match = re.search(r"^jobcast_sse_streams\s+(\S+)", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_tags_are_on_the_job_and_its_events_and_select_it_in_lists(procs):
    server = procs.serve()
    procs.rust_worker()
    with Client(server.url) as client:
        both = client.submit("demo.echo", {"n": 1}, tags={"user": "42", "project": "apollo"})
        user = client.submit("demo.echo", {"n": 2}, tags={"user": "42"})
        other = client.submit("demo.echo", {"n": 3}, tags={"user": "7"})
        client.submit("demo.echo", {"n": 4})
        assert both.tags == {"user": "42", "project": "apollo"}
        assert client.get(user.id).tags == {"user": "42"}
        assert [j.id for j in client.list_jobs(tags={"user": "42"}).jobs] == [user.id, both.id]
        assert [j.id for j in client.list_jobs(
            tags={"user": "42", "project": "apollo"}).jobs] == [both.id]
        assert [j.id for j in client.iter_jobs(tags={"user": "7"}, page_size=1)] == [other.id]
        events = list(client.follow(both.id))
        assert all(e.data["tags"] == {"user": "42", "project": "apollo"} for e in events)
        with pytest.raises(ValueError):
            client.submit("demo.echo", tags={"User": "42"})  # checked before sending
        with pytest.raises(ValueError):
            client.submit("demo.echo", tags={f"k{i}": "v" for i in range(17)})
        with pytest.raises(APIError) as too_long:
            client.submit_many([{"kind": "demo.echo", "tags": {"user": "x" * 129}}])
        assert too_long.value.status_code == 422 and "tags" in too_long.value.detail


def test_follow_events_by_tag_sees_only_those_jobs_including_later_ones(procs):
    server = procs.serve()
    procs.rust_worker()
    seen: List[Event] = []
    failure: List[BaseException] = []

    def follow() -> None:
        try:
            with Client(server.url) as reader:
                for event in reader.follow_events(tags={"user": "42"}):
                    seen.append(event)
                    if len([e for e in seen if e.type == "succeeded"]) == 2:
                        return
        except BaseException as e:  # noqa: BLE001 — reported by the test
            failure.append(e)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    wait_for(lambda: failure or open_streams(server.url) >= 1, what="the tag stream to open")
    assert not failure, failure
    with Client(server.url) as client:
        client.submit("demo.echo", {"untagged": True})
        first = client.submit("demo.echo", {"n": 1}, tags={"user": "42", "extra": "x"})
        client.submit("demo.echo", {"n": 2}, tags={"user": "7"})
        second = client.submit("demo.echo", {"n": 3}, tags={"user": "42"})
        thread.join(20)
        assert not thread.is_alive() and not failure, failure
        assert {e.job_id for e in seen} == {first.id, second.id}
        for job in (first, second):
            assert [e.type for e in seen if e.job_id == job.id] == [
                "queued", "started", "succeeded"]
            assert [e.id for e in seen if e.job_id == job.id] == [1, 2, 3]
        assert all(e.cursor for e in seen)
        # The cursor resumes exactly after an event.
        resumed = client.follow_events(tags={"user": "42"}, last_event_id=seen[0].cursor)
        after = next(iter(resumed))
        assert (after.job_id, after.id, after.cursor) == (seen[1].job_id, seen[1].id,
                                                          seen[1].cursor)


def test_submit_and_get_wait_for_the_result(procs):
    server = procs.serve()
    procs.rust_worker()
    with Client(server.url) as client:
        started = time.monotonic()
        done = client.submit("demo.echo", {"answer": 42}, wait=20)
        assert done.status == "succeeded" and done.result == {"answer": 42}
        assert time.monotonic() - started < 5

        started = time.monotonic()
        slow = client.submit("demo.steps", {"steps": 3, "step_ms": 1000}, wait=1)
        took = time.monotonic() - started
        assert slow.status in ("queued", "running") and not slow.terminal
        assert 0.8 <= took < 2.5, took
        started = time.monotonic()
        finished = client.get(slow.id, wait=30)
        assert finished.status == "succeeded" and finished.result == {"steps": 3}
        assert time.monotonic() - started < 5, "answered when the job ended, not at 30 s"
        assert client.get(slow.id, wait=5).status == "succeeded"

        again = client.submit("demo.echo", {"k": 1}, idempotency_key="w-1", wait=10)
        assert client.submit("demo.echo", {"k": 1}, idempotency_key="w-1", wait=10).id == again.id
        with pytest.raises(ValueError):
            client.get(slow.id, wait=0.5)


def test_transactional_enqueue_carries_tags(procs):
    server = procs.serve()
    with psycopg.connect(procs.db.url) as app:
        job = enqueue(app, "report", {"rows": 5}, tags={"user": "42"},
                      idempotency_key="tagged-1")
    with Client(server.url) as client:
        assert client.get(job["id"]).tags == {"user": "42"}
        assert [j.id for j in client.list_jobs(tags={"user": "42"}).jobs] == [job["id"]]
        replay = client.submit("report", {"rows": 5}, tags={"user": "42"},
                               idempotency_key="tagged-1")
        assert replay.id == job["id"], "the same key and body over HTTP is a replay"


def test_stream_tokens_for_a_page(procs, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"acme {KEY}\n")
    server = procs.serve(0, "--api-keys-file", str(keys), "--token-secret",
                         "a-secret-of-thirty-two-bytes-or-more!")
    procs.rust_worker()
    with Client(server.url, api_key=KEY) as client:
        token = client.create_token(tags={"user": "42"}, ttl_secs=60)
        assert token.token and token.expires_at
        assert token.url == f"{server.url}/v1/events?token={token.token}"
        seen: List[str] = []
        failure: List[BaseException] = []

        def page() -> None:  # a browser: no Authorization header, only the token
            try:
                with httpx.Client() as browser:
                    with connect_sse(browser, "GET", token.url, timeout=20) as source:
                        assert source.response.status_code == 200
                        for sse in source.iter_sse():
                            if sse.event == "succeeded":
                                seen.append(sse.json()["job_id"])
                            if len(seen) == 2:
                                return
            except BaseException as e:  # noqa: BLE001 — reported by the test
                failure.append(e)

        thread = threading.Thread(target=page, daemon=True)
        thread.start()
        wait_for(lambda: failure or open_streams(server.url) >= 1, what="the page's stream")
        jobs = [client.submit("demo.echo", {"n": n}, tags={"user": "42"}) for n in range(2)]
        client.submit("demo.echo", {"n": 9}, tags={"user": "7"})
        thread.join(20)
        assert not thread.is_alive() and not failure, failure
        assert sorted(seen) == sorted(j.id for j in jobs)

        one = client.create_token(jobs=[jobs[0].id])
        assert one.url == f"{server.url}/v1/jobs/{jobs[0].id}/events?token={one.token}"
        answer = httpx.get(one.url, timeout=10)
        assert answer.status_code == 200 and "event: succeeded" in answer.text
        assert httpx.get(f"{server.url}/v1/jobs/{jobs[0].id}/events",
                         params={"token": token.token}).status_code == 401
        firehose = client.create_token(firehose=True, queue="default")
        assert firehose.url == f"{server.url}/v1/events?token={firehose.token}"
        with pytest.raises(ValueError):
            client.create_token(jobs=[jobs[0].id], tags={"user": "42"})
        with pytest.raises(APIError) as unknown:
            client.create_token(jobs=["999999"])
        assert unknown.value.status_code == 404


def test_schedules_make_jobs_and_can_be_paused_replaced_and_deleted(procs):
    server = procs.serve()
    procs.rust_worker()
    with Client(server.url) as client:
        made = client.create_schedule(
            "tick", job_spec("demo.echo", {"from": "schedule"}, tags={"schedule": "tick"}),
            every="1s")
        assert made.name == "tick" and made.every == "1s" and made.next_run_at
        assert made.job["kind"] == "demo.echo" and not made.paused
        assert [s.name for s in client.schedules()] == ["tick"]
        assert client.get_schedule("tick").name == "tick"

        ticks = wait_for(lambda: client.list_jobs(tags={"schedule": "tick"}).jobs,
                         timeout=5, what="a job from the schedule")
        assert ticks[0].schedule == "tick" and ticks[0].scheduled_for
        assert ticks[0].args == {"from": "schedule"}

        assert client.pause_schedule("tick").paused
        time.sleep(1.2)  # a slot that may have been due as it paused
        count = len(client.list_jobs(tags={"schedule": "tick"}).jobs)
        time.sleep(2.5)
        assert len(client.list_jobs(tags={"schedule": "tick"}).jobs) == count
        assert not client.resume_schedule("tick").paused
        wait_for(lambda: len(client.list_jobs(tags={"schedule": "tick"}).jobs) > count,
                 timeout=5, what="jobs again after resume")

        replaced = client.create_schedule("tick", "demo.echo", cron="0 3 * * *",
                                          timezone="Europe/Paris", overlap="skip",
                                          catch_up="none")
        assert (replaced.cron, replaced.every, replaced.timezone) == (
            "0 3 * * *", None, "Europe/Paris")
        assert (replaced.overlap, replaced.catch_up) == ("skip", "none")
        assert len(client.schedules()) == 1

        client.delete_schedule("tick")
        with pytest.raises(APIError) as gone:
            client.get_schedule("tick")
        assert gone.value.status_code == 404
        with pytest.raises(APIError) as bad:
            client.create_schedule("bad", "demo.echo", cron="not a cron")
        assert bad.value.status_code == 422
        with pytest.raises(ValueError):
            client.create_schedule("both", "demo.echo", cron="* * * * *", every="1s")


def test_async_client_waits_follows_tags_and_schedules(procs):
    server = procs.serve()
    procs.rust_worker()

    async def scenario() -> None:
        async with AsyncClient(server.url) as client:
            done = await client.submit("demo.echo", {"a": 1}, tags={"user": "9"}, wait=20)
            assert done.status == "succeeded" and done.tags == {"user": "9"}
            assert (await client.get(done.id, wait=2)).result == {"a": 1}
            page = await client.list_jobs(tags={"user": "9"})
            assert [j.id for j in page.jobs] == [done.id]
            assert [j.id async for j in client.iter_jobs(tags={"user": "9"})] == [done.id]
            events = client.follow_events(tags={"user": "9"})
            first = asyncio.ensure_future(events.__anext__())
            while not first.done() and await asyncio.to_thread(open_streams, server.url) < 1:
                await asyncio.sleep(0.02)
            later = await client.submit("demo.echo", {"b": 2}, tags={"user": "9"})
            event = await first
            assert event.job_id == later.id and event.type == "queued" and event.cursor
            await events.aclose()
            schedule = await client.create_schedule("nightly", "demo.echo", cron="0 3 * * *")
            assert schedule.cron == "0 3 * * *"
            assert [s.name for s in await client.schedules()] == ["nightly"]
            await client.delete_schedule("nightly")

    asyncio.run(asyncio.wait_for(scenario(), 30))
