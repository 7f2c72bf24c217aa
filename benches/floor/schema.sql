-- The floor of jobcast's contract (issue 24): the least SQL that claims a job, completes it
-- and persists two events (started, succeeded) with it, in batches of 32, durability on.
-- No leases, no attempts, no retries, no counters, no tenants: only what any queue that keeps
-- its events must write. `scripts/bench-floor` loads this, then runs claim_complete.sql.
drop schema if exists floor cascade;
create schema floor;
create table floor.jobs (
    id      bigint generated always as identity primary key,
    status  char(1) not null default 'q',   -- q(ueued), r(unning), s(ucceeded)
    worker  integer,
    kind    text not null,
    args    jsonb not null default '{}'
) with (fillfactor = 70);
-- The claim's order: queued jobs by id (a partial index, as every PostgreSQL queue has one).
create index floor_jobs_queued on floor.jobs (id) where status = 'q';
-- The completion's: a worker's running jobs.
create index floor_jobs_running on floor.jobs (worker) where status = 'r';
create table floor.events (
    job_id  bigint not null,
    seq     integer not null,
    type    text not null,
    data    jsonb not null,
    primary key (job_id, seq)
);
