#!/usr/bin/env python3
"""jobcast adapter for hardbyte/postgresql-job-queue-benchmarking (JSONL protocol of its
CONTRIBUTING_ADAPTERS.md, scenario `long_horizon`).

What runs, all through jobcast's public interfaces:

- the consumer is the real Rust worker, one `jobcast work --queues bench --concurrency
  $WORKER_COUNT` child process (binary: $JOBCAST_BIN, default /tmp/harness-bin/jobcast),
  running the built-in `demo.echo` handler (succeeds at once: the harness's 1 ms of work
  is not simulated). The child dies with this process (PR_SET_PDEATHSIG), so the harness's
  kill-worker SIGKILL kills the worker too, as a crash would. If the worker exits on its
  own it is restarted (a supervisor would) and the exit is logged on stderr and counted in
  the state file.
- the producer calls the documented SQL function `jobcast.enqueue_jobs(specs)` (one
  statement per batch, docs/protocol.md), paced on real elapsed wall-clock time at the
  rate in PRODUCER_RATE_CONTROL_FILE (so the harness's high-load phases apply); it is
  adapter-paced (run the harness with PRODUCER_PACING=adapter: the harness pacer ignores
  the high-load multiplier). Every batch's outcome goes to a ledger file in
  $JOBCAST_BENCH_STATE so that verify.py can prove afterwards that every acknowledged
  job ran, and ran once.
- claim latency (enqueue -> worker start) and completions are read from jobcast.events,
  the persisted event log, by commit order: an index range scan on (xid, id) after a
  cursor, plus a re-read of the transactions that were still in progress at the previous
  read (so an event committed late is never skipped nor counted twice). Latency =
  the `started` event's time minus the job's created_at (both database clock).

Percentiles: a bounded log-bucket histogram (1 % buckets) per second, 30 s window.
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import urlparse

import psycopg

SYSTEM = "jobcast"
QUEUE = "bench"
KIND = "demo.echo"
EVENT_TABLES = ["jobcast.jobs", "jobcast.queued", "jobcast.running", "jobcast.events"]
EVENT_INDEXES = [
    "jobcast.jobs_pkey",
    "jobcast.jobs_tenant_newest",
    "jobcast.queued_pkey",
    "jobcast.queued_claim",
    "jobcast.running_pkey",
    "jobcast.events_pkey",
    "jobcast.events_commit_order",
]


def env_int(key: str, default: int) -> int:
    v = os.environ.get(key)
    return int(v) if v not in (None, "") else default


DATABASE_URL = os.environ["DATABASE_URL"]
JOBCAST_BIN = os.environ.get("JOBCAST_BIN", "/tmp/harness-bin/jobcast")
STATE_DIR = os.environ.get("JOBCAST_BENCH_STATE", "/tmp/jobcast-bench-state")
SAMPLE_EVERY_S = env_int("SAMPLE_EVERY_S", 5)
PRODUCER_RATE = env_int("PRODUCER_RATE", 800)
PRODUCER_MODE = os.environ.get("PRODUCER_MODE", "fixed")
TARGET_DEPTH = env_int("TARGET_DEPTH", 1000)
WORKER_COUNT = env_int("WORKER_COUNT", 32)
PAYLOAD_BYTES = env_int("JOB_PAYLOAD_BYTES", 256)
BATCH_MAX = max(1, env_int("PRODUCER_BATCH_MAX", 128))
BATCH_MS = max(1, env_int("PRODUCER_BATCH_MS", 25))
INSTANCE = env_int("BENCH_INSTANCE_ID", 0)
PRODUCER_ID = f"{INSTANCE}-{uuid.uuid4().hex[:8]}"

stop = threading.Event()
lock = threading.Lock()
enqueued = 0
completed = 0
queue_depth = 0
target_rate_now = float(PRODUCER_RATE)
worker_restarts = 0


def log(msg: str) -> None:
    print(f"[jobcast-bench {PRODUCER_ID}] {msg}", file=sys.stderr, flush=True)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def emit(rec: dict) -> None:
    rec.setdefault("instance_id", INSTANCE)
    sys.stdout.write(json.dumps(rec) + "\n")
    sys.stdout.flush()


def connect() -> psycopg.Connection:
    return psycopg.connect(DATABASE_URL, autocommit=True, connect_timeout=5,
                           application_name=f"jobcast-bench-{INSTANCE}")


def read_rate() -> float:
    path = os.environ.get("PRODUCER_RATE_CONTROL_FILE")
    if not path:
        return float(PRODUCER_RATE)
    try:
        with open(path) as fh:
            return float(fh.read().strip())
    except Exception:
        return float(PRODUCER_RATE)


# ── latency histogram: 1 % log buckets, one dict per second, 30 s window ──────────────
_LOG_BASE = math.log(1.01)
hist: dict[int, dict[int, int]] = {}


def record_latency(ms: float) -> None:
    b = int(math.log1p(max(0.0, ms)) / _LOG_BASE)
    sec = int(time.monotonic())
    with lock:
        h = hist.setdefault(sec, {})
        h[b] = h.get(b, 0) + 1


def percentiles(window_s: int = 30) -> tuple[float, float, float]:
    cutoff = int(time.monotonic()) - window_s
    merged: dict[int, int] = {}
    with lock:
        for sec in [s for s in hist if s < cutoff]:
            del hist[sec]
        for h in hist.values():
            for b, c in h.items():
                merged[b] = merged.get(b, 0) + c
    total = sum(merged.values())
    if total == 0:
        return 0.0, 0.0, 0.0
    out = []
    for q in (0.50, 0.95, 0.99):
        rank, acc = q * total, 0
        for b in sorted(merged):
            acc += merged[b]
            if acc >= rank:
                out.append(math.expm1((b + 0.5) * _LOG_BASE))
                break
    return out[0], out[1], out[2]


# ── worker child ──────────────────────────────────────────────────────────────────────
def _pdeathsig() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def start_worker() -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": DATABASE_URL, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
    return subprocess.Popen(
        [JOBCAST_BIN, "work", "--queues", QUEUE, "--concurrency", str(WORKER_COUNT),
         "--retention-days", "0"],
        env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr,
        preexec_fn=_pdeathsig,
    )


def supervise(holder: dict) -> None:
    global worker_restarts
    while not stop.is_set():
        proc = holder["proc"]
        rc = proc.poll()
        if rc is not None and not stop.is_set():
            worker_restarts += 1
            log(f"jobcast work exited rc={rc}; restarting (restart #{worker_restarts})")
            write_state()
            time.sleep(1.0)
            holder["proc"] = start_worker()
        stop.wait(0.5)


# ── producer ─────────────────────────────────────────────────────────────────────────
ledger_fh = None


def ledger(kind: str, first: int, last: int, err: str = "") -> None:
    ledger_fh.write(f"{kind} {PRODUCER_ID} {first} {last} {err}\n".rstrip() + "\n")
    ledger_fh.flush()


def producer() -> None:
    global enqueued, target_rate_now
    pad = "x" * max(0, PAYLOAD_BYTES - 40)
    seq = 0
    conn = None
    credit = 0.0
    last = time.monotonic()
    while not stop.is_set():
        if PRODUCER_MODE == "depth-target":
            n = min(BATCH_MAX, max(0, TARGET_DEPTH - queue_depth))
            target_rate_now = 0.0
            if n == 0:
                stop.wait(0.05)
                continue
        else:
            rate = read_rate()
            target_rate_now = rate
            sleep_for = BATCH_MS / 1000.0 - (time.monotonic() - last)
            if sleep_for > 0:
                stop.wait(sleep_for)
            now = time.monotonic()
            credit += rate * (now - last)  # real elapsed time (normative pacing rule)
            last = now
            n = min(BATCH_MAX, int(credit))
            if n < 1:
                continue
            credit -= n
        specs = [{"kind": KIND, "queue": QUEUE,
                  "args": {"p": PRODUCER_ID, "s": seq + i, "pad": pad}} for i in range(n)]
        try:
            if conn is None or conn.closed:
                conn = connect()
            cur = conn.execute("select count(*) from jobcast.enqueue_jobs(%s::jsonb)",
                               (json.dumps(specs),))
            got = cur.fetchone()[0]
            ledger("ok", seq, seq + n - 1)
            with lock:
                enqueued += got
        except psycopg.Error as exc:
            # The statement may or may not have committed: record the range as ambiguous
            # (verify.py accepts 0 or 1 copy of each such job, never 2).
            ledger("ambiguous", seq, seq + n - 1, type(exc).__name__)
            log(f"enqueue failed ({type(exc).__name__}: {str(exc).strip()[:120]}); reconnecting")
            try:
                if conn is not None:
                    conn.close()
            except Exception:
                pass
            conn = None
            stop.wait(0.2)
        seq += n


# ── event reader (claim latency, completions) ─────────────────────────────────────────
READ_SQL = """
select e.xid::text, e.id, e.type,
       case when e.type = 'started'
            then extract(epoch from ((e.data->>'at')::timestamptz - j.created_at)) * 1000 end
  from (select * from jobcast.events where (xid, id) > (%s::xid8, %s::bigint)
        union all
        select * from jobcast.events where xid = any(%s::xid8[])) e
  left join jobcast.jobs j on j.id = e.job_id and e.type = 'started'
 where e.type in ('started', 'succeeded')
"""


def reader() -> None:
    global completed
    cursor_xid, cursor_id = "0", 0
    recheck: list[str] = []
    conn = None
    while not stop.is_set():
        try:
            if conn is None or conn.closed:
                conn = connect()
            with conn.transaction():
                conn.execute("set transaction isolation level repeatable read")
                snap = conn.execute("select pg_current_snapshot()::text").fetchone()[0]
                if cursor_xid == "0":
                    # Start from now: only events of this run's transactions.
                    cursor_xid = snap.split(":")[0]
                rows = conn.execute(READ_SQL, (cursor_xid, cursor_id, recheck)).fetchall()
            xmin, xmax, xip = snap.split(":")
            in_progress = [x for x in xip.split(",") if x]
            new_cursor = (int(cursor_xid), cursor_id)
            done = 0
            for xid, eid, typ, lat in rows:
                if typ == "started" and lat is not None:
                    record_latency(float(lat))
                elif typ == "succeeded":
                    done += 1
                if xid not in recheck and (int(xid), eid) > new_cursor:
                    new_cursor = (int(xid), eid)
            with lock:
                completed += done
            cursor_xid, cursor_id = str(new_cursor[0]), new_cursor[1]
            # Transactions in progress at this read whose xid is at or below the cursor
            # would be skipped by the range: read them by xid next time (once they end,
            # their rows are read and they leave the list).
            recheck = [x for x in in_progress if int(x) <= new_cursor[0]]
        except psycopg.Error as exc:
            log(f"event reader: {type(exc).__name__}: {str(exc).strip()[:120]}")
            try:
                if conn is not None:
                    conn.close()
            except Exception:
                pass
            conn = None
        stop.wait(0.5)


def depth_poller() -> None:
    global queue_depth
    conn = None
    while not stop.is_set():
        try:
            if conn is None or conn.closed:
                conn = connect()
            queue_depth = conn.execute(
                "select count(*) from jobcast.queued where queue = %s", (QUEUE,)).fetchone()[0]
        except psycopg.Error:
            try:
                if conn is not None:
                    conn.close()
            except Exception:
                pass
            conn = None
        stop.wait(1.0)


def write_state() -> None:
    try:
        with open(os.path.join(STATE_DIR, f"state-{PRODUCER_ID}.json"), "w") as fh:
            json.dump({"producer": PRODUCER_ID, "enqueued": enqueued, "completed_seen": completed,
                       "worker_restarts": worker_restarts, "at": now_iso()}, fh)
    except OSError:
        pass


def sampler() -> None:
    # Clock-aligned first tick.
    stop.wait(SAMPLE_EVERY_S - (time.time() % SAMPLE_EVERY_S))
    last_enq, last_cmp, last_t = enqueued, completed, time.monotonic()
    while not stop.is_set():
        stop.wait(SAMPLE_EVERY_S - (time.time() % SAMPLE_EVERY_S))
        if stop.is_set():
            break
        t = time.monotonic()
        dt = max(0.001, t - last_t)
        with lock:
            e, c = enqueued, completed
        enq_rate, cmp_rate = (e - last_enq) / dt, (c - last_cmp) / dt
        last_enq, last_cmp, last_t = e, c, t
        p50, p95, p99 = percentiles()
        ts = now_iso()
        metrics = [("claim_p50_ms", p50, 30.0), ("claim_p95_ms", p95, 30.0),
                   ("claim_p99_ms", p99, 30.0), ("enqueue_rate", enq_rate, float(SAMPLE_EVERY_S)),
                   ("completion_rate", cmp_rate, float(SAMPLE_EVERY_S))]
        if INSTANCE == 0:
            metrics += [("queue_depth", float(queue_depth), 0.0),
                        ("producer_target_rate", target_rate_now, 0.0)]
        for name, value, window in metrics:
            emit({"t": ts, "system": SYSTEM, "kind": "adapter", "subject_kind": "adapter",
                  "subject": "", "metric": name, "value": value, "window_s": window})
        write_state()


def main() -> int:
    global ledger_fh
    os.makedirs(STATE_DIR, exist_ok=True)
    ledger_fh = open(os.path.join(STATE_DIR, f"ledger-{PRODUCER_ID}.txt"), "a")
    subprocess.run([JOBCAST_BIN, "migrate"], env={**os.environ, "DATABASE_URL": DATABASE_URL},
                   check=True, stdout=sys.stderr, stderr=sys.stderr)
    version = subprocess.run([JOBCAST_BIN, "--version"], capture_output=True, text=True).stdout.strip()
    emit({"kind": "descriptor", "system": SYSTEM, "event_tables": EVENT_TABLES,
          "event_indexes": EVENT_INDEXES, "extensions": [],
          "version": os.environ.get("JOBCAST_COMMIT", version), "schema_version": version,
          "db_name": (urlparse(DATABASE_URL).path or "/").lstrip("/"), "started_at": now_iso()})
    holder = {"proc": start_worker()}
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threads = [threading.Thread(target=f, name=f.__name__, daemon=True)
               for f in (producer, reader, depth_poller, sampler)]
    threads.append(threading.Thread(target=supervise, args=(holder,), daemon=True))
    for th in threads:
        th.start()
    while not stop.is_set():
        stop.wait(0.5)
    # Shutdown: stop producing, stop the worker (SIGTERM: it hands running jobs back).
    proc = holder["proc"]
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=4.0)
        except subprocess.TimeoutExpired:
            proc.kill()
    write_state()
    log(f"stopped: enqueued={enqueued} completed_seen={completed} worker_restarts={worker_restarts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
