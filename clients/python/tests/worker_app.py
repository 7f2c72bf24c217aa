"""A Python worker process for the tests. Settings come from APP_* environment variables
(see conftest.Procs.python_worker); handlers leave files in APP_MARKERS to tell what they
saw (a cancellation noticed, a write refused, a job run)."""

import asyncio
import logging
import os
import time
from pathlib import Path

from jobcast import Cancelled, Fatal, Retry, Worker

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
