"""Output streams from the Python Worker (ctx.append) through PostgreSQL to SSE and
GET /v1/jobs/ID/output/NAME, against the real binary (API.md "Output streams")."""

import time

import pytest

from conftest import wait_for
from jobcast import APIError, Client


def outputs(events, stream="output", attempt=None):
    return [e for e in events if e.type == "output" and e.data["stream"] == stream
            and (attempt is None or e.data["attempt"] == attempt)]


def text_of(events, stream="output", attempt=None):
    return "".join(e.data["text"] for e in outputs(events, stream, attempt))


def assert_contiguous(events):
    offset = 0
    for e in events:
        assert e.data["offset"] == offset, [(x.data["offset"], x.data["text"]) for x in events]
        offset += len(e.data["text"].encode())


def test_appended_tokens_arrive_as_coalesced_output_events_before_the_outcome(procs,
                                                                              marker_dir):
    server = procs.serve()
    procs.python_worker(markers=marker_dir)
    with Client(server.url) as client:
        job = client.submit("py.tokens", {"tokens": 60, "token_ms": 5, "log": True})
        events = list(client.follow(job.id))
        expected = "".join(f"tok{i} " for i in range(1, 61))
        assert text_of(events) == expected
        assert text_of(events, "log") == "".join(f"token {i}\n" for i in range(1, 61))
        assert_contiguous(outputs(events))
        assert_contiguous(outputs(events, "log"))
        # 60 appends over ~300 ms in 25 ms windows: coalesced, yet not held to the end.
        assert 2 <= len(outputs(events)) < 40, len(outputs(events))
        assert events[-1].type == "succeeded"
        assert max(e.id for e in events if e.type == "output") < events[-1].id
        for e in outputs(events):
            assert e.data["job_id"] == job.id and e.data["attempt"] == 1
            assert e.data["status"] == "running" and "at" in e.data and e.data["seq"] == e.id
        assert client.get(job.id).result == {"tokens": 60, "bytes": len(expected) + sum(
            len(f"token {i}\n") for i in range(1, 61))}

        plain = client.submit("py.sync_tokens", {"tokens": 30, "token_ms": 2})
        events = list(client.follow(plain.id))
        assert text_of(events) == "".join(f"tok{i} " for i in range(1, 31))
        assert_contiguous(outputs(events))
        assert [e.type for e in events][-2:] == ["progress", "succeeded"]


def test_text_is_visible_within_the_flush_window_while_the_handler_runs(procs, marker_dir):
    server = procs.serve()
    procs.python_worker(markers=marker_dir)
    with Client(server.url) as client:
        job = client.submit("py.append_then_wait", {"wait_ms": 3000})
        started = None
        for event in client.follow(job.id):
            if event.type == "started":
                started = time.monotonic()
            if event.type == "output":
                assert event.data["text"] == "early text" and event.data["offset"] == 0
                assert time.monotonic() - started < 1.5, "not held until the handler ended"
                break
        else:
            pytest.fail("no output event")
        assert client.get(job.id).status == "running"


def test_each_attempt_starts_its_streams_at_offset_zero(procs, marker_dir):
    server = procs.serve()
    procs.python_worker(markers=marker_dir)
    with Client(server.url) as client:
        job = client.submit("py.output_attempts", max_attempts=2)
        events = list(client.follow(job.id))
        assert [e.type for e in events if e.type != "output"] == [
            "queued", "started", "retrying", "started", "succeeded"]
        first, second = outputs(events, attempt=1), outputs(events, attempt=2)
        assert text_of(events, attempt=1) == "attempt 1 é€😀 "
        assert text_of(events, attempt=2) == "attempt 2 é€😀 "
        assert first[0].data["offset"] == 0 and second[0].data["offset"] == 0
        assert_contiguous(first)
        assert_contiguous(second)
        retrying = next(e for e in events if e.type == "retrying")
        assert max(e.id for e in first) < retrying.id, "attempt 1's text precedes its failure"


def test_the_append_past_max_output_bytes_fails_the_attempt_without_retry(procs,
                                                                          marker_dir):
    server = procs.serve()
    procs.python_worker(markers=marker_dir, max_output_bytes=1000)
    with Client(server.url) as client:
        for swallow in (False, True):
            job = client.submit("py.output_limit", {"swallow": swallow}, max_attempts=3)
            events = list(client.follow(job.id))
            assert events[-1].type == "failed", [e.type for e in events]
            error = client.get(job.id).error
            assert "max_output_bytes" in error["message"] and "1000" in error["message"]
            assert error["fatal"] is True and error["max_output_bytes"] == 1000
            assert client.get(job.id).attempt == 1, "not retried"
            # What was appended before stays: ten 100-byte lines.
            assert text_of(events) == "".join(f"{i:099d}\n" for i in range(10))
            assert (marker_dir / f"{job.id}.limit").exists()


def test_appends_are_checked_and_cleaned(procs, marker_dir):
    server = procs.serve()
    procs.python_worker(markers=marker_dir)
    with Client(server.url) as client:
        job = client.submit("py.output_checks")
        events = list(client.follow(job.id))
        assert client.get(job.id).result == {"refused": ["Bad", "", "x" * 33, "has space"]}
        assert text_of(events, "raw.text-1") == "nul:\ufffd:end"


def test_the_whole_text_of_a_stream_is_read_over_http(procs, marker_dir):
    server = procs.serve()
    procs.python_worker(markers=marker_dir)
    with Client(server.url) as client:
        job = client.submit("py.tokens", {"tokens": 500, "log": True})
        assert list(client.follow(job.id))[-1].type == "succeeded"
        assert client.output(job.id) == "".join(f"tok{i} " for i in range(1, 501))
        assert client.output(job.id, "log").startswith("token 1\ntoken 2\n")
        retried = client.submit("py.output_attempts", max_attempts=2)
        assert list(client.follow(retried.id))[-1].type == "succeeded"
        assert client.output(retried.id) == "attempt 2 é€😀 "
        assert client.output(retried.id, attempt=1) == "attempt 1 é€😀 "
        with pytest.raises(APIError) as missing:
            client.output(job.id, "never-written")
        assert missing.value.status_code == 404
        assert missing.value.problem.get("type"), "a problem document, not just any 404"
        assert "route" not in missing.value.detail.lower()


def test_a_cancelled_job_refuses_appends_and_its_handler_stops(procs, marker_dir):
    server = procs.serve()
    procs.python_worker(markers=marker_dir)
    with Client(server.url) as client:
        job = client.submit("py.tokens", {"tokens": 100000, "token_ms": 10})
        follow = client.follow(job.id)
        for event in follow:
            if event.type == "output":
                break
        client.cancel(job.id)
        assert [e.type for e in follow][-1] == "cancelled"
        wait_for(lambda: (marker_dir / f"{job.id}.stopped").exists(), timeout=3,
                 what="the handler to stop")
        count = procs.db.scalar("select count(*) from jobcast.events where job_id = %s",
                                (int(job.id),))
        time.sleep(0.3)
        assert procs.db.scalar("select count(*) from jobcast.events where job_id = %s",
                               (int(job.id),)) == count, "nothing written after the cancel"


def test_the_rust_demo_tokens_stream_reads_the_same_through_the_client(procs):
    server = procs.serve()
    procs.rust_worker()
    with Client(server.url) as client:
        job = client.submit("demo.tokens", {"tokens": 40, "token_ms": 2, "stream": "answer"})
        wait_for(lambda: client.get(job.id).terminal, timeout=15,
                 what="demo.tokens to end (a `jobcast work` that has it)")
        events = list(client.follow(job.id))
        expected = "".join(f"tok{i} " for i in range(1, 41))
        assert [e.stream for e in events if e.type == "output"] == ["answer"] * len(
            outputs(events, "answer"))
        assert "".join(e.text for e in events if e.type == "output") == expected
        assert_contiguous(outputs(events, "answer"))
        assert client.output(job.id, "answer") == expected
        assert client.get(job.id).result == {"tokens": 40, "bytes": len(expected)}
