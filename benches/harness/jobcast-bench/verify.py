#!/usr/bin/env python3
"""After a harness run of the jobcast adapter (KEEP_DB=1, the cluster still up): drain what
is left with a `jobcast work` of our own, then prove from the producers' ledgers and the
database that every acknowledged job ran to success exactly once.

usage: verify.py DATABASE_URL STATE_DIR [JOBCAST_BIN]   -> prints one JSON object

- lost:            acknowledged jobs (ledger "ok") missing from jobcast.jobs, or failed or
                   cancelled (unfinished_after_drain: still queued/running when the drain
                   stopped, after VERIFY_DRAIN_MAX_S (300) or 60 s without progress)
- enqueued_twice:  a (producer, seq) present more than once
- succeeded_twice: a job with more than one `succeeded` event
- started_twice:   jobs with more than one `started` event (an attempt taken again: a lease
                   that ran out after a crash or a worker handing jobs back at SIGTERM; the
                   demo.echo handler is instant, so such a job may have run twice: at-least-once)
- ambiguous:       batches whose enqueue statement failed (the connection was killed):
                   present 0 or 1 time each, never twice
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import psycopg

url, state = sys.argv[1], sys.argv[2]
jobcast_bin = sys.argv[3] if len(sys.argv) > 3 else "/tmp/harness-bin/jobcast"

ok: dict[str, list[tuple[int, int]]] = {}
amb: dict[str, list[tuple[int, int]]] = {}
for path in glob.glob(os.path.join(state, "ledger-*.txt")):
    for line in open(path):
        parts = line.split()
        if len(parts) < 4:
            continue
        (ok if parts[0] == "ok" else amb).setdefault(parts[1], []).append((int(parts[2]), int(parts[3])))

conn = psycopg.connect(url, autocommit=True)
left = lambda: conn.execute(  # noqa: E731
    "select (select count(*) from jobcast.queued where queue='bench'),"
    " (select count(*) from jobcast.running where queue='bench')").fetchone()
before = left()
drain_s = 0.0
if before[0] or before[1]:
    t0 = time.time()
    w = subprocess.Popen([jobcast_bin, "work", "--queues", "bench", "--concurrency", "32",
                          "--retention-days", "0"], env={**os.environ, "DATABASE_URL": url},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Until empty, or no progress for 60 s (a backlog of a million jobs takes minutes).
    last, last_change = left(), time.time()
    while any(last) and time.time() - last_change < 60 and time.time() - t0 < float(os.environ.get("VERIFY_DRAIN_MAX_S", "300")):
        time.sleep(2)
        now_left = left()
        if now_left != last:
            last, last_change = now_left, time.time()
    drain_s = time.time() - t0
    w.send_signal(signal.SIGTERM)
    w.wait(timeout=40)
after = left()

rows = conn.execute("""
    select args->>'p', (args->>'s')::bigint, count(*), min(status::text)
      from jobcast.jobs where queue = 'bench' group by 1, 2""").fetchall()
seen = {(p, s): (n, st) for p, s, n, st in rows}
acked = sum(b - a + 1 for r in ok.values() for a, b in r)
lost, unfinished = [], 0
for p, ranges in ok.items():
    for a, b in ranges:
        for s in range(a, b + 1):
            n, st = seen.get((p, s), (0, None))
            if st in ("queued", "running"):
                unfinished += 1          # not drained within the time allowed: not lost
            elif n == 0 or st != "succeeded":
                lost.append([p, s, n, st])
amb_total = sum(b - a + 1 for r in amb.values() for a, b in r)
amb_present = sum(1 for p, ranges in amb.items() for a, b in ranges for s in range(a, b + 1)
                  if (p, s) in seen)
enq_twice = [[p, s, n] for (p, s), (n, _) in seen.items() if n > 1]
succ_twice = conn.execute("""select count(*) from (select job_id from jobcast.events
    where type = 'succeeded' group by job_id having count(*) > 1) x""").fetchone()[0]
started_twice = conn.execute("""select count(*) from (select job_id from jobcast.events
    where type = 'started' group by job_id having count(*) > 1) x""").fetchone()[0]
statuses = dict(conn.execute("select status::text, count(*) from jobcast.jobs group by 1").fetchall())
counters = dict(conn.execute("select name, value from jobcast.counters").fetchall())
restarts = []
for path in glob.glob(os.path.join(state, "state-*.json")):
    try:
        restarts.append(json.load(open(path)).get("worker_restarts", 0))
    except Exception:
        pass
print(json.dumps({
    "acked": acked, "jobs_in_table": sum(n for n, _ in seen.values()),
    "left_before_drain": {"queued": before[0], "running": before[1]},
    "left_after_drain": {"queued": after[0], "running": after[1]}, "drain_s": round(drain_s, 1),
    "lost": len(lost), "lost_sample": lost[:10], "unfinished_after_drain": unfinished, "enqueued_twice": len(enq_twice),
    "succeeded_twice": succ_twice, "started_twice": started_twice,
    "ambiguous_enqueued": amb_total, "ambiguous_present": amb_present,
    "statuses": statuses, "counters": counters, "worker_restarts": sum(restarts),
}))
