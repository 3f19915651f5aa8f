-- Two more connector types for the SLA notifications (docs/sla.md, "Connectors"), and what
-- PagerDuty needs to follow orderly's escalations.
--
-- TELEGRAM: a bot's sendMessage to a chat. PAGERDUTY: an Events API v2 integration. Each group
-- of escalations a level fires to a PAGERDUTY connector (one FIRED notification) is one
-- incident, triggered with the notification's `dedup_key`; once every escalation of the group
-- is acknowledged (none OPEN) or resolved, an ACKNOWLEDGED or RESOLVED notification with the
-- same key is queued, in the transaction that made it so (orderly_incident_events below), and
-- the notifier sends it as PagerDuty's acknowledge or resolve, after the trigger.
--
-- ADD VALUE runs inside the migration's transaction (PostgreSQL 12 and later) as long as the
-- new values are not used in it; nothing below uses them.
ALTER TYPE connector_type ADD VALUE IF NOT EXISTS 'PAGERDUTY';
ALTER TYPE connector_type ADD VALUE IF NOT EXISTS 'TELEGRAM';

ALTER TABLE notifications DROP CONSTRAINT notifications_kind_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_kind_check
    CHECK (kind IN ('FIRED', 'ACKNOWLEDGED', 'RESOLVED'));
-- The incident key of a PAGERDUTY connector's notifications (NULL for every other type): the
-- trigger's, made when it is queued, and its acknowledge's and resolve's. PagerDuty takes at
-- most 255 characters.
ALTER TABLE notifications ADD COLUMN dedup_key TEXT CHECK (length(dedup_key) BETWEEN 1 AND 255);

-- One event of each kind per incident: queuing an acknowledge or a resolve twice (an operator
-- and the sweeper at once) leaves one. The claim reads it too: an incident's acknowledge and
-- resolve wait while an earlier event of the same key is PENDING, so PagerDuty receives them
-- in order whatever the retries.
CREATE UNIQUE INDEX notifications_dedup_key ON notifications (connector_id, dedup_key, kind)
    WHERE dedup_key IS NOT NULL;
-- The incidents an escalation belongs to, looked up when it is acknowledged or resolved. Only
-- the triggers of PAGERDUTY connectors are in it.
CREATE INDEX idx_notifications_incidents ON notifications USING gin (escalation_ids)
    WHERE dedup_key IS NOT NULL AND kind = 'FIRED';

-- Queues the acknowledge or resolve of every incident that one of `changed` (escalations just
-- acknowledged or resolved, in the caller's transaction) belongs to, when the whole incident
-- is now acknowledged (none OPEN, some ACKNOWLEDGED: ACKNOWLEDGED) or resolved (RESOLVED), at
-- most once per incident and kind. Returns how many it queued.
--
-- The incidents' triggers are locked first, in id order: of two transactions changing the
-- escalations of one incident at once (an operator and the sweeper), the later one waits here
-- and its next statement (a new snapshot) sees the other's change, so one of them queues the
-- event. The sweeper's merge of new escalations into an undelivered trigger holds the same
-- lock, so an incident never gets new OPEN escalations after its acknowledge was queued.
--
-- SECURITY DEFINER: on-call's role (`orderly roles`) cannot write the outbox itself. Revoked
-- from PUBLIC; `orderly roles` grants it to the daemon and on-call roles.
CREATE FUNCTION orderly_incident_events(changed uuid[]) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
-- The GIN index is read through a bitmap, which the engine's connections turn off.
SET enable_bitmapscan = on
AS $$
DECLARE
    incidents uuid[];
    queued integer;
BEGIN
    SELECT array_agg(locked.id) INTO incidents
      FROM (SELECT n.id FROM notifications n
             WHERE n.dedup_key IS NOT NULL AND n.kind = 'FIRED' AND n.escalation_ids && changed
             ORDER BY n.id
             FOR NO KEY UPDATE) locked;
    IF incidents IS NULL THEN
        RETURN 0;
    END IF;
    WITH state AS (
        SELECT n.id, n.connector_id, n.rule_id, n.level, n.dedup_key, n.escalation_ids, n.payload->'rule' AS rule,
               count(e.id) FILTER (WHERE e.status = 'OPEN') AS open,
               count(e.id) FILTER (WHERE e.status = 'ACKNOWLEDGED') AS acknowledged
          FROM notifications n
          LEFT JOIN escalations e ON e.id = ANY (n.escalation_ids)
         WHERE n.id = ANY (incidents)
         GROUP BY n.id
    )
    INSERT INTO notifications (connector_id, rule_id, level, kind, escalation_ids, payload, dedup_key)
    SELECT s.connector_id, s.rule_id, s.level, k.kind, s.escalation_ids,
           jsonb_build_object('kind', k.kind, 'rule', s.rule, 'level', s.level,
                              'count', cardinality(s.escalation_ids), 'dedup_key', s.dedup_key),
           s.dedup_key
      FROM state s
     CROSS JOIN LATERAL (SELECT CASE WHEN s.acknowledged = 0 THEN 'RESOLVED' ELSE 'ACKNOWLEDGED' END AS kind) k
     WHERE s.open = 0
    ON CONFLICT (connector_id, dedup_key, kind) WHERE dedup_key IS NOT NULL DO NOTHING;
    GET DIAGNOSTICS queued = ROW_COUNT;
    RETURN queued;
END
$$;
REVOKE ALL ON FUNCTION orderly_incident_events(uuid[]) FROM PUBLIC;
