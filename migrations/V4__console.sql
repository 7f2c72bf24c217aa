-- What the console needs beyond jobs and events: queue state (pause), the workers seen
-- (the kinds they handle, for "no worker handles kind X"), and per-pod stream counts
-- (the job object's `subscribers`). Functions in sql/jobcast.sql.

-- A row exists once a queue was paused or resumed; no row means "not paused".
create table jobcast.queues (
    name        text primary key,
    paused      boolean not null default false,
    updated_at  timestamptz not null default now(),
    constraint queue_name_format check (name ~ '^[A-Za-z0-9_.:-]{1,64}$')
);

-- One row per worker process, upserted by its presence heartbeat every few seconds.
create table jobcast.workers (
    id              text primary key,
    queues          text[] not null,
    kinds           text[] not null,
    concurrency     integer not null,
    running         integer not null default 0,
    started_at      timestamptz not null default now(),
    last_heartbeat  timestamptz not null default now()
);

-- One row per serve process that has open job streams; its rows below are trusted only
-- while last_seen is recent (a killed pod's counts simply stop counting).
create table jobcast.stream_pods (
    id         text primary key,
    last_seen  timestamptz not null default now()
);

-- Open streams per (pod, job). No foreign key to jobs: a pruned job's row goes with its pod.
create table jobcast.stream_counts (
    pod      text not null references jobcast.stream_pods (id) on delete cascade,
    job_id   bigint not null,
    streams  integer not null,
    primary key (job_id, pod),
    constraint streams_positive check (streams > 0)
);
