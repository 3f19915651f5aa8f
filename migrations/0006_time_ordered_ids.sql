-- Time-ordered keys. Random (v4) uuids scatter every insert across the whole of each
-- index on them, so a growing history makes every insert touch a cold page (and, after each
-- checkpoint, write a full page image). A v7 uuid begins with the millisecond it was made:
-- new keys land on the right-hand edge of the index, which PostgreSQL appends to without
-- descending the tree. The engine makes attempt ids itself (v7); these defaults cover the
-- other rows it writes, in batches. The upstream's tables keep the seed's gen_random_uuid():
-- a SQL function in a column default is planned again for every INSERT statement, which
-- cost a single-row upstream INSERT 13% (scripts/bench-insert).
CREATE FUNCTION orderly_uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    -- 48 bits of Unix milliseconds, then gen_random_uuid()'s random bits; version nibble
    -- 0100 -> 0111 (bits 52 and 53 of the big-endian bytes, counted from the low bit of
    -- each byte as set_bit does); the variant bits are already RFC 9562's.
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

ALTER TABLE attempts ALTER COLUMN id SET DEFAULT orderly_uuid_v7();
ALTER TABLE approval_events ALTER COLUMN id SET DEFAULT orderly_uuid_v7();
ALTER TABLE eval_results ALTER COLUMN id SET DEFAULT orderly_uuid_v7();
ALTER TABLE dead_letters ALTER COLUMN id SET DEFAULT orderly_uuid_v7();
