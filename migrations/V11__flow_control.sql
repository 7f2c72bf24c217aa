-- Flow control (issue 20): concurrency keys and queue limits.
--
-- A job with a concurrency key is "admitted" (listed in jobcast.queued, claimable) only
-- while fewer than its limit of the key's jobs are admitted or running; the others wait
-- in jobcast.held, never seen by a claim: 10,000 jobs behind a saturated key cost the
-- claims of other work nothing. A key's count lives in jobcast.concurrency_keys; when one
-- of its jobs ends, the next held job is admitted in the same transaction (and workers
-- are woken): no polling per key.
alter table jobcast.jobs add column concurrency_key text, add column concurrency_limit integer;

create table jobcast.held (
    id                bigint primary key,
    tenant            text not null,
    concurrency_key   text not null,
    queue             text not null,
    priority          smallint not null,
    run_at            timestamptz not null
);
create index held_next on jobcast.held (tenant, concurrency_key, priority desc, run_at, id);

create table jobcast.concurrency_keys (
    tenant           text not null,
    concurrency_key  text not null,
    -- Jobs of the key admitted (queued in jobcast.queued) or running.
    active           integer not null default 0 check (active >= 0),
    primary key (tenant, concurrency_key)
);

-- Queue limits, across every worker: at most `concurrency` running, at most
-- `rate_per_second` claims a second (a token bucket of `burst`).
alter table jobcast.queues
    add column concurrency integer check (concurrency > 0),
    add column rate_per_second double precision check (rate_per_second > 0),
    add column burst double precision check (burst >= 1),
    add column tokens double precision,
    add column tokens_at timestamptz;
