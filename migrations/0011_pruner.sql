-- The pruner's way in: finished orders by the time they finished. The roll-up sets
-- updated_at when an order becomes COMPLETED or FAILED (and a claim moves it back to
-- PROCESSING first), so the oldest finished orders are the first entries of this index;
-- each pruning batch reads only the orders it deletes or skips, however long the history.
CREATE INDEX idx_work_orders_finished ON work_orders (updated_at) WHERE status IN ('COMPLETED', 'FAILED');

-- Deleting an item cascades to its dead letters by work_item_id, which only a partial index
-- (open letters) covered: each deleted item would scan dead_letters. Pruning deletes items by
-- the thousand.
CREATE INDEX idx_dead_letters_work_item ON dead_letters (work_item_id);
