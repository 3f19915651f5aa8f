-- An order's status changes become heap-only (HOT) updates, and a new connection's first
-- INSERT of a work item stops paying for a PL/pgSQL call in the id's default.
--
-- Every order changes status twice (PENDING -> PROCESSING when its first item starts, then
-- COMPLETED or FAILED), and with `status` or `updated_at` in an index each change wrote a new
-- entry into every one of the table's seven indexes. For orders of one item that was more
-- work than the item itself. No index now names either column, so with room left on the page
-- (fillfactor) PostgreSQL updates the row in place and touches no index.
--
-- What replaces the dropped indexes:
-- * idx_work_orders_composite (tenant_id, status, created_at) and idx_work_orders_tenant
--   (tenant_id): one index (tenant_id, created_at) serves a tenant's orders in time order;
--   a status filter is applied to those rows.
-- * idx_work_orders_status: the leader's sweep for orders a dead writer left PROCESSING
--   reads the table (rarely: at leadership, after a rescue, and every few minutes).
-- * idx_work_orders_finished (updated_at, finished orders only): the pruner walks orders by
--   created_at (an order that finished before the cut-off was created before it).
DROP INDEX IF EXISTS idx_work_orders_composite;
DROP INDEX IF EXISTS idx_work_orders_tenant;
DROP INDEX IF EXISTS idx_work_orders_status;
DROP INDEX IF EXISTS idx_work_orders_finished;
CREATE INDEX IF NOT EXISTS idx_work_orders_tenant_created ON work_orders (tenant_id, created_at);
-- Room on each new page for a new version of every order on it: the claim and the roll-up
-- change the statuses of a whole batch of orders in one transaction, and the old versions
-- can be pruned only after it commits. With 70% full pages (measured, orders of one item) a
-- third of the updates still found no room and wrote every index.
ALTER TABLE work_orders SET (fillfactor = 45);

-- The same time-ordered id as orderly_new_item_id(), written out in built-in functions: no
-- procedural-language call, so a connection's first INSERT neither loads nor compiles
-- anything for it, and no SQL function is inlined and planned per statement.
ALTER TABLE work_items ALTER COLUMN id SET DEFAULT encode(
    set_bit(set_bit(
        overlay(uuid_send(gen_random_uuid())
                PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                FROM 1 FOR 6),
        52, 1), 53, 1),
    'hex')::uuid;
