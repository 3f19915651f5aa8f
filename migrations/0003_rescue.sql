-- When the current attempt was claimed (database clock): the start of an attempt the
-- rescuer has to close for a worker that vanished.
ALTER TABLE work_items ADD COLUMN claimed_at TIMESTAMPTZ;
