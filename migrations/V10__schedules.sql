-- Schedules (issue 20): cron or interval, in an IANA time zone, firing exactly once per
-- slot by the database (the unique slot key on jobs), not by a leader. Any `work` process
-- fires due schedules under a row lock (SKIP LOCKED: one process per schedule at a time);
-- the slot key makes a second job for a slot impossible whatever happens in between.
create table jobcast.schedules (
    tenant       text not null,
    name         text not null check (name ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    cron         text,
    every_secs   double precision check (every_secs > 0),
    timezone     text not null default 'UTC',
    job          jsonb not null,
    overlap      text not null default 'allow' check (overlap in ('allow', 'skip')),
    catch_up     text not null default 'latest' check (catch_up in ('latest', 'none', 'all')),
    paused       boolean not null default false,
    -- The next slot not yet fired (null: the pattern never matches again).
    next_run_at  timestamptz,
    -- The last slot fired, and its job.
    last_run_at  timestamptz,
    last_job_id  bigint,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    primary key (tenant, name),
    check ((cron is null) <> (every_secs is null))
);
create index schedules_due on jobcast.schedules (next_run_at) where not paused;

-- Jobs made by a schedule: its name and slot. Never changed after enqueue, so the unique
-- index keeps claims and completions HOT (V7).
alter table jobcast.jobs add column schedule text, add column scheduled_for timestamptz;
create unique index jobs_schedule_slot on jobcast.jobs (tenant, schedule, scheduled_for)
    where schedule is not null;
