-- Variant B: the queue-table design. No index on work_items covers status or the lease (its
-- updates can be heap-only); the claim and the rescuer read item_queue.
DROP INDEX idx_work_items_composite, idx_work_items_ready, idx_work_items_leased, idx_work_items_held,
           idx_work_items_waiting, idx_work_items_ready_tenant;
CREATE INDEX idx_work_items_order ON work_items (work_order_id);
CREATE TABLE item_queue (item_id uuid PRIMARY KEY, priority priority NOT NULL, run_at timestamptz NOT NULL,
                         tenant_id uuid, leased_until timestamptz);
CREATE INDEX item_queue_ready ON item_queue (priority DESC, run_at) WHERE leased_until IS NULL;
CREATE INDEX item_queue_ready_tenant ON item_queue (priority DESC, tenant_id, run_at) WHERE leased_until IS NULL AND tenant_id IS NOT NULL;
CREATE INDEX item_queue_leased ON item_queue (leased_until) WHERE leased_until IS NOT NULL;
