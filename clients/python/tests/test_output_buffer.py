"""The output buffer of one attempt on its own (no database): coalescing, offsets, flush
triggers, character boundaries, the limit, fencing. The worker's end-to-end behaviour is in
test_output.py."""

import asyncio
import threading
from typing import Any, List, Optional

import pytest

from jobcast import Cancelled, OutputLimitExceeded
from jobcast._output import FLUSH_BYTES, AttemptOutput, utf8_chunks
from jobcast._writer import EventOp


class Harness:
    """An AttemptOutput whose writer records ops and answers as told."""

    def __init__(self, max_bytes: int = 1 << 20, flush_ms: float = 25.0,
                 accept: bool = True) -> None:
        self.ops: List[EventOp] = []
        self.accept = accept
        self.stop = False
        self.refusals = 0
        self.failure: Optional[Exception] = None
        loop = asyncio.get_running_loop()

        def enqueue(op: EventOp) -> "asyncio.Future[bool]":
            self.ops.append(op)
            future = loop.create_future()
            loop.call_soon(future.set_result, self.accept)
            return future

        def refused() -> None:
            self.refusals += 1

        def failed(error: Exception) -> None:
            self.failure = error

        self.output = AttemptOutput(loop, 7, 2, flush_ms=flush_ms, max_bytes=max_bytes,
                                    enqueue=enqueue, must_stop=lambda: self.stop,
                                    refused=refused, failed=failed)

    def events(self, stream: Optional[str] = None) -> List[Any]:
        return [op.element for op in self.ops
                if stream is None or op.element["stream"] == stream]

    def text(self, stream: str) -> str:
        return "".join(e["text"] for e in self.events(stream))


def run(scenario):
    return asyncio.run(asyncio.wait_for(scenario(), 10))


def assert_contiguous(events) -> None:
    offset = 0
    for event in events:
        assert event["offset"] == offset
        offset += len(event["text"].encode())


def test_appends_within_a_window_become_one_event_per_stream():
    async def scenario():
        h = Harness(flush_ms=50)
        for i in range(100):
            h.output.append(f"tok{i} ")
            h.output.append(f"line {i}\n", stream="log")
        assert h.ops == [], "append returns before anything is written"
        await asyncio.sleep(0.15)
        assert [e["stream"] for e in h.events()] == ["output", "log"]
        assert h.text("output") == "".join(f"tok{i} " for i in range(100))
        assert all(op.job_id == 7 and op.attempt == 2 and op.element["type"] == "output"
                   for op in h.ops)
        h.output.append("é")  # the next window continues the stream's offsets
        await asyncio.sleep(0.15)
        last = h.events("output")[-1]
        assert last == {"type": "output", "stream": "output", "text": "é",
                        "offset": len(h.text("output").encode()) - 2}
        assert_contiguous(h.events("output"))
        assert_contiguous(h.events("log"))

    run(scenario)


def test_a_stream_holding_16_kib_is_flushed_at_once():
    async def scenario():
        h = Harness(flush_ms=10_000)
        h.output.append("x" * (FLUSH_BYTES - 1))
        assert h.ops == []
        h.output.append("y")
        assert len(h.ops) == 1 and len(h.ops[0].element["text"]) == FLUSH_BYTES
        h.output.append("z")
        h.output.close(flush=True)  # the outcome's flush takes the rest at once
        assert h.text("output") == "x" * (FLUSH_BYTES - 1) + "yz"

    run(scenario)


def test_big_appends_are_cut_at_character_boundaries():
    text = "a€😀" * 6000  # 1 + 3 + 4 bytes, so no cut at 16 KiB falls on a boundary
    chunks = utf8_chunks(text, 100)
    assert b"".join(chunks).decode() == text
    assert all(len(c) <= 100 for c in chunks)
    assert all(c.decode() for c in chunks), "each piece is whole characters"

    async def scenario():
        h = Harness()
        h.output.append(text)
        h.output.close(flush=True)
        assert len(h.ops) > 1
        assert h.text("output") == text
        assert_contiguous(h.events())
        assert all(len(e["text"].encode()) <= FLUSH_BYTES for e in h.events())

    run(scenario)


def test_nul_and_lone_surrogates_become_replacement_characters():
    async def scenario():
        h = Harness()
        h.output.append("a\x00b")
        h.output.append("c\ud800d")
        h.output.close(flush=True)
        assert h.text("output") == "a\ufffdbc\ufffdd"
        assert h.output.total_bytes == len("a\ufffdbc\ufffdd".encode())

    run(scenario)


def test_stream_names_and_text_types_are_checked():
    async def scenario():
        h = Harness()
        for bad in ("", "Output", "1st", "a b", "x" * 33, None):
            with pytest.raises(ValueError):
                h.output.append("text", stream=bad)
        h.output.append("ok", stream="a" + "b" * 31)
        h.output.append("ok", stream="build.log-2_x")
        with pytest.raises(TypeError):
            h.output.append(b"bytes")

    run(scenario)


def test_the_append_that_would_pass_the_limit_fails_and_earlier_text_stays():
    async def scenario():
        h = Harness(max_bytes=10)
        h.output.append("12345")
        h.output.append("6789", stream="log")
        with pytest.raises(OutputLimitExceeded) as exceeded:
            h.output.append("ab")
        assert "max_output_bytes (10 bytes)" in str(exceeded.value)
        assert exceeded.value.max_output_bytes == 10
        assert isinstance(h.failure, OutputLimitExceeded), "the attempt is failed"
        with pytest.raises(OutputLimitExceeded):
            h.output.append("c")  # and stays failed
        h.output.close(flush=True)
        assert (h.text("output"), h.text("log")) == ("12345", "6789")

    run(scenario)


def test_appends_are_refused_once_the_attempt_must_stop_or_was_fenced_out():
    async def scenario():
        h = Harness(accept=False, flush_ms=1)
        h.output.append("late")
        await asyncio.sleep(0.05)
        assert h.refusals == 1, "a refused output write stops the attempt"
        h.stop = True
        with pytest.raises(Cancelled):
            h.output.append("more")
        h2 = Harness()
        h2.output.close(flush=False)
        with pytest.raises(Cancelled):
            h2.output.append("after the end")

    run(scenario)


def test_appends_from_threads_keep_each_threads_order():
    async def scenario():
        h = Harness(flush_ms=5)

        def writer(stream: str) -> None:
            for i in range(2000):
                h.output.append(f"{i},", stream=stream)

        threads = [threading.Thread(target=writer, args=(f"s{n}",)) for n in range(3)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        h.output.close(flush=True)
        for n in range(3):
            assert h.text(f"s{n}") == "".join(f"{i}," for i in range(2000))
            assert_contiguous(h.events(f"s{n}"))

    run(scenario)
