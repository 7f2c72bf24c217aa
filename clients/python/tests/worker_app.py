"""A Python worker process for the tests. Settings come from APP_* environment variables
(see conftest.Procs.python_worker); handlers leave files in APP_MARKERS to tell what they
saw (a cancellation noticed, a write refused, a job run)."""

import asyncio
import logging
import os
import time
from pathlib import Path

from jobcast import Cancelled, Fatal, OutputLimitExceeded, Retry, Worker

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
env = os.environ
markers = Path(env.get("APP_MARKERS", "."))

worker = Worker(
    env["DATABASE_URL"],
    queues=env.get("APP_QUEUES", "default").split(","),
    concurrency=int(env.get("APP_CONCURRENCY", "4")),
    lease_secs=float(env.get("APP_LEASE_SECS", "30")),
    retry_base_ms=int(env.get("APP_RETRY_BASE_MS", "50")),
    grace_secs=float(env.get("APP_GRACE_SECS", "5")),
    max_output_bytes=int(env.get("APP_MAX_OUTPUT_BYTES", str(64 << 20))),
    output_flush_ms=float(env.get("APP_OUTPUT_FLUSH_MS", "25")),
)


def mark(name: str, text: str = "") -> None:
    with open(markers / name, "a") as f:
        f.write(text + "\n")


@worker.handler("py.echo")
async def echo(ctx, args):
    return args


@worker.handler("py.steps")
async def steps(ctx, args):
    count = args.get("steps", 3)
    try:
        await ctx.emit("py.note", {"worker": "python"})
        for i in range(1, count + 1):
            await asyncio.sleep(args.get("step_ms", 50) / 1000)
            await ctx.progress(100 * i / count, f"step {i}/{count}", {"i": i})
    except asyncio.CancelledError:
        mark(f"{ctx.job_id}.stopped", "cancelled")
        raise
    return {"steps": count}


@worker.handler("py.sync_steps")
def sync_steps(ctx, args):
    count = args.get("steps", 3)
    for i in range(1, count + 1):
        time.sleep(args.get("step_ms", 50) / 1000)
        ctx.progress(100 * i / count, f"step {i}/{count}")
    return {"steps": count, "thread": True}


@worker.handler("py.flaky")
async def flaky(ctx, args):
    if ctx.attempt < args["succeed_at"]:
        raise ValueError(f"flaky on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@worker.handler("py.retry")
async def retry(ctx, args):
    if ctx.attempt == 1:
        raise Retry("not yet", delay=args.get("delay", 0.05))
    return {"attempt": ctx.attempt}


@worker.handler("py.fatal")
def fatal(ctx, args):
    raise Fatal("bad input: no such report")


@worker.handler("py.nul_result")
async def nul_result(ctx, args):
    return {"text": "a\x00b"}  # JSON can say it; PostgreSQL's jsonb cannot store it


@worker.handler("py.hang")
async def hang(ctx, args):
    if ctx.attempt <= args.get("hang_attempts", 1):
        mark(f"{ctx.job_id}.started", str(ctx.attempt))
        await asyncio.sleep(3600)
    return {"attempt": ctx.attempt}


@worker.handler("py.fence")
def fence(ctx, args):
    """Reports progress slowly on attempt 1; notes a refused write."""
    if ctx.attempt > 1:
        return {"attempt": ctx.attempt}
    try:
        for i in range(1, 1000):
            ctx.progress(min(i, 100), f"attempt {ctx.attempt} step {i}")
            time.sleep(0.1)
    except Cancelled:
        mark(f"{ctx.job_id}.refused", str(ctx.attempt))
        raise
    return {"attempt": ctx.attempt}


@worker.handler("py.tokens")
async def tokens(ctx, args):
    """Streams tokens as an LLM would; args: tokens, token_ms, stream, text (a token's
    text, {i} replaced), log (also a line per token on the stream "log")."""
    count = args.get("tokens", 10)
    try:
        for i in range(1, count + 1):
            ctx.append(args.get("text", "tok{i} ").replace("{i}", str(i)),
                       stream=args.get("stream", "output"))
            if args.get("log"):
                ctx.append(f"token {i}\n", stream="log")
            if args.get("token_ms"):
                await asyncio.sleep(args["token_ms"] / 1000)
    except (Cancelled, asyncio.CancelledError) as e:
        mark(f"{ctx.job_id}.stopped", type(e).__name__)
        raise
    return {"tokens": count, "bytes": ctx.output_bytes}


@worker.handler("py.sync_tokens")
def sync_tokens(ctx, args):
    count = args.get("tokens", 10)
    for i in range(1, count + 1):
        ctx.append(f"tok{i} ")
        if args.get("token_ms"):
            time.sleep(args["token_ms"] / 1000)
    ctx.progress(100, "done")
    return {"tokens": count}


@worker.handler("py.append_then_wait")
async def append_then_wait(ctx, args):
    """Appends once, then works on for a while: the text must be out before it ends."""
    ctx.append("early text")
    await asyncio.sleep(args.get("wait_ms", 2000) / 1000)
    return {"done": True}


@worker.handler("py.output_attempts")
async def output_attempts(ctx, args):
    ctx.append(f"attempt {ctx.attempt} ")
    ctx.append("é€😀 ")
    if ctx.attempt == 1:
        raise ValueError("first attempt fails after its output")
    return {"attempt": ctx.attempt}


@worker.handler("py.output_limit")
async def output_limit(ctx, args):
    """Appends 100-byte pieces until the worker's max_output_bytes refuses one."""
    try:
        for i in range(100000):
            ctx.append(f"{i:099d}\n")
    except OutputLimitExceeded as e:
        mark(f"{ctx.job_id}.limit", str(e))
        if args.get("swallow"):
            return {"swallowed": True}
        raise
    return {"never": "reached"}


@worker.handler("py.output_checks")
async def output_checks(ctx, args):
    """What ctx.append refuses, and text it rewrites."""
    refused = []
    for name in ("Bad", "", "x" * 33, "has space"):
        try:
            ctx.append("text", stream=name)
        except ValueError:
            refused.append(name)
    ctx.append("nul:\x00:end", stream="raw.text-1")
    return {"refused": refused}


if env.get("APP_MIXED"):
    @worker.handler("demo.steps")
    async def demo_steps(ctx, args):
        count = args.get("steps", 5)
        for i in range(1, count + 1):
            await asyncio.sleep(args.get("step_ms", 200) / 1000)
            await ctx.progress(100 * i / count, f"step {i}/{count}")
        mark("ran-by-python", ctx.job_id)
        return {"steps": count}


if __name__ == "__main__":
    worker.run()
