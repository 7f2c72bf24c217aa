-- One pgbench "transaction" = two database transactions, as a worker does: claim 32 queued
-- jobs (SKIP LOCKED) writing a `started` event each, then complete them writing `succeeded`.
-- :client_id stands for the worker's id. :notify is 1 to NOTIFY once per transaction (the
-- doorbell a live stream needs), 0 for none.
begin;
with claimed as (
    select id from floor.jobs where status = 'q' order by id limit 32 for update skip locked
), started as (
    update floor.jobs j set status = 'r', worker = :client_id
      from claimed c where j.id = c.id
    returning j.id, j.kind
)
insert into floor.events (job_id, seq, type, data)
select id, 1, 'started', jsonb_build_object('job_id', id::text, 'seq', 1, 'type', 'started',
                                            'kind', kind, 'status', 'running')
  from started;
select case when :notify = 1 then pg_notify('floor_events', 'claimed') end;
commit;
begin;
with done as (
    update floor.jobs set status = 's' where status = 'r' and worker = :client_id
    returning id, kind
)
insert into floor.events (job_id, seq, type, data)
select id, 2, 'succeeded', jsonb_build_object('job_id', id::text, 'seq', 2, 'type', 'succeeded',
                                              'kind', kind, 'status', 'succeeded')
  from done;
select case when :notify = 1 then pg_notify('floor_events', 'completed') end;
commit;
