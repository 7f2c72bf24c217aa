-- HOT claims and completions (issue 10).
--
-- A job's row was rewritten twice per attempt, each time as a new tuple on another page with
-- a new entry in every index of jobs: the claim changed `status` (the predicate of the claim
-- index and of the lease index) and `lease_until` (a key), the completion changed
-- `finished_at` (a key). PostgreSQL can update a row in place on its page, without touching
-- any index (a HOT update), only when no indexed column and no column of an index predicate
-- changes. So what an attempt changes is no longer indexed on jobs:
--
--   * queued jobs are listed in jobcast.queued, in claim order: a claim deletes its rows
--     there and updates the jobs row in place;
--   * running attempts are listed in jobcast.running with their lease: the reclaim finds
--     expired leases there, and a completion's fence is the delete of its row;
--   * finished jobs are pruned by walking the primary key (jobcast.prune_finished), and the
--     console's finished-per-minute counts are kept as jobs finish (jobcast.finished_minutes);
--   * fillfactor leaves room on every page of jobs for the row's next versions.
--
-- Invariants kept by every function of sql/jobcast.sql: a jobs row has a jobcast.queued row
-- exactly while its status is queued, and a jobcast.running row (same attempt and worker)
-- exactly while it is running. Locks are taken on queued/running rows before the jobs row.

create table jobcast.queued (
    id        bigint primary key,
    queue     text not null,
    kind      text not null,
    priority  smallint not null,
    run_at    timestamptz not null
);
create index queued_claim on jobcast.queued (queue, kind, priority desc, run_at, id);

create table jobcast.running (
    id           bigint primary key,
    queue        text not null,
    attempt      integer not null,
    worker       text not null,
    lease_until  timestamptz not null
);

insert into jobcast.queued (id, queue, kind, priority, run_at)
select id, queue, kind, priority, run_at from jobcast.jobs where status = 'queued';
insert into jobcast.running (id, queue, attempt, worker, lease_until)
select id, queue, attempt, worker, lease_until from jobcast.jobs where status = 'running';

drop index jobcast.jobs_due_kind;
drop index jobcast.jobs_running_lease;
drop index jobcast.jobs_finished;

-- Room for the next versions of a row on its own page (a HOT update needs it). Jobs are
-- enqueued together and claimed together in id order, so a claim of 32 rewrites most rows
-- of a page in one transaction: the page needs room for a second version of every row, and
-- for a third at completion when the first is not pruned yet. Measured on a drain of 4,000
-- jobs at --concurrency 32: 70 -> 44-70 % of updates HOT, 50 -> 90 %, 40 -> 99.7 % (and a
-- smaller table at the end, since no update moved a row to a new page). A page of finished
-- jobs stays about 40 % full. Applies to pages filled from now on.
alter table jobcast.jobs set (fillfactor = 40);

-- Jobs finished per queue, status and minute, for the console's last-15-minutes chart
-- (before: a scan of a finished_at index on jobs). Sharded like the counters; rows older
-- than an hour are pruned.
create table jobcast.finished_minutes (
    queue   text not null,
    status  jobcast.job_status not null,
    minute  timestamptz not null,
    shard   smallint not null,
    value   bigint not null default 0,
    primary key (queue, status, minute, shard)
);
insert into jobcast.finished_minutes (queue, status, minute, shard, value)
select queue, status, date_trunc('minute', finished_at), 0, count(*) from jobcast.jobs
 where finished_at > now() - interval '1 hour'
 group by 1, 2, 3;

-- Event rows are written only by the functions that update their job in the same statement,
-- and deleted with their job by jobcast.prune_finished: the foreign key's check on every
-- event insert (a lookup and a KEY SHARE lock of the jobs row, ~5 µs per event) bought
-- nothing more.
alter table jobcast.events drop constraint events_job_id_fkey;
