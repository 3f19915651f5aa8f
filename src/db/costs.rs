//! Cost entries (migration 0026): written by the completer with the attempts they belong to,
//! read by `orderly costs`.

use super::distributed::BindTenant;
use crate::model::Completion;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// Writes the cost entries of the written attempts of a batch (`written`: their attempt
/// ids), inside the completer's transaction. The order's tenant and workflow are read here;
/// amounts are computed by numeric arithmetic from the decimal texts. On a Citus cluster
/// `tenant` names the batch's one tenant, whose order is read on its node.
pub async fn record<'a>(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batch: impl IntoIterator<Item = &'a Completion>,
    written: &std::collections::HashSet<Uuid>,
    tenant: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    let mut c = Columns::default();
    for done in batch.into_iter().filter(|d| written.contains(&d.attempt_id)) {
        for cost in &done.report.costs {
            let tokens = cost.tokens.as_ref();
            c.attempt.push(done.attempt_id);
            c.item.push(done.item_id);
            c.order.push(done.order_id);
            c.agent.push(done.agent.as_str());
            c.model.push(cost.model.as_deref());
            c.cost_type.push(cost.cost_type);
            c.quantity.push(cost.quantity.as_deref());
            c.unit.push(cost.unit);
            c.input.push(tokens.and_then(|t| t.input.as_deref()));
            c.output.push(tokens.and_then(|t| t.output.as_deref()));
            c.input_price.push(tokens.and_then(|t| t.input_per_million.as_deref()));
            c.output_price.push(tokens.and_then(|t| t.output_per_million.as_deref()));
            c.amount.push(cost.amount.as_deref());
            c.currency.push(cost.currency.as_deref());
        }
    }
    if c.attempt.is_empty() {
        return Ok(());
    }
    let sql = match tenant {
        None => RECORD_SQL.to_string(),
        Some(_) => format!("{RECORD_SQL} AND o.tenant_id = $15"),
    };
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&c.attempt)
        .bind(&c.item)
        .bind(&c.order)
        .bind(&c.agent)
        .bind(&c.model)
        .bind(&c.cost_type)
        .bind(&c.quantity)
        .bind(&c.unit)
        .bind(&c.input)
        .bind(&c.output)
        .bind(&c.input_price)
        .bind(&c.output_price)
        .bind(&c.amount)
        .bind(&c.currency)
        .bind_tenant(tenant)
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

/// Tokens: the quantity is input plus output; the amount, when the table prices the model,
/// is each count times its price per million, in numeric arithmetic.
const RECORD_SQL: &str =
    "INSERT INTO cost_entries (attempt_id, work_item_id, work_order_id, tenant_id, workflow_id, agent_id, model,
                               cost_type, quantity, unit, input_quantity, output_quantity, amount, currency)
     SELECT u.attempt, u.item, u.ord, o.tenant_id, o.workflow_id, u.agent, u.model, u.cost_type::cost_type,
            coalesce(u.quantity::numeric, coalesce(u.input::numeric, 0) + coalesce(u.output::numeric, 0)), u.unit,
            u.input::numeric, u.output::numeric,
            coalesce(u.amount::numeric,
                     (coalesce(u.input::numeric, 0) * u.input_price::numeric
                      + coalesce(u.output::numeric, 0) * u.output_price::numeric) / 1000000),
            CASE WHEN u.amount IS NOT NULL OR u.input_price IS NOT NULL THEN u.currency END
     FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                 $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[])
          AS u(attempt, item, ord, agent, model, cost_type, quantity, unit, input, output, input_price,
               output_price, amount, currency)
     JOIN work_orders o ON o.id = u.ord";

#[derive(Default)]
struct Columns<'a> {
    attempt: Vec<Uuid>,
    item: Vec<Uuid>,
    order: Vec<Uuid>,
    agent: Vec<&'a str>,
    model: Vec<Option<&'a str>>,
    cost_type: Vec<&'static str>,
    quantity: Vec<Option<&'a str>>,
    unit: Vec<&'static str>,
    input: Vec<Option<&'a str>>,
    output: Vec<Option<&'a str>>,
    input_price: Vec<Option<&'a str>>,
    output_price: Vec<Option<&'a str>>,
    amount: Vec<Option<&'a str>>,
    currency: Vec<Option<&'a str>>,
}

/// What a report groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Tenant,
    Agent,
    Workflow,
    Model,
}

impl By {
    /// From the API's and the page's `by` parameter.
    pub fn parse(value: &str) -> Option<By> {
        match value {
            "tenant" => Some(By::Tenant),
            "agent" => Some(By::Agent),
            "workflow" => Some(By::Workflow),
            "model" => Some(By::Model),
            _ => None,
        }
    }

    fn column(self) -> &'static str {
        match self {
            By::Tenant => "tenant_id::text",
            By::Agent => "agent_id",
            By::Workflow => "workflow_id",
            By::Model => "coalesce(model, '(none)')",
        }
    }
}

/// One line of a cost report: a group, its currency, the amount (exact decimal text) and
/// the attempts it covers; entries without a price are counted apart.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Line {
    pub key: String,
    pub currency: Option<String>,
    /// Sum of the priced entries, as decimal text (NULL currency: unpriced entries).
    pub amount: Option<String>,
    pub entries: i64,
    pub attempts: i64,
}

/// Spend since `since`, grouped, largest first.
pub async fn report(pool: &PgPool, by: By, since: DateTime<Utc>) -> Result<Vec<Line>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {key} AS key, currency::text AS currency, sum(amount)::text AS amount, count(*) AS entries,
                count(DISTINCT attempt_id) AS attempts
         FROM cost_entries WHERE created_at >= $1
         GROUP BY 1, 2 ORDER BY sum(amount) DESC NULLS LAST, 1",
        key = by.column()
    )))
    .bind(since)
    .fetch_all(pool)
    .await
}

/// One day's spend in one currency (UTC days), exact.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Day {
    pub day: DateTime<Utc>,
    pub currency: String,
    pub amount: String,
}

/// The priced spend per UTC day over the last `days` days, oldest first.
pub async fn per_day(pool: &PgPool, days: i32) -> Result<Vec<Day>, sqlx::Error> {
    sqlx::query_as(
        "SELECT date_trunc('day', created_at, 'UTC') AS day, currency::text AS currency, sum(amount)::text AS amount
         FROM cost_entries
         WHERE created_at >= date_trunc('day', now(), 'UTC') - make_interval(days => $1 - 1) AND amount IS NOT NULL
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(days)
    .fetch_all(pool)
    .await
}
