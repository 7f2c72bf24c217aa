"""The report job with the Python Worker: `DATABASE_URL=... python examples/python/report_worker.py`.

Submit one with `jobcast submit report --args '{"rows": 5}' --follow`.
"""
import asyncio
import os

from jobcast import Worker

worker = Worker(os.environ["DATABASE_URL"], queues=["default"], concurrency=8)


@worker.handler("report")
async def report(ctx, args):
    rows = int(args.get("rows", 5))
    for i in range(1, rows + 1):
        await asyncio.sleep(args.get("row_ms", 100) / 1000)  # build one row of the report
        await ctx.progress(100 * i / rows, f"row {i}/{rows}")
    return {"rows": rows}


if __name__ == "__main__":
    worker.run()  # until SIGTERM/Ctrl-C, then drains
