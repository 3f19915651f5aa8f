-- Agent limits (issue "limits and fairness"): what every replica reads at claim time to keep
-- an agent within its limits across all of them. Written only for agents that have limits,
-- or that asked to be left alone (a 429 or 503 with Retry-After).

-- One row per agent: a pause (Retry-After, or an open circuit), the circuit's count of
-- consecutive failures, and the rate's theoretical arrival time (GCRA: the next start the
-- rate allows is `tat` minus the burst's tolerance).
CREATE TABLE agent_state (
    agent                TEXT PRIMARY KEY,
    paused_until         TIMESTAMPTZ,
    pause_reason         TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    circuit_open_until   TIMESTAMPTZ,
    -- After the cool-down, one probe at a time until one succeeds.
    circuit_probing      BOOLEAN NOT NULL DEFAULT false,
    tat                  TIMESTAMPTZ,
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per execution of a limited agent that was let start. A slot is live while its item
-- is PROCESSING at that attempt: when the item finishes, is rescued (its replica killed) or
-- cancelled, the slot is dead and the next claim clears it. No foreign key: the hot path
-- never waits on it.
CREATE TABLE agent_slots (
    work_item_id UUID PRIMARY KEY,
    agent        TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    taken_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX agent_slots_agent ON agent_slots (agent);

-- Items a limit stopped at their claim (no attempt spent), and why. Items waiting for a free
-- slot wait with run_at 'infinity' until a replica wakes them (`woken_at`), oldest of the
-- highest priority first; items waiting for the rate hold a reservation (`reserved_at`, their
-- run_at) and start then without asking again; paused ones come back when the pause ends.
CREATE TABLE agent_waits (
    work_item_id UUID PRIMARY KEY REFERENCES work_items(id) ON DELETE CASCADE,
    agent        TEXT NOT NULL,
    reason       TEXT NOT NULL CHECK (reason IN ('in_flight', 'rate', 'paused', 'circuit')),
    priority     INTEGER NOT NULL,
    since        TIMESTAMPTZ NOT NULL DEFAULT now(),
    reserved_at  TIMESTAMPTZ,
    woken_at     TIMESTAMPTZ
);
CREATE INDEX agent_waits_queue ON agent_waits (agent, priority DESC, since) WHERE woken_at IS NULL;
