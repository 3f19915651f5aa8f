-- The side records of issue "what a run reports" and of agent limits (run logs and
-- artifacts, progress, budget and agent waits) lose their foreign keys to work_items, as
-- attempts did in migration 0008, and for the same reasons: only orderly writes them, for
-- items its own fenced statements hold, and each foreign key costs every work item twice:
-- a check and a row lock for each row inserted, and a trigger call for each UPDATE of the
-- item (the claim and the completion), whose key never changes. Measured: five such keys
-- cost the engine about a tenth of its throughput (`orderly bench`, echo agent).
--
-- Deleting items still deletes their records, by the statement trigger of migration 0008,
-- now covering these tables too.
ALTER TABLE run_logs DROP CONSTRAINT run_logs_work_item_id_fkey;
ALTER TABLE run_artifacts DROP CONSTRAINT run_artifacts_work_item_id_fkey;
ALTER TABLE run_progress DROP CONSTRAINT run_progress_work_item_id_fkey;
ALTER TABLE budget_waits DROP CONSTRAINT budget_waits_work_item_id_fkey;
ALTER TABLE agent_waits DROP CONSTRAINT agent_waits_work_item_id_fkey;

CREATE OR REPLACE FUNCTION orderly_delete_item_records() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM attempts WHERE work_item_id IN (SELECT id FROM deleted_items);
    DELETE FROM approval_events WHERE work_item_id IN (SELECT id FROM deleted_items);
    DELETE FROM eval_results WHERE work_item_id IN (SELECT id FROM deleted_items);
    DELETE FROM run_logs WHERE work_item_id IN (SELECT id FROM deleted_items);
    DELETE FROM run_artifacts WHERE work_item_id IN (SELECT id FROM deleted_items);
    DELETE FROM run_progress WHERE work_item_id IN (SELECT id FROM deleted_items);
    DELETE FROM budget_waits WHERE work_item_id IN (SELECT id FROM deleted_items);
    DELETE FROM agent_waits WHERE work_item_id IN (SELECT id FROM deleted_items);
    DELETE FROM agent_slots WHERE work_item_id IN (SELECT id FROM deleted_items);
    RETURN NULL;
END
$$;
