-- Limits are now kept for tenants (`tenant:ID`) and template steps (`step:WORKFLOW/TYPE`)
-- besides agents, in the same tables. Each key's slot limit is written where every replica's
-- waker reads it: a replica wakes the items of any key, whoever parked them.
ALTER TABLE agent_state ADD COLUMN max_in_flight INTEGER;
