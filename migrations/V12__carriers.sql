-- Pods that carry events from notifications (issue 24): a `serve` process with followers
-- keeps its row here fresh; the events trigger builds the `jobcast_frames` payload only while
-- some row is. Nobody following (a drain, a batch pipeline) costs the writers nothing.
-- Unlogged: after a crash the pods write their rows again within a second or two.
create unlogged table jobcast.carriers (
    pod   text primary key,
    until timestamptz not null
);
