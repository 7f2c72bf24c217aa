-- The job state machine, once. Every transition that a client can see writes its event
-- row in the same transaction; the statement trigger on jobcast.events NOTIFYs once per
-- statement. Workers in any language can call these functions directly.
-- Applied after migrations/ by `jobcast migrate`, under the same advisory lock.
--
-- Since migrations/V7, nothing an attempt changes is indexed on jobcast.jobs, so claims and
-- completions update the row in place (HOT): queued jobs are listed in jobcast.queued and
-- running attempts (with their lease) in jobcast.running. Every function here keeps the
-- invariants: a queued row exists exactly while the job is queued, a running row (same
-- attempt and worker) exactly while it runs. Locks go narrow tables first, then jobs rows,
-- so that no two transitions wait on each other in opposite orders. A running attempt's
-- fence is the delete (or update) of its jobcast.running row with its attempt and worker.
--
-- `set enable_seqscan = off` on every function of the producers' and workers' hot path: each
-- of their statements reads rows by key, and PostgreSQL caches a session's plans. Planned on
-- a fresh database (an empty table is estimated at 10 pages), the lookups by id were seq
-- scans of jobcast.jobs, kept until autovacuum next analyzed the table: every claim and every
-- enqueue read the whole table (issue 23's harness: 1,693 -> 91 jobs/s in the first minute;
-- tests/it/plans.rs). Small tables without a usable index are still scanned: it is their
-- only path. `jit = off` with it: PostgreSQL 15 prices a disabled seq scan at 10^10, far
-- above jit_above_cost, and JIT-compiled every such statement (tens of ms); none of these
-- statements reads enough rows for JIT to pay.

-- Declared no stricter than its body (to_char is stable) so that PostgreSQL inlines it: a
-- function that is not inlined is planned and run on its own for every row.
create or replace function jobcast.rfc3339(t timestamptz) returns text
language sql stable as $$
    select to_char(t at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

-- The `data` object of an event, as SSE clients receive it, with the job's tags (callers
-- pass them from the row they hold: no lookup per event). Volatile like clock_timestamp(),
-- which keeps it inlinable (see rfc3339).
create or replace function jobcast.event_data(
    p_job_id bigint, p_kind text, p_queue text, p_status jobcast.job_status,
    p_attempt integer, p_seq integer, p_type text, p_extra jsonb, p_tags jsonb
) returns jsonb
language sql volatile as $$
    select jsonb_build_object(
        'job_id', p_job_id::text, 'seq', p_seq, 'type', p_type,
        'at', jobcast.rfc3339(clock_timestamp()), 'status', p_status,
        'attempt', p_attempt, 'kind', p_kind, 'queue', p_queue
    ) || case when p_tags is null then '{}'::jsonb else jsonb_build_object('tags', p_tags) end
      || coalesce(p_extra, '{}'::jsonb)
$$;

-- The form without tags, kept for the function bodies of an older release still running
-- during a rolling upgrade (and for SQL written against it): it looks the tags up. Not an
-- ambiguous overload: the form above has no default.
create or replace function jobcast.event_data(
    p_job_id bigint, p_kind text, p_queue text, p_status jobcast.job_status,
    p_attempt integer, p_seq integer, p_type text, p_extra jsonb
) returns jsonb
language sql volatile as $$
    select jobcast.event_data(p_job_id, p_kind, p_queue, p_status, p_attempt, p_seq, p_type,
                              p_extra,
                              (select j.tags from jobcast.jobs j where j.id = p_job_id))
$$;

-- Two NOTIFYs per statement that inserts events. First, on `jobcast_frames`, the events
-- themselves when they fit (a few small ones: a step's progress, a token window, a claim of
-- a few jobs), else just where they are: {"x": XID, "o": OLDER, "t": TIMELINE, "f": [[job_id,
-- seq, type, id, tenant, data], ...]}, with XID this transaction's id, OLDER the oldest
-- transaction still running that is older than this one (null: none) and TIMELINE
-- jobcast.timeline() (what streams check their history on). A pod delivers carried events
-- without reading the table: a job's next seqs at once; the firehose in commit order once
-- no older transaction can still add events before them (OLDER tells when). Without "f"
-- (too large), XID says up to where the pod must read the table. Sizes are checked on the
-- stored form first, so a large batch costs no text conversion.
-- ("q": true marks one with no doorbell after it: jobcast.notify is 'off'.)
-- Then, on `jobcast_events`, the doorbell "job_id:first_seq:last_seq,..." (what releases
-- before 0.2 listen to): consecutive job ids with the same seqs share one entry
-- "FIRST_ID-LAST_ID:FIRST_SEQ:LAST_SEQ"; over 7,000 bytes it is "*" (re-read everything).
-- The table stays the truth for replay, resume and every gap. While no pod carries events
-- (a row of jobcast.carriers, kept fresh by pods with followers), only the doorbell goes.
create or replace function jobcast.notify_events() returns trigger
language plpgsql as $$
declare
    payload text;
    frames text;
    me xid8;
    older xid8;
    snap pg_snapshot;
    carried boolean := exists (select 1 from jobcast.carriers c where c.until > now());
    quiet boolean := coalesce(current_setting('jobcast.notify', true), '') = 'off';
begin
    if not carried and quiet then
        return null;
    end if;
    if carried then
        me := pg_current_xact_id();
        -- In a transaction whose snapshot is older than its xid (repeatable read),
        -- transactions between the snapshot's xmax and this one are unknown: count them as
        -- running.
        snap := pg_current_snapshot();
        select min(x) into older from pg_snapshot_xip(snap) as x where x < me;
        if pg_snapshot_xmax(snap) < me then
            older := least(older, pg_snapshot_xmax(snap));
        end if;
    end if;
    if quiet then
        -- Bulk loads: no doorbell, but pods must still learn that the firehose has events
        -- here they did not carry (one small notification per transaction: same text).
        perform pg_notify('jobcast_frames',
                          format('{"x":"%s","o":%s,"q":true}', me,
                                 coalesce('"' || older || '"', 'null')));
        return null;
    end if;
    select string_agg(case when r.lo = r.hi then r.lo::text else r.lo || '-' || r.hi end
                      || ':' || r.first_seq || ':' || r.last_seq, ',' order by r.lo)
      into payload
      from (select min(g.job_id) as lo, max(g.job_id) as hi, g.first_seq, g.last_seq
              from (select s.job_id, s.first_seq, s.last_seq,
                           s.job_id - row_number() over (partition by s.first_seq, s.last_seq
                                                         order by s.job_id) as run
                      from (select job_id, min(seq) as first_seq, max(seq) as last_seq
                              from new_events group by job_id) s) g
             group by g.first_seq, g.last_seq, g.run) r;
    if payload is null then
        return null;
    end if;
    if octet_length(payload) > 7000 then
        payload := '*';
    end if;
    if carried then
        if (select count(*) <= 48 and sum(pg_column_size(e.data)) <= 5000 from new_events e) then
            select string_agg(format('[%s,%s,%s,%s,%s,%s]', e.job_id, e.seq, to_json(e.type),
                                     e.id,
                                     to_json(coalesce((select j.tenant from jobcast.jobs j
                                                        where j.id = e.job_id), 'default')),
                                     e.data),
                              ',' order by e.id)
              into frames
              from new_events e;
        end if;
        if frames is not null and octet_length(frames) > 7800 then
            frames := null;
        end if;
        perform pg_notify('jobcast_frames',
                          format('{"x":"%s","o":%s%s}', me, coalesce('"' || older || '"', 'null'),
                                 coalesce(',"t":' || jobcast.timeline() || ',"f":[' || frames
                                          || ']', '')));
    end if;
    perform pg_notify('jobcast_events', payload);
    return null;
end
$$;

-- A pod that carries events says so for `p_secs` seconds (it renews its row while it has
-- followers); `p_secs` 0 withdraws it.
create or replace function jobcast.carry(p_pod text, p_secs integer) returns void
language plpgsql as $$
begin
    if p_secs <= 0 then
        delete from jobcast.carriers where pod = p_pod;
    else
        insert into jobcast.carriers (pod, until)
        values (p_pod, now() + make_interval(secs => p_secs))
        on conflict (pod) do update set until = excluded.until;
        delete from jobcast.carriers where until < now() - interval '1 minute';
    end if;
end
$$;

create or replace trigger events_notify
    after insert on jobcast.events
    referencing new table as new_events
    for each statement execute function jobcast.notify_events();

-- Adds to a cluster-wide counter, on the shard of this transaction: concurrent writers
-- rarely wait for each other (readers sum the shards).
create or replace function jobcast.add_to_counter(p_name text, p_delta bigint) returns void
language sql as $$
    insert into jobcast.counters (name, shard, value)
    values (p_name, (txid_current() % 64)::smallint, p_delta)
    on conflict (name, shard) do update set value = jobcast.counters.value + excluded.value
$$;

-- Counts jobs that reached (or, pruned or retried, left) a terminal status, per queue.
-- Sharded by transaction (64 shards), not by backend: every update of a counter row is a
-- new row version, and while a transaction holds back vacuum each update reads all the
-- versions of its row made since (issue 23: 0.03 to 0.64 ms per update over nine minutes
-- of a held xmin with one worker's few backends on a handful of shards). A transaction
-- keeps one shard, so a statement that counts several rows takes them in one global
-- order, (status, queue), as every caller does: otherwise a group commit and a prune on
-- the same shard could each hold the row the other waits for.
-- A positive delta is jobs finishing now: they are also counted in this minute's row of
-- jobcast.finished_minutes (the console's chart), after the total (same global order).
-- plpgsql, not sql: a sql function that cannot be inlined is parsed and planned on every
-- call (5 % of a claim-and-complete cycle's CPU, perf), a plpgsql one keeps its plans.
create or replace function jobcast.count_finished(
    p_queue text, p_status jobcast.job_status, p_delta bigint
) returns void
language plpgsql as $$
begin
    insert into jobcast.finished_counts (queue, status, shard, value)
    values (p_queue, p_status, (txid_current() % 64)::smallint, p_delta)
    on conflict (queue, status, shard)
    do update set value = jobcast.finished_counts.value + excluded.value;
    if p_delta > 0 then
        insert into jobcast.finished_minutes (queue, status, minute, shard, value)
        values (p_queue, p_status, date_trunc('minute', now()),
                (txid_current() % 64)::smallint, p_delta)
        on conflict (queue, status, minute, shard)
        do update set value = jobcast.finished_minutes.value + excluded.value;
    end if;
end
$$;

-- The backoff before attempt n+1: base * 2^(n-1), capped at 10 minutes. Computed in
-- floating point so that no attempt number can overflow (max_attempts allows 100).
create or replace function jobcast.retry_delay_ms(p_base_ms bigint, p_attempt integer)
returns bigint
language sql immutable as $$
    select least(p_base_ms::float8 * power(2::float8, least(greatest(p_attempt - 1, 0), 62)),
                 600000)::bigint
$$;

-- Enqueue a batch of specs (validated by the caller's edge, backed by CHECKs here), owned by
-- p_tenant. Specs carrying an idempotency_key the tenant already used are skipped (see
-- enqueue_job). The one-argument form of before tenants is replaced by this one (the default
-- keeps old calls working; both at once would make those calls ambiguous).
do $$ begin
    if to_regprocedure('jobcast.enqueue_jobs(jsonb)') is not null then
        drop function jobcast.enqueue_jobs(jsonb);
    end if;
end $$;
create or replace function jobcast.enqueue_jobs(p_specs jsonb, p_tenant text default 'default')
returns setof jobcast.jobs
language plpgsql
set enable_seqscan = off
set jit = off
as $$
declare
    new_ids bigint[];
begin
    with inserted as (
        insert into jobcast.jobs (kind, queue, args, priority, run_at, max_attempts,
                                  timeout_secs, idempotency_key, request_hash, last_seq, tenant,
                                  tags, schedule, scheduled_for, concurrency_key,
                                  concurrency_limit)
        select s.kind, coalesce(s.queue, 'default'), coalesce(s.args, '{}'::jsonb),
               coalesce(s.priority, 0), coalesce(s.run_at, now()), coalesce(s.max_attempts, 3),
               s.timeout_secs, s.idempotency_key, s.request_hash, 1, p_tenant,
               case when jsonb_typeof(s.tags) = 'object' and s.tags <> '{}'::jsonb
                    then s.tags end,
               s.schedule, s.scheduled_for, s.concurrency_key,
               case when s.concurrency_key is not null
                    then coalesce(s.concurrency_limit, 1) end
          from jsonb_array_elements(p_specs) with ordinality as e(spec, ord),
               jsonb_to_record(e.spec) as s(kind text, queue text, args jsonb, priority smallint,
                   run_at timestamptz, max_attempts integer, timeout_secs integer,
                   idempotency_key text, request_hash text, tags jsonb, schedule text,
                   scheduled_for timestamptz, concurrency_key text, concurrency_limit integer)
         order by e.ord
        on conflict (tenant, idempotency_key) where idempotency_key is not null do nothing
        returning *
    ), events as (
        insert into jobcast.events (job_id, seq, type, data)
        select i.id, 1, 'queued',
               jobcast.event_data(i.id, i.kind, i.queue, i.status, i.attempt, 1, 'queued',
                                  jsonb_build_object('run_at', jobcast.rfc3339(i.run_at)),
                                  i.tags)
          from inserted i
    ), listed as (
        insert into jobcast.queued (id, queue, kind, priority, run_at)
        select i.id, i.queue, i.kind, i.priority, i.run_at from inserted i
         where i.concurrency_key is null
    ), held as (
        -- Jobs with a concurrency key wait here until their key admits them (below).
        insert into jobcast.held (id, tenant, concurrency_key, queue, priority, run_at)
        select i.id, i.tenant, i.concurrency_key, i.queue, i.priority, i.run_at
          from inserted i where i.concurrency_key is not null
    )
    select array_agg(id order by id) into new_ids from inserted;
    perform jobcast.admit_key(k.tenant, k.concurrency_key)
       from (select distinct j.tenant, j.concurrency_key from jobcast.jobs j
              where j.id = any(new_ids) and j.concurrency_key is not null
              order by 1, 2) k;

    -- Wake workers of each queue that got a job due now.
    perform pg_notify('jobcast_jobs', q)
       from (select distinct queue as q from jobcast.jobs
              where id = any(new_ids) and run_at <= now()) d;

    return query select * from jobcast.jobs where id = any(new_ids) order by id;
end
$$;

-- Enqueue one job of p_tenant under an optional idempotency key (per tenant). `created` is
-- false when the key was already taken: the caller compares request_hash to tell a replay
-- from a conflict. Every argument after the spec is optional. Replaces the three-argument
-- form of before tenants.
do $$ begin
    if to_regprocedure('jobcast.enqueue_job(jsonb, text, text)') is not null then
        drop function jobcast.enqueue_job(jsonb, text, text);
    end if;
end $$;
create or replace function jobcast.enqueue_job(
    p_spec jsonb, p_idempotency_key text default null, p_request_hash text default null,
    p_tenant text default 'default',
    out job jobcast.jobs, out created boolean
)
language plpgsql
set enable_seqscan = off
set jit = off
as $$
begin
    if p_idempotency_key is not null then
        select * into job from jobcast.jobs
         where tenant = p_tenant and idempotency_key = p_idempotency_key;
        if found then
            created := false;
            return;
        end if;
    end if;
    select * into job from jobcast.enqueue_jobs(jsonb_build_array(
        p_spec || jsonb_build_object('idempotency_key', p_idempotency_key,
                                     'request_hash', p_request_hash)), p_tenant);
    if found then
        created := true;
        return;
    end if;
    -- Lost a race for the key: the winner has committed, return its job.
    select * into job from jobcast.jobs
     where tenant = p_tenant and idempotency_key = p_idempotency_key;
    created := false;
end
$$;

-- Claim up to p_limit due jobs in one statement: running, next attempt, leased to p_worker.
-- p_kinds limits the claim to kinds the worker has handlers for (null: any kind).
-- plpgsql, not sql: its statements' plans are cached per session instead of re-planned on
-- every call.
-- The kinds of the queued jobs of these queues, found with one probe of jobs_due_kind per
-- kind in use (a loose index scan), for workers that claim any kind: their claims then read
-- each kind's queued jobs in claim order, as a worker with a list of kinds does, instead of
-- reading and sorting every queued job of the queue.
create or replace function jobcast.queued_kinds(p_queues text[]) returns text[]
language sql stable as $$
    with recursive walk(queue, kind) as (
        select q.name,
               (select j.kind from jobcast.queued j
                 where j.queue = q.name order by j.kind limit 1)
          from unnest(p_queues) as q(name)
        union all
        select w.queue,
               (select j.kind from jobcast.queued j
                 where j.queue = w.queue and j.kind > w.kind
                 order by j.kind limit 1)
          from walk w where w.kind is not null
    )
    select coalesce(array_agg(distinct w.kind), '{}') from walk w where w.kind is not null
$$;

-- The claim's selection from where this worker's last claims ended (p_after: [{queue, kind,
-- priority, run_at, id}, ...], the last job it claimed of each queue and kind), for a worker
-- whose claims from the head of the index got slow: while a transaction holds back vacuum,
-- the entries of every job claimed since cannot be removed nor marked dead, and a claim from
-- the head visits each of them (issue 23: 44.5 ms and 2,454 buffers per claim three minutes
-- into a held xmin, against 0.5 ms and 91). Read: higher priorities than the cursor's (from
-- their head: their entries are dead only if such jobs were claimed lately), the cursor's
-- priority from `lookback_ms` (default 250) before its run_at (an enqueue that began earlier
-- but committed after the jobs claimed last: concurrent producers do that all the time; the
-- worker asks for 10 s every 2 s, see src/worker/cursor.rs), lower priorities; a queue and
-- kind without a cursor from its head. Only a job of the cursor's priority placed further
-- before it (a run_at already past when it became claimable: a concurrency key admitting
-- it, an enqueue with an old run_at or a long transaction) waits for the worker's next
-- claim from the head. PL/pgSQL with a generic plan (the
-- plan is the same whatever the cursor, see claim_jobs): as a sql function with SET clauses
-- it was never inlined and its five-branch query was planned again on every cursor claim.
create or replace function jobcast.due_after(
    p_active text[], p_caps integer[], p_kinds text[], p_limit integer, p_after jsonb
) returns tid[]
language plpgsql
set enable_seqscan = off
set enable_bitmapscan = off
set enable_sort = off
set jit = off
set plan_cache_mode = force_generic_plan
as $$
begin
    return (
    select array_agg(c.ctid order by c.priority desc, c.run_at, c.id)
      from (
        select c.id, c.priority, c.run_at, c.ctid
          from (
            select c.id, c.priority, c.run_at, c.ctid, q.cap,
                   row_number() over (partition by q.name
                                      order by c.priority desc, c.run_at, c.id) as n
              from unnest(p_active, p_caps) as q(name, cap)
              cross join unnest(p_kinds) as k(name)
              left join lateral (
                  select (e->>'priority')::smallint as priority,
                         (e->>'run_at')::timestamptz as run_at, (e->>'id')::bigint as id,
                         make_interval(secs => coalesce((e->>'lookback_ms')::float8, 250) / 1000)
                             as lookback
                    from jsonb_array_elements(p_after) e
                   where e->>'queue' = q.name and e->>'kind' = k.name
                   limit 1
              ) cur on true
              cross join lateral (
                  select * from (
                      select j.id, j.priority, j.run_at, j.ctid from jobcast.queued j
                       where cur.id is null
                         and j.queue = q.name and j.kind = k.name and j.run_at <= now()
                       order by j.priority desc, j.run_at, j.id
                       limit q.cap
                         for update skip locked) head
                  union all
                  select * from (
                      select j.id, j.priority, j.run_at, j.ctid from jobcast.queued j
                       where j.queue = q.name and j.kind = k.name and j.priority > cur.priority
                         and j.run_at <= now()
                       order by j.priority desc, j.run_at, j.id
                       limit q.cap
                         for update skip locked) higher_priority
                  union all
                  select * from (
                      select j.id, j.priority, j.run_at, j.ctid from jobcast.queued j
                       where j.queue = q.name and j.kind = k.name and j.priority = cur.priority
                         and j.run_at >= cur.run_at - cur.lookback
                         and j.run_at < cur.run_at
                       order by j.run_at, j.id
                       limit q.cap
                         for update skip locked) late_commits
                  union all
                  select * from (
                      select j.id, j.priority, j.run_at, j.ctid from jobcast.queued j
                       where j.queue = q.name and j.kind = k.name and j.priority = cur.priority
                         and (j.run_at, j.id) > (cur.run_at, cur.id) and j.run_at <= now()
                       order by j.run_at, j.id
                       limit q.cap
                         for update skip locked) same_priority
                  union all
                  select * from (
                      select j.id, j.priority, j.run_at, j.ctid from jobcast.queued j
                       where j.queue = q.name and j.kind = k.name and j.priority < cur.priority
                         and j.run_at <= now()
                       order by j.priority desc, j.run_at, j.id
                       limit q.cap
                         for update skip locked) lower_priority
              ) c
          ) c
         where c.n <= c.cap
         order by c.priority desc, c.run_at, c.id
         limit p_limit
      ) c
    );
end
$$;

-- Every read of jobcast.queued here must walk queued_claim in claim order and stop after the
-- rows it takes: a bitmap scan (or any scan) followed by a sort reads a branch's whole range,
-- the entire backlog. PostgreSQL chose that plan (estimated 1 row, 8.43 against the index
-- scan's 8.4x) after an automatic analyze of queued under a held xmin, and every claim then
-- read the whole backlog until the next analyze (issue 23: claims 3 -> 140 ms, completions
-- 2,500 -> 92/s for two minutes, caught with auto_explain). Hence no bitmap scans and no
-- avoidable sorts (the sorts above the per-queue scans have no alternative and stay).
-- With those off, the plan of the selection is the same whatever its parameters (one index
-- scan per queue and kind under a LockRows and a Limit), so it is planned once per session
-- (a generic plan): PostgreSQL kept choosing custom plans and planned it again on every
-- claim, 0.3-0.7 ms, a fifth of the drain's database CPU (issue 24: `scripts/profile-drain
-- 32`, 145 -> 116 µs of PostgreSQL CPU per job). An analyze still replans it.
create or replace function jobcast.claim_jobs(
    p_queues text[], p_kinds text[], p_worker text, p_limit integer,
    p_lease_secs double precision, p_after jsonb
) returns setof jobcast.jobs
language plpgsql
set enable_seqscan = off
set enable_bitmapscan = off
set enable_sort = off
set jit = off
set plan_cache_mode = force_generic_plan
as $$
declare
    due_ids tid[];
    active text[];
    caps integer[];
    rated text[] := '{}';
    cap integer;
    kinds text[];
    r record;
    entries bigint := pg_stat_get_xact_tuples_returned('jobcast.queued_claim'::regclass);
    pages bigint := pg_stat_get_xact_blocks_fetched('jobcast.queued_claim'::regclass);
begin
    -- A paused queue keeps its jobs: no worker claims from it until it is resumed. A queue
    -- with limits (concurrency, rate) gets what they allow now, under its row's lock: the
    -- limits hold across every worker. Unlimited queues cost one probe, as before.
    active := '{}';
    caps := '{}';
    for r in select u.name, p.paused, p.concurrency, p.rate_per_second
               from unnest(p_queues) as u(name)
               left join jobcast.queues p on p.name = u.name
    loop
        continue when coalesce(r.paused, false);
        cap := p_limit;
        if r.concurrency is not null or r.rate_per_second is not null then
            cap := jobcast.queue_allowance(r.name, p_limit);
            continue when cap <= 0;
            if r.rate_per_second is not null then
                rated := rated || r.name;
            end if;
        end if;
        active := active || r.name;
        caps := caps || cap;
    end loop;
    if cardinality(active) = 0 then
        return;
    end if;
    -- One index scan per queue and kind, each already in claim order: `queue = any(array)`
    -- would make PostgreSQL read and sort every queued row of those queues on every claim,
    -- and a kind filter outside the index would walk rows of other kinds. Any kind (null):
    -- the kinds queued now.
    kinds := coalesce(p_kinds, jobcast.queued_kinds(active));
    if jsonb_typeof(p_after) = 'array' then
        due_ids := jobcast.due_after(active, caps, kinds, p_limit, p_after);
    else
    select array_agg(c.ctid order by c.priority desc, c.run_at, c.id) into due_ids
      from (
        select c.id, c.priority, c.run_at, c.ctid
          from (
            select c.id, c.priority, c.run_at, c.ctid, q.cap,
                   row_number() over (partition by q.name
                                      order by c.priority desc, c.run_at, c.id) as n
              from unnest(active, caps) as q(name, cap)
              cross join unnest(kinds) as k(name)
              cross join lateral (
                  select j.id, j.priority, j.run_at, j.ctid
                    from jobcast.queued j
                   where j.queue = q.name and j.kind = k.name and j.run_at <= now()
                   order by j.priority desc, j.run_at, j.id
                   limit q.cap
                     for update skip locked
              ) c
          ) c
         where c.n <= c.cap
         order by c.priority desc, c.run_at, c.id
         limit p_limit
      ) c;
    end if;
    -- Entries of the claim index read beyond the jobs taken: dead ones a held-back vacuum
    -- keeps, rows other claims hold, jobs not yet due. The worker reads it in the same
    -- statement (jobcast.claim_walked) to know when to claim from its cursor. Entries an
    -- earlier scan marked dead (once the hold ended, before vacuum removes them) are skipped
    -- inside the index uncounted, but their pages are still read: so also the pages read
    -- beyond a descent and a leaf per branch, at ~150 entries a page (issue 23: after a
    -- 10-minute hold ended, claims from the head "walked" 9-26 entries in 53-203 ms each,
    -- completions fell from 2,500 to 1,200/s for the minutes until vacuum reached queued).
    perform set_config('jobcast.claim_walked',
                       greatest(pg_stat_get_xact_tuples_returned('jobcast.queued_claim'::regclass)
                                - entries - coalesce(cardinality(due_ids), 0),
                                (pg_stat_get_xact_blocks_fetched('jobcast.queued_claim'::regclass)
                                 - pages - 6 * cardinality(active) * coalesce(cardinality(kinds), 1))
                                * 150)::text, true);
    if due_ids is null then
        return;
    end if;
    -- The rows locked above beyond p_limit stay locked until commit but are not claimed.
    if cardinality(rated) = 0 then
        return query select * from jobcast.start_attempts(due_ids, p_worker, p_lease_secs);
        return;
    end if;
    -- Rate-limited queues spend a token per claim.
    for r in select * from jobcast.start_attempts(due_ids, p_worker, p_lease_secs) loop
        if r.queue = any(rated) then
            update jobcast.queues set tokens = tokens - 1 where name = r.queue;
        end if;
        return next r;
    end loop;
end
$$;


-- The form without a cursor (every claim from the head): what the workers of earlier
-- releases call during a rolling upgrade, and SQL written against it.
create or replace function jobcast.claim_jobs(
    p_queues text[], p_kinds text[], p_worker text, p_limit integer,
    p_lease_secs double precision
) returns setof jobcast.jobs
language sql as $$
    select * from jobcast.claim_jobs(p_queues, p_kinds, p_worker, p_limit, p_lease_secs, null)
$$;

-- The claim's transition of the jobs it selected (locked rows of jobcast.queued, by their
-- ctid: they are never updated, and locked until the claim commits): running, next attempt,
-- leased to p_worker, a `started` event each. Internal to claim_jobs. A function of its own
-- for the plan cache: its statement's plan is the same whatever the rows, but PostgreSQL
-- kept choosing a custom plan and planned its four CTEs on every claim (~0.3 ms, a third of
-- a one-job claim's time, perf); the generic plan is forced here only, since the selection
-- above does need its custom plans. By ctid, not id: the generic plan of `id = any(...)`,
-- made again after an analyze under a held xmin (few live rows), read the whole claim index
-- for those ids, dead entries included (issue 23's collapse 90 s into a held xmin, 2,500 ->
-- 60 jobs/s: 18,485 buffers for 9 rows); a TID scan has no other plan.
do $$ begin
    if to_regprocedure('jobcast.start_attempts(bigint[], text, double precision)') is not null then
        drop function jobcast.start_attempts(bigint[], text, double precision);
    end if;
end $$;
create or replace function jobcast.start_attempts(
    p_rows tid[], p_worker text, p_lease_secs double precision
) returns setof jobcast.jobs
language plpgsql
set enable_seqscan = off
set jit = off
set plan_cache_mode = force_generic_plan
as $$
begin
    return query
    with unlisted as (
        delete from jobcast.queued q where q.ctid = any(p_rows) returning q.id
    ), claimed as (
        update jobcast.jobs j
           set status = 'running', attempt = j.attempt + 1, started_at = now(),
               updated_at = now(), worker = p_worker,
               lease_until = now() + make_interval(secs => p_lease_secs),
               last_seq = j.last_seq + 1
          from unlisted u
         where j.id = u.id and j.status::text = 'queued'
        returning j.*
    ), leased as (
        insert into jobcast.running (id, queue, attempt, worker, lease_until)
        select c.id, c.queue, c.attempt, c.worker, c.lease_until from claimed c
    ), events as (
        insert into jobcast.events (job_id, seq, type, data)
        select c.id, c.last_seq, 'started',
               jobcast.event_data(c.id, c.kind, c.queue, c.status, c.attempt, c.last_seq,
                                  'started', null, c.tags)
          from claimed c
    )
    select * from claimed c order by c.priority desc, c.run_at, c.id;
end
$$;

-- Record progress and custom events of running attempts, in order. Each element:
-- {job_id, attempt, type, progress?, message?, data?}. Returns the index (1-based) and seq
-- of every accepted element; an element whose attempt is no longer held by p_worker is
-- refused (fencing) and simply absent from the result. Set-based: one update per attempt
-- however many of its events the batch holds (an `--exec` command writing thousands of
-- lines a second lands them in a few statements, not one row update per line).
create or replace function jobcast.record_events(p_worker text, p_events jsonb)
returns table (idx integer, seq integer)
language plpgsql
set enable_seqscan = off
set jit = off
as $$
declare
    bad text;
begin
    -- Event types are checked here, once per distinct type of the batch, rather than by a
    -- CHECK on jobcast.events that would run its regular expression for every row,
    -- including the fixed types the other transitions write (migrations/V8).
    select d.t into bad
      from (select distinct x->>'type' as t from jsonb_array_elements(p_events) x) d
     where d.t !~ '^[a-z][a-z0-9_.-]{0,63}$';
    if found then
        raise exception 'invalid event type %', quote_literal(bad)
              using errcode = 'check_violation', constraint = 'event_type_format';
    end if;
    -- Output events (API.md, "Output streams"): a stream name, a byte offset and the text.
    select d.s into bad
      from (select distinct coalesce(x->>'stream', '') as s from jsonb_array_elements(p_events) x
             where x->>'type' = 'output') d
     where d.s !~ '^[a-z][a-z0-9_.-]{0,31}$';
    if found then
        raise exception 'invalid output stream name %', quote_literal(bad)
              using errcode = 'check_violation', constraint = 'output_stream_name';
    end if;
    return query
    with input as (
        select x.ord::integer as ord, (x.v->>'job_id')::bigint as job_id,
               (x.v->>'attempt')::integer as attempt, x.v->>'type' as type,
               (x.v->>'progress')::double precision as progress, x.v->>'message' as message,
               x.v->'data' as data, x.v->>'stream' as stream,
               (x.v->>'offset')::bigint as output_offset, x.v->>'text' as text
          from jsonb_array_elements(p_events) with ordinality as x(v, ord)
    ), per_attempt as (
        select i.job_id, i.attempt, count(*)::integer as n,
               max(i.ord) filter (where i.type = 'progress') as last_progress
          from input i
         group by i.job_id, i.attempt
    ), held as (
        -- The attempt's running row first, as every transition of a running attempt does:
        -- a cancel or a reclaim that holds it (and whose transaction id may be older than
        -- this one's) ends the attempt before any event of ours can follow it, so the
        -- firehose's (xid, id) order stays each job's seq order.
        -- (`r.id = any(...)` too: running rows are then fetched by key whatever plan the
        -- join gets, never all of them; see tests/it/plans.rs.)
        select r.id, r.attempt from jobcast.running r
          join per_attempt p on r.id = p.job_id and r.attempt = p.attempt
         where r.worker = p_worker and r.id = any(array(select p.job_id from per_attempt p))
           for key share of r
    ), updated as (
        update jobcast.jobs j
           set last_seq = j.last_seq + p.n, updated_at = now(),
               progress = case when p.last_progress is null then j.progress else l.progress end,
               message = case when p.last_progress is null then j.message else l.message end
          from held h
          join per_attempt p on p.job_id = h.id and p.attempt = h.attempt
          left join input l on l.ord = p.last_progress
         where j.id = h.id and j.attempt = h.attempt and j.worker = p_worker
           and j.status = 'running'
        returning j.id, j.kind, j.queue, j.status, j.attempt, j.last_seq - p.n as base, j.tags
    ), numbered as (
        select i.ord, i.job_id, i.type, i.progress, i.message, i.data, i.stream,
               i.output_offset, i.text, u.kind, u.queue, u.status, u.attempt, u.tags,
               u.base + (row_number() over (partition by i.job_id order by i.ord))::integer as seq
          from input i
          join updated u on u.id = i.job_id and u.attempt = i.attempt
    ), inserted as (
        insert into jobcast.events (job_id, seq, type, data)
        select n.job_id, n.seq, n.type,
               jobcast.event_data(n.job_id, n.kind, n.queue, n.status, n.attempt, n.seq, n.type,
                   case when n.type = 'progress'
                        then jsonb_build_object('progress', n.progress, 'message', n.message)
                        when n.type = 'output'
                        then jsonb_build_object('stream', n.stream,
                                                'offset', coalesce(n.output_offset, 0),
                                                'text', coalesce(n.text, ''))
                        else '{}'::jsonb end
                   || case when n.data is not null and n.data <> 'null'::jsonb
                           then jsonb_build_object('data', n.data) else '{}'::jsonb end,
                   n.tags)
          from numbered n
         order by n.ord
    )
    select n.ord, n.seq from numbered n order by n.ord;
end
$$;

-- Finish attempts successfully. Each element: {job_id, attempt, result}. Returns the ids
-- that succeeded; attempts no longer held by p_worker are refused.
create or replace function jobcast.complete_jobs(p_worker text, p_results jsonb)
returns table (job_id bigint)
language plpgsql
set enable_seqscan = off
set jit = off
as $$
declare
    ids bigint[];
    attempts integer[];
    results jsonb[];
    done_ids bigint[];
    key_tenants text[];
    key_names text[];
    done_queues text[];
begin
    -- Unpacked once into arrays: joining on the JSON directly re-expands it per row.
    select array_agg((x->>'job_id')::bigint), array_agg((x->>'attempt')::integer),
           array_agg(coalesce(x->'result', 'null'::jsonb))
      into ids, attempts, results
      from jsonb_array_elements(p_results) x;
    if ids is null then
        return;
    end if;
    with ended as (
        delete from jobcast.running r
         using unnest(ids, attempts, results) as i(id, attempt, result)
         where r.id = i.id and r.id = any(ids) and r.attempt = i.attempt
           and r.worker = p_worker
        returning r.id, r.attempt, i.result
    ), done as (
        update jobcast.jobs j
           set status = 'succeeded', result = e.result, finished_at = now(), updated_at = now(),
               lease_until = null, worker = null, last_seq = j.last_seq + 1
          from ended e
         where j.id = e.id and j.status = 'running' and j.attempt = e.attempt
        returning j.id, j.kind, j.queue, j.status, j.attempt, j.last_seq, j.result, j.tenant,
                  j.concurrency_key, j.tags
    ), events as (
        insert into jobcast.events (job_id, seq, type, data)
        select d.id, d.last_seq, 'succeeded',
               jobcast.event_data(d.id, d.kind, d.queue, d.status, d.attempt, d.last_seq,
                                  'succeeded', jsonb_build_object('result', d.result), d.tags)
          from done d
    ), counted as (
        select jobcast.count_finished(g.queue, 'succeeded', g.n)
          from (select queue, count(*) as n from done group by queue order by queue) g
    )
    select array_agg(d.id),
           array_agg(d.tenant) filter (where d.concurrency_key is not null),
           array_agg(d.concurrency_key) filter (where d.concurrency_key is not null),
           array_agg(distinct d.queue)
      into done_ids, key_tenants, key_names, done_queues
      from done d cross join (select count(*) as n from counted) c;
    -- Slots of concurrency keys and queues freed: the next held job is admitted, workers
    -- of a concurrency-limited queue woken.
    perform jobcast.release_keys(key_tenants, key_names);
    perform jobcast.wake_limited(done_queues);
    return query select unnest(coalesce(done_ids, '{}'));
end
$$;

-- Fail an attempt: back to queued after p_retry_delay_ms when retryable and attempts remain
-- (event `retrying`), else `failed`. p_worker null means "whoever holds it" (lease reclaim).
create or replace function jobcast.fail_job(
    p_job_id bigint, p_attempt integer, p_worker text, p_error jsonb,
    p_retryable boolean, p_retry_delay_ms bigint
) returns setof jobcast.jobs
language plpgsql
set enable_seqscan = off
set jit = off
as $$
declare
    j jobcast.jobs;
    event_type text;
begin
    delete from jobcast.running
     where id = p_job_id and attempt = p_attempt and (p_worker is null or worker = p_worker);
    if not found then
        return;
    end if;
    update jobcast.jobs
       set status = case when p_retryable and attempt < max_attempts
                         then 'queued' else 'failed' end::jobcast.job_status,
           run_at = case when p_retryable and attempt < max_attempts
                         then now() + p_retry_delay_ms * interval '1 millisecond' else run_at end,
           finished_at = case when p_retryable and attempt < max_attempts
                              then null else now() end,
           error = p_error, lease_until = null, worker = null, updated_at = now(),
           last_seq = last_seq + 1
     where id = p_job_id and status = 'running' and attempt = p_attempt
    returning * into j;
    if j.id is null then
        -- A stale running row (left by a process of an older release during an upgrade):
        -- removed above, and the job, no longer running that attempt, is left alone.
        return;
    end if;
    if j.status = 'queued' then
        insert into jobcast.queued (id, queue, kind, priority, run_at)
        values (j.id, j.queue, j.kind, j.priority, j.run_at);
        event_type := 'retrying';
        perform jobcast.add_to_counter('retries', 1);
    else
        event_type := 'failed';
        perform jobcast.count_finished(j.queue, 'failed', 1);
        if j.concurrency_key is not null then
            perform jobcast.release_keys(array[j.tenant::text], array[j.concurrency_key]);
        end if;
    end if;
    perform jobcast.wake_limited(array[j.queue::text]);
    insert into jobcast.events (job_id, seq, type, data)
    values (j.id, j.last_seq, event_type,
            jobcast.event_data(j.id, j.kind, j.queue, j.status, j.attempt, j.last_seq, event_type,
                jsonb_build_object('error', p_error) ||
                case when event_type = 'retrying'
                     then jsonb_build_object('run_at', jobcast.rfc3339(j.run_at))
                     else '{}'::jsonb end, j.tags));
    return next j;
end
$$;

-- Fail several attempts in one statement (the group commit's path; fail_job stays for
-- callers that fail one at a time). Each element: {job_id, attempt, error, retryable,
-- retry_delay_ms}. Returns the ids whose failure was recorded; others were fenced out.
create or replace function jobcast.fail_jobs(p_worker text, p_failures jsonb)
returns table (job_id bigint)
language plpgsql
set enable_seqscan = off
set jit = off
as $$
declare
    ids bigint[];
    retried bigint;
    key_tenants text[];
    key_names text[];
    done_queues text[];
begin
    with input as (
        select (x->>'job_id')::bigint as id, (x->>'attempt')::integer as attempt,
               x->'error' as error, coalesce((x->>'retryable')::boolean, true) as retryable,
               coalesce((x->>'retry_delay_ms')::bigint, 0) as delay_ms
          from jsonb_array_elements(p_failures) x
    ), ended as (
        delete from jobcast.running r
         using input i
         where r.id = i.id and r.attempt = i.attempt and r.worker = p_worker
           and r.id = any(array(select i.id from input i))
        returning i.*
    ), failed as (
        update jobcast.jobs j
           set status = case when i.retryable and j.attempt < j.max_attempts
                             then 'queued' else 'failed' end::jobcast.job_status,
               run_at = case when i.retryable and j.attempt < j.max_attempts
                             then now() + i.delay_ms * interval '1 millisecond' else j.run_at end,
               finished_at = case when i.retryable and j.attempt < j.max_attempts
                                  then null else now() end,
               error = i.error, lease_until = null, worker = null, updated_at = now(),
               last_seq = j.last_seq + 1
          from ended i
         where j.id = i.id and j.status = 'running' and j.attempt = i.attempt
        returning j.id, j.kind, j.queue, j.status, j.attempt, j.last_seq, j.error, j.priority,
                  j.run_at, j.tenant, j.concurrency_key, j.tags
    ), relisted as (
        insert into jobcast.queued (id, queue, kind, priority, run_at)
        select f.id, f.queue, f.kind, f.priority, f.run_at from failed f
         where f.status = 'queued'
    ), events as (
        insert into jobcast.events (job_id, seq, type, data)
        select f.id, f.last_seq,
               case when f.status = 'queued' then 'retrying' else 'failed' end,
               jobcast.event_data(f.id, f.kind, f.queue, f.status, f.attempt, f.last_seq,
                   case when f.status = 'queued' then 'retrying' else 'failed' end,
                   jsonb_build_object('error', f.error) ||
                   case when f.status = 'queued'
                        then jsonb_build_object('run_at', jobcast.rfc3339(f.run_at))
                        else '{}'::jsonb end, f.tags)
          from failed f
    ), wake as (
        select pg_notify('jobcast_jobs', q)
          from (select distinct queue as q from failed where status = 'queued') d
    ), counted as (
        select jobcast.count_finished(g.queue, 'failed', g.n)
          from (select queue, count(*) as n from failed where status = 'failed'
                 group by queue order by queue) g
    )
    select array_agg(f.id), count(*) filter (where f.status = 'queued'),
           array_agg(f.tenant) filter (where f.concurrency_key is not null
                                         and f.status = 'failed'),
           array_agg(f.concurrency_key) filter (where f.concurrency_key is not null
                                                  and f.status = 'failed'),
           array_agg(distinct f.queue)
      into ids, retried, key_tenants, key_names, done_queues
      from failed f cross join (select count(*) as n from wake) w
                    cross join (select count(*) as n from counted) c;
    if retried > 0 then
        perform jobcast.add_to_counter('retries', retried);
    end if;
    -- A retried job keeps its key's slot (it is admitted again at once); a failed one
    -- frees it.
    perform jobcast.release_keys(key_tenants, key_names);
    perform jobcast.wake_limited(done_queues);
    return query select unnest(coalesce(ids, '{}'));
end
$$;

-- One group commit of a worker in one statement, so one round trip: the write ledger's row
-- (jobcast.worker_writes), then every op of the batch, then each op's outcome recorded
-- in the ledger. p_ops is an array of objects, each with `op` and the members of the
-- function that writes it: "event" (record_events), "complete" (complete_jobs), "fail"
-- (fail_jobs), "release" (release_jobs: job_id, attempt). Written in that order of kinds,
-- each kind in array order. Returns one boolean per op: accepted, or refused by fencing.
-- A batch id already in the ledger (a retry of a batch whose COMMIT had an unknown
-- outcome) writes nothing and returns the outcome recorded then; a retry that arrives
-- while the first try still commits waits for it on the ledger row.
create or replace function jobcast.write_batch(p_batch_id text, p_worker text, p_ops jsonb)
returns boolean[]
language plpgsql
set enable_seqscan = off
set jit = off
as $$
declare
    n integer := jsonb_array_length(p_ops);
    outcome boolean[];
    kind text;
    positions integer[];
    ops jsonb;
    ids bigint[];
    written bigint[];
    r record;
    g record;
begin
    insert into jobcast.worker_writes (id) values (p_batch_id) on conflict (id) do nothing;
    if not found then
        select w.accepted into outcome from jobcast.worker_writes w where w.id = p_batch_id;
        return coalesce(outcome, array_fill(false, array[n]));
    end if;
    outcome := array_fill(false, array[n]);
    -- The ops grouped by kind in one pass over the batch (not one per kind), events first,
    -- then completions, failures and releases: a job's events come before its end.
    for g in select *
               from (select o.v->>'op' as kind,
                            array_agg(o.ord::integer order by o.ord) as positions,
                            jsonb_agg(o.v order by o.ord) as ops,
                            array_agg((o.v->>'job_id')::bigint order by o.ord) as ids
                       from jsonb_array_elements(p_ops) with ordinality as o(v, ord)
                      where o.v->>'op' in ('event', 'complete', 'fail', 'release')
                      group by 1) k
              order by array_position(array['event', 'complete', 'fail', 'release'], k.kind)
    loop
        kind := g.kind;
        positions := g.positions;
        ops := g.ops;
        ids := g.ids;
        if kind = 'event' then
            -- Accepted by index (several events of one job may be in the batch).
            for r in select e.idx from jobcast.record_events(p_worker, ops) e loop
                outcome[positions[r.idx]] := true;
            end loop;
            continue;
        elsif kind = 'complete' then
            select array_agg(c.job_id) into written from jobcast.complete_jobs(p_worker, ops) c;
        elsif kind = 'fail' then
            select array_agg(f.job_id) into written from jobcast.fail_jobs(p_worker, ops) f;
        else
            select array_agg(l.job_id) into written
              from jobcast.release_jobs(p_worker, ids,
                       array(select (x->>'attempt')::integer
                               from jsonb_array_elements(ops) with ordinality as y(x, ord)
                              order by y.ord)) l;
        end if;
        for r in select p.pos from unnest(positions, ids) as p(pos, id)
                  where p.id = any(written) loop
            outcome[r.pos] := true;
        end loop;
    end loop;
    update jobcast.worker_writes set accepted = outcome where id = p_batch_id;
    return outcome;
end
$$;

-- Seconds until the earliest queued job of these queues and kinds is due (0 when one is
-- due now, null when none is queued), by the database's clock: a worker whose own clock
-- is off neither spins nor oversleeps.
create or replace function jobcast.next_due_in(p_queues text[], p_kinds text[])
returns double precision
language plpgsql stable
set enable_seqscan = off
set jit = off
as $$
declare
    next_run_at timestamptz;
    kinds text[];
    active text[];
    token_wait double precision;
begin
    -- The claim index is ordered by priority before run_at, so the earliest run_at is
    -- the least of each priority's first entry: walk the distinct priorities (a loose index
    -- scan, one probe per priority in use, usually one or two) per queue and kind.
    -- Any kind (null): the kinds queued now.
    -- A paused queue's jobs are not due for anyone (claim_jobs skips them): an idle worker
    -- answered 0 here would claim in a loop, finding nothing.
    -- Likewise a queue at its concurrency limit (a worker is woken when a slot frees), and
    -- a rate-limited one is due when its next token is.
    select array_agg(u.name) into active
      from unnest(p_queues) as u(name)
     where not exists (select 1 from jobcast.queues p where p.name = u.name and p.paused)
       and not exists (select 1 from jobcast.queues p where p.name = u.name
                          and p.concurrency is not null
                          and (select count(*) from jobcast.running r where r.queue = p.name)
                              >= p.concurrency);
    if active is null then
        return null;
    end if;
    select min((1 - (coalesce(p.tokens, 1) + p.rate_per_second
                     * extract(epoch from now() - coalesce(p.tokens_at, now()))))
               / p.rate_per_second)
      into token_wait
      from jobcast.queues p
     where p.name = any(active) and p.rate_per_second is not null
       and coalesce(p.tokens, 1) + p.rate_per_second
           * extract(epoch from now() - coalesce(p.tokens_at, now())) < 1;
    kinds := coalesce(p_kinds, jobcast.queued_kinds(active));
    with recursive walk(queue, kind, priority) as (
        select q.name, k.name,
               (select j.priority from jobcast.queued j
                 where j.queue = q.name and j.kind = k.name
                 order by j.priority desc limit 1)
          from unnest(active) as q(name) cross join unnest(kinds) as k(name)
        union all
        select w.queue, w.kind,
               (select j.priority from jobcast.queued j
                 where j.queue = w.queue and j.kind = w.kind and j.priority < w.priority
                 order by j.priority desc limit 1)
          from walk w where w.priority is not null
    )
    select min((select j.run_at from jobcast.queued j
                 where j.queue = w.queue and j.kind = w.kind
                   and j.priority = w.priority
                 order by j.priority desc, j.run_at limit 1))
      into next_run_at
      from walk w where w.priority is not null;
    -- greatest() would ignore a null: none queued stays null.
    if next_run_at is null then
        return null;
    end if;
    return greatest(extract(epoch from next_run_at - now())::float8, coalesce(token_wait, 0), 0);
end
$$;

-- Cancel a queued or running job at once. Returns the cancelled job, or nothing when the job
-- is unknown or already terminal. A running attempt's worker is told on jobcast_cancel and
-- is fenced out from then on.
create or replace function jobcast.cancel_job(p_job_id bigint) returns setof jobcast.jobs
language plpgsql
set enable_seqscan = off
set jit = off
as $$
declare
    j jobcast.jobs;
    was_running boolean := false;
    was_admitted boolean := false;
begin
    -- Unlisted first (a claim in flight holds the queued row: wait for it, then the job is
    -- running and its running row is there).
    -- A transition racing this cancel (a retryable failure relisting the job, a release,
    -- a reclaim, a claim) may move the job from one list to the other while we look: the
    -- delete from queued cannot see a row inserted by a transaction still in flight, and
    -- the delete from running then waits for that transaction and finds its row gone. So
    -- look again until the job is found in a list or is seen terminal: a cancel wins or
    -- sees the final state, never neither.
    for attempt in 1..20 loop
        delete from jobcast.queued where id = p_job_id;
        if found then
            was_admitted := true;
            exit;
        end if;
        delete from jobcast.running where id = p_job_id;
        if found then
            was_running := true;
            was_admitted := true;
            exit;
        end if;
        -- Held behind its concurrency key: it never took a slot.
        delete from jobcast.held where id = p_job_id;
        exit when found;
        if not exists (select 1 from jobcast.jobs
                        where id = p_job_id and status in ('queued', 'running')) then
            return;
        end if;
        if attempt = 20 then
            return;
        end if;
    end loop;
    update jobcast.jobs
       set status = 'cancelled', finished_at = now(), updated_at = now(), lease_until = null,
           worker = null, last_seq = last_seq + 1
     where id = p_job_id
    returning * into j;
    insert into jobcast.events (job_id, seq, type, data)
    values (j.id, j.last_seq, 'cancelled',
            jobcast.event_data(j.id, j.kind, j.queue, j.status, j.attempt, j.last_seq,
                               'cancelled', null, j.tags));
    perform jobcast.count_finished(j.queue, 'cancelled', 1);
    if was_running then
        perform pg_notify('jobcast_cancel', j.id::text);
    end if;
    if was_admitted and j.concurrency_key is not null then
        perform jobcast.release_keys(array[j.tenant::text], array[j.concurrency_key]);
    end if;
    if was_running then
        perform jobcast.wake_limited(array[j.queue::text]);
    end if;
    return next j;
end
$$;

-- Extend the leases of p_worker's running attempts. Returns the ids still held; a job
-- missing from the result was cancelled or taken away, and its handler must stop.
-- A heartbeat waits at most 100 ms for a row lock, then fails (the worker tries again at its
-- next beat, without stopping anything): it locks the worker's running rows in whatever
-- order its join takes them, and so does the worker's own group commit completing some of
-- them, which made PostgreSQL abort one of the two as a deadlock after a second (issue 23's
-- harness, chaos_pool_exhaustion). Giving up first, the heartbeat is never the cycle's
-- second half for long enough to be detected.
create or replace function jobcast.heartbeat_jobs(
    p_worker text, p_job_ids bigint[], p_attempts integer[], p_lease_secs double precision
) returns table (job_id bigint)
language sql
set enable_seqscan = off
set jit = off
set lock_timeout = '100ms'
as $$
    with held as (
        update jobcast.running r
           set lease_until = now() + make_interval(secs => p_lease_secs)
          from unnest(p_job_ids, p_attempts) as u(id, attempt)
         where r.id = u.id and r.id = any(p_job_ids) and r.attempt = u.attempt
           and r.worker = p_worker
        returning r.id, r.lease_until
    ), mirrored as (
        update jobcast.jobs j set lease_until = h.lease_until from held h where j.id = h.id
        returning j.id
    )
    select h.id from held h cross join (select count(*) as n from mirrored) m
$$;

-- Hand unfinished attempts back on shutdown without counting them (event `queued`).
create or replace function jobcast.release_jobs(
    p_worker text, p_job_ids bigint[], p_attempts integer[]
) returns table (job_id bigint)
language sql
set enable_seqscan = off
set jit = off
as $$
    with ended as (
        delete from jobcast.running r
         using unnest(p_job_ids, p_attempts) as u(id, attempt)
         where r.id = u.id and r.id = any(p_job_ids) and r.attempt = u.attempt
           and r.worker = p_worker
        returning r.id, r.attempt
    ), released as (
        update jobcast.jobs j
           set status = 'queued', attempt = j.attempt - 1, lease_until = null, worker = null,
               run_at = now(), updated_at = now(), last_seq = j.last_seq + 1
          from ended e
         where j.id = e.id and j.status = 'running' and j.attempt = e.attempt
        returning j.*
    ), relisted as (
        insert into jobcast.queued (id, queue, kind, priority, run_at)
        select r.id, r.queue, r.kind, r.priority, r.run_at from released r
    ), events as (
        insert into jobcast.events (job_id, seq, type, data)
        select r.id, r.last_seq, 'queued',
               jobcast.event_data(r.id, r.kind, r.queue, r.status, r.attempt, r.last_seq,
                   'queued', jsonb_build_object('run_at', jobcast.rfc3339(r.run_at),
                                                'message', 'released by a stopping worker'),
                   r.tags)
          from released r
    ), wake as (
        select pg_notify('jobcast_jobs', q) from (select distinct queue as q from released) d
    )
    select r.id from released r cross join (select count(*) as n from wake) w
$$;

-- Take back attempts whose lease ran out (their worker died or hung). Safe to run from any
-- number of processes at once: SKIP LOCKED hands each expired job to one of them.
create or replace function jobcast.reclaim_expired_leases(p_retry_base_ms bigint, p_limit integer)
returns integer
language plpgsql
set enable_seqscan = off
set jit = off
as $$
declare
    j record;
    reclaimed integer := 0;
begin
    for j in
        select id, attempt, worker from jobcast.running
         where lease_until < now()
         order by lease_until
         limit p_limit
           for update skip locked
    loop
        perform jobcast.fail_job(j.id, j.attempt, null,
            jsonb_build_object('message', 'lease expired: worker ' || j.worker
                                          || ' stopped heartbeating', 'lease_expired', true),
            true, jobcast.retry_delay_ms(p_retry_base_ms, j.attempt));
        reclaimed := reclaimed + 1;
    end loop;
    if reclaimed > 0 then
        perform jobcast.add_to_counter('leases_expired', reclaimed);
    end if;
    return reclaimed;
end
$$;

-- Remove finished jobs older than p_older_than, with their events, among the p_scan jobs
-- that follow p_after_id in id order: jobs has no index on finished_at (it would make every
-- completion a non-HOT update, see migrations/V7), so retention walks the primary key a
-- bounded window at a time. Returns how many were removed and the id to continue after
-- (null once the window reached the end of the table: start again from 0). Finished jobs
-- locked by someone else are left for the next pass. Also forgets the console's
-- per-minute counts older than an hour.
create or replace function jobcast.prune_finished(
    p_older_than interval, p_after_id bigint, p_scan integer
) returns table (pruned integer, next_after_id bigint)
language plpgsql
set enable_seqscan = off
set jit = off
as $$
declare
    scanned bigint[];
begin
    select array_agg(w.id order by w.id) into scanned
      from (select j.id from jobcast.jobs j where j.id > p_after_id order by j.id
             limit p_scan) w;
    delete from jobcast.finished_minutes where minute < now() - interval '1 hour';
    return query
    with doomed as (
        select j.id from jobcast.jobs j
         where j.id = any(scanned) and j.finished_at < now() - p_older_than
           for update skip locked
    ), deleted as (
        delete from jobcast.jobs j using doomed where j.id = doomed.id
        returning j.id, j.queue, j.status
    ), events as (
        delete from jobcast.events e using deleted d where e.job_id = d.id
    ), counted as (
        select jobcast.count_finished(g.queue, g.status, -g.n)
          from (select queue, status, count(*) as n from deleted
                 group by queue, status order by status, queue) g
    )
    select (select count(*) from deleted cross join (select count(*) from counted) c)::integer,
           case when coalesce(cardinality(scanned), 0) < p_scan then null
                else scanned[cardinality(scanned)] end;
end
$$;

-- Remove finished jobs older than p_older_than (with their events), walking the whole table
-- if need be, until at least p_limit are gone (windows of p_limit jobs): for scripts. Workers prune with
-- jobcast.prune_finished, a bounded window per statement.
create or replace function jobcast.prune_finished_jobs(p_older_than interval, p_limit integer)
returns integer
language plpgsql as $$
declare
    after_id bigint := 0;
    step record;
    total integer := 0;
begin
    loop
        select * into step from jobcast.prune_finished(p_older_than, after_id, p_limit);
        total := total + step.pruned;
        after_id := step.next_after_id;
        exit when after_id is null or total >= p_limit;
    end loop;
    return total;
end
$$;

-- Forget ledger rows of group commits older than p_older_than (see migrations/V5): a worker
-- retries a write only while it cannot reach the database, and a retry that comes after
-- its lease ran out is refused by fencing whether or not the row is still there.
create or replace function jobcast.prune_worker_writes(p_older_than interval, p_limit integer)
returns integer
language sql as $$
    with doomed as (
        select id from jobcast.worker_writes
         where at < now() - p_older_than
         order by at
         limit p_limit
           for update skip locked
    ), deleted as (
        delete from jobcast.worker_writes w using doomed where w.id = doomed.id
        returning w.id
    )
    select count(*)::integer from deleted
$$;

-- The firehose horizon: every event whose xid is below it has committed or never will,
-- and no transaction that can still write events has an xid below it. Only transactions
-- of this database can write jobcast.events, so the in-progress transactions of other
-- databases (which hold back the cluster-wide pg_snapshot_xmin) are left out: a forgotten
-- BEGIN elsewhere does not stall the firehose. A transaction of this database that holds
-- an xid still holds the horizon back: bound that with idle_in_transaction_session_timeout.
create or replace function jobcast.firehose_horizon() returns xid8
language plpgsql volatile as $$
declare
    snap pg_snapshot := pg_current_snapshot();
    horizon xid8;
begin
    -- Read after the snapshot: a transaction in progress in the snapshot that has ended by
    -- now is no longer listed, and its events are visible to the next statement's snapshot.
    select min(x) into horizon
      from pg_snapshot_xip(snap) as x
     where (x::text::numeric % 4294967296)::bigint in (
               select a.backend_xid::text::bigint
                 from pg_stat_activity a
                where a.datid = (select oid from pg_database where datname = current_database())
                  and a.backend_xid is not null
               union all
               select p.transaction::text::bigint
                 from pg_prepared_xacts p
                where p.database = current_database());
    return coalesce(horizon, pg_snapshot_xmax(snap));
end
$$;

-- The firehose in commit order: events after cursor (xid, id) whose transaction is below
-- the horizon, so no event can later appear before the cursor. Every row is returned (the
-- cursor advances over all of them); `matches` says whether it passes the optional queue
-- and kind filters. The horizon is taken in a statement of its own, before the read.
create or replace function jobcast.read_firehose(
    p_after_xid xid8, p_after_id bigint, p_queue text, p_kind text, p_limit integer
) returns table (xid xid8, id bigint, job_id bigint, seq integer, type text, data jsonb,
                 matches boolean)
language plpgsql volatile
set enable_seqscan = off
set jit = off
as $$
declare
    horizon xid8 := jobcast.firehose_horizon();
begin
    return query
    select e.xid, e.id, e.job_id, e.seq, e.type, e.data,
           (p_queue is null or e.data->>'queue' = p_queue)
           and (p_kind is null or e.data->>'kind' = p_kind)
      from jobcast.events e
     where (e.xid, e.id) > (p_after_xid, p_after_id)
       and e.xid < horizon
     order by e.xid, e.id
     limit p_limit;
end
$$;

-- One page of the whole firehose for the web tier's readers: the events after the cursor
-- below the horizon, then one last row with a null job_id whose xid is the horizon (so an
-- empty page still tells the reader how far nothing is left: up to the horizon).
create or replace function jobcast.firehose_page(
    p_after_xid xid8, p_after_id bigint, p_limit integer
) returns table (xid xid8, id bigint, job_id bigint, seq integer, type text, data jsonb)
language plpgsql volatile
set enable_seqscan = off
set jit = off
as $$
declare
    horizon xid8 := jobcast.firehose_horizon();
begin
    return query
    select e.xid, e.id, e.job_id, e.seq, e.type, e.data
      from jobcast.events e
     where (e.xid, e.id) > (p_after_xid, p_after_id)
       and e.xid < horizon
     order by e.xid, e.id
     limit p_limit;
    return query select horizon, null::bigint, null::bigint, null::integer, null::text,
                        null::jsonb;
end
$$;

-- ---------------------------------------------------------------------------------------
-- Console: retry, queues (pause/resume), workers seen, subscribers across pods.
-- ---------------------------------------------------------------------------------------

-- Put a failed or cancelled job back in its queue, due now, with a `retried` event. Its next
-- claim is attempt n+1: max_attempts is raised to n+1 when it was used up. Returns nothing
-- when the job is unknown, not failed/cancelled, or already at the 100-attempt ceiling.
create or replace function jobcast.retry_job(p_job_id bigint) returns setof jobcast.jobs
language plpgsql
set enable_seqscan = off
set jit = off
as $$
declare
    j jobcast.jobs;
    was jobcast.job_status;
begin
    select status into was from jobcast.jobs
     where id = p_job_id and status in ('failed', 'cancelled') and attempt < 100
       for update;
    if not found then
        return;
    end if;
    update jobcast.jobs
       set status = 'queued', run_at = now(), finished_at = null, updated_at = now(),
           max_attempts = greatest(max_attempts, attempt + 1), progress = null,
           message = null, last_seq = last_seq + 1
     where id = p_job_id
    returning * into j;
    if j.concurrency_key is null then
        insert into jobcast.queued (id, queue, kind, priority, run_at)
        values (j.id, j.queue, j.kind, j.priority, j.run_at);
    else
        insert into jobcast.held (id, tenant, concurrency_key, queue, priority, run_at)
        values (j.id, j.tenant, j.concurrency_key, j.queue, j.priority, j.run_at);
        perform jobcast.admit_key(j.tenant, j.concurrency_key);
    end if;
    -- Where finished jobs are counted as they finish (jobcast.finished_counts), this one
    -- no longer is. (A plpgsql body resolves names when it runs: fine without the table.)
    if to_regclass('jobcast.finished_counts') is not null then
        perform jobcast.count_finished(j.queue, was, -1);
    end if;
    insert into jobcast.events (job_id, seq, type, data)
    values (j.id, j.last_seq, 'retried',
            jobcast.event_data(j.id, j.kind, j.queue, j.status, j.attempt, j.last_seq, 'retried',
                jsonb_build_object('run_at', jobcast.rfc3339(j.run_at),
                                   'max_attempts', j.max_attempts), j.tags));
    perform pg_notify('jobcast_jobs', j.queue);
    return next j;
end
$$;

-- Pause or resume a queue. Workers stop claiming from a paused queue at their next claim
-- (claim_jobs reads jobcast.queues); resuming wakes them at once.
create or replace function jobcast.set_queue_paused(p_queue text, p_paused boolean)
returns setof jobcast.queues
language plpgsql as $$
declare
    q jobcast.queues;
begin
    insert into jobcast.queues (name, paused) values (p_queue, p_paused)
    on conflict (name) do update set paused = excluded.paused, updated_at = now()
    returning * into q;
    if not p_paused then
        perform pg_notify('jobcast_jobs', p_queue);
    end if;
    return next q;
end
$$;

-- Every queue that has jobs or is paused (or only p_queue, whatever its state): jobs by
-- status, the age of the oldest due job, and jobs finished per minute over the last 15
-- minutes (oldest minute first; failed ones counted apart). Queued and running jobs are
-- counted through their partial indexes; finished ones from jobcast.finished_counts where
-- that exists (kept as jobs finish and are pruned), else row by row.
create or replace function jobcast.queue_summaries(p_queue text)
returns table (name text, paused boolean, jobs jsonb, oldest_queued_seconds double precision,
               succeeded_per_minute integer[], failed_per_minute integer[])
language plpgsql stable as $$
declare
    finished jsonb;
begin
    if to_regclass('jobcast.finished_counts') is not null then
        select coalesce(jsonb_agg(jsonb_build_array(f.queue, f.status, f.n)), '[]') into finished
          from (select c.queue, c.status::text as status, sum(c.value)::bigint as n
                  from jobcast.finished_counts c
                 where p_queue is null or c.queue = p_queue
                 group by 1, 2 having sum(c.value) <> 0) f;
    else
        select coalesce(jsonb_agg(jsonb_build_array(f.queue, f.status, f.n)), '[]') into finished
          from (select j.queue, j.status::text as status, count(*) as n
                  from jobcast.jobs j
                 where j.status in ('succeeded', 'failed', 'cancelled')
                   and (p_queue is null or j.queue = p_queue)
                 group by 1, 2) f;
    end if;
    return query
    with counts as (
        select j.queue, 'queued' as status, count(*) as n from jobcast.queued j
         where p_queue is null or j.queue = p_queue group by 1
        union all
        -- Queued behind a concurrency key.
        select h.queue, 'queued', count(*) from jobcast.held h
         where p_queue is null or h.queue = p_queue group by 1
        union all
        select r.queue, 'running', count(*) from jobcast.running r
         where p_queue is null or r.queue = p_queue group by 1
        union all
        select e->>0, e->>1, (e->>2)::bigint from jsonb_array_elements(finished) e
    ), names as (
        select c.queue as name from counts c
        union select q.name from jobcast.queues q where q.paused and p_queue is null
        union select p_queue where p_queue is not null
    ), done as (
        select f.queue, f.status,
               14 - floor(extract(epoch from date_trunc('minute', now()) - f.minute) / 60)::integer
                   as minute,
               f.value
          from jobcast.finished_minutes f
         where f.minute > date_trunc('minute', now()) - interval '15 minutes'
           and (p_queue is null or f.queue = p_queue)
    )
    select n.name, coalesce(q.paused, false),
           (select jsonb_object_agg(s.status,
                       coalesce((select sum(c.n) from counts c
                                  where c.queue = n.name and c.status = s.status::text), 0))
              from unnest(enum_range(null::jobcast.job_status)) as s(status)),
           coalesce((select extract(epoch from now() - min(j.run_at))::float8
                       from jobcast.queued j
                      where j.queue = n.name and j.run_at <= now()), 0),
           (select array_agg(coalesce((select sum(d.value) from done d
                               where d.queue = n.name and d.minute = m
                                 and d.status = 'succeeded'), 0)::integer order by m)
              from generate_series(0, 14) m),
           (select array_agg(coalesce((select sum(d.value) from done d
                               where d.queue = n.name and d.minute = m
                                 and d.status = 'failed'), 0)::integer order by m)
              from generate_series(0, 14) m)
      from names n
      left join jobcast.queues q on q.name = n.name
     order by n.name;
end
$$;

-- A worker's presence: the queues and kinds it takes and how busy it is, upserted every few
-- seconds. Workers silent for an hour are forgotten.
create or replace function jobcast.announce_worker(
    p_worker text, p_queues text[], p_kinds text[], p_concurrency integer, p_running integer
) returns void
language sql as $$
    insert into jobcast.workers (id, queues, kinds, concurrency, running)
    values (p_worker, p_queues, p_kinds, p_concurrency, p_running)
    on conflict (id) do update
       set queues = excluded.queues, kinds = excluded.kinds,
           concurrency = excluded.concurrency, running = excluded.running,
           last_heartbeat = now();
    delete from jobcast.workers where last_heartbeat < now() - interval '1 hour';
$$;

-- A stopping worker leaves at once instead of fading out.
create or replace function jobcast.retire_worker(p_worker text) returns void
language sql as $$
    delete from jobcast.workers where id = p_worker
$$;

-- Whether some worker that heartbeated in the last 20 seconds takes p_kind from p_queue.
create or replace function jobcast.kind_has_worker(p_queue text, p_kind text) returns boolean
language sql stable as $$
    select exists (
        select 1 from jobcast.workers w
         where w.last_heartbeat > now() - interval '20 seconds'
           and p_queue = any(w.queues) and p_kind = any(w.kinds))
$$;

-- Why a queued job may be stuck, for people: null when nothing looks wrong. A job due for
-- at least a minute whose kind no live worker takes from its queue, or in a paused queue.
create or replace function jobcast.job_hint(
    p_queue text, p_kind text, p_status jobcast.job_status, p_run_at timestamptz
) returns text
language plpgsql stable
set enable_seqscan = off
set jit = off
as $$
begin
    -- Most jobs are not queued: no query at all for them.
    if p_status <> 'queued' or p_run_at > now() then
        return null;
    end if;
    return (select case
        when p_status <> 'queued' or p_run_at > now() then null
        when exists (select 1 from jobcast.queues q where q.name = p_queue and q.paused)
            then 'queue ' || p_queue || ' is paused'
        when p_run_at > now() - interval '1 minute' then null
        when jobcast.kind_has_worker(p_queue, p_kind) then null
        else 'no worker has claimed kind ' || p_kind || ' in '
             || case floor(extract(epoch from now() - p_run_at) / 60)::bigint
                     when 1 then '1 minute'
                     else floor(extract(epoch from now() - p_run_at) / 60)::bigint || ' minutes'
                end
             || ' (no live worker takes it from queue ' || p_queue || ')'
    end);
end
$$;

-- Kinds with due jobs that no live worker takes from their queue: for /metrics and the
-- console. Skips paused queues (nothing is supposed to run there).
create or replace function jobcast.kinds_without_worker()
returns table (queue text, kind text, jobs bigint, oldest_due_seconds double precision)
language sql stable as $$
    select j.queue, j.kind, count(*), extract(epoch from now() - min(j.run_at))::float8
      from jobcast.queued j
     where j.run_at <= now()
       and not exists (select 1 from jobcast.queues q where q.name = j.queue and q.paused)
     group by j.queue, j.kind
    having not jobcast.kind_has_worker(j.queue, j.kind)
     order by 1, 2
$$;

-- A serve process publishes its open job streams: p_job_ids/p_streams are the counts that
-- changed since its last call (0 removes the row). Every call refreshes the pod's
-- last_seen; pods silent for a minute are removed with their counts.
create or replace function jobcast.publish_stream_counts(
    p_pod text, p_job_ids bigint[], p_streams integer[]
) returns void
language sql as $$
    insert into jobcast.stream_pods (id) values (p_pod)
    on conflict (id) do update set last_seen = now();
    delete from jobcast.stream_counts c
     using unnest(p_job_ids, p_streams) as u(job_id, streams)
     where c.pod = p_pod and c.job_id = u.job_id and u.streams <= 0;
    insert into jobcast.stream_counts (pod, job_id, streams)
    select p_pod, u.job_id, u.streams from unnest(p_job_ids, p_streams) as u(job_id, streams)
     where u.streams > 0
    on conflict (job_id, pod) do update set streams = excluded.streams;
    delete from jobcast.stream_pods where last_seen < now() - interval '1 minute';
$$;

-- A stopping serve process takes its counts with it.
create or replace function jobcast.retire_stream_pod(p_pod text) returns void
language sql as $$
    delete from jobcast.stream_pods where id = p_pod
$$;

-- Streams open on a job across every serve process heard from in the last 10 seconds.
-- plpgsql, like job_hint and waiting_for: a SQL function that is not inlined is planned
-- again on every call (five times the cost of the job's row for every GET /v1/jobs/ID);
-- plpgsql keeps its plans per session.
create or replace function jobcast.job_subscribers(p_job_id bigint) returns bigint
language plpgsql stable
set enable_seqscan = off
set jit = off
as $$
begin
    return (select coalesce(sum(c.streams), 0)::bigint
              from jobcast.stream_counts c
              join jobcast.stream_pods p on p.id = c.pod
             where c.job_id = p_job_id and p.last_seen > now() - interval '10 seconds');
end
$$;

-- Repairs the invariants between jobs and its lists (a queued job has a jobcast.queued row,
-- a running attempt a jobcast.running row, and no list row outlives its state). Every
-- function here keeps them; `jobcast migrate` runs this once after an upgrade, when calls of
-- an older release's function bodies that were in flight as it committed have ended (they
-- finish the old way). Returns how many rows were listed and unlisted.
create or replace function jobcast.repair_lists(out listed bigint, out unlisted bigint)
language plpgsql as $$
declare
    n bigint;
begin
    listed := 0;
    unlisted := 0;
    with missing as (
        select j.id, j.queue, j.kind, j.priority, j.run_at from jobcast.jobs j
         where j.status = 'queued'
           and not exists (select 1 from jobcast.queued q where q.id = j.id)
           and not exists (select 1 from jobcast.held h where h.id = j.id)
           for update of j
    )
    insert into jobcast.queued (id, queue, kind, priority, run_at)
    select m.id, m.queue, m.kind, m.priority, m.run_at from missing m
    on conflict (id) do nothing;
    get diagnostics n = row_count;
    listed := listed + n;
    with missing as (
        select j.id, j.queue, j.attempt, j.worker, j.lease_until from jobcast.jobs j
         where j.status = 'running'
           and not exists (select 1 from jobcast.running r where r.id = j.id)
           for update of j
    )
    insert into jobcast.running (id, queue, attempt, worker, lease_until)
    select m.id, m.queue, m.attempt, coalesce(m.worker, 'unknown'),
           coalesce(m.lease_until, now()) from missing m
    on conflict (id) do nothing;
    get diagnostics n = row_count;
    listed := listed + n;
    delete from jobcast.queued q
     where not exists (select 1 from jobcast.jobs j where j.id = q.id and j.status = 'queued');
    get diagnostics n = row_count;
    unlisted := unlisted + n;
    delete from jobcast.running r
     where not exists (select 1 from jobcast.jobs j
                        where j.id = r.id and j.status = 'running' and j.attempt = r.attempt);
    get diagnostics n = row_count;
    unlisted := unlisted + n;
    delete from jobcast.held h
     where not exists (select 1 from jobcast.jobs j where j.id = h.id and j.status = 'queued');
    get diagnostics n = row_count;
    unlisted := unlisted + n;
end
$$;

-- One slot of a schedule: the job `p_spec` with `schedule` and `scheduled_for` set, unless
-- this slot already has its job (the unique slot key; checked first so that a replay
-- writes nothing) or, with `overlap = skip`, the schedule's previous job has not ended.
-- Returns the new job's id, or null when nothing was enqueued. Called under the schedule's
-- row lock (jobcast.due_schedules, the caller's transaction).
create or replace function jobcast.fire_schedule(
    p_tenant text, p_name text, p_slot timestamptz, p_spec jsonb, p_skip_overlap boolean,
    p_last_job_id bigint
) returns bigint
language plpgsql
set enable_seqscan = off
set jit = off
as $$
declare
    new_id bigint;
begin
    if p_skip_overlap and p_last_job_id is not null and exists (
        select 1 from jobcast.jobs where id = p_last_job_id and status in ('queued', 'running')
    ) then
        return null;
    end if;
    if exists (select 1 from jobcast.jobs
                where tenant = p_tenant and schedule = p_name and scheduled_for = p_slot) then
        return null;
    end if;
    select j.id into new_id
      from jobcast.enqueue_jobs(jsonb_build_array(p_spec || jsonb_build_object(
               'schedule', p_name, 'scheduled_for', p_slot)), p_tenant) j;
    return new_id;
end
$$;

-- Schedules due by the database's clock, locked for the caller's transaction (another
-- process skips them meanwhile), with that clock's `now`.
create or replace function jobcast.due_schedules(p_limit integer)
returns table (tenant text, name text, cron text, every_secs double precision,
               timezone text, job jsonb, overlap text, catch_up text,
               next_run_at timestamptz, last_job_id bigint, now timestamptz)
language sql as $$
    select s.tenant, s.name, s.cron, s.every_secs, s.timezone, s.job, s.overlap, s.catch_up,
           s.next_run_at, s.last_job_id, now()
      from jobcast.schedules s
     where not s.paused and s.next_run_at <= now()
     order by s.next_run_at
     limit p_limit
       for update skip locked
$$;

-- Admits held jobs of a concurrency key while fewer than their limit are admitted or
-- running (the limit that counts is the one on the job being admitted), in claim order,
-- and wakes the workers of their queues. Under the key's row lock. Returns how many.
create or replace function jobcast.admit_key(p_tenant text, p_key text) returns integer
language plpgsql
set enable_seqscan = off
set jit = off
as $$
declare
    active_now integer;
    h record;
    admitted integer := 0;
begin
    insert into jobcast.concurrency_keys (tenant, concurrency_key) values (p_tenant, p_key)
    on conflict do nothing;
    select k.active into active_now from jobcast.concurrency_keys k
     where k.tenant = p_tenant and k.concurrency_key = p_key
       for update;
    loop
        select hd.id, j.queue, j.kind, j.priority, j.run_at,
               coalesce(j.concurrency_limit, 1) as lim
          into h
          from jobcast.held hd join jobcast.jobs j on j.id = hd.id
         where hd.tenant = p_tenant and hd.concurrency_key = p_key
         order by hd.priority desc, hd.run_at, hd.id
         limit 1;
        exit when not found or active_now >= h.lim;
        delete from jobcast.held where id = h.id;
        continue when not found;
        insert into jobcast.queued (id, queue, kind, priority, run_at)
        values (h.id, h.queue, h.kind, h.priority, h.run_at);
        active_now := active_now + 1;
        admitted := admitted + 1;
        perform pg_notify('jobcast_jobs', h.queue);
    end loop;
    update jobcast.concurrency_keys set active = active_now
     where tenant = p_tenant and concurrency_key = p_key;
    return admitted;
end
$$;

-- Frees one slot of each (tenant, key) pair given (a key given twice frees two), then
-- admits what the freed slots allow. Keys in a fixed order: two transactions releasing the
-- same keys never wait for each other in a cycle.
create or replace function jobcast.release_keys(p_tenants text[], p_keys text[]) returns void
language plpgsql
set enable_seqscan = off
set jit = off
as $$
declare
    k record;
begin
    if p_keys is null then
        return;
    end if;
    for k in select t, c, count(*)::integer as n
               from unnest(p_tenants, p_keys) as u(t, c) group by t, c order by t, c loop
        update jobcast.concurrency_keys set active = greatest(active - k.n, 0)
         where tenant = k.t and concurrency_key = k.c;
        perform jobcast.admit_key(k.t, k.c);
    end loop;
end
$$;

-- Wakes the workers of those of `p_queues` that have a concurrency limit: a running job of
-- theirs ended, so a slot is free (a worker waits for this instead of polling).
-- (plpgsql: a sql function with SET clauses is never inlined, and was parsed and planned on
-- every completion, 80 µs a call.)
create or replace function jobcast.wake_limited(p_queues text[]) returns void
language plpgsql
set enable_seqscan = off
set jit = off
as $$
begin
    perform pg_notify('jobcast_jobs', q.name)
       from jobcast.queues q
      where q.name = any(p_queues) and q.concurrency is not null;
end
$$;

-- How many jobs of `p_queue` a claim may take now (at most p_want): its concurrency limit
-- less its running jobs, and its rate limit's whole tokens (refilled here). Locks the
-- queue's row until the claim commits: the limits hold across every worker.
create or replace function jobcast.queue_allowance(p_queue text, p_want integer)
returns integer
language plpgsql
set enable_seqscan = off
set jit = off
as $$
declare
    q jobcast.queues;
    allowed integer := p_want;
    running integer;
    full_bucket double precision;
begin
    select * into q from jobcast.queues where name = p_queue for update;
    if not found then
        return p_want;
    end if;
    if q.concurrency is not null then
        select count(*) into running from jobcast.running r where r.queue = p_queue;
        allowed := least(allowed, q.concurrency - running);
    end if;
    if q.rate_per_second is not null then
        full_bucket := greatest(coalesce(q.burst, q.rate_per_second), 1);
        q.tokens := least(full_bucket,
                          coalesce(q.tokens, full_bucket) + q.rate_per_second
                          * extract(epoch from now() - coalesce(q.tokens_at, now())));
        update jobcast.queues set tokens = q.tokens, tokens_at = now() where name = p_queue;
        allowed := least(allowed, floor(q.tokens)::integer);
    end if;
    return greatest(allowed, 0);
end
$$;

-- Sets or removes a queue's limits (null removes one); the queue row is made if needed.
create or replace function jobcast.set_queue_limits(
    p_queue text, p_concurrency integer, p_rate double precision, p_burst double precision
) returns setof jobcast.queues
language plpgsql as $$
declare
    q jobcast.queues;
begin
    insert into jobcast.queues (name, concurrency, rate_per_second, burst)
    values (p_queue, p_concurrency, p_rate, p_burst)
    on conflict (name) do update
       set concurrency = excluded.concurrency, rate_per_second = excluded.rate_per_second,
           burst = excluded.burst, updated_at = now(),
           -- A new rate starts with a full bucket.
           tokens = case when jobcast.queues.rate_per_second is distinct from excluded.rate_per_second
                         then null else jobcast.queues.tokens end,
           tokens_at = case when jobcast.queues.rate_per_second is distinct from excluded.rate_per_second
                            then null else jobcast.queues.tokens_at end
    returning * into q;
    perform pg_notify('jobcast_jobs', p_queue);
    return next q;
end
$$;

-- Why a queued job is not running yet: held behind its concurrency key, its queue paused,
-- at its concurrency limit, or out of rate tokens; null otherwise.
create or replace function jobcast.waiting_for(
    p_id bigint, p_queue text, p_status jobcast.job_status
) returns text
language plpgsql stable
set enable_seqscan = off
set jit = off
as $$
begin
    if p_status <> 'queued' then
        return null;
    end if;
    return (select case
        when p_status <> 'queued' then null
        when exists (select 1 from jobcast.held h where h.id = p_id) then 'concurrency_key'
        else (select case
                  when q.paused then 'paused'
                  when q.concurrency is not null
                       and (select count(*) from jobcast.running r where r.queue = q.name)
                           >= q.concurrency then 'queue_concurrency'
                  when q.rate_per_second is not null
                       and coalesce(q.tokens, greatest(coalesce(q.burst, q.rate_per_second), 1))
                           + q.rate_per_second
                           * extract(epoch from now() - coalesce(q.tokens_at, now())) < 1
                       then 'queue_rate'
              end
              from jobcast.queues q where q.name = p_queue)
    end);
end
$$;

-- The timeline this primary writes on, from the name of its current WAL file: a promoted
-- standby writes on a new one. Streams read it with every page of events and check their
-- history when it changes (an asynchronous failover may have lost events they delivered).
create or replace function jobcast.timeline() returns integer
language sql stable as $$
    select ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::integer
$$;
