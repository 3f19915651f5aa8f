-- Leadership as a lease on the database clock, instead of a session-level advisory lock.
--
-- An advisory lock lives as long as its session, and a frozen leader (SIGSTOP, a paused VM,
-- a network partition that sends no FIN) keeps its session open: the lock was never released
-- and no other replica could lead. A lease row expires on the database's clock whatever the
-- holder does. The leader renews it (one UPDATE about every fifth of the lease); any replica
-- takes it over once it has expired, with the next epoch. Every leader-only round first checks
-- that its epoch is the row's and unexpired. One row, never more.
CREATE TABLE orderly_leader (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    -- The worker id of the replica that holds (or last held) the lease.
    holder text NOT NULL,
    -- Incremented each time the lease changes hands or is taken again after it expired.
    epoch bigint NOT NULL,
    -- When the current holder's term began (the epoch's start).
    since timestamptz NOT NULL,
    renewed_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
