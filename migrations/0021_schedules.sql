-- Schedules: work orders made on a calendar, as rows (like SLA rules), materialized by the
-- elected leader. `when` is either a cron expression (5 fields, or 6 with seconds) or the
-- seeds' calendar form (frequency DAILY | WEEKLY | MONTHLY | INTERVAL with interval, time,
-- days, date); the time zone is required. What each slot makes: one work order (workflow,
-- tenant, created_by, priority, metadata) and its items (`items`: a JSON array of
-- {"type", "content"}; `{{slot}}` and `{{schedule}}` in a content become the slot's time in
-- RFC 3339 and the schedule's name). A slot becomes exactly one order: the order records its
-- schedule and slot time under a unique key, whoever gets there first.
CREATE TYPE schedule_frequency AS ENUM ('DAILY', 'WEEKLY', 'MONTHLY', 'INTERVAL');
CREATE TYPE schedule_catch_up AS ENUM ('NONE', 'LATEST', 'ALL');
CREATE TYPE schedule_overlap AS ENUM ('CREATE', 'SKIP');

CREATE TABLE schedules (
    id             UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name           TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    enabled        BOOLEAN NOT NULL DEFAULT true,
    -- when: a cron expression ...
    cron           TEXT,
    -- ... or the calendar form. INTERVAL: every `interval` minutes from `starts_at`; DAILY,
    -- WEEKLY (on `days`, 0 = Sunday .. 6 = Saturday) and MONTHLY (on day `date`; past a
    -- shorter month's end, its last day) at `time`.
    frequency      schedule_frequency,
    "interval"     INTEGER CHECK ("interval" > 0),
    "time"         TIME,
    days           INTEGER[] CHECK (days <@ ARRAY[0, 1, 2, 3, 4, 5, 6] AND cardinality(days) > 0),
    "date"         INTEGER CHECK ("date" BETWEEN 1 AND 31),
    starts_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    timezone       TEXT NOT NULL,
    -- what
    workflow_id    VARCHAR(255) NOT NULL DEFAULT 'default',
    tenant_id      UUID NOT NULL,
    created_by     UUID NOT NULL,
    priority       priority NOT NULL DEFAULT 'MEDIUM',
    metadata       JSONB NOT NULL DEFAULT '{}',
    items          JSONB NOT NULL CHECK (jsonb_typeof(items) = 'array' AND jsonb_array_length(items) > 0),
    -- policies
    catch_up       schedule_catch_up NOT NULL DEFAULT 'LATEST',
    catch_up_limit INTEGER NOT NULL DEFAULT 10 CHECK (catch_up_limit BETWEEN 1 AND 1000),
    overlap        schedule_overlap NOT NULL DEFAULT 'CREATE',
    -- kept by the daemon: the last slot materialized (or skipped by policy), the next one
    -- (NULL: not computed yet, after an INSERT or an edit of `when`), and why the daemon
    -- cannot compute it (a cron it cannot parse).
    last_run       TIMESTAMPTZ,
    next_run       TIMESTAMPTZ,
    last_error     TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((cron IS NULL) <> (frequency IS NULL)),
    CHECK (frequency IS DISTINCT FROM 'INTERVAL' OR "interval" IS NOT NULL),
    CHECK (frequency NOT IN ('DAILY', 'WEEKLY', 'MONTHLY') OR "time" IS NOT NULL),
    CHECK (frequency IS DISTINCT FROM 'WEEKLY' OR days IS NOT NULL),
    CHECK (frequency IS DISTINCT FROM 'MONTHLY' OR "date" IS NOT NULL)
);

-- The leader's way in: the enabled schedules by their next slot.
CREATE INDEX idx_schedules_next_run ON schedules (next_run) WHERE enabled;

-- The database refuses a time zone it does not know; an edit of `when` (or re-enabling)
-- asks the daemon to compute `next_run` again.
CREATE FUNCTION orderly_schedule_checks() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    item JSONB;
BEGIN
    PERFORM now() AT TIME ZONE NEW.timezone;
    -- Each item names a known type and has a content (a JSON string is taken as the text).
    FOR item IN SELECT jsonb_array_elements(NEW.items) LOOP
        IF jsonb_typeof(item) <> 'object' OR item->>'type' IS NULL OR item->'content' IS NULL THEN
            RAISE EXCEPTION 'schedule %: each item is an object with "type" and "content", not %', NEW.name, item
                USING ERRCODE = 'check_violation';
        END IF;
        PERFORM (item->>'type')::work_item_type;
    END LOOP;
    IF TG_OP = 'UPDATE' AND (
           NEW.cron IS DISTINCT FROM OLD.cron OR NEW.frequency IS DISTINCT FROM OLD.frequency
        OR NEW."interval" IS DISTINCT FROM OLD."interval" OR NEW."time" IS DISTINCT FROM OLD."time"
        OR NEW.days IS DISTINCT FROM OLD.days OR NEW."date" IS DISTINCT FROM OLD."date"
        OR NEW.starts_at IS DISTINCT FROM OLD.starts_at OR NEW.timezone IS DISTINCT FROM OLD.timezone
        OR (NEW.enabled AND NOT OLD.enabled)) THEN
        NEW.next_run := NULL;
        NEW.last_error := NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER schedules_checks BEFORE INSERT OR UPDATE ON schedules
    FOR EACH ROW EXECUTE FUNCTION orderly_schedule_checks();

-- A slot's order: at most one per schedule and slot time.
-- No foreign key: clients that reflect work_orders alone (Django's inspectdb of the two
-- upstream tables) would meet a relation to a table they were not given. A deleted schedule
-- leaves its orders with the id it had.
ALTER TABLE work_orders ADD COLUMN schedule_id UUID,
                        ADD COLUMN slot_at TIMESTAMPTZ;
CREATE UNIQUE INDEX idx_work_orders_schedule_slot ON work_orders (schedule_id, slot_at) WHERE schedule_id IS NOT NULL;

-- Makes the order of one slot and its items, unless the slot's order exists (then NULL).
-- SECURITY DEFINER: the daemon's role may not INSERT orders or items itself; this function
-- makes only what a schedule row says. `{{slot}}` in an item's content becomes the slot in
-- RFC 3339 (UTC), `{{schedule}}` the schedule's name; a content given as a JSON string is
-- the text itself, any other JSON value its text.
CREATE FUNCTION orderly_schedule_slot(schedule UUID, slot TIMESTAMPTZ) RETURNS UUID
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    s schedules;
    made UUID;
    slot_text TEXT := to_char(slot AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"');
BEGIN
    SELECT * INTO s FROM schedules WHERE id = schedule;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    INSERT INTO work_orders (workflow_id, tenant_id, created_by, priority, metadata, schedule_id, slot_at)
    VALUES (s.workflow_id, s.tenant_id, s.created_by, s.priority,
            s.metadata || jsonb_build_object('schedule', s.name, 'slot', slot_text), s.id, slot)
    ON CONFLICT (schedule_id, slot_at) WHERE schedule_id IS NOT NULL DO NOTHING
    RETURNING id INTO made;
    IF made IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO work_items (work_order_id, type, content)
    SELECT made, (i->>'type')::work_item_type,
           replace(replace(CASE jsonb_typeof(i->'content') WHEN 'string' THEN i->>'content' ELSE (i->'content')::text END,
                           '{{slot}}', slot_text),
                   '{{schedule}}', s.name)
    FROM jsonb_array_elements(s.items) AS i;
    RETURN made;
END
$$;
-- Only the roles `orderly roles` grants it to (the daemon, on-call) may make a slot's order:
-- not every role that can connect.
REVOKE EXECUTE ON FUNCTION orderly_schedule_slot(UUID, TIMESTAMPTZ) FROM PUBLIC;
