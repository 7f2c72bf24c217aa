-- The job state machine, once. Every transition that a client can see writes its event
-- row in the same transaction; the statement trigger on jobcast.events NOTIFYs once per
-- statement. Workers in any language can call these functions directly.
-- Applied after migrations/ by `jobcast migrate`, under the same advisory lock.

-- Declared no stricter than its body (to_char is stable) so that PostgreSQL inlines it: a
-- function that is not inlined is planned and run on its own for every row.
create or replace function jobcast.rfc3339(t timestamptz) returns text
language sql stable as $$
    select to_char(t at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

-- The `data` object of an event, as SSE clients receive it. Volatile like clock_timestamp(),
-- which keeps it inlinable (see rfc3339).
create or replace function jobcast.event_data(
    p_job_id bigint, p_kind text, p_queue text, p_status jobcast.job_status,
    p_attempt integer, p_seq integer, p_type text, p_extra jsonb
) returns jsonb
language sql volatile as $$
    select jsonb_build_object(
        'job_id', p_job_id::text, 'seq', p_seq, 'type', p_type,
        'at', jobcast.rfc3339(clock_timestamp()), 'status', p_status,
        'attempt', p_attempt, 'kind', p_kind, 'queue', p_queue
    ) || coalesce(p_extra, '{}'::jsonb)
$$;

-- One NOTIFY per statement that inserts events: "job_id:first_seq:last_seq,...".
-- NOTIFY is only a doorbell; listeners read the rows. Over-long payloads become "*"
-- (re-read everything you follow).
create or replace function jobcast.notify_events() returns trigger
language plpgsql as $$
declare
    payload text;
begin
    if coalesce(current_setting('jobcast.notify', true), '') = 'off' then
        return null;
    end if;
    select string_agg(job_id::text || ':' || first_seq || ':' || last_seq, ',')
      into payload
      from (select job_id, min(seq) as first_seq, max(seq) as last_seq
              from new_events group by job_id) s;
    if payload is null then
        return null;
    end if;
    if octet_length(payload) > 7000 then
        payload := '*';
    end if;
    perform pg_notify('jobcast_events', payload);
    return null;
end
$$;

create or replace trigger events_notify
    after insert on jobcast.events
    referencing new table as new_events
    for each statement execute function jobcast.notify_events();

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
language plpgsql as $$
declare
    new_ids bigint[];
begin
    with inserted as (
        insert into jobcast.jobs (kind, queue, args, priority, run_at, max_attempts,
                                  timeout_secs, idempotency_key, request_hash, last_seq, tenant)
        select s.kind, coalesce(s.queue, 'default'), coalesce(s.args, '{}'::jsonb),
               coalesce(s.priority, 0), coalesce(s.run_at, now()), coalesce(s.max_attempts, 3),
               s.timeout_secs, s.idempotency_key, s.request_hash, 1, p_tenant
          from jsonb_array_elements(p_specs) with ordinality as e(spec, ord),
               jsonb_to_record(e.spec) as s(kind text, queue text, args jsonb, priority smallint,
                   run_at timestamptz, max_attempts integer, timeout_secs integer,
                   idempotency_key text, request_hash text)
         order by e.ord
        on conflict (tenant, idempotency_key) where idempotency_key is not null do nothing
        returning *
    ), events as (
        insert into jobcast.events (job_id, seq, type, data)
        select i.id, 1, 'queued',
               jobcast.event_data(i.id, i.kind, i.queue, i.status, i.attempt, 1, 'queued',
                                  jsonb_build_object('run_at', jobcast.rfc3339(i.run_at)))
          from inserted i
    )
    select array_agg(id order by id) into new_ids from inserted;

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
language plpgsql as $$
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
create or replace function jobcast.claim_jobs(
    p_queues text[], p_kinds text[], p_worker text, p_limit integer,
    p_lease_secs double precision
) returns setof jobcast.jobs
language plpgsql as $$
declare
    due_ids bigint[];
begin
    -- One index scan per queue, each already in claim order: `queue = any(array)` would
    -- make PostgreSQL read and sort every queued row of those queues on every claim.
    select array_agg(c.id order by c.priority desc, c.run_at, c.id) into due_ids
      from (
        select c.id, c.priority, c.run_at
          from unnest(p_queues) as q(name)
          cross join lateral (
              select j.id, j.priority, j.run_at
                from jobcast.jobs j
               where j.queue = q.name and j.status = 'queued' and j.run_at <= now()
                 and (p_kinds is null or j.kind = any(p_kinds))
               order by j.priority desc, j.run_at, j.id
               limit p_limit
                 for update skip locked
          ) c
         order by c.priority desc, c.run_at, c.id
         limit p_limit
      ) c;
    if due_ids is null then
        return;
    end if;
    return query
    with claimed as (
        update jobcast.jobs j
           set status = 'running', attempt = j.attempt + 1, started_at = now(),
               updated_at = now(), worker = p_worker,
               lease_until = now() + make_interval(secs => p_lease_secs),
               last_seq = j.last_seq + 1
         where j.id = any(due_ids)
        returning j.*
    ), events as (
        insert into jobcast.events (job_id, seq, type, data)
        select c.id, c.last_seq, 'started',
               jobcast.event_data(c.id, c.kind, c.queue, c.status, c.attempt, c.last_seq,
                                  'started', null)
          from claimed c
    )
    select * from claimed c order by c.priority desc, c.run_at, c.id;
end
$$;

-- Record progress and custom events of running attempts, in order. Each element:
-- {job_id, attempt, type, progress?, message?, data?}. Returns the index (1-based) and seq
-- of every accepted element; an element whose attempt is no longer held by p_worker is
-- refused (fencing) and simply absent from the result.
create or replace function jobcast.record_events(p_worker text, p_events jsonb)
returns table (idx integer, seq integer)
language plpgsql as $$
declare
    e record;
    j record;
    extra jsonb;
    ids bigint[] := '{}';
    seqs integer[] := '{}';
    types text[] := '{}';
    datas jsonb[] := '{}';
begin
    for e in
        select x.ord::integer as ord, (x.v->>'job_id')::bigint as job_id,
               (x.v->>'attempt')::integer as attempt, x.v->>'type' as type,
               (x.v->>'progress')::double precision as progress, x.v->>'message' as message,
               x.v->'data' as data
          from jsonb_array_elements(p_events) with ordinality as x(v, ord)
         order by x.ord
    loop
        update jobcast.jobs
           set last_seq = last_seq + 1, updated_at = now(),
               progress = case when e.type = 'progress' then e.progress else progress end,
               message = case when e.type = 'progress' then e.message else message end
         where id = e.job_id and attempt = e.attempt and worker = p_worker and status = 'running'
        returning id, kind, queue, status, attempt, last_seq into j;
        if found then
            if e.type = 'progress' then
                extra := jsonb_build_object('progress', e.progress, 'message', e.message);
            else
                extra := '{}'::jsonb;
            end if;
            if e.data is not null and e.data <> 'null'::jsonb then
                extra := extra || jsonb_build_object('data', e.data);
            end if;
            ids := ids || j.id;
            seqs := seqs || j.last_seq;
            types := types || e.type;
            datas := datas || jobcast.event_data(j.id, j.kind, j.queue, j.status, j.attempt,
                                                 j.last_seq, e.type, extra);
            idx := e.ord;
            seq := j.last_seq;
            return next;
        end if;
    end loop;
    if cardinality(ids) > 0 then
        insert into jobcast.events (job_id, seq, type, data)
        select * from unnest(ids, seqs, types, datas);
    end if;
end
$$;

-- Finish attempts successfully. Each element: {job_id, attempt, result}. Returns the ids
-- that succeeded; attempts no longer held by p_worker are refused.
create or replace function jobcast.complete_jobs(p_worker text, p_results jsonb)
returns table (job_id bigint)
language plpgsql as $$
declare
    ids bigint[];
    attempts integer[];
    results jsonb[];
begin
    -- Unpacked once into arrays: joining on the JSON directly re-expands it per row.
    select array_agg((x->>'job_id')::bigint), array_agg((x->>'attempt')::integer),
           array_agg(coalesce(x->'result', 'null'::jsonb))
      into ids, attempts, results
      from jsonb_array_elements(p_results) x;
    if ids is null then
        return;
    end if;
    return query
    with done as (
        update jobcast.jobs j
           set status = 'succeeded', result = i.result, finished_at = now(), updated_at = now(),
               lease_until = null, worker = null, last_seq = j.last_seq + 1
          from unnest(ids, attempts, results) as i(id, attempt, result)
         where j.id = i.id and j.id = any(ids) and j.attempt = i.attempt
           and j.worker = p_worker and j.status = 'running'
        returning j.*
    ), events as (
        insert into jobcast.events (job_id, seq, type, data)
        select d.id, d.last_seq, 'succeeded',
               jobcast.event_data(d.id, d.kind, d.queue, d.status, d.attempt, d.last_seq,
                                  'succeeded', jsonb_build_object('result', d.result))
          from done d
    )
    select d.id from done d;
end
$$;

-- Fail an attempt: back to queued after p_retry_delay_ms when retryable and attempts remain
-- (event `retrying`), else `failed`. p_worker null means "whoever holds it" (lease reclaim).
create or replace function jobcast.fail_job(
    p_job_id bigint, p_attempt integer, p_worker text, p_error jsonb,
    p_retryable boolean, p_retry_delay_ms bigint
) returns setof jobcast.jobs
language plpgsql as $$
declare
    j jobcast.jobs;
    event_type text;
begin
    update jobcast.jobs
       set status = case when p_retryable and attempt < max_attempts
                         then 'queued' else 'failed' end::jobcast.job_status,
           run_at = case when p_retryable and attempt < max_attempts
                         then now() + p_retry_delay_ms * interval '1 millisecond' else run_at end,
           finished_at = case when p_retryable and attempt < max_attempts
                              then null else now() end,
           error = p_error, lease_until = null, worker = null, updated_at = now(),
           last_seq = last_seq + 1
     where id = p_job_id and attempt = p_attempt and status = 'running'
       and (p_worker is null or worker = p_worker)
    returning * into j;
    if not found then
        return;
    end if;
    if j.status = 'queued' then
        event_type := 'retrying';
        update jobcast.counters set value = value + 1 where name = 'retries';
    else
        event_type := 'failed';
    end if;
    insert into jobcast.events (job_id, seq, type, data)
    values (j.id, j.last_seq, event_type,
            jobcast.event_data(j.id, j.kind, j.queue, j.status, j.attempt, j.last_seq, event_type,
                jsonb_build_object('error', p_error) ||
                case when event_type = 'retrying'
                     then jsonb_build_object('run_at', jobcast.rfc3339(j.run_at))
                     else '{}'::jsonb end));
    return next j;
end
$$;

-- Cancel a queued or running job at once. Returns the cancelled job, or nothing when the job
-- is unknown or already terminal. A running attempt's worker is told on jobcast_cancel and
-- is fenced out from then on.
create or replace function jobcast.cancel_job(p_job_id bigint) returns setof jobcast.jobs
language plpgsql as $$
declare
    j jobcast.jobs;
    was_running boolean;
begin
    select status = 'running' into was_running
      from jobcast.jobs where id = p_job_id and status in ('queued', 'running') for update;
    if not found then
        return;
    end if;
    update jobcast.jobs
       set status = 'cancelled', finished_at = now(), updated_at = now(), lease_until = null,
           worker = null, last_seq = last_seq + 1
     where id = p_job_id
    returning * into j;
    insert into jobcast.events (job_id, seq, type, data)
    values (j.id, j.last_seq, 'cancelled',
            jobcast.event_data(j.id, j.kind, j.queue, j.status, j.attempt, j.last_seq,
                               'cancelled', null));
    if was_running then
        perform pg_notify('jobcast_cancel', j.id::text);
    end if;
    return next j;
end
$$;

-- Extend the leases of p_worker's running attempts. Returns the ids still held; a job
-- missing from the result was cancelled or taken away, and its handler must stop.
create or replace function jobcast.heartbeat_jobs(
    p_worker text, p_job_ids bigint[], p_attempts integer[], p_lease_secs double precision
) returns table (job_id bigint)
language sql as $$
    update jobcast.jobs j
       set lease_until = now() + make_interval(secs => p_lease_secs)
      from unnest(p_job_ids, p_attempts) as u(id, attempt)
     where j.id = u.id and j.attempt = u.attempt and j.worker = p_worker
       and j.status = 'running'
    returning j.id
$$;

-- Hand unfinished attempts back on shutdown without counting them (event `queued`).
create or replace function jobcast.release_jobs(
    p_worker text, p_job_ids bigint[], p_attempts integer[]
) returns table (job_id bigint)
language sql as $$
    with released as (
        update jobcast.jobs j
           set status = 'queued', attempt = j.attempt - 1, lease_until = null, worker = null,
               run_at = now(), updated_at = now(), last_seq = j.last_seq + 1
          from unnest(p_job_ids, p_attempts) as u(id, attempt)
         where j.id = u.id and j.attempt = u.attempt and j.worker = p_worker
           and j.status = 'running'
        returning j.*
    ), events as (
        insert into jobcast.events (job_id, seq, type, data)
        select r.id, r.last_seq, 'queued',
               jobcast.event_data(r.id, r.kind, r.queue, r.status, r.attempt, r.last_seq,
                   'queued', jsonb_build_object('run_at', jobcast.rfc3339(r.run_at),
                                                'message', 'released by a stopping worker'))
          from released r
    ), wake as (
        select pg_notify('jobcast_jobs', q) from (select distinct queue as q from released) d
    )
    select r.id from released r left join (select count(*) from wake) w on true
$$;

-- Take back attempts whose lease ran out (their worker died or hung). Safe to run from any
-- number of processes at once: SKIP LOCKED hands each expired job to one of them.
create or replace function jobcast.reclaim_expired_leases(p_retry_base_ms bigint, p_limit integer)
returns integer
language plpgsql as $$
declare
    j record;
    reclaimed integer := 0;
begin
    for j in
        select id, attempt, worker from jobcast.jobs
         where status = 'running' and lease_until < now()
         order by lease_until
         limit p_limit
           for update skip locked
    loop
        perform jobcast.fail_job(j.id, j.attempt, null,
            jsonb_build_object('message', 'lease expired: worker ' || j.worker
                                          || ' stopped heartbeating', 'lease_expired', true),
            true, least(p_retry_base_ms * (2 ^ greatest(j.attempt - 1, 0))::bigint, 600000));
        reclaimed := reclaimed + 1;
    end loop;
    if reclaimed > 0 then
        update jobcast.counters set value = value + reclaimed where name = 'leases_expired';
    end if;
    return reclaimed;
end
$$;

-- Remove finished jobs (and, by cascade, their events) older than p_older_than, a batch at
-- a time so retention never holds long locks.
create or replace function jobcast.prune_finished_jobs(p_older_than interval, p_limit integer)
returns integer
language sql as $$
    with doomed as (
        select id from jobcast.jobs
         where finished_at < now() - p_older_than
         order by finished_at
         limit p_limit
           for update skip locked
    ), deleted as (
        delete from jobcast.jobs j using doomed where j.id = doomed.id returning j.id
    )
    select count(*)::integer from deleted
$$;

-- The firehose in commit order: events after cursor (xid, id) whose transaction is older than
-- every transaction still running, so no event can later appear before the cursor. Every
-- row is returned (the cursor advances over all of them); `matches` says whether it passes
-- the optional queue and kind filters.
create or replace function jobcast.read_firehose(
    p_after_xid xid8, p_after_id bigint, p_queue text, p_kind text, p_limit integer
) returns table (xid xid8, id bigint, job_id bigint, seq integer, type text, data jsonb,
                 matches boolean)
language sql stable as $$
    select e.xid, e.id, e.job_id, e.seq, e.type, e.data,
           (p_queue is null or e.data->>'queue' = p_queue)
           and (p_kind is null or e.data->>'kind' = p_kind)
      from jobcast.events e
     where (e.xid, e.id) > (p_after_xid, p_after_id)
       and e.xid < pg_snapshot_xmin(pg_current_snapshot())
     order by e.xid, e.id
     limit p_limit
$$;
