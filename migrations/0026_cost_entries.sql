-- Cost entries (seed 001 `cost_entries`): one row per attempt and kind of cost, from the usage
-- an agent reports, priced by the configuration's price table when the agent reports
-- quantities only. Exact decimals throughout (numeric), never floats. Written by the
-- completer in the transaction that records the attempt; kept when the pruner deletes the
-- items (a spend history outlives the work), so there is no foreign key to them.
CREATE TYPE cost_type AS ENUM ('api_tokens', 'compute', 'storage', 'external_api');

CREATE TABLE cost_entries (
    id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    attempt_id    UUID NOT NULL,
    work_item_id  UUID NOT NULL,
    work_order_id UUID NOT NULL,
    tenant_id     UUID NOT NULL,
    workflow_id   VARCHAR(255) NOT NULL,
    agent_id      VARCHAR(255) NOT NULL,
    model         TEXT,
    cost_type     cost_type NOT NULL,
    quantity      NUMERIC NOT NULL CHECK (quantity >= 0),
    -- What one of `quantity` is: input_token, output_token, call, cpu_second ...
    unit          TEXT NOT NULL,
    -- NULL when neither the agent nor the price table said what it costs.
    amount        NUMERIC CHECK (amount >= 0),
    currency      CHAR(3),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((amount IS NULL) = (currency IS NULL))
);
-- Reports read a time range (a week, a month) per tenant, or everything in it.
CREATE INDEX cost_entries_tenant_created ON cost_entries (tenant_id, created_at);
CREATE INDEX cost_entries_created ON cost_entries USING brin (created_at);
