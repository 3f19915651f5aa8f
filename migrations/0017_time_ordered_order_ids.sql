-- Work orders get time-ordered ids, as work items did in migrations 0010 and 0014.
--
-- An order's id is the key of work_orders' primary key and the first column of
-- idx_work_items_composite (work_order_id, status, type). With random ids, every order the
-- engine touches is a random leaf of both: the claim and the roll-up look orders up one by
-- one, and every status change of an item adds an entry under its order's id. Orders of one
-- item made that one random leaf per item, in every batch. Time-ordered ids put the orders
-- being worked on (claimed in about the order they were enqueued) on the few right-hand
-- leaves of both indexes. An upstream that gives its own id keeps it.
-- The expression is the items' default of migration 0014, written out again rather than
-- called: a SQL function in a default is planned for every INSERT (migration 0006), and a
-- PL/pgSQL one is loaded and compiled on each new connection (migration 0012).
ALTER TABLE work_orders ALTER COLUMN id SET DEFAULT encode(
    set_bit(set_bit(
        overlay(uuid_send(gen_random_uuid())
                PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                FROM 1 FOR 6),
        52, 1), 53, 1),
    'hex')::uuid;
