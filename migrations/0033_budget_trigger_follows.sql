-- The cost entries' budget trigger (migration 0028) is enabled only while a budget exists:
-- a statement trigger with a transition table keeps every inserted row in a tuple store
-- before its function even looks, and with usage on every item that cost the completions a
-- measurable share. Turning it on or off takes a short lock on cost_entries, once, when the
-- first budget is made or the last one removed (as migration 0023 does for template needs).
CREATE FUNCTION orderly_budget_trigger_follows() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    wanted boolean := EXISTS (SELECT 1 FROM budgets);
    enabled boolean;
BEGIN
    SELECT tgenabled <> 'D' INTO enabled FROM pg_trigger
     WHERE tgrelid = 'cost_entries'::regclass AND tgname = 'cost_entries_budget_spend';
    IF enabled IS NULL OR enabled = wanted THEN
        RETURN;
    END IF;
    IF wanted THEN
        ALTER TABLE cost_entries ENABLE TRIGGER cost_entries_budget_spend;
    ELSE
        ALTER TABLE cost_entries DISABLE TRIGGER cost_entries_budget_spend;
    END IF;
END
$$;

CREATE FUNCTION orderly_budgets_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM orderly_budget_trigger_follows();
    RETURN NULL;
END
$$;
CREATE TRIGGER budgets_follow AFTER INSERT OR DELETE ON budgets
    FOR EACH STATEMENT EXECUTE FUNCTION orderly_budgets_changed();
SELECT orderly_budget_trigger_follows();
