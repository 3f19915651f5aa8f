-- Fewer index writes per item. Every status change of a work item is a non-HOT update
-- (the partial claim index's predicate is on status), so PostgreSQL writes a new entry in
-- every index of work_items, twice per execution; every attempt and approval row is an
-- insert into every index of its table. These seed indexes duplicate another index's prefix
-- or serve no query orderly or its operators run; `orderly bench` measured the difference
-- (README, Performance).
DROP INDEX IF EXISTS idx_work_items_work_order;   -- prefix of idx_work_items_composite
DROP INDEX IF EXISTS idx_work_items_status;       -- replaced by the partial ready/leased indexes
DROP INDEX IF EXISTS idx_work_items_type;
DROP INDEX IF EXISTS idx_work_items_created_at;
DROP INDEX IF EXISTS idx_attempts_work_item;      -- prefix of attempts_item_number
DROP INDEX IF EXISTS idx_attempts_composite;
DROP INDEX IF EXISTS idx_attempts_agent;
DROP INDEX IF EXISTS idx_attempts_status;
DROP INDEX IF EXISTS idx_approval_events_approver;
DROP INDEX IF EXISTS idx_approval_events_timestamp;
DROP INDEX IF EXISTS idx_eval_results_type;
DROP INDEX IF EXISTS idx_eval_results_score;

-- The queue table churns: vacuum and analyze it early so dead tuples do not pile up under
-- the claim index and the planner's statistics follow the backlog.
ALTER TABLE work_items SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02,
                            autovacuum_vacuum_cost_delay = 0);
ALTER TABLE work_orders SET (autovacuum_vacuum_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.05);
