-- Several kernel nodes on one database: membership and large event payloads.

-- One row per node; a heartbeat older than a lease lifetime means the node is gone.
CREATE TABLE nodes (
    node_id      TEXT PRIMARY KEY,
    url          TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

-- Events too large for a NOTIFY payload; the notification carries the id. Rows are
-- deleted after ten minutes.
CREATE TABLE event_spill (
    spill_id   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at BIGINT NOT NULL,
    body       TEXT NOT NULL
);

CREATE INDEX event_spill_by_age ON event_spill (created_at);

-- Every node's sweep looks for dispatches still queued or running; keep that cheap
-- however many finished dispatches the table holds.
CREATE INDEX dispatches_unsettled ON dispatches (status, dispatch_id)
    WHERE status IN ('queued', 'running');
