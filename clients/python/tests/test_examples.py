"""Each example in examples/python and examples/node runs here, so none rots."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import psycopg
import pytest

from conftest import REPO
from jobcast import Client

EXAMPLES = REPO / "examples"


def test_report_exec_script_speaks_the_exec_protocol():
    run = subprocess.run([sys.executable, str(EXAMPLES / "python" / "report_exec.py")],
                         input='{"rows": 4, "row_ms": 1}', capture_output=True, text=True,
                         timeout=20)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert lines == [{"progress": 25.0, "message": "row 1/4"},
                     {"progress": 50.0, "message": "row 2/4"},
                     {"progress": 75.0, "message": "row 3/4"},
                     {"progress": 100.0, "message": "row 4/4"},
                     {"result": {"rows": 4}}]


def test_report_worker_runs_report_jobs(procs):
    server = procs.serve()
    procs.python_script(EXAMPLES / "python" / "report_worker.py")
    with Client(server.url) as client:
        job = client.submit("report", {"rows": 3, "row_ms": 10})
        events = list(client.follow(job.id))
        assert [(e.type, e.data.get("message")) for e in events][2:] == [
            ("progress", "row 1/3"), ("progress", "row 2/3"), ("progress", "row 3/3"),
            ("succeeded", None)]
        assert client.get(job.id).result == {"rows": 3}


def _load_fastapi_app(db_url, jobcast_url):
    os.environ["DATABASE_URL"] = db_url
    os.environ["JOBCAST_URL"] = jobcast_url
    spec = importlib.util.spec_from_file_location(
        "fastapi_app", EXAMPLES / "python" / "fastapi_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


def test_fastapi_endpoint_enqueues_in_its_own_transaction(procs, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setenv("DATABASE_URL", procs.db.url)
    server = procs.serve()
    procs.python_script(EXAMPLES / "python" / "report_worker.py")
    app = _load_fastapi_app(procs.db.url, server.url)
    with TestClient(app) as http, Client(server.url) as client:
        answer = http.post("/reports", json={"customer": "acme", "rows": 2})
        assert answer.status_code == 202
        body = answer.json()
        assert body["stream_url"] == f"{server.url}/v1/jobs/{body['job_id']}/events"
        events = list(client.follow(body["job_id"]))
        assert [e.type for e in events][-1] == "succeeded"
        assert client.get(body["job_id"]).args == {"rows": 2, "customer": "acme"}

        # The app's insert fails after the enqueue: the rollback takes the job with it.
        with pytest.raises(psycopg.errors.CheckViolation):
            http.post("/reports", json={"customer": "", "rows": 2})
    assert procs.db.query("select count(*) from jobcast.jobs") == [(1,)]
    assert procs.db.query("select customer, job_id::text from report_requests") == [
        ("acme", body["job_id"])]


def test_node_producer_submits_and_follows_to_the_end(procs):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
    if int(version.lstrip("v").split(".")[0]) < 18:
        pytest.skip(f"node {version.strip()} is older than 18")
    server = procs.serve()
    procs.python_script(EXAMPLES / "python" / "report_worker.py")
    run = subprocess.run([node, str(EXAMPLES / "node" / "producer.mjs"), "report",
                          '{"rows": 3, "row_ms": 10}'], capture_output=True, text=True,
                         timeout=30, env={**os.environ, "JOBCAST_URL": server.url})
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("submitted ")
    assert lines[1:] == ["1 queued", "2 started", "3 progress 33% row 1/3",
                         "4 progress 67% row 2/3", "5 progress 100% row 3/3", "6 succeeded"]


def test_the_python_code_in_the_readmes_parses():
    """Illustrations, not programs (they call your code), but never broken Python."""
    import ast
    import re

    for readme in (REPO / "clients" / "python" / "README.md", REPO / "docs" / "handlers.md"):
        blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
        assert blocks, readme
        for block in blocks:
            try:
                compile(block, str(readme), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            except SyntaxError as e:
                raise AssertionError(f"{readme.name}: {e}\n{block}") from e
