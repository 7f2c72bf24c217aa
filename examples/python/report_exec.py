#!/usr/bin/env python3
"""The report job for `jobcast work --exec report="python3 examples/python/report_exec.py"`."""
import json, sys, time  # noqa: E401

args = json.load(sys.stdin)  # the job's args, then EOF
rows = int(args.get("rows", 5))
for i in range(1, rows + 1):
    time.sleep(args.get("row_ms", 100) / 1000)  # build one row of the report
    print(json.dumps({"progress": 100 * i / rows, "message": f"row {i}/{rows}"}), flush=True)
print(json.dumps({"result": {"rows": rows}}))
