-- Dependencies between work items (docs/dependencies.md).
--
-- An upstream declares that an item waits for others by inserting edges into
-- work_item_dependencies, in the transaction that inserts the items; a workflow template
-- step may name the steps it needs (`"needs": ["EXTRACT"]`), and the items of an order then
-- get their edges from their types. Kinds: BLOCKS (run after the dependency COMPLETED), SOFT
-- (run after it finished, whatever the outcome), RELATED (recorded, never waited on).
--
-- How waiting costs nothing to the claim: each item counts its unmet dependencies
-- (`deps_pending`), and the claim's partial index holds only QUEUED items with none. A
-- waiting item is not in that index, so a million waiting items cost the claim nothing.
-- Finishing an item settles the edges that name it (orderly_settle_dependencies, called in
-- the transaction that records the finish) at the cost of those edges: no scan of waiting
-- items, no polling.
CREATE TYPE dependency_kind AS ENUM ('BLOCKS', 'SOFT', 'RELATED');

CREATE TABLE work_item_dependencies (
    -- The item that waits ...
    work_item_id  UUID NOT NULL REFERENCES work_items(id) ON DELETE CASCADE,
    -- ... for this one.
    depends_on_id UUID NOT NULL REFERENCES work_items(id) ON DELETE CASCADE,
    kind          dependency_kind NOT NULL DEFAULT 'BLOCKS',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- When the dependency stopped holding its dependent back (NULL: still waited on, or
    -- RELATED, or a BLOCKS dependency that failed for good, whose dependent was cancelled).
    satisfied_at  TIMESTAMPTZ,
    PRIMARY KEY (work_item_id, depends_on_id),
    CONSTRAINT an_item_cannot_depend_on_itself CHECK (work_item_id <> depends_on_id)
);
-- Who waits for an item: read when it finishes, and by the item page.
CREATE INDEX work_item_dependencies_dependents ON work_item_dependencies (depends_on_id);

ALTER TABLE work_items
    -- Unmet BLOCKS and SOFT dependencies; the item is claimable only at 0.
    ADD COLUMN deps_pending     INTEGER NOT NULL DEFAULT 0,
    -- Some edge names this item as a dependency: its finish settles edges.
    ADD COLUMN has_dependents   BOOLEAN NOT NULL DEFAULT false,
    -- This item has dependencies: its envelope carries their results.
    ADD COLUMN has_dependencies BOOLEAN NOT NULL DEFAULT false;

-- The claim index now holds only items with no unmet dependency.
DROP INDEX idx_work_items_ready;
CREATE INDEX idx_work_items_ready ON work_items (priority DESC, run_at)
    WHERE status = 'QUEUED' AND deps_pending = 0;
-- The waiting items, for the gauges and the overview (counted without reading the history).
CREATE INDEX idx_work_items_waiting ON work_items (type) WHERE status = 'QUEUED' AND deps_pending > 0;

-- Template steps' needs, by workflow: {"SUMMARISE": ["EXTRACT", "CLASSIFY"], ...}. Derived
-- from the active templates by the trigger below (the newest active template of a name
-- wins, as for routing), holding a row only for workflows whose steps need others, so the
-- item insert trigger pays one probe of a small table.
CREATE TABLE workflow_step_needs (
    workflow_id VARCHAR(255) PRIMARY KEY,
    needs       JSONB NOT NULL
);

CREATE FUNCTION orderly_derive_step_needs(workflow text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    derived jsonb;
BEGIN
    SELECT jsonb_object_agg(s.key, s.value->'needs') INTO derived
      FROM (SELECT workflow_definition->'steps' AS steps FROM workflow_templates
             WHERE is_active AND name = workflow ORDER BY created_at DESC LIMIT 1) t,
           jsonb_each(CASE WHEN jsonb_typeof(t.steps) = 'object' THEN t.steps ELSE '{}' END) s
     WHERE jsonb_typeof(s.value) = 'object' AND jsonb_typeof(s.value->'needs') = 'array'
       AND jsonb_array_length(s.value->'needs') > 0;
    IF derived IS NULL THEN
        DELETE FROM workflow_step_needs WHERE workflow_id = workflow;
    ELSE
        INSERT INTO workflow_step_needs (workflow_id, needs) VALUES (workflow, derived)
        ON CONFLICT (workflow_id) DO UPDATE SET needs = EXCLUDED.needs;
    END IF;
    PERFORM orderly_needs_trigger_follows();
END
$$;

-- The item trigger that reads the template needs (below) is enabled only while some workflow
-- has them: every other INSERT of an item pays nothing for the feature (on a new connection,
-- reading one more table cost about 0.3 ms, a tenth of the INSERT). Turning it on or off takes
-- a short lock on work_items, once, when the first template with needs appears or the last
-- one goes.
CREATE FUNCTION orderly_needs_trigger_follows() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    wanted boolean := EXISTS (SELECT 1 FROM workflow_step_needs);
    enabled boolean;
BEGIN
    SELECT tgenabled <> 'D' INTO enabled FROM pg_trigger
     WHERE tgrelid = 'work_items'::regclass AND tgname = 'work_items_needs';
    IF enabled IS NULL OR enabled = wanted THEN
        RETURN;
    END IF;
    IF wanted THEN
        ALTER TABLE work_items ENABLE TRIGGER work_items_needs;
    ELSE
        ALTER TABLE work_items DISABLE TRIGGER work_items_needs;
    END IF;
END
$$;

CREATE FUNCTION orderly_template_needs_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM orderly_derive_step_needs(OLD.name);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM orderly_derive_step_needs(NEW.name);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER workflow_templates_needs AFTER INSERT OR UPDATE OR DELETE ON workflow_templates
    FOR EACH ROW EXECUTE FUNCTION orderly_template_needs_changed();
SELECT orderly_derive_step_needs(name) FROM (SELECT DISTINCT name FROM workflow_templates) t;

-- The item insert trigger of migration 0019, plus the dependency columns, which are orderly's
-- bookkeeping whatever the INSERT sent (an ORM that reflects the table sends NULL for every
-- column it was not given): edges are counted by their own trigger.
CREATE OR REPLACE FUNCTION orderly_work_item_defaults() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    order_priority priority;
    order_tenant uuid;
BEGIN
    IF NEW.id IS NULL THEN
        NEW.id := orderly_uuid_v7();
    END IF;
    -- No order row (or one the inserting role may not see): both stay NULL, and the foreign
    -- key (or the producer's policy) rejects the INSERT.
    SELECT o.priority, o.tenant_id INTO order_priority, order_tenant FROM work_orders o WHERE o.id = NEW.work_order_id;
    IF NEW.priority IS NULL THEN
        NEW.priority := order_priority;
    END IF;
    NEW.tenant_id := order_tenant;
    NEW.deps_pending := 0;
    NEW.has_dependencies := false;
    NEW.has_dependents := false;
    IF NEW.status = 'QUEUED' AND NEW.run_at <= now()
       AND NOT pg_try_advisory_xact_lock_shared(31369498240052069) THEN
        PERFORM pg_notify('orderly_work', '');
    END IF;
    RETURN NEW;
END
$$;

-- An item of a workflow whose steps need others is marked (it needs / it is needed), so the
-- AFTER trigger below gives it its template edges. Runs after work_items_defaults (triggers
-- fire in name order), and only while enabled (orderly_needs_trigger_follows).
CREATE FUNCTION orderly_work_item_needs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    step_needs jsonb;
BEGIN
    SELECT n.needs INTO step_needs FROM work_orders o JOIN workflow_step_needs n ON n.workflow_id = o.workflow_id
     WHERE o.id = NEW.work_order_id;
    IF step_needs IS NOT NULL THEN
        NEW.has_dependencies := step_needs ? NEW.type::text;
        NEW.has_dependents := EXISTS (SELECT 1 FROM jsonb_each(step_needs) e WHERE e.value ? NEW.type::text);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER work_items_needs BEFORE INSERT ON work_items
    FOR EACH ROW EXECUTE FUNCTION orderly_work_item_needs();
SELECT orderly_needs_trigger_follows();

-- Template edges: the new item waits for the items of its order whose types its step needs,
-- and the not yet started items of its order whose steps need its type wait for it. Either
-- may be inserted first (items of one INSERT see each other here).
CREATE FUNCTION orderly_template_edges() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    step_needs jsonb;
BEGIN
    SELECT n.needs INTO step_needs FROM work_orders o JOIN workflow_step_needs n ON n.workflow_id = o.workflow_id
     WHERE o.id = NEW.work_order_id;
    IF step_needs IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO work_item_dependencies (work_item_id, depends_on_id, kind)
    SELECT NEW.id, w.id, 'BLOCKS' FROM work_items w
     WHERE w.work_order_id = NEW.work_order_id AND w.id <> NEW.id
       AND w.type::text IN (SELECT jsonb_array_elements_text(step_needs->NEW.type::text))
       AND NOT EXISTS (SELECT 1 FROM work_item_dependencies d WHERE d.work_item_id = NEW.id AND d.depends_on_id = w.id);
    INSERT INTO work_item_dependencies (work_item_id, depends_on_id, kind)
    SELECT w.id, NEW.id, 'BLOCKS' FROM work_items w
     WHERE w.work_order_id = NEW.work_order_id AND w.id <> NEW.id
       AND w.status = 'QUEUED' AND w.attempt = 0
       AND w.type::text IN (SELECT e.key FROM jsonb_each(step_needs) e WHERE e.value ? NEW.type::text)
       AND NOT EXISTS (SELECT 1 FROM work_item_dependencies d WHERE d.work_item_id = w.id AND d.depends_on_id = NEW.id);
    RETURN NULL;
END
$$;
CREATE TRIGGER work_items_template_edges AFTER INSERT ON work_items
    FOR EACH ROW WHEN (NEW.has_dependencies OR NEW.has_dependents)
    EXECUTE FUNCTION orderly_template_edges();

-- Every edge, however inserted: checked before it is written, counted once it is. Both run
-- as the owner (they update the items' counters, which a producer may not), so they check
-- the tenant themselves; the producer's row-level policy on this table admits only edges
-- from its own tenant's items.
--
-- Locks: the dependency FOR SHARE first, then the dependent FOR UPDATE. The share lock makes
-- a concurrent finish of the dependency wait for this transaction, and the finish settles
-- its edges in a statement of its own, after that wait: it sees this edge. A finish that
-- came first is seen here (this trigger waits for it, then reads the dependency's status).
-- Two transactions that would close a cycle between items committed earlier conflict on
-- these locks, so the second waits and its cycle check, a statement taken after the wait,
-- sees the first's edge (under READ COMMITTED, the isolation upstreams use).
--
-- The checks run BEFORE the row is written, so they see the edges inserted earlier by the
-- same statement and not the later ones: a graph inserted in either topological order (each
-- dependent after its dependencies, or the reverse) never walks for cycles. The count runs
-- AFTER the statement, over the rows actually written (an INSERT ... ON CONFLICT DO NOTHING
-- that skips a row counts nothing).
CREATE FUNCTION orderly_dependency_check() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    parent record;
    child record;
BEGIN
    -- What an INSERT may leave out or get wrong: an ORM that reflects the table sends NULL
    -- for columns it was not given; `satisfied_at` is orderly's to write, never the upstream's.
    NEW.kind := coalesce(NEW.kind, 'BLOCKS');
    NEW.created_at := coalesce(NEW.created_at, now());
    NEW.satisfied_at := NULL;
    IF NEW.work_item_id = NEW.depends_on_id THEN
        RETURN NEW;  -- the CHECK constraint an_item_cannot_depend_on_itself refuses it
    END IF;
    SELECT w.id, w.status, coalesce(w.tenant_id, o.tenant_id) AS tenant,
           w.status = 'FAILED' AND NOT EXISTS (SELECT 1 FROM dead_letters l
                                               WHERE l.work_item_id = w.id AND l.processed_at IS NULL) AS gone
      INTO parent
      FROM work_items w JOIN work_orders o ON o.id = w.work_order_id
     WHERE w.id = NEW.depends_on_id FOR SHARE OF w;
    SELECT w.id, w.status, w.attempt, coalesce(w.tenant_id, o.tenant_id) AS tenant INTO child
      FROM work_items w JOIN work_orders o ON o.id = w.work_order_id
     WHERE w.id = NEW.work_item_id FOR UPDATE OF w;
    IF parent.id IS NULL OR child.id IS NULL THEN
        RAISE EXCEPTION 'work item % does not exist', CASE WHEN child.id IS NULL THEN NEW.work_item_id ELSE NEW.depends_on_id END
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF parent.tenant IS DISTINCT FROM child.tenant THEN
        RAISE EXCEPTION 'work item % belongs to another tenant than work item %: a dependency must stay within one tenant',
            NEW.depends_on_id, NEW.work_item_id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.kind = 'RELATED' THEN
        RETURN NEW;
    END IF;
    IF child.status <> 'QUEUED' OR child.attempt > 0 THEN
        RAISE EXCEPTION 'work item % has already started (%): insert its dependencies in the transaction that inserts it',
            NEW.work_item_id, child.status
            USING ERRCODE = 'check_violation';
    END IF;
    -- A cycle needs a path from the dependency back to the dependent: none when the
    -- dependent has no dependents or the dependency no dependencies.
    IF EXISTS (SELECT 1 FROM work_item_dependencies d WHERE d.depends_on_id = NEW.work_item_id AND d.kind <> 'RELATED')
       AND EXISTS (SELECT 1 FROM work_item_dependencies d WHERE d.work_item_id = NEW.depends_on_id AND d.kind <> 'RELATED')
       AND EXISTS (
           WITH RECURSIVE up(id) AS (
               SELECT NEW.depends_on_id
               UNION
               SELECT d.depends_on_id FROM work_item_dependencies d JOIN up ON d.work_item_id = up.id
                WHERE d.kind <> 'RELATED'
           )
           SELECT 1 FROM up WHERE id = NEW.work_item_id) THEN
        RAISE EXCEPTION 'dependency cycle: work item % already depends, directly or not, on work item %',
            NEW.depends_on_id, NEW.work_item_id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.kind = 'BLOCKS' AND (parent.status = 'CANCELLED' OR parent.gone) THEN
        RAISE EXCEPTION 'work item % was % and will never complete: nothing can wait for it',
            NEW.depends_on_id, CASE WHEN parent.gone THEN 'dead-lettered and discarded' ELSE 'cancelled' END
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER work_item_dependencies_check BEFORE INSERT ON work_item_dependencies
    FOR EACH ROW EXECUTE FUNCTION orderly_dependency_check();

-- Counted once per statement (a transition table): a dependent that gains 10,000 edges in one
-- INSERT is updated once, not 10,000 times (each update of a row leaves a version that the
-- next lookup of that row in the same transaction steps over: quadratic).
CREATE FUNCTION orderly_dependencies_inserted() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    -- The dependencies were locked by the check above, in this transaction: their statuses
    -- cannot have moved. One statement, one update per item (an item may be both a
    -- dependent and a dependency of this INSERT).
    WITH e AS MATERIALIZED (
        SELECT n.work_item_id, n.depends_on_id,
               p.status = 'COMPLETED' OR (n.kind = 'SOFT' AND p.status IN ('FAILED', 'CANCELLED')) AS met
          FROM new_edges n JOIN work_items p ON p.id = n.depends_on_id
         WHERE n.kind <> 'RELATED'
    ), met AS (
        UPDATE work_item_dependencies d SET satisfied_at = now()
          FROM e WHERE e.met AND d.work_item_id = e.work_item_id AND d.depends_on_id = e.depends_on_id
    ), c AS (
        SELECT id, sum(unmet) AS unmet, bool_or(dependent) AS dependent, bool_or(waited_on) AS waited_on
          FROM (SELECT work_item_id AS id, CASE WHEN met THEN 0 ELSE 1 END AS unmet, true AS dependent,
                       false AS waited_on FROM e
                UNION ALL
                SELECT depends_on_id, 0, false, NOT met FROM e) x
         GROUP BY id
    )
    UPDATE work_items w SET deps_pending = w.deps_pending + c.unmet,
                            has_dependencies = w.has_dependencies OR c.dependent,
                            has_dependents = w.has_dependents OR c.waited_on
      FROM c
     WHERE w.id = c.id AND (c.dependent OR (c.waited_on AND NOT w.has_dependents));
    RETURN NULL;
END
$$;
-- Edges are written once: changing or deleting one would leave its dependent's count wrong.
CREATE FUNCTION orderly_dependency_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        -- Deleting an item deletes its edges (ON DELETE CASCADE): allowed.
        IF EXISTS (SELECT 1 FROM work_items WHERE id = OLD.work_item_id)
           AND EXISTS (SELECT 1 FROM work_items WHERE id = OLD.depends_on_id) THEN
            RAISE EXCEPTION 'dependencies cannot be deleted (work item % on %): cancel the item instead',
                OLD.work_item_id, OLD.depends_on_id USING ERRCODE = 'check_violation';
        END IF;
        RETURN OLD;
    END IF;
    IF (NEW.work_item_id, NEW.depends_on_id, NEW.kind) IS DISTINCT FROM (OLD.work_item_id, OLD.depends_on_id, OLD.kind) THEN
        RAISE EXCEPTION 'a dependency''s items and kind cannot be changed (work item % on %)',
            OLD.work_item_id, OLD.depends_on_id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER work_item_dependencies_frozen BEFORE UPDATE OR DELETE ON work_item_dependencies
    FOR EACH ROW EXECUTE FUNCTION orderly_dependency_frozen();
CREATE TRIGGER work_item_dependencies_inserted AFTER INSERT ON work_item_dependencies
    REFERENCING NEW TABLE AS new_edges
    FOR EACH STATEMENT EXECUTE FUNCTION orderly_dependencies_inserted();

-- Settles the edges that name the given items as dependency, by each item's status now:
--   COMPLETED                         -> BLOCKS and SOFT edges met
--   FAILED with an open dead letter   -> SOFT met; BLOCKS hold ("blocked by dead letter")
--   FAILED, its dead letter discarded -> SOFT met; BLOCKS dependents CANCELLED
--   CANCELLED                         -> SOFT met; BLOCKS dependents CANCELLED
-- Cancelled dependents are settled in turn (transitively), in this call. A dependent whose
-- last unmet edge is met becomes claimable, runnable from now; the workers are woken.
-- Returns each item it changed: RELEASED or CANCELLED, with its order (the caller rolls the
-- orders of cancelled items up, and audits). Run in the transaction that finished the
-- items, as a statement after the one that wrote them. Dependents are locked in id order.
CREATE FUNCTION orderly_settle_dependencies(finished uuid[], actor text)
RETURNS TABLE (work_item_id uuid, work_order_id uuid, became text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    frontier uuid[] := finished;
    cancelled uuid[];
    released uuid[];
    round int := 0;
BEGIN
    WHILE cardinality(frontier) > 0 LOOP
        round := round + 1;
        -- Lock the dependents this round touches, in id order.
        PERFORM 1 FROM work_items w
         WHERE w.id IN (SELECT d.work_item_id FROM work_item_dependencies d
                         WHERE d.depends_on_id = ANY (frontier) AND d.satisfied_at IS NULL AND d.kind <> 'RELATED')
         ORDER BY w.id FOR NO KEY UPDATE;
        -- The edges met now, and the counts they take off their dependents.
        WITH parents AS (
            SELECT p.id, p.status,
                   p.status = 'FAILED' AND NOT EXISTS (SELECT 1 FROM dead_letters l
                                                       WHERE l.work_item_id = p.id AND l.processed_at IS NULL) AS gone
              FROM work_items p WHERE p.id = ANY (frontier)
        ), met AS (
            UPDATE work_item_dependencies d SET satisfied_at = now()
              FROM parents p
             WHERE d.depends_on_id = p.id AND d.satisfied_at IS NULL AND d.kind <> 'RELATED'
               AND (p.status = 'COMPLETED' OR (d.kind = 'SOFT' AND p.status IN ('FAILED', 'CANCELLED')))
            RETURNING d.work_item_id
        ), counted AS (
            SELECT m.work_item_id AS id, count(*) AS n FROM met m GROUP BY m.work_item_id
        ), lowered AS (
            UPDATE work_items w SET deps_pending = w.deps_pending - c.n,
                   run_at = CASE WHEN w.deps_pending = c.n THEN greatest(w.run_at, now()) ELSE w.run_at END
              FROM counted c WHERE w.id = c.id
            RETURNING w.id, w.work_order_id, w.deps_pending = 0 AND w.status = 'QUEUED' AS free
        )
        SELECT array_agg(l.id) FILTER (WHERE l.free) INTO released FROM lowered l;
        IF cardinality(released) > 0 THEN
            RETURN QUERY SELECT w.id, w.work_order_id, 'RELEASED'::text FROM work_items w WHERE w.id = ANY (released);
            PERFORM pg_notify('orderly_work', '');
        END IF;
        -- BLOCKS dependents of what will never complete: cancelled.
        WITH doomed AS (
            SELECT d.work_item_id AS id, min(d.depends_on_id::text)::uuid AS because
              FROM work_item_dependencies d JOIN work_items p ON p.id = d.depends_on_id
             WHERE d.depends_on_id = ANY (frontier) AND d.satisfied_at IS NULL AND d.kind = 'BLOCKS'
               AND (p.status = 'CANCELLED'
                    OR (p.status = 'FAILED' AND NOT EXISTS (SELECT 1 FROM dead_letters l
                                                            WHERE l.work_item_id = p.id AND l.processed_at IS NULL)))
             GROUP BY d.work_item_id
        ), done AS (
            UPDATE work_items w SET status = 'CANCELLED', processed_at = now(), lease_expires_at = NULL,
                   locked_by = NULL, last_error_code = 'DEPENDENCY_FAILED',
                   last_error = format('cancelled: its dependency %s will never complete', doomed.because)
              FROM doomed WHERE w.id = doomed.id AND w.status = 'QUEUED'
            RETURNING w.id, w.work_order_id, doomed.because
        ), audited AS (
            INSERT INTO audit_logs (user_id, action, resource_type, resource_id, details)
            SELECT actor, 'work_item.cancel', 'work_item', done.id,
                   jsonb_build_object('was', 'QUEUED', 'reason', 'DEPENDENCY_FAILED', 'dependency', done.because)
              FROM done
        )
        SELECT array_agg(done.id) INTO cancelled FROM done;
        IF cardinality(cancelled) > 0 THEN
            RETURN QUERY SELECT w.id, w.work_order_id, 'CANCELLED'::text FROM work_items w WHERE w.id = ANY (cancelled);
        END IF;
        frontier := coalesce(cancelled, '{}');
        cancelled := NULL;
        released := NULL;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION orderly_settle_dependencies(uuid[], text) FROM PUBLIC;
