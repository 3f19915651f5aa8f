-- The records the engine writes for each execution (attempts, approval_events, eval_results)
-- no longer carry a foreign key to work_items; deleting items still deletes them.
--
-- Each row of a table with a foreign key costs PostgreSQL a query and a row lock on the
-- referenced work item (with its WAL record) to prove what the completion statement has
-- already proved: it inserts these rows only for items its own fenced UPDATE has just
-- changed and still holds locked. Two or three such checks per item were about a sixth of
-- the database's CPU in `orderly bench` (README, Performance). Only orderly writes these
-- tables (one writer per table); the upstream's own rows (mem_docs) and dead_letters keep
-- their foreign keys.
--
-- The seed's ON DELETE CASCADE is kept by a statement trigger: deleting work items (or their
-- orders, whose foreign key cascades to the items) deletes the items' records in one query
-- per table, however many items the statement deleted. A concurrent completion cannot
-- leave records behind: its UPDATE holds the item's row lock until it commits, so a DELETE
-- either waits for it (and its trigger then sees the committed records) or runs first (and
-- the completion then finds no item and writes nothing).
ALTER TABLE attempts DROP CONSTRAINT attempts_work_item_id_fkey;
ALTER TABLE approval_events DROP CONSTRAINT approval_events_work_item_id_fkey;
ALTER TABLE eval_results DROP CONSTRAINT eval_results_work_item_id_fkey;

CREATE FUNCTION orderly_delete_item_records() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM attempts WHERE work_item_id IN (SELECT id FROM deleted_items);
    DELETE FROM approval_events WHERE work_item_id IN (SELECT id FROM deleted_items);
    DELETE FROM eval_results WHERE work_item_id IN (SELECT id FROM deleted_items);
    RETURN NULL;
END
$$;
CREATE TRIGGER work_items_delete_records AFTER DELETE ON work_items
    REFERENCING OLD TABLE AS deleted_items
    FOR EACH STATEMENT EXECUTE FUNCTION orderly_delete_item_records();
