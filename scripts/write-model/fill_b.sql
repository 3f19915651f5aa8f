-- Variant B: every queued item gets its queue row (the insert trigger would write it).
INSERT INTO item_queue (item_id, priority, run_at, tenant_id) SELECT id, priority, run_at, tenant_id FROM work_items WHERE status = 'QUEUED';
