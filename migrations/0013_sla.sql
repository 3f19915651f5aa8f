-- SLA rules, their escalation chains, the escalations they fire and the notifications outbox.
--
-- Rules are rows, like workflow templates: an operator INSERTs them and the leader's sweeper
-- applies them within one sweep, without a restart. A rule selects items (each selector
-- NULL = any), names the clock it measures, and owns an ordered chain of levels in
-- sla_levels: the time on the clock at which each level fires and the connectors (by name)
-- it notifies. Intervals are PostgreSQL intervals, so a malformed duration is refused at
-- INSERT, not discovered by the sweeper.
CREATE TYPE sla_clock AS ENUM (
    'TIME_TO_START',           -- runnable (run_at) until the first claim
    'TIME_TO_FINISH',          -- enqueued (created_at) until COMPLETED, FAILED or CANCELLED
    'TIME_AWAITING_APPROVAL',  -- held for a human until approved or rejected
    'DEAD_LETTER_OPEN'         -- a dead letter left untriaged (not replayed or discarded)
);

CREATE TABLE sla_rules (
    id          UUID PRIMARY KEY DEFAULT orderly_uuid_v7(),
    name        TEXT NOT NULL UNIQUE CHECK (name <> ''),
    description TEXT,
    is_active   BOOLEAN NOT NULL DEFAULT true,
    clock       sla_clock NOT NULL,
    item_type   work_item_type,
    priority    priority,
    tenant_id   UUID,
    workflow_id TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE sla_levels (
    rule_id    UUID NOT NULL REFERENCES sla_rules(id) ON DELETE CASCADE,
    level      INTEGER NOT NULL CHECK (level BETWEEN 1 AND 20),
    after      INTERVAL NOT NULL CHECK (after > interval '0' AND after < interval '10 years'),
    connectors TEXT[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (rule_id, level)
);

-- One row per subject, rule and level: fired once, whichever replica sees it first (the
-- unique key, not a check-then-insert). The subject is the work item for the item clocks and
-- the dead letter for DEAD_LETTER_OPEN (a replayed item that fails again is a new subject).
CREATE TYPE escalation_status AS ENUM ('OPEN', 'ACKNOWLEDGED', 'RESOLVED');

CREATE TABLE escalations (
    id              UUID PRIMARY KEY DEFAULT orderly_uuid_v7(),
    rule_id         UUID NOT NULL REFERENCES sla_rules(id) ON DELETE CASCADE,
    level           INTEGER NOT NULL,
    subject_id      UUID NOT NULL,
    work_item_id    UUID NOT NULL REFERENCES work_items(id) ON DELETE CASCADE,
    work_order_id   UUID NOT NULL,
    reason          TEXT NOT NULL,
    status          escalation_status NOT NULL DEFAULT 'OPEN',
    -- When the clock passed the level's threshold, and when the sweeper saw it.
    due_at          TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    acknowledged_at TIMESTAMPTZ,
    acknowledged_by TEXT,
    resolved_at     TIMESTAMPTZ,
    resolved_by     TEXT,
    resolution      TEXT,
    UNIQUE (rule_id, subject_id, level)
);
-- The sweeper's auto-resolve and on-call's list read only what is not resolved.
CREATE INDEX idx_escalations_unresolved ON escalations (rule_id, created_at) WHERE status <> 'RESOLVED';
CREATE INDEX idx_escalations_work_item ON escalations (work_item_id);

-- Items held for a human: few rows, so the index costs the hot path nothing but for them.
CREATE INDEX idx_work_items_held ON work_items (work_order_id) WHERE status = 'AWAITING_APPROVAL';

-- The outbox. Written in the escalation's transaction; delivered by any replica (claims
-- with SKIP LOCKED and a lease, so a delivery cut by kill -9 is taken up again with the
-- same id, which is the webhook-id receivers de-duplicate on). One row per connector for a
-- group of escalations of one rule and level (or their resolution): a backlog breaching at
-- once sends one message with the count and a sample, not one per item.
CREATE TYPE notification_status AS ENUM ('PENDING', 'DELIVERED', 'FAILED');

CREATE TABLE notifications (
    id              UUID PRIMARY KEY DEFAULT orderly_uuid_v7(),
    connector_id    UUID NOT NULL REFERENCES connectors(id) ON DELETE CASCADE,
    rule_id         UUID REFERENCES sla_rules(id) ON DELETE SET NULL,
    level           INTEGER,
    kind            TEXT NOT NULL CHECK (kind IN ('FIRED', 'RESOLVED')),
    escalation_ids  UUID[] NOT NULL DEFAULT '{}',
    payload         JSONB NOT NULL,
    status          notification_status NOT NULL DEFAULT 'PENDING',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    locked_until    TIMESTAMPTZ,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at    TIMESTAMPTZ
);
CREATE INDEX idx_notifications_due ON notifications (next_attempt_at) WHERE status = 'PENDING';

-- Per-connector pacing (Slack accepts about one message a second per webhook): the next
-- moment a message may go out, advanced by whichever replica sends.
ALTER TABLE connectors ADD COLUMN next_send_at TIMESTAMPTZ NOT NULL DEFAULT now();
CREATE UNIQUE INDEX connectors_name ON connectors (name);
