-- Tenants: every job belongs to the tenant whose API key created it ('default' without keys).
-- Adding a column with a constant default rewrites nothing; the CHECK scans once.
alter table jobcast.jobs
    add column tenant text not null default 'default',
    add constraint tenant_format check (tenant ~ '^[A-Za-z0-9_.:-]{1,64}$');

-- GET /v1/jobs: one tenant's jobs, newest first (keyset on id).
create index jobs_tenant_newest on jobcast.jobs (tenant, id desc);

-- Idempotency keys are per tenant: two tenants may use the same key independently.
drop index jobcast.jobs_idempotency_key;
create unique index jobs_tenant_idempotency_key on jobcast.jobs (tenant, idempotency_key)
    where idempotency_key is not null;
