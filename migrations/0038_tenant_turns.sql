-- Turns among tenants (docs/limits.md, "Tenants take turns"): the runnable items by priority
-- and tenant, so that a claim can step from one tenant with runnable work to the next at the
-- top priority without reading any tenant's backlog, and take a few items of each. Entries
-- are not merged into posting lists: an entry whose item has left the queue is then marked
-- dead on its own by the next scan that meets it (see migration 0016).
--
-- Its predicate says the same rows as idx_work_items_ready's in other words, so that the
-- planner can use each index only for its own claim whatever the statistics say (on those of
-- an empty queue it walked the other one, reading a whole priority level): the oldest-first
-- claim (`deps_pending = 0`, no tenant) cannot prove `tenant_id IS NOT NULL`, and the turns
-- claim (`deps_pending <= 0`) cannot prove `deps_pending = 0`. A dependency count is never
-- negative and every item has its order's tenant.
CREATE INDEX idx_work_items_ready_tenant ON work_items (priority DESC, tenant_id, run_at)
    WITH (deduplicate_items = off)
    WHERE status = 'QUEUED' AND deps_pending <= 0 AND tenant_id IS NOT NULL;
