-- Correctness and cost fixes (issue 14).

-- Claims and the idle wait filter by kind and by run_at: serve both from the index, so a
-- due job behind rows of other kinds or future-dated rows is found in one short scan.
drop index if exists jobcast.jobs_due;
create index jobs_due_kind on jobcast.jobs (queue, kind, priority desc, run_at, id)
    where status = 'queued';
create index jobs_next_due on jobcast.jobs (queue, kind, run_at) where status = 'queued';

-- Counters are sharded so that a retry storm or a mass reclaim does not serialize every
-- worker of the cluster on one row: writers add to the shard of their backend, readers sum.
alter table jobcast.counters add column shard smallint not null default 0;
alter table jobcast.counters drop constraint counters_pkey;
alter table jobcast.counters add primary key (name, shard);

-- Group commits of workers, by id, with the per-op outcome: a batch whose COMMIT had an
-- unknown outcome (connection lost, deadline) is retried under the same id, and finds here
-- that it already committed instead of writing its events twice. Pruned after an hour.
create table jobcast.worker_writes (
    id        text primary key,
    accepted  boolean[],
    at        timestamptz not null default now()
);

-- Finished jobs by queue and status, kept as the jobs finish and are pruned, so that
-- /metrics never counts the retained history row by row (sharded like the counters).
create table jobcast.finished_counts (
    queue   text not null,
    status  jobcast.job_status not null,
    shard   smallint not null,
    value   bigint not null default 0,
    primary key (queue, status, shard)
);
insert into jobcast.finished_counts (queue, status, shard, value)
select queue, status, 0, count(*) from jobcast.jobs
 where status in ('succeeded', 'failed', 'cancelled')
 group by queue, status;
