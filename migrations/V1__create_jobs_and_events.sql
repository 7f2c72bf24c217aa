-- Jobs, their persisted events, and cluster-wide counters.
-- Schema only: every state transition lives in sql/jobcast.sql.

create schema if not exists jobcast;

create type jobcast.job_status as enum ('queued', 'running', 'succeeded', 'failed', 'cancelled');

create table jobcast.jobs (
    id              bigint generated always as identity primary key,
    kind            text not null,
    queue           text not null default 'default',
    args            jsonb not null default '{}',
    priority        smallint not null default 0,
    status          jobcast.job_status not null default 'queued',
    progress        double precision,
    message         text,
    attempt         integer not null default 0,
    max_attempts    integer not null default 3,
    timeout_secs    integer,
    result          jsonb,
    error           jsonb,
    run_at          timestamptz not null default now(),
    created_at      timestamptz not null default now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz not null default now(),
    -- Per-job event counter, bumped under the row lock so seq has no gaps and no repeats.
    last_seq        integer not null default 0,
    -- The worker holding the current attempt and until when; both are the fencing token.
    lease_until     timestamptz,
    worker          text,
    idempotency_key text,
    request_hash    text,
    constraint kind_format check (kind ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    constraint queue_format check (queue ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    constraint progress_percentage check (progress between 0 and 100),
    constraint max_attempts_range check (max_attempts between 1 and 100),
    constraint attempt_within_max check (attempt between 0 and max_attempts),
    constraint timeout_range check (timeout_secs between 1 and 86400),
    constraint running_holds_lease check ((status = 'running') = (lease_until is not null and worker is not null)),
    constraint terminal_has_finished_at check (
        (status in ('succeeded', 'failed', 'cancelled')) = (finished_at is not null))
);

-- Claim order; partial so finished jobs never weigh on the hot path.
create index jobs_due on jobcast.jobs (queue, priority desc, run_at, id) where status = 'queued';
create index jobs_running_lease on jobcast.jobs (lease_until) where status = 'running';
create index jobs_finished on jobcast.jobs (finished_at) where finished_at is not null;
create unique index jobs_idempotency_key on jobcast.jobs (idempotency_key) where idempotency_key is not null;

create table jobcast.events (
    job_id  bigint not null references jobcast.jobs (id) on delete cascade,
    seq     integer not null,
    -- Insert order; together with xid it is the firehose cursor (see jobcast.read_firehose).
    id      bigint generated always as identity,
    xid     xid8 not null default pg_current_xact_id(),
    type    text not null,
    data    jsonb not null,
    primary key (job_id, seq),
    constraint event_type_format check (type ~ '^[a-z][a-z0-9_.-]{0,63}$')
);

create index events_commit_order on jobcast.events (xid, id);

-- Cluster-wide counters that any web process can expose.
create table jobcast.counters (
    name  text primary key,
    value bigint not null default 0
);
insert into jobcast.counters (name) values ('leases_expired'), ('retries');
