-- Two fewer index entries per execution. Every attempt and approval row is an insert into
-- every index of its table; `orderly bench` measured these two at 5-10% of the database's
-- CPU per item (README, Performance).
--
-- * idx_attempts_started_at (seed): no query orderly or its operators run orders or filters
--   attempts by start time; an operator who wants one can create it again.
DROP INDEX idx_attempts_started_at;
-- * approval_events had one index for its item (seed) and one for uniqueness per attempt and
--   source. One index now does both: an attempt belongs to one item, so (item, attempt,
--   source) is unique exactly when (attempt, source) is, and the item comes first for
--   lookups by item (operators, the delete trigger of migration 0008).
DROP INDEX idx_approval_events_work_item;
DROP INDEX approval_events_attempt_source;
CREATE UNIQUE INDEX approval_events_item_attempt_source ON approval_events (work_item_id, attempt_id, source);
