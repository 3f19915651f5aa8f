//! SLA rules, escalation chains and durable notifications (migration 0013). The notifier
//! delivers the notifications outbox through the connectors' channels on every replica.

pub mod channels;
pub mod notifier;
