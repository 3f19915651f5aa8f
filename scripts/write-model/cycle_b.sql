-- Variant B: the claim leases the queue row and marks the item; the completion deletes it.
CREATE TEMP TABLE IF NOT EXISTS claimed (id uuid, att int);
DELETE FROM claimed;
WITH next AS (SELECT ctid FROM item_queue WHERE leased_until IS NULL AND run_at <= now()
              ORDER BY priority DESC, run_at LIMIT :b FOR UPDATE SKIP LOCKED),
     q AS (UPDATE item_queue SET leased_until = now() + interval '30 s'
           WHERE ctid = ANY (ARRAY (SELECT ctid FROM next)) RETURNING item_id),
     c AS (UPDATE work_items w SET status = 'PROCESSING', attempt = w.attempt + 1,
                  lease_expires_at = now() + interval '30 s', locked_by = 'w', claimed_at = now()
           WHERE w.id = ANY (ARRAY (SELECT item_id FROM q)) RETURNING w.id, w.attempt)
INSERT INTO claimed SELECT id, attempt FROM c;
BEGIN;
WITH done AS (UPDATE work_items w SET status = 'COMPLETED', result = '{"echo": {"n": 1}}', processed_at = now(),
                     lease_expires_at = NULL, locked_by = NULL
              WHERE w.id = ANY (ARRAY (SELECT id FROM claimed)) AND w.status = 'PROCESSING' RETURNING w.id, w.attempt),
     gone AS (DELETE FROM item_queue WHERE item_id = ANY (ARRAY (SELECT id FROM done))),
     a AS (INSERT INTO attempts (id, work_item_id, attempt_number, agent_id, status, input, output, started_at, completed_at, duration_ms)
           SELECT orderly_uuid_v7(), id, attempt, 'echo', 'COMPLETED', '{"agent": "echo", "content": {"n": 1}}', '{"echo": {"n": 1}}', now(), now(), 0
           FROM done RETURNING id, work_item_id)
INSERT INTO approval_events (work_item_id, attempt_id, approver_id, decision, reason, policy_version, source)
SELECT work_item_id, id, 'policy-approve_all', 'APPROVED', 'default policy approves every output', 'approve_all/1', 'POLICY' FROM a;
COMMIT;
