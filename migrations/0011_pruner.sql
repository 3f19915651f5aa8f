-- The pruner's way in: finished orders by the time they finished. The roll-up sets
-- updated_at when an order becomes COMPLETED or FAILED (and a claim moves it back to
-- PROCESSING first), so the oldest finished orders are the first entries of this index;
-- each pruning batch reads only the orders it deletes or skips, however long the history.
CREATE INDEX idx_work_orders_finished ON work_orders (updated_at) WHERE status IN ('COMPLETED', 'FAILED');
