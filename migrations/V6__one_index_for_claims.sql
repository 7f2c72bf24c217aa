-- Claims read queued jobs in claim order from jobs_due_kind (queue, kind, priority desc,
-- run_at, id). jobs_next_due (queue, kind, run_at), added in V3 for the idle wait's "when is
-- the next job due", gave the planner a second way in: with no statistics on jobs (a fresh
-- table after a bulk enqueue, before autovacuum analyzes it) it estimated one row, took
-- jobs_next_due and sorted every queued job on every claim (27 ms per claim with 50,000
-- queued: 30 jobs/s at --concurrency 1). jobcast.next_due_in now walks jobs_due_kind's few
-- priorities instead, and claims have one index to use.
drop index jobcast.jobs_next_due;
