-- The write ledger (jobcast.worker_writes, one row per group commit of a worker) is only
-- needed while a worker may still retry a write whose COMMIT had an unknown outcome; after
-- that, fencing refuses a late retry anyway. Workers prune it by age (see
-- jobcast.prune_worker_writes): without this index every prune would scan the table.
create index worker_writes_at on jobcast.worker_writes (at);
