"""Randomized HTTP fuzzer for jobcast (Python standard library only; run by scripts/fuzz).

Starts a real `jobcast serve` and `jobcast work` on a fresh database, sends random methods,
paths, query strings, headers and bodies (and some raw malformed bytes) for a while, then
checks what a hostile client must never achieve:

- a server error: any 5xx other than 503 (which is load shedding, with Retry-After);
- a crashed process: `serve` or `work` exited;
- a row stored by a rejected request: jobs in the table == jobs in 2xx answers to
  POST /v1/jobs and /v1/jobs/batch;
- an ERROR line in the logs (client mistakes are logged below ERROR).

Prints requests tried and a status histogram; exits 1 on any of the above.
"""

import argparse
import collections
import http.client
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

KINDS = ["demo.echo", "demo.steps", "demo.nope", "x" * 129, "a b", "", "k\u0000", "émoji"]
QUEUES = ["default", "q1", "other", "", "bad queue", "q" * 65, "%00", "\u0000", "é"]
STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "QUEUED", "nope", ""]
ORIGINS = [None] * 12 + ["SELF", "http://evil.example", "null", "http://ok.example", "\xff"]
CONTENT_TYPES = ["application/json"] * 12 + [
    "application/json; charset=utf-8",
    "application/problem+json", "text/plain", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", None, "json", "application/jsonx", "\xff/\xfe",
]


class Fuzzer:
    def __init__(self, rng, host, port, max_body):
        self.rng = rng
        self.host = host
        self.port = port
        self.max_body = max_body
        self.job_ids = ["1"]
        self.lock = threading.Lock()

    # ---- random values -------------------------------------------------------------------
    def text(self, n=None):
        r = self.rng
        n = r.choice([0, 1, 3, 10, 64, 65, 129, 300]) if n is None else n
        alphabet = "abcXYZ019_.:-/ %?#&=\u0000\u00e9\u4e2d\U0001f600\\\"'\n\t"
        return "".join(r.choice(alphabet) for _ in range(n))

    def number(self):
        r = self.rng
        return r.choice([
            0, 1, -1, 2, 5, 100, 32767, 32768, -32769, 86400, 86401, 10_000, 10_001, 60_000,
            65_536, 1_048_577, 10**13, 2**31, 2**32, 2**53 + 1, 2**63, 2**64, 10**30, 1.5, -0.0, 1e308,
        ])

    def json_value(self, depth=0):
        r = self.rng
        choice = r.randrange(9 if depth < 4 else 5)
        if choice == 0:
            return None
        if choice == 1:
            return r.choice([True, False])
        if choice == 2:
            return self.number()
        if choice in (3, 4):
            return self.text()
        if choice in (5, 6):
            return [self.json_value(depth + 1) for _ in range(r.randrange(4))]
        return {self.text(r.randrange(6)): self.json_value(depth + 1) for _ in range(r.randrange(4))}

    def steps_args(self):
        r = self.rng
        args = {}
        for name in ["steps", "step_ms", "fail_at", "payload_bytes", "bogus"]:
            if r.random() < 0.5:
                args[name] = r.choice([self.number(), r.randrange(5), r.randrange(50), self.json_value()])
        return args

    def spec(self):
        r = self.rng
        if r.random() < 0.1:
            return self.json_value()
        spec = {}
        if r.random() < 0.95:
            spec["kind"] = r.choice(["demo.echo", "demo.steps"] * 4 + KINDS + [self.json_value()])
        if r.random() < 0.5:
            spec["queue"] = r.choice(["default", "q1"] * 4 + QUEUES + [self.json_value()])
        if r.random() < 0.7:
            spec["args"] = self.steps_args() if spec.get("kind") == "demo.steps" else self.json_value()
        for field in ["priority", "max_attempts", "timeout_secs"]:
            if r.random() < 0.3:
                spec[field] = r.choice([self.number(), self.json_value()])
        if r.random() < 0.3:
            spec["run_at"] = r.choice([
                "2020-01-01T00:00:00Z", "2999-01-01T00:00:00Z", "0000-01-01T00:00:00Z",
                "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "+300000-01-01T00:00:00Z",
                "tomorrow", self.text(), 5,
            ])
        if r.random() < 0.1:
            spec[self.text(r.choice([1, 5, 3000]))] = 1
        if spec.get("kind") in ("demo.steps",) and isinstance(spec.get("args"), dict):
            # Keep most valid demo jobs short so the worker is not saturated for minutes.
            spec["args"].setdefault("step_ms", 0)
        return spec

    def body(self, path):
        r = self.rng
        roll = r.random()
        if roll < 0.05:
            return bytes(r.randrange(256) for _ in range(r.randrange(200)))
        if roll < 0.08:
            return b"[" * 10_000
        if roll < 0.10:
            return b'{"kind": "demo.echo", "args": "' + b"x" * (self.max_body + 10) + b'"}'
        if roll < 0.13:
            return b'{"kind": "demo.echo", "args": "\xff\xfe"}'
        if roll < 0.16:
            return json.dumps(self.spec()).encode()[: r.randrange(1, 40)]
        if path.endswith("/batch") or roll < 0.2:
            n = r.choice([0, 1, 2, 5, 1001])
            jobs = [self.spec() for _ in range(n)] if n < 1001 else [{"kind": "demo.echo"}] * n
            doc = {"jobs": jobs} if r.random() < 0.9 else {"jobs": jobs, "extra": 1}
            return json.dumps(doc).encode()
        return json.dumps(self.spec()).encode()

    def job_id(self):
        r = self.rng
        with self.lock:
            known = r.choice(self.job_ids)
        return r.choice([
            known, known, "0", "-1", "9223372036854775807", "9223372036854775808", "99999999999999999999",
            "abc", "%00", "%ff%fe", "1%2F2", "%2e%2e", "1.0", "%201", "x" * 3000, "",
        ])

    def path(self):
        r = self.rng
        templates = [
            "/v1/jobs", "/v1/jobs", "/v1/jobs/batch", "/v1/jobs/{id}", "/v1/jobs/{id}/cancel",
            "/v1/jobs/{id}/events", "/v1/events", "/metrics", "/healthz", "/readyz", "/",
            "/v1", "/v1/", "//v1//jobs", "/v1/jobs/{id}/events/x", "/v1/../etc/passwd",
            "/%00", "/" + "a" * 5000, "/v1/queues/{id}/pause",
        ]
        return r.choice(templates).replace("{id}", self.job_id())

    def query(self):
        r = self.rng
        if r.random() < 0.5:
            return ""
        names = ["queue", "kind", "status", "limit", "cursor", "last_event_id", "token", "bogus", "", "%00"]
        parts = []
        for _ in range(r.randrange(1, 4)):
            name = r.choice(names)
            value = r.choice(QUEUES + KINDS + STATUSES + [str(self.number()), self.text(), "%ff", "%00", "%"])
            if value in ("%ff", "%00", "%"):
                parts.append(f"{urllib.parse.quote(name)}={value}")
            elif name == "%00":
                parts.append(f"%00={urllib.parse.quote(value)}")
            else:
                parts.append(urllib.parse.urlencode({name: value}))
        return "?" + "&".join(parts)

    def headers(self, method, path):
        r = self.rng
        headers = {}
        content_type = r.choice(CONTENT_TYPES)
        if content_type is not None:
            headers["Content-Type"] = content_type.encode("latin-1", "replace")
        origin = r.choice(ORIGINS)
        if origin == "SELF":
            origin = f"http://{self.host}:{self.port}"
        if origin is not None:
            headers["Origin"] = origin.encode("latin-1", "replace")
        if r.random() < 0.3:
            headers["Last-Event-ID"] = r.choice([b"0", b"5", b"-1", b"\xff\xfe", b"abc", b"1:2", b"99999999999"])
        if r.random() < 0.2:
            headers["Idempotency-Key"] = r.choice([b"k1", b"k2", b"", b"x" * 300, b"\xe9t\xe9"])
        if r.random() < 0.1:
            headers["X-Junk"] = bytes(r.choice(range(32, 256)) for _ in range(r.randrange(1, 100)))
        if r.random() < 0.2:
            headers["Accept"] = b"text/event-stream"
        return headers

    # ---- sending -------------------------------------------------------------------------
    def one(self):
        """One request; returns (status or label, created job count, note)."""
        r = self.rng
        if r.random() < 0.05:
            return self.raw()
        method = r.choices(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"],
                           weights=[40, 45, 3, 3, 3, 3, 3])[0]
        path = self.path()
        target = path + self.query()
        headers = self.headers(method, path)
        body = self.body(path) if method in ("POST", "PUT", "PATCH") and r.random() < 0.95 else None
        conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            status = response.status
            if response.getheader("Content-Type", "").startswith("text/event-stream"):
                data = b""  # an open stream: the head is the answer; hang up
            else:
                data = response.read()
        except (ConnectionError, socket.timeout, http.client.HTTPException, OSError) as e:
            return (f"no answer ({type(e).__name__})", 0, None)
        finally:
            conn.close()
        created = 0
        if method == "POST" and 200 <= status < 300 and path in ("/v1/jobs", "/v1/jobs/batch"):
            try:
                doc = json.loads(data)
                jobs = doc["jobs"] if path.endswith("/batch") else [doc]
                if status == 202:
                    created = len(jobs)
                with self.lock:
                    self.job_ids.extend(j["id"] for j in jobs[:5])
            except (ValueError, KeyError, TypeError):
                pass
        note = None
        if status >= 500 and status != 503:
            note = f"{method} {target[:200]} -> {status} {data[:300]!r} (body {str(body)[:300]})"
        return (status, created, note)

    def raw(self):
        """Malformed or ambiguous HTTP that no ordinary client sends."""
        r = self.rng
        host = f"{self.host}:{self.port}"
        shapes = [
            b"GARBAGE\r\n\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 300_000 + b"\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X%d: a\r\n" % i for i in range(300)) + b"\r\n",
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 3\r\nContent-Length: 40\r\n\r\n{}",
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"GET /v1/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \xff\xfe\r\n\r\n",
            b"GET /v1/jobs?kind=\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),
            bytes(r.randrange(256) for _ in range(r.randrange(1, 500))),
        ]
        data = r.choice(shapes).replace(b"Host: x", b"Host: " + host.encode())
        try:
            with socket.create_connection((self.host, self.port), timeout=3) as s:
                try:
                    s.sendall(data)
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                response = b""
                until = time.monotonic() + 3
                while len(response) < 1_000_000 and time.monotonic() < until:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    response += chunk
        except (OSError, socket.timeout) as e:
            return (f"raw: no answer ({type(e).__name__})", 0, None)
        m = re.match(rb"HTTP/1\.[01] (\d{3})", response)
        if not m:
            return ("raw: no answer", 0, None)
        status = int(m.group(1))
        created = 0
        if b"POST /v1/jobs" in data:
            for head in re.finditer(rb"HTTP/1\.[01] 202", response):
                created += 1
        note = None
        if status >= 500 and status != 503:
            note = f"raw {data[:120]!r} -> {response[:300]!r}"
        return (status, created, note)


def start(binary, args, env, log_path, want_url):
    log = open(log_path, "wb")
    proc = subprocess.Popen([binary] + args, stdout=subprocess.PIPE, stderr=log, env=env)
    url = None
    if want_url:
        for line in proc.stdout:
            line = line.decode()
            if line.startswith("jobcast listening on "):
                url = line.split()[-1]
                break
        if url is None:
            sys.exit(f"fuzz: {args[0]} exited before listening; see {log_path}")
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, url


def count_jobs(database_url):
    out = subprocess.run(["psql", database_url, "-Atc", "select count(*) from jobcast.jobs"],
                         check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--logs", default="/tmp")
    opts = parser.parse_args()

    env = dict(os.environ, RUST_LOG="info")
    env.pop("DATABASE_URL", None)
    subprocess.run([opts.binary, "migrate", "--database-url", opts.database_url], check=True,
                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    max_body = 65536
    serve_log = os.path.join(opts.logs, f"fuzz-serve-{os.getpid()}.log")
    work_log = os.path.join(opts.logs, f"fuzz-work-{os.getpid()}.log")
    serve, url = start(opts.binary, ["serve", "--listen", "127.0.0.1:0", "--database-url", opts.database_url,
                                     "--max-body-bytes", str(max_body), "--body-timeout-secs", "2",
                                     "--cors-origins", "http://ok.example"], env, serve_log, True)
    work, _ = start(opts.binary, ["work", "--database-url", opts.database_url, "--concurrency", "16",
                                  "--retry-base-ms", "10", "--grace-secs", "1", "--queues", "default,q1,other"], env, work_log, False)
    parsed = urllib.parse.urlparse(url)
    before = count_jobs(opts.database_url)
    print(f"fuzz: seed {opts.seed}, {opts.duration:.0f} s, {opts.threads} threads against {url}", flush=True)

    histogram = collections.Counter()
    created = 0
    problems = []
    lock = threading.Lock()
    deadline = time.monotonic() + opts.duration

    def run(index):
        nonlocal created
        fuzzer = Fuzzer(random.Random(opts.seed * 1000 + index), parsed.hostname, parsed.port, max_body)
        while time.monotonic() < deadline and serve.poll() is None:
            try:
                status, made, note = fuzzer.one()
            except Exception as e:  # a fuzzer bug must not pass for a quiet server
                status, made, note = (f"fuzzer error ({type(e).__name__})", 0, None)
            with lock:
                histogram[status] += 1
                created += made
                if note:
                    problems.append(note)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(opts.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(1)  # let in-flight work settle before counting rows
    crashed = [name for name, p in (("serve", serve), ("work", work)) if p.poll() is not None]
    after = count_jobs(opts.database_url) if not crashed or "serve" not in crashed else None
    for p in (serve, work):
        if p.poll() is None:
            p.terminate()
    for p in (serve, work):
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()

    total = sum(histogram.values())
    print(f"fuzz: {total} requests ({total / opts.duration:.0f}/s)")
    for status, n in sorted(histogram.items(), key=lambda kv: str(kv[0])):
        print(f"  {status}: {n}")
    server_errors = sum(n for s, n in histogram.items() if isinstance(s, int) and s >= 500 and s != 503)
    error_lines = []
    for path in (serve_log, work_log):
        with open(path, errors="replace") as f:
            error_lines += [line.rstrip() for line in f if " ERROR " in line or "ERROR\x1b" in line]
    stored = None if after is None else after - before
    print(f"fuzz: server errors (5xx but 503): {server_errors}")
    print(f"fuzz: crashed processes: {len(crashed)} {crashed if crashed else ''}")
    print(f"fuzz: jobs stored {stored}, jobs in 2xx answers {created}, "
          f"stored by rejected requests: {None if stored is None else stored - created}")
    print(f"fuzz: ERROR log lines: {len(error_lines)}")
    for note in problems[:10]:
        print("  server error:", note)
    for line in error_lines[:10]:
        print("  log:", line[:400])
    failed = server_errors or crashed or stored != created or error_lines
    print("fuzz: FAILED" if failed else "fuzz: ok", f"(logs: {serve_log}, {work_log})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
