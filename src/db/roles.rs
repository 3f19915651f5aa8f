//! Least-privilege database roles (`orderly roles`, docs/deploying.md, "Database roles"):
//!
//! | role | for | may |
//! |---|---|---|
//! | `PREFIX_owner` | `orderly migrate`, upgrades | owns every orderly object: DDL, everything |
//! | `PREFIX_daemon` | `orderly run` | what the engine does: claim and update items and orders, write attempts, evals, approvals, dead letters, audit rows, escalations; delete what the pruner prunes; read templates, schemas, SLA rules. No DDL, no TRUNCATE, no INSERT of orders or items |
//! | `PREFIX_producer` | upstream systems | INSERT and SELECT `work_orders`, `work_items` and `work_item_dependencies` of its own tenant only (row-level security on `orderly.tenant_id`); nothing else |
//! | `PREFIX_oncall` | operators' commands | read everything; replay/discard dead letters, approve/reject, acknowledge escalations (UPDATE, audit rows); no DELETE, no DDL, no enqueue |
//!
//! Row-level security is enabled (not forced: the owner is not subject to it) on
//! `work_orders` and `work_items`. The producer's policy keys on `tenant_id` =
//! `current_setting('orderly.tenant_id')` (an item by the tenant the insert trigger copies
//! from its order). The daemon has
//! `BYPASSRLS` (RLS adds nothing to the engine's statements) and, like oncall, a policy that
//! lets everything through, so that login roles granted membership work too.
//!
//! Idempotent: run it again after every `orderly migrate` (grants are per table, so a
//! migration's new tables need it). Needs a superuser (`BYPASSRLS`, ownership changes).

use sqlx::PgPool;

/// A role prefix that is not a plain SQL identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadPrefix(String);

/// The four roles' names, from a prefix (`orderly` → `orderly_owner`, …).
#[derive(Debug, Clone)]
pub struct Roles {
    pub owner: String,
    pub daemon: String,
    pub producer: String,
    pub oncall: String,
}

impl Roles {
    /// `prefix` must be a plain SQL identifier (letters, digits, `_`), checked here.
    pub fn new(prefix: &str) -> Result<Roles, BadPrefix> {
        let valid = !prefix.is_empty()
            && prefix.len() <= 40
            && prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !prefix.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(BadPrefix(format!(
                "role prefix {prefix:?} must be lower-case letters, digits and _ (at most 40)"
            )));
        }
        Ok(Roles {
            owner: format!("{prefix}_owner"),
            daemon: format!("{prefix}_daemon"),
            producer: format!("{prefix}_producer"),
            oncall: format!("{prefix}_oncall"),
        })
    }

    /// Every statement, in order, for the current database. Statements that depend on what
    /// exists (roles, tables, objects to hand to the owner) are `DO` blocks.
    pub fn statements(&self) -> Vec<String> {
        let Roles { owner, daemon, producer, oncall } = self;
        let mut sql = Vec::new();
        for (role, attributes) in [
            (owner, "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"),
            (daemon, "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE BYPASSRLS"),
            (producer, "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"),
            (oncall, "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"),
        ] {
            sql.push(format!(
                "DO $$ BEGIN \
                   IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role}; END IF; \
                 END $$"
            ));
            sql.push(format!("ALTER ROLE {role} {attributes}"));
        }
        // Connect to this database and use the schema; only the owner creates in it.
        sql.push(format!(
            "DO $$ BEGIN EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO {owner}, {daemon}, {producer}, {oncall}', current_database()); \
                        EXECUTE format('GRANT CREATE ON DATABASE %I TO {owner}', current_database()); END $$"
        ));
        sql.push(format!("GRANT USAGE ON SCHEMA public TO {owner}, {daemon}, {producer}, {oncall}"));
        sql.push(format!("GRANT CREATE ON SCHEMA public TO {owner}"));
        // The owner owns every orderly object in the schema (tables, sequences, views, types,
        // functions), except what an extension owns (vector's types and functions).
        sql.push(format!(
            "DO $$ DECLARE r record; BEGIN
               FOR r IN SELECT c.oid::regclass AS name, c.relkind FROM pg_class c
                         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
                           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                           AND d.objid = c.oid AND d.deptype = 'e')
                           AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                           AND d.objid = c.oid AND d.deptype IN ('a', 'i')))
               LOOP
                 EXECUTE format('ALTER %s %s OWNER TO {owner}',
                   CASE r.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END, r.name);
               END LOOP;
               FOR r IN SELECT t.oid::regtype AS name FROM pg_type t
                         WHERE t.typnamespace = 'public'::regnamespace AND t.typtype IN ('e', 'd', 'c')
                           AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
                           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass
                                           AND d.objid = t.oid AND d.deptype = 'e')
               LOOP
                 EXECUTE format('ALTER TYPE %s OWNER TO {owner}', r.name);
               END LOOP;
               FOR r IN SELECT p.oid::regprocedure AS name FROM pg_proc p
                         WHERE p.pronamespace = 'public'::regnamespace
                           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                                           AND d.objid = p.oid AND d.deptype = 'e')
               LOOP
                 EXECUTE format('ALTER ROUTINE %s OWNER TO {owner}', r.name);
               END LOOP;
             END $$"
        ));
        // Start from nothing on every table, then grant what each role needs.
        sql.push(format!(
            "DO $$ DECLARE r record; BEGIN
               FOR r IN SELECT c.oid::regclass AS name FROM pg_class c
                         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
               LOOP
                 EXECUTE format('REVOKE ALL ON %s FROM {daemon}, {producer}, {oncall}', r.name);
               END LOOP;
             END $$"
        ));
        let grants: &[(&str, &[&str], &[&str])] = &[
            // (privileges, to, tables)
            ("SELECT, UPDATE, DELETE", &[daemon], &["work_orders", "work_items"]),
            ("SELECT, INSERT, UPDATE, DELETE", &[daemon], &["attempts", "dead_letters"]),
            ("SELECT, INSERT, DELETE", &[daemon], &["approval_events", "eval_results"]),
            ("SELECT, DELETE", &[daemon], &["mem_docs"]),
            ("INSERT", &[daemon], &["audit_logs"]),
            ("SELECT, INSERT, UPDATE, DELETE", &[daemon], &["escalations", "notifications"]),
            ("SELECT", &[daemon], &["workflow_templates", "schemas", "sla_rules", "sla_levels", "connectors"]),
            ("SELECT", &[daemon, oncall], &["_sqlx_migrations", "orderly_leader"]),
            ("INSERT, UPDATE", &[daemon], &["orderly_leader"]),
            ("SELECT, INSERT, UPDATE, DELETE", &[daemon], &["orderly_replicas"]),
            ("SELECT", &[oncall], &["orderly_replicas"]),
            ("SELECT, INSERT, UPDATE, DELETE", &[daemon], &["orderly_activity"]),
            ("SELECT", &[oncall], &["orderly_activity"]),
            ("SELECT, INSERT", &[daemon], &["cost_entries"]),
            ("SELECT", &[oncall], &["cost_entries", "run_logs", "run_artifacts"]),
            ("SELECT, INSERT, DELETE", &[daemon], &["run_logs", "run_artifacts"]),
            // Budgets: the daemon's cost entries add their spend (trigger), its claims park
            // items; on-call makes and changes them.
            ("SELECT, UPDATE", &[daemon], &["budgets"]),
            ("SELECT, INSERT, UPDATE, DELETE", &[daemon, oncall], &["budget_waits"]),
            ("SELECT, INSERT, UPDATE, DELETE", &[oncall], &["budgets"]),
            ("SELECT, INSERT, UPDATE, DELETE", &[daemon], &["run_progress"]),
            ("SELECT", &[oncall], &["run_progress"]),
            // Reviews: the completer writes them, a person's reject-with-revise too.
            ("SELECT, INSERT, UPDATE, DELETE", &[daemon], &["item_reviews"]),
            ("SELECT, INSERT, UPDATE", &[oncall], &["item_reviews"]),
            ("SELECT", &[daemon], &["orderly_keys"]),
            ("SELECT, INSERT, UPDATE, DELETE", &[daemon], &["agent_state", "agent_slots", "agent_waits"]),
            ("SELECT", &[oncall], &["agent_state", "agent_slots", "agent_waits"]),
            ("SELECT, UPDATE", &[daemon, oncall], &["schedules"]),
            ("SELECT, INSERT", &[producer], &["work_orders", "work_items", "work_item_dependencies"]),
            ("SELECT", &[daemon, oncall], &["work_item_dependencies"]),
            ("SELECT", &[daemon, producer, oncall], &["workflow_step_needs"]),
            (
                "SELECT",
                &[oncall],
                &[
                    "work_orders",
                    "work_items",
                    "attempts",
                    "approval_events",
                    "eval_results",
                    "dead_letters",
                    "mem_docs",
                    "audit_logs",
                    "workflow_templates",
                    "schemas",
                    "sla_rules",
                    "sla_levels",
                    "connectors",
                    "escalations",
                    "notifications",
                ],
            ),
            ("UPDATE", &[oncall], &["work_orders", "work_items", "attempts", "dead_letters", "escalations"]),
            ("INSERT", &[oncall], &["audit_logs", "approval_events"]),
        ];
        for (privileges, to, tables) in grants {
            sql.push(format!("GRANT {privileges} ON {} TO {}", tables.join(", "), to.join(", ")));
        }
        // A schedule's slot is made by a SECURITY DEFINER function (the daemon and on-call
        // cannot INSERT orders themselves); the migration revoked it from PUBLIC.
        sql.push(format!(
            "DO $$ BEGIN IF to_regprocedure('orderly_schedule_slot(uuid, timestamptz)') IS NOT NULL THEN \
               GRANT EXECUTE ON FUNCTION orderly_schedule_slot(uuid, timestamptz) TO {daemon}, {oncall}; END IF; END $$"
        ));
        // Dependencies are settled by a SECURITY DEFINER function (it writes the edges and
        // the dependents' counters); the migration revoked it from PUBLIC.
        sql.push(format!(
            "DO $$ BEGIN IF to_regprocedure('orderly_settle_dependencies(uuid[], text)') IS NOT NULL THEN \
               GRANT EXECUTE ON FUNCTION orderly_settle_dependencies(uuid[], text) TO {daemon}, {oncall}; END IF; END $$"
        ));
        // PagerDuty's acknowledge and resolve are queued by a SECURITY DEFINER function
        // (migration 0024) in on-call's and the sweeper's transactions.
        sql.push(format!(
            "DO $$ BEGIN IF to_regprocedure('orderly_incident_events(uuid[])') IS NOT NULL THEN \
               GRANT EXECUTE ON FUNCTION orderly_incident_events(uuid[]) TO {daemon}, {oncall}; END IF; END $$"
        ));
        // Row-level security: producers see and insert their own tenant's rows only.
        let tenant = "NULLIF(current_setting('orderly.tenant_id', true), '')::uuid";
        // An item carries its order's tenant (`work_items.tenant_id`, set by the insert trigger
        // from the order whatever the INSERT sent; migration 0019), so a new item is checked
        // without a subquery, which could not see an order inserted by the same statement.
        // Items inserted before that migration have no tenant of their own and are read through
        // their order.
        let own_order = format!("tenant_id = {tenant}");
        let own_item = format!(
            "tenant_id = {tenant} OR (tenant_id IS NULL AND EXISTS (SELECT 1 FROM work_orders o \
             WHERE o.id = work_items.work_order_id AND o.tenant_id = {tenant}))"
        );
        let new_item = format!("tenant_id = {tenant}");
        for (table, producer_reads, producer_writes) in
            [("work_orders", &own_order, &own_order), ("work_items", &own_item, &new_item)]
        {
            sql.push(format!("ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"));
            sql.push(format!("DROP POLICY IF EXISTS orderly_engine ON {table}"));
            sql.push(format!(
                "CREATE POLICY orderly_engine ON {table} FOR ALL TO {daemon}, {oncall} USING (true) WITH CHECK (true)"
            ));
            sql.push(format!("DROP POLICY IF EXISTS orderly_tenant ON {table}"));
            sql.push(format!(
                "CREATE POLICY orderly_tenant ON {table} FOR ALL TO {producer} \
                 USING ({producer_reads}) WITH CHECK ({producer_writes})"
            ));
        }
        // A producer's edges start from an item it can see (its own tenant's; the edge
        // trigger refuses an edge between tenants).
        sql.push("ALTER TABLE work_item_dependencies ENABLE ROW LEVEL SECURITY".to_owned());
        for policy in ["orderly_engine", "orderly_tenant"] {
            sql.push(format!("DROP POLICY IF EXISTS {policy} ON work_item_dependencies"));
        }
        sql.push(format!(
            "CREATE POLICY orderly_engine ON work_item_dependencies FOR ALL TO {daemon}, {oncall} USING (true) WITH CHECK (true)"
        ));
        sql.push(format!(
            "CREATE POLICY orderly_tenant ON work_item_dependencies FOR ALL TO {producer} \
             USING (EXISTS (SELECT 1 FROM work_items w WHERE w.id = work_item_id)) \
             WITH CHECK (EXISTS (SELECT 1 FROM work_items w WHERE w.id = work_item_id))"
        ));
        sql
    }
}

/// Creates or updates the roles, grants and policies in the database `pool` is connected
/// to, in one transaction.
pub async fn apply(pool: &PgPool, roles: &Roles) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for statement in roles.statements() {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut *tx).await?;
    }
    tx.commit().await
}
