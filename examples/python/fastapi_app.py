"""A FastAPI endpoint that records a report request and enqueues its job in ONE transaction
of its own database connection: both exist after the commit, neither after a rollback.

    DATABASE_URL=... JOBCAST_URL=http://127.0.0.1:8080 uvicorn fastapi_app:app
"""
import os
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI
from pydantic import BaseModel

from jobcast import enqueue

DATABASE_URL = os.environ["DATABASE_URL"]
JOBCAST_URL = os.environ.get("JOBCAST_URL", "http://127.0.0.1:8080")


@asynccontextmanager
async def lifespan(app: FastAPI):
    with psycopg.connect(DATABASE_URL) as conn:  # the app's own table
        conn.execute("create table if not exists report_requests (id bigserial primary key,"
                     " customer text not null check (customer <> ''), job_id bigint not null)")
    yield


app = FastAPI(lifespan=lifespan)


class ReportRequest(BaseModel):
    customer: str
    rows: int = 5


@app.post("/reports", status_code=202)
def create_report(request: ReportRequest):
    # `with` commits when the block ends normally and rolls back on any exception.
    with psycopg.connect(DATABASE_URL) as conn:
        job = enqueue(conn, "report", {"rows": request.rows, "customer": request.customer})
        (report_id,) = conn.execute(
            "insert into report_requests (customer, job_id) values (%s, %s) returning id",
            (request.customer, int(job["id"]))).fetchone()
    # With API keys configured, fetch a stream token (POST /v1/tokens) for the browser.
    return {"report_id": report_id, "job_id": job["id"],
            "stream_url": f"{JOBCAST_URL}/v1/jobs/{job['id']}/events"}
