//! `orderly enqueue`: one work order with its items, as an upstream would INSERT them.

use super::connect;
use crate::cli::EnqueueArgs;
use crate::config::Settings;
use crate::db;
use anyhow::{Context, bail};
use uuid::Uuid;

pub async fn run(settings: &Settings, args: EnqueueArgs) -> anyhow::Result<()> {
    let order = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str::<db::orders::NewOrder>(&text)
                .with_context(|| format!("parsing {}", path.display()))?
        }
        None => {
            if args.item.is_empty() {
                bail!("give at least one --item TYPE=CONTENT, or --file ORDER.json");
            }
            let items = args
                .item
                .iter()
                .map(|spec| {
                    let (item_type, content) =
                        spec.split_once('=').with_context(|| format!("--item `{spec}` is not TYPE=CONTENT"))?;
                    Ok(db::orders::NewItem {
                        item_type: item_type.trim().to_owned(),
                        content: serde_json::Value::String(content.to_owned()),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            db::orders::NewOrder {
                workflow_id: args.workflow.clone(),
                tenant_id: args.tenant.unwrap_or_else(Uuid::new_v4),
                created_by: args.created_by.unwrap_or_else(Uuid::new_v4),
                priority: Some(args.priority.to_ascii_uppercase()),
                metadata: None,
                items,
            }
        }
    };
    if order.items.is_empty() {
        bail!("the order has no items");
    }
    let pool = connect(settings).await?;
    let known = db::orders::item_types(&pool).await?;
    if let Some(unknown) = order.items.iter().find(|i| !known.contains(&i.item_type)) {
        bail!(
            "unknown item type {:?}: the database knows {} (add one with ALTER TYPE work_item_type ADD VALUE '...')",
            unknown.item_type,
            known.join(", ")
        );
    }
    let (order_id, items) = db::orders::enqueue(&pool, &order).await.context("enqueueing")?;
    println!("work order {order_id}");
    for (id, item) in items.iter().zip(&order.items) {
        println!("  work item {id} {}", item.item_type);
    }
    Ok(())
}
