-- Names checked once, when they are written (issue 10).
--
-- PostgreSQL evaluates every CHECK constraint of a table on every UPDATE of a row, whichever
-- columns change: the three regular expressions of kind_format, queue_format and
-- tenant_format ran again on each claim, progress write and completion of a job (~3 µs
-- each, ~9 µs per update: a third of the cost of a claim's update). A domain's constraint
-- is checked when a value is coerced to it, that is when a row is inserted or the column
-- is set, never when an update leaves the column alone.
--
-- No rewrite of jobs: the domains are created without constraint (changing a column from
-- text to an unconstrained domain over text only relabels it), then the constraints are
-- added NOT VALID (the rows already passed the same checks as table constraints).

create domain jobcast.kind_name as text;
create domain jobcast.queue_name as text;
create domain jobcast.tenant_name as text;

alter table jobcast.jobs
    drop constraint kind_format,
    drop constraint queue_format,
    drop constraint tenant_format,
    alter column kind type jobcast.kind_name,
    alter column queue type jobcast.queue_name,
    alter column tenant type jobcast.tenant_name;

alter domain jobcast.kind_name
    add constraint kind_format check (value ~ '^[A-Za-z0-9_.:-]{1,128}$') not valid;
alter domain jobcast.queue_name
    add constraint queue_format check (value ~ '^[A-Za-z0-9_.:-]{1,64}$') not valid;
alter domain jobcast.tenant_name
    add constraint tenant_format check (value ~ '^[A-Za-z0-9_.:-]{1,64}$') not valid;

-- The same for event types: the fixed types the transitions write need no check, and
-- jobcast.record_events checks the custom ones once per distinct type of a batch.
alter table jobcast.events drop constraint event_type_format;
