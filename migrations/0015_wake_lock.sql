-- A new connection's first INSERT of a work item no longer plans a query over work_items.
--
-- The insert trigger sent a NOTIFY only when no runnable item was visible (every NOTIFY
-- takes a database-wide lock at commit, so upstream commits must not all send one). Deciding
-- that took a query over work_items that a new connection had to plan before its first
-- INSERT; with the rest of the trigger, that INSERT cost more than twice the same INSERT into
-- a table without orderly's trigger. The decision is now an advisory lock, which touches no
-- table: a daemon that has drained the queue and waits for work holds the "wake" lock
-- (exclusively, on its LISTEN connection); an INSERT of a runnable item tries to take it
-- shared until its commit and sends a NOTIFY when it cannot. While no daemon waits (all are
-- working through a backlog, or none runs) the INSERT gets the lock and sends nothing.
-- A daemon that takes the lock claims once more at once: an INSERT that committed without a
-- NOTIFY just before is then found. Key 31369498240052069 is "ordwake" in ASCII.
CREATE OR REPLACE FUNCTION orderly_work_item_defaults() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    order_priority priority;
BEGIN
    IF NEW.id IS NULL THEN
        NEW.id := orderly_uuid_v7();
    END IF;
    IF NEW.priority IS NULL THEN
        -- No order row: it stays NULL and the foreign key rejects the INSERT as before.
        SELECT o.priority INTO order_priority FROM work_orders o WHERE o.id = NEW.work_order_id;
        NEW.priority := order_priority;
    END IF;
    IF NEW.status = 'QUEUED' AND NEW.run_at <= now()
       AND NOT pg_try_advisory_xact_lock_shared(31369498240052069) THEN
        PERFORM pg_notify('orderly_work', '');
    END IF;
    RETURN NEW;
END
$$;
