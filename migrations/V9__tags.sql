-- Tags (issue 21): string pairs on a job, to list and follow "this user's jobs" on one
-- connection. Never changed after enqueue, so the GIN index does not stop the HOT updates
-- of claims and completions (V7): PostgreSQL compares the indexed values, and they are
-- equal. Untagged jobs are not in the index.
alter table jobcast.jobs add column tags jsonb;
create index jobs_tags on jobcast.jobs using gin (tags jsonb_path_ops) where tags is not null;
