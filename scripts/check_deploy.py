"""Structural check of deploy/: the services a jobcast deployment needs, wired as
docs/deploy.md describes. Run by scripts/check-deploy (scripts/test runs that)."""
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


def depends(service, name, condition):
    depends_on = service.get("depends_on", {})
    return isinstance(depends_on, dict) and depends_on.get(name, {}).get("condition") == condition


compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
check(isinstance(compose, dict), "compose.yaml is not a mapping")
unknown = {k for k in compose if not k.startswith("x-")} - TOP_KEYS
check(not unknown, f"unknown top-level keys: {sorted(unknown)}")
services = compose.get("services", {})
for name, service in services.items():
    check(isinstance(service, dict), f"service {name} is not a mapping")
    bad = set(service) - SERVICE_KEYS
    check(not bad, f"service {name}: unknown keys {sorted(bad)}")
    for needed in service.get("depends_on", {}) or {}:
        check(needed in services, f"service {name} depends on unknown service {needed}")
    for secret in service.get("secrets", []) or []:
        check(secret in (compose.get("secrets") or {}), f"service {name}: unknown secret {secret}")
    for volume in service.get("volumes", []) or []:
        source = str(volume).split(":", 1)[0]
        if source.startswith("."):
            check((DEPLOY / source).exists(), f"service {name}: {source} does not exist")
        else:
            check(source in (compose.get("volumes") or {}), f"service {name}: unknown volume {source}")

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
for name in by_command.get("serve", []):
    serve = services[name]
    check("ports" not in serve, f"{name}: reached only through the proxy (no published port)")
    check(env_of(serve).get("JOBCAST_LISTEN", "").startswith("0.0.0.0:"), f"{name}: listens on 0.0.0.0")
    check(not serve.get("healthcheck", {}).get("disable"), f"{name}: keeps the image's health check")
for name in by_command.get("work", []):
    check(services[name].get("healthcheck", {}).get("disable") is True,
          f"{name}: no HTTP port, so the image's health check is disabled")

proxies = [n for n, s in services.items() if re.match(r"(nginx|haproxy)", str(s.get("image", "")))]
check(len(proxies) == 1, "one proxy (nginx or haproxy)")
for name in proxies:
    proxy = services[name]
    check(bool(proxy.get("ports")), f"{name}: publishes the port")
    for serve in by_command.get("serve", []):
        check(depends(proxy, serve, "service_healthy"), f"{name} waits for {serve} to be healthy")

nginx = (DEPLOY / "nginx.conf").read_text()
for serve in by_command.get("serve", []):
    check(re.search(rf"server\s+{re.escape(serve)}:8080", nginx), f"nginx.conf: upstream {serve}")
check(re.search(r"proxy_buffering\s+off;", nginx), "nginx.conf: proxy_buffering off (SSE)")
timeout = re.search(r"proxy_read_timeout\s+(\d+)([smh]?);", nginx)
seconds = int(timeout.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[timeout.group(2)] if timeout else 0
heartbeats = [int(env_of(services[n]).get("JOBCAST_HEARTBEAT_SECS", 15)) for n in by_command.get("serve", [])]
check(all(seconds > 2 * h for h in heartbeats), "nginx.conf: proxy_read_timeout well above --heartbeat-secs")

dockerfile = (ROOT / "Dockerfile").read_text()
check(re.search(r'HEALTHCHECK .*CMD \["jobcast", "health"\]', dockerfile), "Dockerfile: HEALTHCHECK jobcast health")
check("COPY Cargo.toml Cargo.lock ./" in dockerfile and dockerfile.index("COPY Cargo.toml") < dockerfile.index("COPY src src"),
      "Dockerfile: dependencies built in a layer before the sources are copied")
ignored = (ROOT / ".dockerignore").read_text().split()
check("target/" in ignored or "target" in ignored, ".dockerignore: target/")

if errors:
    for error in errors:
        print(f"check-deploy: {error}", file=sys.stderr)
    sys.exit(1)
print(f"check-deploy: deploy/compose.yaml: ok ({len(services)} services)")
