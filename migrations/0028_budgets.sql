-- Budgets (seed 001's project budgets, made per tenant, workflow or order): a limit on what
-- one scope may spend in one currency over a period (all time, a day or a month in a time
-- zone). `spent` is kept by the cost entries' insert trigger below, in the transaction that
-- writes them (the completer's), so a claim that reads the budget after that commit sees
-- it exhausted: replicas overshoot by at most what was already running.
CREATE TABLE budgets (
    id               UUID PRIMARY KEY DEFAULT orderly_uuid_v7(),
    name             TEXT NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$'),
    -- The scope: exactly one of these.
    tenant_id        UUID,
    workflow_id      VARCHAR(255),
    work_order_id    UUID,
    currency         CHAR(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount           NUMERIC NOT NULL CHECK (amount > 0),
    period           TEXT NOT NULL DEFAULT 'total' CHECK (period IN ('total', 'day', 'month')),
    time_zone        TEXT NOT NULL DEFAULT 'UTC',
    -- What exhaustion does to the scope's items when they come up: wait, or be held for a
    -- person to let them run anyway.
    on_exhausted     TEXT NOT NULL DEFAULT 'wait' CHECK (on_exhausted IN ('wait', 'hold')),
    -- Connectors told when spend crosses 80% and 100% (one message per threshold and period).
    connectors       TEXT[] NOT NULL DEFAULT '{}',
    spent            NUMERIC NOT NULL DEFAULT 0,
    period_start     TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    notified_percent INTEGER NOT NULL DEFAULT 0,
    exhausted_at     TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (num_nonnulls(tenant_id, workflow_id, work_order_id) = 1),
    CHECK (now() AT TIME ZONE time_zone IS NOT NULL)
);

-- Items a budget stopped: waiting (QUEUED until the next period or until an operator raises
-- or resets the budget) or held (AWAITING_APPROVAL with no output, until a person lets it
-- run or rejects it). `allowed`: a person let it run past the budget once.
CREATE TABLE budget_waits (
    work_item_id UUID PRIMARY KEY REFERENCES work_items(id) ON DELETE CASCADE,
    budget_id    UUID NOT NULL REFERENCES budgets(id) ON DELETE CASCADE,
    held         BOOLEAN NOT NULL,
    allowed      BOOLEAN NOT NULL DEFAULT false,
    since        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX budget_waits_budget ON budget_waits (budget_id);

-- The start of the period `at` falls in, in the budget's time zone.
CREATE FUNCTION orderly_budget_period_start(period TEXT, tz TEXT, at TIMESTAMPTZ) RETURNS TIMESTAMPTZ
LANGUAGE sql STABLE AS $$
    SELECT CASE period
        WHEN 'day' THEN date_trunc('day', at AT TIME ZONE tz) AT TIME ZONE tz
        WHEN 'month' THEN date_trunc('month', at AT TIME ZONE tz) AT TIME ZONE tz
        ELSE '-infinity'::timestamptz END
$$;

-- The end of that period ('infinity' for a total budget).
CREATE FUNCTION orderly_budget_period_end(period TEXT, tz TEXT, at TIMESTAMPTZ) RETURNS TIMESTAMPTZ
LANGUAGE sql STABLE AS $$
    SELECT CASE period
        WHEN 'day' THEN (date_trunc('day', at AT TIME ZONE tz) + interval '1 day') AT TIME ZONE tz
        WHEN 'month' THEN (date_trunc('month', at AT TIME ZONE tz) + interval '1 month') AT TIME ZONE tz
        ELSE 'infinity'::timestamptz END
$$;

-- Adds a statement's priced cost entries to the budgets whose scope they fall in, rolling a
-- budget over to a new period first; notifies its connectors once per threshold and period.
-- One statement per completion batch; nothing but an EXISTS when there are no budgets. The
-- budgets are locked in id order, after the batch's item rows and before its orders, the
-- same order for every completer.
CREATE FUNCTION orderly_budget_spend() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    b RECORD;
    threshold INTEGER;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM budgets) THEN
        RETURN NULL;
    END IF;
    FOR b IN
        SELECT g.id, g.name, g.amount AS limit_amount, g.currency, g.period, g.time_zone, g.connectors,
               g.tenant_id, g.workflow_id, g.work_order_id,
               orderly_budget_period_start(g.period, g.time_zone, now()) AS current_start,
               g.period_start, g.spent, g.notified_percent,
               (SELECT sum(n.amount) FROM new_entries n
                WHERE n.currency = g.currency AND n.amount IS NOT NULL
                  AND (n.tenant_id = g.tenant_id OR n.workflow_id = g.workflow_id
                       OR n.work_order_id = g.work_order_id)) AS added
        FROM budgets g
        WHERE EXISTS (SELECT 1 FROM new_entries n
                      WHERE n.currency = g.currency AND n.amount IS NOT NULL
                        AND (n.tenant_id = g.tenant_id OR n.workflow_id = g.workflow_id
                             OR n.work_order_id = g.work_order_id))
        ORDER BY g.id
        FOR NO KEY UPDATE
    LOOP
        IF b.period_start <> b.current_start THEN
            b.spent := 0;
            b.notified_percent := 0;
        END IF;
        b.spent := b.spent + b.added;
        threshold := CASE WHEN b.spent >= b.limit_amount THEN 100
                          WHEN b.spent >= b.limit_amount * 0.8 THEN 80 ELSE 0 END;
        UPDATE budgets SET spent = b.spent, period_start = b.current_start,
                           notified_percent = greatest(b.notified_percent, threshold),
                           exhausted_at = CASE WHEN threshold = 100 THEN coalesce(
                               CASE WHEN b.period_start = b.current_start THEN exhausted_at END, clock_timestamp()) END,
                           updated_at = now()
        WHERE id = b.id;
        IF threshold > b.notified_percent THEN
            INSERT INTO notifications (connector_id, kind, payload)
            SELECT c.id, 'FIRED', jsonb_build_object(
                       'kind', 'BUDGET', 'threshold', threshold,
                       'budget', jsonb_build_object('id', b.id, 'name', b.name, 'period', b.period,
                                                    'time_zone', b.time_zone),
                       'scope', CASE WHEN b.tenant_id IS NOT NULL THEN 'tenant ' || b.tenant_id
                                     WHEN b.workflow_id IS NOT NULL THEN 'workflow ' || b.workflow_id
                                     ELSE 'order ' || b.work_order_id END,
                       'spent', b.spent::text, 'amount', b.limit_amount::text, 'currency', b.currency,
                       'act', 'orderly budgets raise ' || b.name || ' AMOUNT')
            FROM connectors c
            WHERE c.name = ANY (b.connectors) AND c.status = 'ACTIVE';
        END IF;
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER cost_entries_budget_spend AFTER INSERT ON cost_entries
    REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION orderly_budget_spend();
