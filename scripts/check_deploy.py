"""Structural check of deploy/, the Dockerfile and .dockerignore: the services a jobcast
deployment needs, wired as docs/deploy.md describes. Run by scripts/check-deploy (scripts/test
runs that), which then runs the shipped nginx.conf for real (scripts/check_deploy_live.py)."""
import fnmatch
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# The keys of a compose service this file may use (a typo is an error, as in compose).
SERVICE_KEYS = {
    "build", "image", "command", "entrypoint", "environment", "env_file", "depends_on",
    "healthcheck", "ports", "expose", "volumes", "secrets", "restart", "stop_grace_period",
    "deploy", "labels", "networks", "user", "working_dir", "ulimits", "logging",
}
TOP_KEYS = {"name", "services", "volumes", "secrets", "networks", "configs"}
IMAGE_UID = "10001"
errors = []


def check(condition, message):
    if not condition:
        errors.append(message)


def command_of(service):
    command = service.get("command", [])
    return command if isinstance(command, list) else str(command).split()


def env_of(service):
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


def secrets_of(service):
    """The secrets a service mounts, as {source: path in the container}."""
    mounted = {}
    for secret in service.get("secrets", []) or []:
        if isinstance(secret, dict):
            source, target = secret.get("source"), secret.get("target")
        else:
            source, target = secret, None
        target = target or source
        mounted[source] = target if target.startswith("/") else f"/run/secrets/{target}"
    return mounted


def depends(service, name, condition):
    depends_on = service.get("depends_on", {})
    return isinstance(depends_on, dict) and depends_on.get(name, {}).get("condition") == condition


def health_test(service):
    test = (service.get("healthcheck") or {}).get("test")
    if isinstance(test, str):
        return test.split()
    return list(test or [])


# ---------------------------------------------------------------- compose.yaml
compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
check(isinstance(compose, dict), "compose.yaml is not a mapping")
unknown = {k for k in compose if not k.startswith("x-")} - TOP_KEYS
check(not unknown, f"unknown top-level keys: {sorted(unknown)}")
services = compose.get("services", {})
declared_secrets = compose.get("secrets") or {}
for name, service in services.items():
    check(isinstance(service, dict), f"service {name} is not a mapping")
    bad = set(service) - SERVICE_KEYS
    check(not bad, f"service {name}: unknown keys {sorted(bad)}")
    for needed in service.get("depends_on", {}) or {}:
        check(needed in services, f"service {name} depends on unknown service {needed}")
    for secret in secrets_of(service):
        check(secret in declared_secrets, f"service {name}: unknown secret {secret}")
    for volume in service.get("volumes", []) or []:
        source = str(volume).split(":", 1)[0]
        if source.startswith("."):
            check((DEPLOY / source).exists(), f"service {name}: {source} does not exist")
        else:
            check(source in (compose.get("volumes") or {}), f"service {name}: unknown volume {source}")
for name, secret in declared_secrets.items():
    path = str((secret or {}).get("file", ""))
    check(path.startswith("./"), f"secret {name}: a file next to compose.yaml")
    # The real files are made by the user (docs/deploy.md) and never committed.
    ignored = (DEPLOY / ".gitignore").read_text().split() if (DEPLOY / ".gitignore").exists() else []
    check(path[2:] in ignored, f"secret {name}: {path} is in deploy/.gitignore")

by_command = {}
for name, service in services.items():
    if service.get("image", "").startswith("jobcast") or "build" in service:
        by_command.setdefault(command_of(service)[:1][0] if command_of(service) else "", []).append(name)

postgres = [n for n, s in services.items() if str(s.get("image", "")).startswith("postgres")]
check(len(postgres) == 1, "one PostgreSQL service")
check(len(by_command.get("migrate", [])) == 1, "one one-off migrate service")
check(len(by_command.get("serve", [])) >= 2, "at least two serve services")
check(len(by_command.get("work", [])) >= 2, "at least two work services")

urls = {env_of(services[n]).get("DATABASE_URL") for c in ("migrate", "serve", "work") for n in by_command.get(c, [])}
check(len(urls) == 1 and None not in urls, f"every jobcast process uses one DATABASE_URL, got {urls}")

for name in by_command.get("migrate", []):
    migrate = services[name]
    check(migrate.get("restart") == "no", f"{name}: a one-off (restart: \"no\")")
    check(depends(migrate, postgres[0], "service_healthy") if postgres else False,
          f"{name} waits for a healthy PostgreSQL")
for name in by_command.get("serve", []) + by_command.get("work", []):
    check(depends(services[name], by_command["migrate"][0], "service_completed_successfully"),
          f"{name} starts after migrate completed")

token_secrets = set()
for name in by_command.get("serve", []):
    serve = services[name]
    env = env_of(serve)
    mounted = secrets_of(serve)
    check("ports" not in serve, f"{name}: reached only through the proxy (no published port)")
    check(env.get("JOBCAST_LISTEN", "").startswith("0.0.0.0:"), f"{name}: listens on 0.0.0.0")
    check(health_test(serve)[-2:] == ["jobcast", "health"], f"{name}: a healthcheck running `jobcast health`")
    check(env.get("JOBCAST_API_KEYS_FILE") in mounted.values(),
          f"{name}: JOBCAST_API_KEYS_FILE is a secret it mounts, got {env.get('JOBCAST_API_KEYS_FILE')}")
    # One secret for every pod, from a file: a token minted by one pod opens streams on all.
    check("JOBCAST_TOKEN_SECRET" not in env, f"{name}: JOBCAST_TOKEN_SECRET from a secret file, not inline")
    entrypoint = " ".join(map(str, serve.get("entrypoint") or []))
    read = re.findall(r"cat (/run/secrets/\S+?)\)", entrypoint.replace("$$", "$"))
    sources = [s for s, path in mounted.items() if path in read]
    check(len(sources) == 1 and "JOBCAST_TOKEN_SECRET=" in entrypoint,
          f"{name}: sets JOBCAST_TOKEN_SECRET from a mounted secret (entrypoint), got {entrypoint!r}")
    check('exec jobcast "$$@"' in entrypoint, f"{name}: the entrypoint execs jobcast with the command")
    token_secrets.add(tuple(sources))
check(len(token_secrets) == 1, f"every serve shares one token secret, got {sorted(token_secrets)}")
for name in by_command.get("work", []):
    work = services[name]
    check("--no-demo-handlers" in command_of(work), f"{name}: work --no-demo-handlers (no demo kinds in production)")
    check(not health_test(work) or health_test(work) == ["NONE"] or work["healthcheck"].get("disable") is True,
          f"{name}: no HTTP port, so no HTTP health check")

proxies = [n for n, s in services.items() if re.match(r"(nginx|haproxy)", str(s.get("image", "")))]
check(len(proxies) == 1, "one proxy (nginx or haproxy)")
for name in proxies:
    proxy = services[name]
    check(bool(proxy.get("ports")), f"{name}: publishes the port")
    check("./nginx.conf:/etc/nginx/nginx.conf:ro" in proxy.get("volumes", []),
          f"{name}: mounts the complete nginx.conf as /etc/nginx/nginx.conf")
    for serve in by_command.get("serve", []):
        check(depends(proxy, serve, "service_healthy"), f"{name} waits for {serve} to be healthy")

# ---------------------------------------------------------------- api-keys.example
for number, line in enumerate((DEPLOY / "api-keys.example").read_text().splitlines(), 1):
    if not line.strip() or line.lstrip().startswith("#"):
        continue
    fields = line.split()
    where = f"api-keys.example:{number}"
    check(len(fields) == 2, f"{where}: TENANT KEY")
    if len(fields) == 2:
        tenant, key = fields
        check(re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", tenant), f"{where}: a valid tenant")
        check(re.fullmatch(r"[!-~]{16,256}", key), f"{where}: a well-formed key (so only CHANGE-ME refuses it)")
        check("change-me" in key.lower(), f"{where}: the placeholder key contains CHANGE-ME (jobcast refuses it)")

# ---------------------------------------------------------------- nginx.conf
nginx = (DEPLOY / "nginx.conf").read_text()
code = "\n".join(line.split("#", 1)[0] for line in nginx.splitlines())
for serve in by_command.get("serve", []):
    check(re.search(rf"server\s+{re.escape(serve)}:8080", code), f"nginx.conf: upstream {serve}")
check(re.search(r"^events\s*\{", code, re.M) and re.search(r"^http\s*\{", code, re.M),
      "nginx.conf: a complete configuration (events {} and http {})")
check(re.search(r"proxy_buffering\s+off;", code), "nginx.conf: proxy_buffering off (SSE)")
check(re.search(r"proxy_http_version\s+1\.1;", code), "nginx.conf: HTTP/1.1 upstream (keepalive, streaming)")
check(not re.search(r"gzip\s+on;", code), "nginx.conf: no gzip (it would hold SSE frames)")
check(re.search(r"proxy_set_header\s+Host\s+\$http_host;", code),
      "nginx.conf: Host $http_host (the port too, for jobcast's Origin check)")
check(not re.search(r"proxy_set_header\s+Host\s+\$host;", code), "nginx.conf: not Host $host (drops the port)")
formats = dict(re.findall(r"log_format\s+(\S+)\s+((?:'[^']*'\s*)+);", code))
logs = re.findall(r"access_log\s+(\S+)(?:\s+(\S+?))?;", code)
check(logs and all(fmt in formats for _, fmt in logs if _ != "off"),
      "nginx.conf: every access_log names a log_format of this file (the default logs $request)")
for name, fmt in formats.items():
    leaks = re.findall(r"\$(request|request_uri|args|query_string|arg_token|http_referer)\b", fmt)
    check(not leaks, f"nginx.conf: log_format {name} logs {leaks} (stream tokens are in the query string)")
for path in ("/metrics", "/openapi.json"):
    block = re.search(rf"location\s+=\s+{re.escape(path)}\s*\{{([^}}]*)\}}", code)
    check(block and "proxy_pass" not in block.group(1) and re.search(r"return\s+40[34]\b", block.group(1)),
          f"nginx.conf: {path} is not served through the proxy (location = {path} {{ return 404 }})")
timeout = re.search(r"proxy_read_timeout\s+(\d+)([smh]?);", code)
seconds = int(timeout.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[timeout.group(2)] if timeout else 0
heartbeats = [int(env_of(services[n]).get("JOBCAST_HEARTBEAT_SECS", 15)) for n in by_command.get("serve", [])]
check(all(seconds > 2 * h for h in heartbeats), "nginx.conf: proxy_read_timeout well above --heartbeat-secs")

# ---------------------------------------------------------------- Dockerfile, .dockerignore
dockerfile = (ROOT / "Dockerfile").read_text()
instructions = [line for line in dockerfile.splitlines() if line and not line.startswith("#")]
check(not any(line.startswith("HEALTHCHECK") for line in instructions),
      "Dockerfile: no HEALTHCHECK (it would apply to `work`, which has no HTTP port)")
check(not re.search(r"^ENV\s+JOBCAST_API_KEYS_FILE", dockerfile, re.M),
      "Dockerfile: no default JOBCAST_API_KEYS_FILE (a path that is not mounted stops serve)")
check("COPY Cargo.toml Cargo.lock ./" in dockerfile and dockerfile.index("COPY Cargo.toml") < dockerfile.index("COPY src src"),
      "Dockerfile: dependencies built in a layer before the sources are copied")
ignore = [p.rstrip("/") for p in (ROOT / ".dockerignore").read_text().split("\n")
          if p.strip() and not p.startswith("#")]
check("target" in ignore, ".dockerignore: target/")


def ignored(path):
    """Whether .dockerignore leaves `path` (relative, /-separated) out of the context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(prefix, pattern.replace("**/", "*")) or fnmatch.fnmatch(prefix, pattern)
               for pattern in ignore for prefix in prefixes)


copied = []
for line in instructions:
    match = re.match(r"COPY\s+(?!--from)(.+)\s+\S+$", line)
    if match:
        for source in match.group(1).split():
            copied.append(source)
            check((ROOT / source).exists(), f"Dockerfile: COPY {source}: no such path")
            check(not ignored(source), f".dockerignore leaves out {source}, which the Dockerfile COPYs")
check("build.rs" in copied, "Dockerfile: COPY build.rs (cargo's build script)")
# Every file the binary embeds must be in the context and COPYed.
for rust in (ROOT / "src").rglob("*.rs"):
    for target in re.findall(r'include_(?:str|bytes)!\("([^"]+)"\)', rust.read_text()):
        path = (rust.parent / target).resolve().relative_to(ROOT).as_posix()
        check(any(path == c or path.startswith(c.rstrip("/") + "/") for c in copied),
              f"Dockerfile: {rust.relative_to(ROOT)} embeds {path}, which no COPY brings in")
        check(not ignored(path), f".dockerignore leaves out {path}, which {rust.relative_to(ROOT)} embeds")

if errors:
    for error in errors:
        print(f"check-deploy: {error}", file=sys.stderr)
    sys.exit(1)
print(f"check-deploy: deploy/ (compose.yaml: {len(services)} services), Dockerfile, .dockerignore: ok")
