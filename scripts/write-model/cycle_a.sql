-- Variant A, one pgbench transaction: claim a batch of items (commit), then complete them with the
-- attempt and the approval row (commit). The claimed ids pass through a temporary table.
CREATE TEMP TABLE IF NOT EXISTS claimed (id uuid, att int);
DELETE FROM claimed;
WITH next AS (SELECT ctid FROM work_items WHERE status = 'QUEUED' AND deps_pending = 0 AND run_at <= now()
              ORDER BY priority DESC, run_at LIMIT :b FOR UPDATE SKIP LOCKED),
     c AS (UPDATE work_items w SET status = 'PROCESSING', attempt = w.attempt + 1,
                  lease_expires_at = now() + interval '30 s', locked_by = 'w', claimed_at = now()
           WHERE w.ctid = ANY (ARRAY (SELECT ctid FROM next)) RETURNING w.id, w.attempt)
INSERT INTO claimed SELECT id, attempt FROM c;
BEGIN;
WITH done AS (UPDATE work_items w SET status = 'COMPLETED', result = '{"echo": {"n": 1}}', processed_at = now(),
                     lease_expires_at = NULL, locked_by = NULL
              WHERE w.id = ANY (ARRAY (SELECT id FROM claimed)) AND w.status = 'PROCESSING' RETURNING w.id, w.attempt),
     a AS (INSERT INTO attempts (id, work_item_id, attempt_number, agent_id, status, input, output, started_at, completed_at, duration_ms)
           SELECT orderly_uuid_v7(), id, attempt, 'echo', 'COMPLETED', '{"agent": "echo", "content": {"n": 1}}', '{"echo": {"n": 1}}', now(), now(), 0
           FROM done RETURNING id, work_item_id)
INSERT INTO approval_events (work_item_id, attempt_id, approver_id, decision, reason, policy_version, source)
SELECT work_item_id, id, 'policy-approve_all', 'APPROVED', 'default policy approves every output', 'approve_all/1', 'POLICY' FROM a;
COMMIT;
