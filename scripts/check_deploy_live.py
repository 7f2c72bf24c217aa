"""The shipped deploy/nginx.conf, run for real: two `jobcast serve` with API keys and one
shared --token-secret, a `jobcast work`, and nginx with deploy/nginx.conf on a port other
than 80, changed only where it names the upstreams, its port and its paths. Checks what a
first day in production hits:

- a POST from the page's own origin (Origin: http://127.0.0.1:PORT) is accepted through
  nginx (not 403: nginx must pass the port in Host), and one from another origin is not;
- a job's `links.events` (a stream token minted by whichever pod answered) opens its stream
  through nginx on both pods (one shared secret), unbuffered and uncompressed;
- the access log holds no `token=` (nor the token);
- /metrics and /openapi.json are not served through nginx (but are by the pods).

The `serve` processes start as deploy/compose.yaml starts them: its entrypoint (which reads
the token secret from the secret file) and environment, with /run/secrets/NAME mapped to
files here, and the listen address and DATABASE_URL of this check (PyYAML needed for that;
without it they start with plain flags, saying so).

Run by scripts/check-deploy. Needs DATABASE_URL (it makes, and drops, a database of its own
there), nginx (scripts/setup-proxies) and the binary (JOBCAST_BIN, default
target/debug/jobcast); without one of them it says SKIPPED and why, and exits 0."""
import grp
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 15
errors = []
children = []


def say(message):
    print(f"check-deploy: {message}", flush=True)


def skip(reason):
    say(f"SKIPPED the live nginx check: {reason}")
    sys.exit(0)


def check(condition, message):
    if not condition:
        errors.append(message)
        say(f"FAILED: {message}")
    return condition


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, headers=None, body=None, timeout=TIMEOUT):
    """(status, headers, body bytes) of one request to 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def wait_for(what, probe, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if probe():
                return True
        except OSError:
            pass
        for child, name, _ in children:
            if child.poll() is not None:
                raise RuntimeError(f"{name} exited ({child.returncode}) while waiting for {what}")
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def start(name, argv, env, scratch):
    log = open(scratch / f"{name}.log", "wb")
    child = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    children.append((child, name, scratch / f"{name}.log"))
    return child


def stop_all():
    for child, _, _ in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    for child, _, _ in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def database_of_its_own(url):
    """A fresh database on DATABASE_URL's server, as (url, drop); DATABASE_URL itself when it
    cannot make one (no psql, or a URL it cannot rewrite)."""
    parts = urllib.parse.urlsplit(url)
    psql = shutil.which("psql")
    if not psql or parts.scheme not in ("postgres", "postgresql"):
        say("using DATABASE_URL's database itself (no psql, or not a postgres:// URL)")
        return url, lambda: None
    name = f"jobcast_check_deploy_{os.getpid()}"
    subprocess.run([psql, url, "-v", "ON_ERROR_STOP=1", "-qc", f"create database {name}"],
                   check=True, capture_output=True, timeout=TIMEOUT)

    def drop():
        # Clean-up only: a slow drop (a busy server) must not fail the check.
        try:
            subprocess.run([psql, url, "-qc", f"drop database if exists {name} with (force)"],
                           capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            print(f"check-deploy: dropping {name} took over 60 s; left behind", file=sys.stderr)

    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}")), drop


def compose_serve(name, binary, scratch, env, secret_files):
    """(argv, env) of compose's `name` service, run here: its entrypoint and command, its
    environment but DATABASE_URL, with /run/secrets/NAME read from secret_files[NAME] and
    `jobcast` on PATH being `binary`."""
    try:
        import yaml
    except ImportError:
        say("no PyYAML: serve starts with plain flags, not compose's entrypoint and environment")
        return [str(binary), "serve"], dict(env, JOBCAST_API_KEYS_FILE=str(secret_files["jobcast_api_keys"]),
                                            JOBCAST_TOKEN_SECRET=secret_files["jobcast_token_secret"].read_text().strip())
    service = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"][name]

    def local(text):
        text = str(text).replace("$$", "$")
        for secret, path in secret_files.items():
            text = text.replace(f"/run/secrets/{secret}", str(path))
        if "/run/secrets/" in text:
            raise RuntimeError(f"compose {name}: {text!r} names a secret this check does not provide")
        return text

    argv = [local(a) for a in (service.get("entrypoint") or ["jobcast"]) + service.get("command", [])]
    bin_dir = scratch / "bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "jobcast").exists():
        (bin_dir / "jobcast").symlink_to(binary)
    if argv[0] == "jobcast":
        argv[0] = str(bin_dir / "jobcast")
    compose_env = {k: local(v) for k, v in (service.get("environment") or {}).items() if k != "DATABASE_URL"}
    return argv, dict(env, **compose_env, PATH=f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}")


def nginx_config(shipped, scratch, port, pods):
    """deploy/nginx.conf with its upstreams replaced by `pods`, listening on `port`, its paths
    inside `scratch`; every other byte as shipped."""
    names = re.findall(r"^\s*server\s+(serve-\d+):8080\s", shipped, re.M)
    if len(names) != len(pods):
        raise RuntimeError(f"deploy/nginx.conf: expected {len(pods)} `server serve-N:8080` upstreams, found {names}")
    replacements = [(f"server {name}:8080 ", f"server 127.0.0.1:{pod} ") for name, pod in zip(names, pods)]
    replacements += [
        ("listen 80;", f"listen 127.0.0.1:{port};"),
        ("/var/run/nginx.pid", f"{scratch}/nginx.pid"),
        ("/var/log/nginx/", f"{scratch}/"),
        ("/var/cache/nginx/", f"{scratch}/"),
    ]
    config = shipped
    for old, new in replacements:
        if old not in config:
            raise RuntimeError(f"deploy/nginx.conf no longer contains {old!r}: update this check")
        config = config.replace(old, new)
    # Nothing else differs: the lines changed are exactly those holding a replaced string.
    for before, after in zip(shipped.splitlines(), config.splitlines()):
        assert before == after or any(old in before for old, _ in replacements), (before, after)
    return config


def main():
    url = os.environ.get("DATABASE_URL")
    if not url:
        skip("DATABASE_URL is unset (scripts/test starts a throwaway PostgreSQL and sets it)")
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if not nginx:
        skip("nginx is not installed (scripts/setup-proxies installs it)")
    binary = Path(os.environ.get("JOBCAST_BIN", ROOT / "target" / "debug" / "jobcast"))
    if not os.access(binary, os.X_OK):
        skip(f"no jobcast binary at {binary} (cargo build, or set JOBCAST_BIN)")

    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="jobcast-check-deploy."))
    scratch.chmod(0o755)  # nginx's workers (nobody when run as root) write their temp files here
    db_url, drop_database = database_of_its_own(url)
    failed = True
    try:
        key = secrets.token_hex(32)
        keys_file = scratch / "api-keys"
        keys_file.write_text(f"deploycheck {key}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBCAST_")}
        env.update(DATABASE_URL=db_url, RUST_LOG="warn")
        subprocess.run([str(binary), "migrate"], env=env, check=True, capture_output=True, timeout=60)

        secret_file = scratch / "token-secret"
        secret_file.write_text(secrets.token_hex(32) + "\n")
        pods = [free_port() for _ in range(2)]
        for i, pod in enumerate(pods, 1):
            argv, serve_env = compose_serve(f"serve-{i}", binary, scratch, env,
                                            {"jobcast_api_keys": keys_file, "jobcast_token_secret": secret_file})
            start(f"serve-{i}", argv, dict(serve_env, JOBCAST_LISTEN=f"127.0.0.1:{pod}"), scratch)
        work = [str(binary), "work", "--exec", "deploy.check=true"]
        help_text = subprocess.run([str(binary), "work", "--help"], capture_output=True, text=True).stdout
        if "--no-demo-handlers" in help_text:
            work.append("--no-demo-handlers")
        start("work", work, env, scratch)
        for pod in pods:
            wait_for(f"serve on :{pod} ready", lambda: request(pod, "GET", "/readyz", timeout=2)[0] == 200)

        port = free_port()
        shipped = (ROOT / "deploy" / "nginx.conf").read_text()
        config = scratch / "nginx.conf"
        config.write_text(nginx_config(shipped, scratch, port, pods))
        directives = "daemon off;"
        if os.geteuid() == 0:
            # As root, nginx's workers run as its compiled-in user; name one that exists here.
            group = "nogroup" if any(g.gr_name == "nogroup" for g in grp.getgrall()) else "nobody"
            directives += f" user nobody {group};"
        start("nginx", [nginx, "-p", str(scratch), "-c", str(config), "-e", str(scratch / "error.log"),
                        "-g", directives], env, scratch)
        wait_for(f"nginx on :{port}", lambda: request(port, "GET", "/healthz", timeout=2)[0] == 200)
        say(f"nginx :{port} (deploy/nginx.conf as shipped but for upstreams, port, paths) -> "
            f"serve :{pods[0]}, :{pods[1]} ({'compose' if argv[0] != str(binary) else 'plain'} entrypoint and environment)")

        origin = f"http://127.0.0.1:{port}"
        api = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        # A page served through nginx POSTs with its own origin, port included.
        status, _, body = request(port, "POST", "/v1/jobs", dict(api, Origin=origin), json.dumps({"kind": "deploy.check"}))
        check(status == 202, f"POST /v1/jobs with Origin {origin} through nginx: {status} {body[:200]!r} "
                             "(403: nginx does not pass the port in Host)")
        job = json.loads(body) if status == 202 else None
        # The Origin check is on: another origin is refused (so the 202 above means something).
        status, _, _ = request(port, "POST", "/v1/jobs", dict(api, Origin="http://elsewhere.example"),
                               json.dumps({"kind": "deploy.check"}))
        check(status == 403, f"POST with a foreign Origin through nginx: {status}, expected 403")
        # A POST without a body, as the console's retry and cancel buttons send (409: not failed).
        if job:
            status, _, body = request(port, "POST", f"/v1/jobs/{job['id']}/retry", dict(api, Origin=origin))
            check(status in (202, 409), f"bodiless POST with Origin {origin} through nginx: {status} {body[:200]!r}")

        if job:
            events = job["links"]["events"]
            check("token=" in events, f"links.events carries a stream token: {events}")
            token = urllib.parse.parse_qs(urllib.parse.urlsplit(events).query).get("token", [""])[0]
            def finished():
                status, _, body = request(port, "GET", f"/v1/jobs/{job['id']}", {"Authorization": f"Bearer {key}"})
                return status == 200 and json.loads(body)["status"] in ("succeeded", "failed", "cancelled") and body

            wait_for("the job to finish (work --exec deploy.check=true)", finished)
            check(json.loads(finished())["status"] == "succeeded", f"the job succeeded: {finished()[:300]!r}")
            # The token opens the stream on every pod, directly and through nginx (round robin).
            for pod in pods:
                status, _, body = request(pod, "GET", events, {"Accept": "text/event-stream"})
                check(status == 200 and b"event: succeeded" in body,
                      f"links.events straight to the pod on :{pod}: {status} {body[:200]!r} (token secrets differ?)")
            for attempt in range(6):
                status, headers, body = request(port, "GET", events,
                                                {"Accept": "text/event-stream", "Accept-Encoding": "gzip"})
                if not check(status == 200, f"links.events through nginx (attempt {attempt + 1}): {status} {body[:200]!r}"):
                    continue
                check(headers.get("content-type", "").startswith("text/event-stream")
                      and headers.get("content-encoding", "identity") == "identity",
                      f"the stream through nginx is an uncompressed event stream: {headers}")
                check(body.startswith(b"retry:") and b"id: 1\nevent: queued\n" in body and b"event: succeeded" in body,
                      f"the stream through nginx replays the job and ends: {body[:300]!r}")
            access = (scratch / "access.log").read_text()
            served = set(re.findall(rf'"GET /v1/jobs/{re.escape(job["id"])}/events HTTP/1\.1" 200 .*upstream=(\S+)', access))
            check(served == {f"127.0.0.1:{pod}" for pod in pods},
                  f"streams opened through nginx on both pods: the access log shows {sorted(served)}")
            check(token and token not in access, "the access log holds no stream token")

        # Not public through nginx, but there on each pod (for a scraper on the private network).
        for path in ("/metrics", "/openapi.json", "//metrics", "/metrics/", "/metrics?format=text", "/openapi.json?x=1", "/%6Detrics"):
            status, _, _ = request(port, "GET", path)
            check(status != 200, f"GET {path} through nginx: {status}, expected it not served")
        for pod in pods:
            check(request(pod, "GET", "/metrics")[0] == 200, f"GET /metrics straight to the pod on :{pod} is 200")

        access = (scratch / "access.log").read_text()
        check("token=" not in access, "the access log holds no `token=`:\n" + "\n".join(
            line for line in access.splitlines() if "token=" in line))
        check("/v1/jobs/" in access, "the access log records requests (by path)")
        failed = bool(errors)
    except Exception as error:  # noqa: BLE001 - any failure is reported with the logs
        errors.append(f"{type(error).__name__}: {error}")
        say(f"FAILED: {type(error).__name__}: {error}")
    finally:
        stop_all()
        drop_database()
        if failed:
            for log in sorted(scratch.glob("*.log")):
                lines = log.read_text(errors="replace").splitlines()[-15:]
                print(f"--- {log.name} (last {len(lines)} lines)", file=sys.stderr)
                print("\n".join(lines), file=sys.stderr)
        shutil.rmtree(scratch, ignore_errors=True)
    if errors:
        sys.exit(1)
    say(f"deploy/nginx.conf with real nginx on port {port}: ok ({time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    main()
