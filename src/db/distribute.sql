-- Distributed mode (docs/distributed.md): orderly's tables on a Citus coordinator, after every
-- migration has been applied there. Run once, in one transaction, by `orderly migrate
-- --distributed` (db::distributed::distribute); rows already in the tables (a single-node
-- database restored into the coordinator) are given their tenant and moved to the shards.
--
-- * Tables that hold work are distributed by `tenant_id`, co-located with work_orders, so
--   that everything of one tenant lives in one shard group and every statement that names
--   the tenant runs on one node. Each gets a `tenant_id` (filled from its item or order) and
--   `tenant_id` leads every primary key, unique index and foreign key among them.
-- * Small catalogs every node reads (templates, schemas, SLA rules, connectors, schedules,
--   budgets, agent limits) become reference tables: a copy on every node, written by 2PC.
-- * Coordinator state (leadership, replicas, activity, audit, keys) stays local.
-- * The insert triggers read the item's order by (tenant_id, id), which Citus routes to the
--   co-located shard and runs in the inserting transaction (local execution); triggers on
--   distributed tables need `citus.enable_unsafe_triggers`.
SET LOCAL citus.enable_unsafe_triggers = on;
SET LOCAL citus.multi_shard_modify_mode = 'sequential';

CREATE TEMP TABLE orderly_distributed_tables (name text PRIMARY KEY, fill text) ON COMMIT DROP;
INSERT INTO orderly_distributed_tables VALUES
    ('work_orders', NULL),
    ('work_items', 'UPDATE work_items w SET tenant_id = o.tenant_id FROM work_orders o
                     WHERE o.id = w.work_order_id AND w.tenant_id IS NULL'),
    ('attempts', 'item'), ('eval_results', 'item'), ('approval_events', 'item'),
    ('dead_letters', 'item'), ('mem_docs', 'item'), ('item_reviews', 'item'),
    ('run_logs', 'item'), ('run_artifacts', 'item'), ('run_progress', 'item'),
    ('agent_slots', 'item'), ('agent_waits', 'item'), ('budget_waits', 'item'),
    ('work_item_dependencies', 'item'), ('cost_entries', 'item'),
    ('escalations', 'UPDATE escalations e SET tenant_id = coalesce(
                       (SELECT w.tenant_id FROM work_items w WHERE w.id = e.work_item_id),
                       (SELECT o.tenant_id FROM work_orders o WHERE o.id = e.work_order_id))
                     WHERE e.tenant_id IS NULL'),
    ('notifications', 'UPDATE notifications n SET tenant_id = (SELECT e.tenant_id FROM escalations e
                         WHERE e.id = n.escalation_ids[1]) WHERE n.tenant_id IS NULL');

DO $distribute$
DECLARE
    t record;
    c record;
    cols text;
    refcols text;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'work_orders'::regclass) THEN
        RAISE EXCEPTION 'orderly''s tables are already distributed';
    END IF;

    -- 1. Every distributed table gets its tenant.
    FOR t IN SELECT * FROM orderly_distributed_tables LOOP
        EXECUTE format('ALTER TABLE %I ADD COLUMN IF NOT EXISTS tenant_id uuid', t.name);
        IF t.fill = 'item' THEN
            EXECUTE format('UPDATE %I x SET tenant_id = w.tenant_id FROM work_items w
                            WHERE w.id = x.work_item_id AND x.tenant_id IS NULL', t.name);
        ELSIF t.fill IS NOT NULL THEN
            EXECUTE t.fill;
        END IF;
    END LOOP;
    -- Side records whose item is gone have no tenant and nothing to belong to.
    FOR t IN SELECT * FROM orderly_distributed_tables WHERE name NOT IN ('work_orders', 'work_items') LOOP
        EXECUTE format('DELETE FROM %I WHERE tenant_id IS NULL', t.name);
    END LOOP;
    FOR t IN SELECT * FROM orderly_distributed_tables LOOP
        EXECUTE format('ALTER TABLE %I ALTER COLUMN tenant_id SET NOT NULL', t.name);
    END LOOP;

    -- 2. Foreign keys among distributed tables: dropped now, made again with the tenant.
    CREATE TEMP TABLE orderly_fks ON COMMIT DROP AS
        SELECT con.conrelid::regclass::text AS tbl, con.conname, con.confrelid::regclass::text AS ref,
               con.conkey, con.confkey, con.confdeltype
        FROM pg_constraint con
        WHERE con.contype = 'f' AND con.connamespace = 'public'::regnamespace
          AND con.conrelid::regclass::text IN (SELECT name FROM orderly_distributed_tables)
          AND con.confrelid::regclass::text IN (SELECT name FROM orderly_distributed_tables);
    FOR c IN SELECT * FROM orderly_fks LOOP
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', c.tbl, c.conname);
    END LOOP;

    -- 3. Primary keys and unique indexes lead with the tenant.
    FOR c IN
        SELECT con.conrelid::regclass::text AS tbl, con.conname,
               (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.n)
                FROM unnest(con.conkey) WITH ORDINALITY k(attnum, n)
                JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum) AS cols,
               con.contype
        FROM pg_constraint con
        WHERE con.contype IN ('p', 'u') AND con.connamespace = 'public'::regnamespace
          AND con.conrelid::regclass::text IN (SELECT name FROM orderly_distributed_tables)
    LOOP
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', c.tbl, c.conname);
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s (tenant_id, %s)', c.tbl, c.conname,
                       CASE c.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END, c.cols);
    END LOOP;
    FOR c IN
        SELECT i.indexrelid::regclass::text AS idx, pg_get_indexdef(i.indexrelid) AS def
        FROM pg_index i
        WHERE i.indisunique AND NOT i.indisprimary
          AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = i.indexrelid)
          AND i.indrelid::regclass::text IN (SELECT name FROM orderly_distributed_tables)
    LOOP
        EXECUTE format('DROP INDEX %s', c.idx);
        EXECUTE regexp_replace(c.def, 'USING btree \(', 'USING btree (tenant_id, ');
    END LOOP;

    -- 4. The tables.
    FOR t IN SELECT * FROM (VALUES ('workflow_templates'), ('workflow_step_needs'), ('schemas'),
                                   ('connectors'), ('tools'), ('capabilities'), ('tool_capabilities'),
                                   ('sla_rules'), ('sla_levels'), ('schedules'), ('budgets'),
                                   ('agent_state')) AS r(name) LOOP
        PERFORM create_reference_table(t.name);
    END LOOP;
    PERFORM create_distributed_table('work_orders', 'tenant_id');
    FOR t IN SELECT * FROM orderly_distributed_tables WHERE name <> 'work_orders' LOOP
        PERFORM create_distributed_table(t.name, 'tenant_id', colocate_with => 'work_orders');
    END LOOP;

    FOR c IN SELECT * FROM orderly_fks LOOP
        SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.n) INTO cols
        FROM unnest(c.conkey) WITH ORDINALITY k(attnum, n)
        JOIN pg_attribute a ON a.attrelid = c.tbl::regclass AND a.attnum = k.attnum;
        SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.n) INTO refcols
        FROM unnest(c.confkey) WITH ORDINALITY k(attnum, n)
        JOIN pg_attribute a ON a.attrelid = c.ref::regclass AND a.attnum = k.attnum;
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I FOREIGN KEY (tenant_id, %s) REFERENCES %I (tenant_id, %s)%s',
                       c.tbl, c.conname, cols, c.ref, refcols,
                       CASE c.confdeltype WHEN 'c' THEN ' ON DELETE CASCADE' ELSE '' END);
    END LOOP;
END
$distribute$;

-- 5. The triggers that read across tables, routed: an item's order is read by (tenant_id, id),
--    a deleted item's records by its tenant, row by row (a statement trigger's transition
--    table cannot name one shard). Features whose triggers span tenants or write catalogs
--    (dependency edges, budgets) are refused in distributed mode (docs/distributed.md).
CREATE OR REPLACE FUNCTION orderly_work_item_defaults() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    order_priority priority;
BEGIN
    IF NEW.id IS NULL THEN
        NEW.id := orderly_uuid_v7();
    END IF;
    SELECT o.priority INTO order_priority FROM work_orders o
     WHERE o.tenant_id = NEW.tenant_id AND o.id = NEW.work_order_id;
    IF NEW.priority IS NULL THEN
        NEW.priority := order_priority;
    END IF;
    NEW.deps_pending := 0;
    NEW.has_dependencies := false;
    NEW.has_dependents := false;
    NEW.review_pending := false;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION orderly_work_item_needs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    step_needs jsonb;
BEGIN
    SELECT n.needs INTO step_needs FROM work_orders o JOIN workflow_step_needs n ON n.workflow_id = o.workflow_id
     WHERE o.tenant_id = NEW.tenant_id AND o.id = NEW.work_order_id;
    IF step_needs IS NOT NULL AND (step_needs ? NEW.type::text
                                   OR EXISTS (SELECT 1 FROM jsonb_each(step_needs) e WHERE e.value ? NEW.type::text)) THEN
        RAISE EXCEPTION 'workflow steps that wait for each other are not supported in distributed mode'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION orderly_distributed_refused() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% are not supported in distributed mode', TG_ARGV[0]
        USING ERRCODE = 'feature_not_supported';
END
$$;

CREATE OR REPLACE FUNCTION orderly_delete_item_records_routed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM attempts WHERE tenant_id = OLD.tenant_id AND work_item_id = OLD.id;
    DELETE FROM approval_events WHERE tenant_id = OLD.tenant_id AND work_item_id = OLD.id;
    DELETE FROM eval_results WHERE tenant_id = OLD.tenant_id AND work_item_id = OLD.id;
    DELETE FROM run_logs WHERE tenant_id = OLD.tenant_id AND work_item_id = OLD.id;
    DELETE FROM run_artifacts WHERE tenant_id = OLD.tenant_id AND work_item_id = OLD.id;
    DELETE FROM run_progress WHERE tenant_id = OLD.tenant_id AND work_item_id = OLD.id;
    DELETE FROM budget_waits WHERE tenant_id = OLD.tenant_id AND work_item_id = OLD.id;
    DELETE FROM agent_waits WHERE tenant_id = OLD.tenant_id AND work_item_id = OLD.id;
    DELETE FROM agent_slots WHERE tenant_id = OLD.tenant_id AND work_item_id = OLD.id;
    RETURN NULL;
END
$$;

DROP TRIGGER work_items_template_edges ON work_items;
DROP TRIGGER work_items_delete_records ON work_items;
CREATE TRIGGER work_items_delete_records AFTER DELETE ON work_items
    FOR EACH ROW EXECUTE FUNCTION orderly_delete_item_records_routed();
DROP TRIGGER work_item_dependencies_inserted ON work_item_dependencies;
DROP TRIGGER work_item_dependencies_check ON work_item_dependencies;
CREATE TRIGGER work_item_dependencies_check BEFORE INSERT ON work_item_dependencies
    FOR EACH ROW EXECUTE FUNCTION orderly_distributed_refused('dependencies between items');
-- A template's `needs` (migration 0023) are derived into workflow_step_needs by a trigger that
-- would run on every node's copy of the templates and write the other reference table from
-- each (a distributed deadlock): on a cluster a template with needs is refused instead, and so
-- is one whose steps have limits (agent limits do not run on a cluster yet); every other
-- template is taken as it is.
DROP TRIGGER workflow_templates_needs ON workflow_templates;
CREATE FUNCTION orderly_template_needs_refused() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_typeof(NEW.workflow_definition->'steps') = 'object' AND EXISTS (
        SELECT 1 FROM jsonb_each(NEW.workflow_definition->'steps') s
         WHERE jsonb_typeof(s.value) = 'object' AND jsonb_typeof(s.value->'needs') = 'array'
           AND jsonb_array_length(s.value->'needs') > 0) THEN
        RAISE EXCEPTION 'workflow steps that wait for each other are not supported in distributed mode'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF NEW.workflow_definition @? '$.steps.*.limits' THEN
        RAISE EXCEPTION 'workflow step limits are not supported in distributed mode'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER workflow_templates_needs_refused BEFORE INSERT OR UPDATE ON workflow_templates
    FOR EACH ROW EXECUTE FUNCTION orderly_template_needs_refused();
DROP TRIGGER cost_entries_budget_spend ON cost_entries;
DROP TRIGGER budgets_follow ON budgets;
CREATE TRIGGER budgets_refused BEFORE INSERT ON budgets
    FOR EACH ROW EXECUTE FUNCTION orderly_distributed_refused('budgets');

-- 6. The claim's index, per tenant: a claim names one tenant and takes its items by priority,
--    then oldest first.
CREATE INDEX idx_work_items_ready_by_tenant ON work_items (tenant_id, priority DESC, run_at)
    WHERE status = 'QUEUED' AND deps_pending = 0;

-- 7. Tenants with runnable work (db::distributed): one row per tenant, co-located with its
--    items, written by the insert trigger and by every statement that makes an item runnable
--    again; a claim reads a few of them to choose whose items it takes.
CREATE TABLE orderly_tenants (
    tenant_id uuid PRIMARY KEY,
    since timestamptz NOT NULL DEFAULT now()
);
SELECT create_distributed_table('orderly_tenants', 'tenant_id', colocate_with => 'work_orders');

-- Whoever makes an item QUEUED (an upstream INSERT, a retry, a rescue, a replay) lists its
-- tenant, under a shared lock on the tenant; the claimer that found a tenant empty removes it
-- only under the exclusive lock, with a fresh look at the items (orderly_forget_tenant). The
-- locks are advisory locks on the node that holds the tenant's shards, where both run.
CREATE FUNCTION orderly_list_tenant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'QUEUED' THEN
        PERFORM pg_advisory_xact_lock_shared(31369498, hashtext(NEW.tenant_id::text));
        INSERT INTO orderly_tenants (tenant_id) VALUES (NEW.tenant_id) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER work_items_list_tenant AFTER INSERT ON work_items
    FOR EACH ROW EXECUTE FUNCTION orderly_list_tenant();
CREATE TRIGGER work_items_list_tenant_again AFTER UPDATE OF status ON work_items
    FOR EACH ROW WHEN (NEW.status = 'QUEUED' AND OLD.status <> 'QUEUED')
    EXECUTE FUNCTION orderly_list_tenant();

CREATE FUNCTION orderly_forget_tenant(tenant uuid) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(31369498, hashtext(tenant::text)) THEN
        RETURN false;
    END IF;
    DELETE FROM orderly_tenants t WHERE t.tenant_id = tenant
       AND NOT EXISTS (SELECT 1 FROM work_items w WHERE w.tenant_id = tenant AND w.status = 'QUEUED');
    RETURN FOUND;
END
$$;
SELECT create_distributed_function('orderly_forget_tenant(uuid)', 'tenant', colocate_with => 'work_orders');

-- 8. A schedule's slot (migration 0021), its items naming the schedule's tenant: the order and
--    its items go to the tenant's node; the unique slot key leads with the tenant too.
CREATE OR REPLACE FUNCTION orderly_schedule_slot(schedule UUID, slot TIMESTAMPTZ) RETURNS UUID
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
    ON CONFLICT (tenant_id, schedule_id, slot_at) WHERE schedule_id IS NOT NULL DO NOTHING
    RETURNING id INTO made;
    IF made IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO work_items (work_order_id, tenant_id, type, content)
    SELECT made, s.tenant_id, (i->>'type')::work_item_type,
           replace(replace(CASE jsonb_typeof(i->'content') WHEN 'string' THEN i->>'content' ELSE (i->'content')::text END,
                           '{{slot}}', slot_text),
                   '{{schedule}}', s.name)
    FROM jsonb_array_elements(s.items) AS i;
    RETURN made;
END
$$;

-- 9. An incident's acknowledge and resolve (migration 0024's orderly_incident_events), for one
--    tenant: an incident's escalations and notifications are all of one tenant on a cluster
--    (the SLA sweeper groups them per tenant), so this runs on that tenant's node.
CREATE FUNCTION orderly_incident_events_of(tenant uuid, changed uuid[]) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET enable_bitmapscan = on AS $$
DECLARE
    incidents uuid[];
    queued integer;
BEGIN
    SELECT array_agg(locked.id) INTO incidents
      FROM (SELECT n.id FROM notifications n
             WHERE n.tenant_id = tenant AND n.dedup_key IS NOT NULL AND n.kind = 'FIRED'
               AND n.escalation_ids && changed
             ORDER BY n.id
             FOR NO KEY UPDATE) locked;
    IF incidents IS NULL THEN
        RETURN 0;
    END IF;
    WITH state AS (
        SELECT n.id, n.connector_id, n.rule_id, n.level, n.dedup_key, n.escalation_ids, n.payload->'rule' AS rule,
               count(e.id) FILTER (WHERE e.status = 'OPEN') AS open,
               count(e.id) FILTER (WHERE e.status = 'ACKNOWLEDGED') AS acknowledged
          FROM notifications n
          LEFT JOIN escalations e ON e.tenant_id = tenant AND e.id = ANY (n.escalation_ids)
         WHERE n.tenant_id = tenant AND n.id = ANY (incidents)
         GROUP BY n.tenant_id, n.id
    )
    INSERT INTO notifications (tenant_id, connector_id, rule_id, level, kind, escalation_ids, payload, dedup_key)
    SELECT tenant, s.connector_id, s.rule_id, s.level, k.kind, s.escalation_ids,
           jsonb_build_object('kind', k.kind, 'rule', s.rule, 'level', s.level,
                              'count', cardinality(s.escalation_ids), 'dedup_key', s.dedup_key),
           s.dedup_key
      FROM state s
     CROSS JOIN LATERAL (SELECT CASE WHEN s.acknowledged = 0 THEN 'RESOLVED' ELSE 'ACKNOWLEDGED' END AS kind) k
     WHERE s.open = 0
    ON CONFLICT (tenant_id, connector_id, dedup_key, kind) WHERE dedup_key IS NOT NULL DO NOTHING;
    GET DIAGNOSTICS queued = ROW_COUNT;
    RETURN queued;
END
$$;
SELECT create_distributed_function('orderly_incident_events_of(uuid,uuid[])', 'tenant', colocate_with => 'work_orders');
