#!/usr/bin/env python3
"""Scale-out figures for docs/scaling.md (issue 10, "Scale-out, measured"), standard library only.

Run through scripts/bench-scale, which starts a throwaway PostgreSQL unless DATABASE_URL is
set and picks the binary (JOBCAST_BIN). Two parts:

1. `notify`: PostgreSQL's own NOTIFY fan-out. L psql sessions LISTEN on one channel and
   drain it (a `select pg_sleep(0.01)` loop: psql reads notifications after each command)
   while pgbench's 8 clients commit NOTIFY-only transactions; commits/s for each L.
2. `grid`: jobcast itself. For each (pods, workers): a fresh database with a backlog of
   `demo.steps` jobs (20 steps, no pause), N `jobcast serve` pods each followed by F firehose
   clients (`GET /v1/events`), W `jobcast work --concurrency C` processes. Over a fixed
   window after a warm-up: events committed/s (rows of jobcast.events by insert order),
   succeeded jobs/s, frames delivered/s to all followers, delivery latency (arrival minus
   the event's `at`, which PostgreSQL stamps when it writes the row), NOTIFYs/s on
   `jobcast_events` (counted by one more psql session LISTENing), LISTEN connections
   (pg_stat_activity by application_name), and CPU-seconds per second used by PostgreSQL,
   the pods, the workers, this client and the whole machine.

Output: progress on stderr; Markdown tables and one JSON line per row on stdout.
"""
import argparse
import calendar
import collections
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

BIN = os.environ.get("JOBCAST_BIN", "target/release/jobcast")
PODS_BIN = os.environ.get("JOBCAST_PODS_BIN", "target/release/examples/pods")
SERVER_URL = os.environ["DATABASE_URL"]
TICK = os.sysconf("SC_CLK_TCK")
STEPS = 20  # progress events per job; a job writes STEPS + 2 events after `queued`
NOTIFY_CLIENTS = 8


def log(message):
    print(message, file=sys.stderr, flush=True)


def db_url(name):
    parts = urllib.parse.urlsplit(SERVER_URL)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def psql(url, sql):
    out = subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", url, "-Atc", sql],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def rows(url, sql):
    return [line.split("|") for line in psql(url, sql).splitlines() if line]


# ---------------------------------------------------------------------------------------
# CPU accounting from /proc (PostgreSQL runs on this machine: the bench loads 127.0.0.1).

def proc_stat(pid):
    """(ppid, own CPU-seconds, reaped children's CPU-seconds), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK,
                (int(fields[13]) + int(fields[14])) / TICK)
    except (OSError, IndexError, ValueError):
        return None


def proc_cpu(pid):
    stat = proc_stat(pid)
    return stat[1] if stat else None


def tree_cpu(root):
    """CPU-seconds of a process and its children, those exited and reaped included: the
    postmaster's own and reaped children's time plus each live child's time."""
    stat = proc_stat(root)
    if stat is None:
        return None
    total = stat[1] + stat[2]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            child = proc_stat(int(entry))
            if child and child[0] == root:
                total += child[1]
    return total


def machine_busy():
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICK, sum(values) / TICK


class CpuMeter:
    """CPU-seconds used between start() and stop() by named groups of pids."""

    def __init__(self, groups, postmaster):
        self.groups = groups  # name -> list of pids
        self.postmaster = postmaster

    def snapshot(self):
        snap = {name: {pid: proc_cpu(pid) for pid in pids} for name, pids in self.groups.items()}
        snap["postgres"] = {self.postmaster: tree_cpu(self.postmaster)}
        snap["_self"] = sum(os.times()[:2])
        snap["_machine"] = machine_busy()
        return snap

    @staticmethod
    def delta(before, after, seconds):
        out = {}
        for name in before:
            if name.startswith("_"):
                continue
            used = 0.0
            for pid, start in before[name].items():
                end = after[name].get(pid)
                if start is not None and end is not None:
                    used += end - start
            out[name] = used / seconds
        out["client"] = (after["_self"] - before["_self"]) / seconds
        busy = after["_machine"][0] - before["_machine"][0]
        total = after["_machine"][1] - before["_machine"][1]
        out["machine"] = busy / seconds
        out["machine_pct"] = 100.0 * busy / total if total else 0.0
        return out


def postmaster_pid(url):
    """The postmaster: the parent of a backend (PostgreSQL must run on this machine)."""
    backend = int(psql(url, "select pid from pg_stat_activity where backend_type = 'checkpointer'"))
    stat = proc_stat(backend)
    if stat is None:
        raise SystemExit("PostgreSQL's processes are not visible in /proc: run it on this machine")
    return stat[0]


# ---------------------------------------------------------------------------------------
# Part 1: PostgreSQL's NOTIFY fan-out.

def start_psql_listener(url, channel, app, script_path, stdout):
    env = dict(os.environ, PGAPPNAME=app)
    with open(script_path) as script:
        return subprocess.Popen(["psql", "-X", "-q", url], stdin=script, stdout=stdout,
                                stderr=subprocess.DEVNULL, env=env)


def write_listen_script(directory, channel, seconds):
    """LISTEN, then a loop of 10 ms sleeps: psql prints what arrived after each one."""
    path = os.path.join(directory, f"listen-{channel}.sql")
    with open(path, "w") as f:
        f.write(f"LISTEN {channel};\n")
        f.write("select pg_sleep(0.01);\n" * int(seconds * 100 + 1000))
    return path


def wait_for_sessions(url, app, count, timeout=30, query="select pg_sleep%"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        n = int(psql(url, f"select count(*) from pg_stat_activity where application_name = '{app}' "
                          f"and query like '{query}'"))
        if n >= count:
            return
        time.sleep(0.2)
    raise SystemExit(f"only {n} of {count} {app} sessions started")


def stop(procs, grace=5.0):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + grace
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def pgbench(args, url, script):
    """Commits/s of pgbench's 8 clients running `script` for --notify-secs."""
    bench = subprocess.run([args.pgbench, "-n", "-c", str(NOTIFY_CLIENTS), "-j", "2", "-T",
                            str(args.notify_secs), "-f", script, url],
                           capture_output=True, text=True)
    match = re.search(r"tps = ([0-9.]+)", bench.stdout)
    if bench.returncode != 0 or not match:
        raise SystemExit(f"pgbench failed: {bench.stdout}{bench.stderr}")
    return float(match.group(1))


def notify_part(args, tmp):
    name = "jobcast_scale_notify"
    psql(SERVER_URL, f"drop database if exists {name} with (force)")
    psql(SERVER_URL, f"create database {name}")
    url = db_url(name)
    script = os.path.join(tmp, "notify.sql")
    with open(script, "w") as f:
        f.write("NOTIFY scale_ch, 'x';\n")
    listen_script = write_listen_script(tmp, "scale_ch", args.notify_secs + 30)
    results = []
    try:
        # A NOTIFY-only transaction writes no WAL but its commit record, so it commits without
        # waiting for a flush. A transaction that writes (as every jobcast transition does)
        # waits for its flush, and NOTIFY holds a cluster-wide lock from before its commit
        # until after that flush: writers that NOTIFY commit one at a time.
        psql(url, "create table scale_writes (x integer)")
        for label, body in (("insert", "insert into scale_writes values (1);\n"),
                            ("insert + NOTIFY", "begin;\ninsert into scale_writes values (1);\n"
                                                "NOTIFY scale_ch, 'x';\ncommit;\n")):
            path = os.path.join(tmp, "durable.sql")
            with open(path, "w") as f:
                f.write(body)
            tps = pgbench(args, url, path)
            log(f"  durable writers, no listener: {label}: {tps:,.0f} commits/s")
            results.append({"part": "notify-durable", "transaction": label,
                            "clients": NOTIFY_CLIENTS, "commits_per_s": tps})
        for listeners in args.listeners:
            procs = [start_psql_listener(url, "scale_ch", "scale-listener", listen_script,
                                         subprocess.DEVNULL) for _ in range(listeners)]
            try:
                wait_for_sessions(url, "scale-listener", listeners)
                meter = CpuMeter({"listeners": [p.pid for p in procs]}, postmaster_pid(url))
                before, t0 = meter.snapshot(), time.time()
                tps = pgbench(args, url, script)
                seconds = time.time() - t0
                cpu = CpuMeter.delta(before, meter.snapshot(), seconds)
                usage = float(psql(url, "select pg_notification_queue_usage()"))
            finally:
                stop(procs)
            row = {"part": "notify", "listeners": listeners, "clients": NOTIFY_CLIENTS,
                   "commits_per_s": tps, "notifications_received_per_s": tps * listeners,
                   "queue_usage_at_end": usage,
                   "cpu_postgres": cpu["postgres"], "cpu_listeners": cpu["listeners"],
                   "cpu_machine": cpu["machine"], "seconds": round(seconds, 1)}
            log(f"  notify: {listeners:>3} listeners: {tps:,.0f} commits/s "
                f"(PostgreSQL {cpu['postgres']:.2f} CPU-s/s, psql listeners "
                f"{cpu['listeners']:.2f}, machine {cpu['machine_pct']:.0f} % busy)")
            results.append(row)
    finally:
        psql(SERVER_URL, f"drop database if exists {name} with (force)")
    return results


# ---------------------------------------------------------------------------------------
# Part 2: jobcast's curve.

AT = re.compile(rb'data: \{"at": "(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z"')
DATA = b"\ndata: "


class Followers:
    """Firehose followers on raw sockets, read by one thread: frames counted with
    bytes.count (a `data:` line per frame), latency from every frame's `at` while
    `measuring` is set, bucketed to 0.1 ms."""

    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.socks = []
        self.frames = 0
        self.measuring = False
        self.latency = collections.Counter()  # tenths of ms -> frames
        self.at_cache = {}
        self.closed = 0
        self.running = True
        self.thread = None

    def open(self, addr, path="/v1/events"):
        host, port = addr.rsplit(":", 1)
        s = socket.create_connection((host, int(port)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
                  .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit(f"{addr}{path}: closed before a response head")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status + b" ":
            raise SystemExit(f"{addr}{path}: {status.decode(errors='replace')}")
        s.setblocking(False)
        self.socks.append(s)
        self.sel.register(s, selectors.EVENT_READ, [b""])

    def start(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _at(self, groups):
        t = self.at_cache.get(groups)
        if t is None:
            y, mo, d, h, mi, s, ms = (int(g) for g in groups)
            t = calendar.timegm((y, mo, d, h, mi, s)) + ms / 1000.0
            self.at_cache[groups] = t
        return t

    def _run(self):
        while self.running:
            for key, _ in self.sel.select(0.2):
                try:
                    chunk = key.fileobj.recv(1 << 18)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                now = time.time()
                if not chunk:
                    self.sel.unregister(key.fileobj)
                    self.closed += 1
                    continue
                tail = key.data[0]
                joined = tail + chunk
                self.frames += joined.count(DATA)
                key.data[0] = joined[-(len(DATA) - 1):]
                if self.measuring:
                    for groups, n in collections.Counter(AT.findall(chunk)).items():
                        self.latency[int((now - self._at(groups)) * 10000)] += n

    def stop(self):
        self.running = False
        if self.thread:
            self.thread.join()
        for s in self.socks:
            s.close()

    def percentiles(self, *qs):
        total = sum(self.latency.values())
        out = []
        for q in qs:
            if not total:
                out.append(None)
                continue
            rank, seen = q * total, 0
            for bucket in sorted(self.latency):
                seen += self.latency[bucket]
                if seen >= rank:
                    out.append(bucket / 10.0)
                    break
        return out, total


class StandIns:
    """`--stand-in`: the pods and their followers in one process (examples/pods.rs): N of
    jobcast's hubs, a LISTEN connection and a firehose follower each, no HTTP. Same
    interface as Followers (frames, measuring, percentiles) for grid_run."""

    def __init__(self, url, pods, logdir):
        err = open(os.path.join(logdir, "pods.log"), "w")
        self.proc = subprocess.Popen([PODS_BIN, str(pods), url], stdout=subprocess.PIPE,
                                     stderr=err)
        self.frames = 0
        self.measuring = False
        self.latency = collections.Counter()  # tenths of ms -> frames (sampled)
        self.lagged = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        for line in self.proc.stdout:
            report = json.loads(line)
            self.frames, self.lagged = report["delivered"], report["lagged"]
            if self.measuring:
                for ms in report["lat"]:
                    self.latency[int(ms * 10)] += 1

    def pids(self):
        return [self.proc.pid]

    def stop(self):
        stop([self.proc])

    percentiles = Followers.percentiles


class NotifyCounter:
    """One more psql session LISTENing on jobcast_events; counts the notifications it prints
    (at most 10 ms late: it prints them after each `pg_sleep(0.01)`)."""

    def __init__(self, url, script):
        self.count = 0
        self.proc = start_psql_listener(url, "jobcast_events", "scale-notify-counter", script,
                                        subprocess.PIPE)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        for line in self.proc.stdout:
            if line.startswith(b'Asynchronous notification "jobcast_events"'):
                self.count += 1

    def stop(self):
        stop([self.proc])


def start_pod(url, logdir, i):
    out = open(os.path.join(logdir, f"serve-{i}.out"), "w+")
    err = open(os.path.join(logdir, f"serve-{i}.log"), "w")
    proc = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", "--database-url", url],
                            stdout=out, stderr=err)
    return proc, out


def pod_address(proc, out, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out.seek(0)
        for line in out:
            if line.startswith("jobcast listening on "):
                return line.split()[-1].replace("http://", "")
        if proc.poll() is not None:
            raise SystemExit(f"serve exited with {proc.returncode} (see its log)")
        time.sleep(0.05)
    raise SystemExit("serve did not print its address")


def events_mark(url):
    """The last event id handed out (the identity's sequence: max(id) would scan the table)."""
    return int(psql(url, "select last_value from jobcast.events_id_seq"))


def grid_run(args, template, logdir, listen_script, pods, workers, followers_per_pod):
    name = "jobcast_scale_run"
    psql(SERVER_URL, f"drop database if exists {name} with (force)")
    psql(SERVER_URL, f"create database {name} template {template}")
    url = db_url(name)
    spec = json.dumps({"kind": "demo.steps", "args": {"steps": STEPS, "step_ms": 0}})
    for _ in range(0, args.jobs, 5000):
        psql(url, "select count(*) from jobcast.enqueue_jobs((select jsonb_agg("
                  f"'{spec}'::jsonb) from generate_series(1, 5000)))")
    # Start every run from a clean checkpoint, so none of it is written during the window.
    psql(url, "checkpoint")
    serve, work, followers, counter = [], [], Followers(), None
    try:
        if args.stand_in:
            followers = StandIns(url, pods, logdir)
            serve = [followers.proc]
            wait_for_sessions(url, "jobcast-serve-listen", pods, timeout=120, query="%")
        else:
            started = [start_pod(url, logdir, i) for i in range(pods)]
            serve = [p for p, _ in started]
            addrs = [pod_address(p, out) for p, out in started]
            for addr in addrs:
                for _ in range(followers_per_pod):
                    followers.open(addr)
            followers.start()
        counter = NotifyCounter(url, listen_script)
        wait_for_sessions(url, "scale-notify-counter", 1)
        for i in range(workers):
            err = open(os.path.join(logdir, f"work-{i}.log"), "w")
            work.append(subprocess.Popen(
                [BIN, "work", "--concurrency", str(args.concurrency), "--grace-secs", "1",
                 "--database-url", url], stdout=subprocess.DEVNULL, stderr=err))
        # Warm-up: every worker connected and events flowing for args.warmup seconds.
        deadline = time.time() + 30
        while events_mark(url) <= args.jobs and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(args.warmup)
        meter = CpuMeter({"serve": [p.pid for p in serve], "work": [p.pid for p in work]},
                         postmaster_pid(url))
        cpu0, mark0, frames0, notes0 = meter.snapshot(), events_mark(url), followers.frames, counter.count
        t0 = time.time()
        followers.measuring = True
        time.sleep(args.window / 2)
        listen = dict((app, int(n)) for app, n in rows(
            url, "select application_name, count(*) from pg_stat_activity "
                 "where datname = current_database() and application_name like 'jobcast-%-listen' "
                 "group by 1"))
        connections = int(psql(url, "select count(*) from pg_stat_activity "
                                    "where datname = current_database()"))
        # (Under load the queries above can outlast half the window: the window is then
        # longer, and measured.)
        time.sleep(max(0.0, t0 + args.window - time.time()))
        frames1, notes1, mark1 = followers.frames, counter.count, events_mark(url)
        followers.measuring = False
        seconds = time.time() - t0
        cpu = CpuMeter.delta(cpu0, meter.snapshot(), seconds)
        committed, succeeded, commits = (int(v) for v in rows(
            url, "select count(*), count(*) filter (where type = 'succeeded'), "
                 f"count(distinct xid) from jobcast.events where id > {mark0} and id <= {mark1}")[0])
        left = int(psql(url, "select count(*) from jobcast.queued"))
        (p50, p99), sampled = followers.percentiles(0.50, 0.99)
        for p in serve + work:
            if p.poll() is not None:
                raise SystemExit(f"a jobcast process exited during the window (logs: {logdir})")
    finally:
        stop(work + ([] if args.stand_in else serve))
        if counter:
            counter.stop()
        followers.stop()
        psql(SERVER_URL, f"drop database if exists {name} with (force)")
    n_followers = pods * (1 if args.stand_in else followers_per_pod)
    committed_s = committed / seconds
    delivered_s = (frames1 - frames0) / seconds
    notify_s = (notes1 - notes0) / seconds
    row = {
        "part": "grid", "stand_in": bool(args.stand_in), "pods": pods, "workers": workers, "concurrency": args.concurrency,
        "followers": n_followers,
        "listen_serve": listen.get("jobcast-serve-listen", 0),
        "listen_work": listen.get("jobcast-work-listen", 0),
        "connections": connections,
        "events_committed_per_s": committed_s, "jobs_per_s": succeeded / seconds,
        "event_commits_per_s": commits / seconds,
        "delivered_per_s": delivered_s,
        "delivered_pct": (100.0 * delivered_s / (committed_s * n_followers)
                          if committed_s and n_followers else None),
        "latency_p50_ms": p50, "latency_p99_ms": p99, "latency_frames": sampled,
        "notify_per_s": notify_s,
        "events_per_notify": committed_s / notify_s if notify_s else None,
        "cpu_postgres": cpu["postgres"], "cpu_serve": cpu["serve"], "cpu_work": cpu["work"],
        "cpu_client": cpu["client"], "cpu_machine": cpu["machine"],
        "cpu_others": max(0.0, cpu["machine"] - cpu["postgres"] - cpu["serve"] - cpu["work"]
                          - cpu["client"]),
        "machine_busy_pct": cpu["machine_pct"],
        "backlog_left": left, "seconds": round(seconds, 1),
    }
    if left == 0:
        log("  warning: the backlog ran out during the window (raise --jobs)")
    log(f"  pods {pods:>2} workers {workers:>2}: {committed_s:,.0f} events/s committed, "
        f"{delivered_s:,.0f}/s delivered ({fmt(row['delivered_pct'], 0)} %), p50/p99 "
        f"{fmt(p50)}/{fmt(p99)} ms, {row['jobs_per_s']:,.0f} jobs/s, {notify_s:,.0f} NOTIFY/s, "
        f"LISTEN {row['listen_serve']}+{row['listen_work']}, CPU pg {cpu['postgres']:.2f} "
        f"serve {cpu['serve']:.2f} work {cpu['work']:.2f} client {cpu['client']:.2f} "
        f"others {row['cpu_others']:.2f} (machine {cpu['machine_pct']:.0f} % busy)")
    return row


def fmt(value, digits=1):
    if value is None:
        return "-"
    if isinstance(value, float) and digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def settings(url):
    names = ["server_version", "fsync", "synchronous_commit", "shared_buffers", "max_connections"]
    values = rows(url, "select name, setting || coalesce(unit, '') from pg_settings where name in ("
                       + ",".join(f"'{n}'" for n in names) + ") order by name")
    return dict(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", metavar="notify|grid",
                        help="what to run (default: both)")
    parser.add_argument("--pods", default="1,4,16", help="serve pods per run (default 1,4,16)")
    parser.add_argument("--workers", default="1,4,16", help="work processes (default 1,4,16)")
    parser.add_argument("--listeners", default="0,1,16,64",
                        help="LISTEN sessions for the NOTIFY part (default 0,1,16,64)")
    parser.add_argument("--concurrency", type=int, default=16, help="per work process")
    parser.add_argument("--followers-per-pod", type=int, default=1)
    parser.add_argument("--stand-in", action="store_true",
                        help="pods as jobcast hubs in one process (examples/pods.rs): a LISTEN "
                             "connection and one firehose follower each, no HTTP")
    parser.add_argument("--bare-workers", type=int, default=4,
                        help="workers of the extra runs whose pods have no follower "
                             "(NOTIFY's cost alone; 0 skips them)")
    parser.add_argument("--jobs", type=int, default=30000, help="backlog per run (x 22 events)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured per run")
    parser.add_argument("--notify-secs", type=int, default=8)
    args = parser.parse_args()
    args.parts = args.parts or ["notify", "grid"]
    for part in args.parts:
        if part not in ("notify", "grid"):
            parser.error(f"unknown part {part!r} (notify or grid)")
    def counts(option, text, least):
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            values = []
        if not values or min(values) < least:
            parser.error(f"{option} takes comma-separated integers of at least {least}, "
                         f"not {text!r}")
        return values

    args.pods = counts("--pods", args.pods, 1)
    args.workers = counts("--workers", args.workers, 1)
    args.listeners = counts("--listeners", args.listeners, 0)
    args.pgbench = os.environ.get("PGBENCH", "pgbench")

    version = subprocess.run([BIN, "--version"], capture_output=True, text=True).stdout.strip()
    info = {"binary": BIN, "version": version, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cores": os.cpu_count(), "settings": settings(SERVER_URL)}
    log(f"bench-scale: {json.dumps(info)}")
    start = time.time()
    notify_rows, grid_rows = [], []
    with tempfile.TemporaryDirectory(prefix="jobcast-scale-") as tmp:
        logdir = os.path.join(tmp, "logs")
        os.makedirs(logdir)
        if "notify" in args.parts:
            log("NOTIFY fan-out (pgbench, 8 clients, NOTIFY-only transactions):")
            notify_rows = notify_part(args, tmp)
        if "grid" in args.parts:
            template = "jobcast_scale_template"
            psql(SERVER_URL, f"drop database if exists {template} with (force)")
            psql(SERVER_URL, f"create database {template}")
            subprocess.run([BIN, "migrate", "--database-url", db_url(template)], check=True,
                           capture_output=True)
            listen_script = write_listen_script(tmp, "jobcast_events", args.window + 120)
            log(f"jobcast (demo.steps x {STEPS} steps, work --concurrency {args.concurrency}, "
                f"{args.followers_per_pod} firehose follower(s) per pod, {args.window:.0f} s windows):")
            try:
                runs = [(p, w, args.followers_per_pod) for p in args.pods for w in args.workers]
                if args.bare_workers:
                    runs += [(p, args.bare_workers, 0) for p in args.pods]
                for pods, workers, followers in runs:
                    grid_rows.append(grid_run(args, template, logdir, listen_script,
                                              pods, workers, followers))
            finally:
                psql(SERVER_URL, f"drop database if exists {template} with (force)")
    print(f"\nbench-scale, {info['date']}, {version}, {info['cores']} cores, "
          f"PostgreSQL {info['settings'].get('server_version')} (fsync={info['settings'].get('fsync')}, "
          f"synchronous_commit={info['settings'].get('synchronous_commit')}); "
          f"took {time.time() - start:.0f} s\n")
    durable = [r for r in notify_rows if r["part"] == "notify-durable"]
    notify_rows = [r for r in notify_rows if r["part"] == "notify"]
    if durable:
        print("| durable writers (8 clients, no listener) | commits/s |")
        print("|---|---:|")
        for r in durable:
            print(f"| {r['transaction']} | {r['commits_per_s']:,.0f} |")
        print()
    if notify_rows:
        base = next((r["commits_per_s"] for r in notify_rows if r["listeners"] == 0), None)
        print("| LISTEN sessions | NOTIFY commits/s (8 clients) | vs 0 listeners | "
              "notifications received/s | PostgreSQL CPU-s/s | psql listeners CPU-s/s |")
        print("|---:|---:|---:|---:|---:|---:|")
        for r in notify_rows:
            ratio = f"{r['commits_per_s'] / base:.2f}x" if base else "-"
            print(f"| {r['listeners']} | {r['commits_per_s']:,.0f} | {ratio} | "
                  f"{r['notifications_received_per_s']:,.0f} | {r['cpu_postgres']:.2f} | "
                  f"{r['cpu_listeners']:.2f} |")
        print()
    if grid_rows:
        print("| pods | workers | followers | LISTEN conns (serve+work) | events committed/s | jobs/s | "
              "delivered/s (% of committed x followers) | delivery p50 / p99 ms | NOTIFY/s | "
              "events per NOTIFY | CPU-s/s PostgreSQL / serve / work / client / others | machine busy |")
        print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|")
        for r in grid_rows:
            print(f"| {r['pods']} | {r['workers']} | {r['followers']} | "
                  f"{r['listen_serve']}+{r['listen_work']} | "
                  f"{r['events_committed_per_s']:,.0f} | {r['jobs_per_s']:,.0f} | "
                  f"{r['delivered_per_s']:,.0f} ({fmt(r['delivered_pct'], 0)} %) | "
                  f"{fmt(r['latency_p50_ms'])} / {fmt(r['latency_p99_ms'])} | "
                  f"{r['notify_per_s']:,.0f} | {fmt(r['events_per_notify'])} | "
                  f"{r['cpu_postgres']:.2f} / {r['cpu_serve']:.2f} / {r['cpu_work']:.2f} / "
                  f"{r['cpu_client']:.2f} / {r['cpu_others']:.2f} | {r['machine_busy_pct']:.0f} % |")
        print()
    for r in durable + notify_rows + grid_rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
