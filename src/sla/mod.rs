//! SLA rules, escalation chains and notifications. Rules are rows (`sla_rules` with their
//! `sla_levels`); the leader's `sweeper` fires each level once when its threshold passes on
//! the rule's clock, writes the group's notifications in the same transaction, and resolves
//! what no longer runs late. `rules` checks rules and renders their messages.

pub mod rules;
pub mod sweeper;
