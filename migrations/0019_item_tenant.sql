-- Each work item records its order's tenant, so that row-level security can check an item
-- without looking its order up.
--
-- The producer role's item policy used to check `EXISTS (SELECT 1 FROM work_orders ...)`. A
-- policy's subquery cannot see an order inserted by the same statement, so the one-statement
-- enqueue (`WITH o AS (INSERT INTO work_orders ... RETURNING id) INSERT INTO work_items ...
-- SELECT ... FROM o`) was refused for the right tenant. The insert trigger can see that order
-- (it already copied the order's priority): it now also copies the order's tenant into
-- `work_items.tenant_id`, whatever the INSERT sent, and the policy compares the column
-- (`orderly roles` writes the policies). Under row-level security the trigger's lookup sees
-- only the producer's own tenant's orders, so an item for another tenant's order gets NULL
-- and is refused.
--
-- Items inserted before this migration keep NULL (no table rewrite on upgrade); the policy
-- still finds their tenant through their order.
ALTER TABLE work_items ADD COLUMN tenant_id uuid;

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
    IF NEW.status = 'QUEUED' AND NEW.run_at <= now()
       AND NOT pg_try_advisory_xact_lock_shared(31369498240052069) THEN
        PERFORM pg_notify('orderly_work', '');
    END IF;
    RETURN NEW;
END
$$;
