-- 1,000 orders of 100 TICKET items (psql -v orders=N).
INSERT INTO work_orders (id, workflow_id, tenant_id, created_by)
SELECT orderly_uuid_v7(), 'bench', gen_random_uuid(), gen_random_uuid() FROM generate_series(1, :orders);
INSERT INTO work_items (work_order_id, type, content)
SELECT o.id, 'TICKET', '{"n":1}' FROM work_orders o, generate_series(1, 100) ORDER BY o.id;
