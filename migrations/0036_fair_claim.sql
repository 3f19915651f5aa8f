-- Fairness among tenants (issue "limits and fairness"): within a priority, the claim takes
-- turns among the tenants with runnable work, so one tenant's backlog does not delay another
-- tenant's few items (db::queue::CLAIM_SQL walks this index one tenant at a time).
--
-- The ready index gains the tenant between the priority and the run time. It replaces the
-- (priority, run_at) index rather than standing beside it: one more index on work_items would
-- cost every INSERT and every claim another entry. Each (priority, tenant) group's first
-- entry is its oldest run time, so one descent tells whether a tenant has runnable work.

-- Items queued before migration 0019 have no tenant of their own: they take their order's,
-- so that the walk, which steps from tenant to tenant, finds them.
UPDATE work_items w SET tenant_id = o.tenant_id
FROM work_orders o
WHERE w.tenant_id IS NULL AND o.id = w.work_order_id
  AND w.status IN ('QUEUED', 'PROCESSING', 'AWAITING_APPROVAL');

DROP INDEX idx_work_items_ready;
CREATE INDEX idx_work_items_ready ON work_items (priority DESC, tenant_id, run_at)
    WHERE status = 'QUEUED' AND deps_pending = 0;

-- Limits are now kept for tenants (`tenant:ID`) and template steps (`step:WORKFLOW/TYPE`)
-- besides agents, in the same tables. Each key's slot limit is written where every replica's
-- waker reads it: a replica wakes the items of any key, whoever parked them.
ALTER TABLE agent_state ADD COLUMN max_in_flight INTEGER;
