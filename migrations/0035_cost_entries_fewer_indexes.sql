-- Cost entries keep one index besides their key: the BRIN range index on created_at, which
-- serves every report (a time range, then grouped). The btree on (tenant_id, created_at)
-- cost each entry one more random index insert in the completion's batch (usage on every
-- item measured 0.88x of none); a report for one tenant reads the range and filters.
DROP INDEX cost_entries_tenant_created;
