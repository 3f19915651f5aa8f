//! `orderly cancel ITEM | --order ORDER`: cancels an item, or every live item of an order
//! (see `db::items` for what happens to a running attempt).

use super::{actor, connect};
use crate::cli::CancelArgs;
use crate::config::Settings;
use crate::db;
use crate::db::items::Target;

pub async fn run(settings: &Settings, args: CancelArgs) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    let target = match (args.item, args.order) {
        (Some(item), None) => Target::Item(item),
        (None, Some(order)) => Target::Order(order),
        _ => anyhow::bail!("give an item id or --order ORDER"),
    };
    let cancelled = crate::actions::cancel(&pool, target, &actor(args.actor), args.reason.as_deref()).await?;
    for c in &cancelled {
        match c.interrupted_attempt {
            Some(n) => println!(
                "cancelled: work item {} (was {}; its running attempt {n} is recorded as interrupted, its result will be discarded)",
                c.work_item_id, c.was
            ),
            None => println!("cancelled: work item {} (was {})", c.work_item_id, c.was),
        }
    }
    if let Some(order) = cancelled.first().map(|c| c.work_order_id)
        && let Some(status) = db::items::order_status(&pool, order).await?
    {
        println!("work order {order} is {status}");
    }
    Ok(())
}
