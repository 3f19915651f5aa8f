-- Wake workers only when the queue looks idle. Every transaction that NOTIFYs takes
-- PostgreSQL's global notify-queue lock at commit, which serialized concurrent upstream
-- INSERTs (scripts/bench-insert: 52% of a plain INSERT's rate). Under a backlog the workers
-- are claiming in a loop anyway and need no wake-up; the notification matters only when the
-- statement's own rows are all the runnable work there is. NOTIFY stays a hint: workers also
-- re-claim shortly after any partial claim, and poll as a fallback.
CREATE OR REPLACE FUNCTION orderly_notify_work() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    inserted bigint;
    runnable bigint;
BEGIN
    SELECT count(*) INTO inserted FROM new_items;
    SELECT count(*) INTO runnable FROM (
        SELECT 1 FROM work_items WHERE status = 'QUEUED' AND run_at <= now() LIMIT inserted + 1
    ) r;
    IF runnable <= inserted THEN
        PERFORM pg_notify('orderly_work', '');
    END IF;
    RETURN NULL;
END
$$;
DROP TRIGGER work_items_notify ON work_items;
CREATE TRIGGER work_items_notify AFTER INSERT ON work_items
    REFERENCING NEW TABLE AS new_items
    FOR EACH STATEMENT EXECUTE FUNCTION orderly_notify_work();
