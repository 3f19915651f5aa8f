-- The work item id's server default is visible in the catalog again.
--
-- Migration 0010 dropped the column default and let the insert trigger make the id. Clients
-- that read the schema (SQLAlchemy's reflection, Django's inspectdb, Prisma's introspection)
-- then see a primary key with no server default: they neither send one nor ask for it back,
-- and an ORM cannot track the row it just added. The default is back, and it stays
-- time-ordered: a PL/pgSQL function, whose expression is planned once per session, so a
-- single-row INSERT pays little for it (unlike the SQL function of migration 0006, which a
-- column default re-plans for every statement). The trigger still fills an explicit NULL.
CREATE FUNCTION orderly_new_item_id() RETURNS uuid LANGUAGE plpgsql VOLATILE PARALLEL SAFE AS $$
BEGIN
    -- As orderly_uuid_v7(): 48 bits of Unix milliseconds, then random bits, version 7.
    RETURN encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid;
END
$$;
ALTER TABLE work_items ALTER COLUMN id SET DEFAULT orderly_new_item_id();

-- Rows the engine could not move, refused at the door instead of wedging the queue later:
-- an attempt counter at the top of its range makes every claim of the batch overflow, and a
-- PROCESSING row without a lease is never rescued. The engine's own writes satisfy each.
-- NOT VALID: rows already present are not scanned (an upgrade stays instant); new and
-- updated rows are checked.
ALTER TABLE work_items
    ADD CONSTRAINT work_items_attempt_range
        CHECK (attempt >= 0 AND attempt < 1000000000 AND attempt_base >= 0 AND attempt_base <= attempt) NOT VALID,
    ADD CONSTRAINT work_items_rescues_range CHECK (rescues >= 0 AND rescues < 1000000000) NOT VALID,
    ADD CONSTRAINT work_items_processing_has_lease
        CHECK (status <> 'PROCESSING' OR lease_expires_at IS NOT NULL) NOT VALID;
