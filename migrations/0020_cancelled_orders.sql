-- A work order whose items were all cancelled is CANCELLED, not COMPLETED: an upstream that
-- reads the order's status must not be told that work was done when none was. An order with
-- both cancelled and completed items (and none failed) stays COMPLETED. The roll-up that
-- sets it lives in the engine (the roll-up statement in src/db/queue.rs).
ALTER TYPE work_order_status ADD VALUE IF NOT EXISTS 'CANCELLED';
