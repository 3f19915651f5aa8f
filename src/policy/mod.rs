//! The rules every part of the engine applies the same way: which agent runs an item and
//! with what limits (`catalog`: workflow templates over config routes, schemas), whether an
//! item's content is usable (`content`), what an output must satisfy to be approved
//! (`evaluators`: assertions and thresholds), and what an
//! outcome means for the item (`decision`: pure state rules, the attempt budget, backoff).
//! The hot path, the rescuer and operators' actions all read them from here, so none of them
//! reaches into another's module.

pub mod budgets;
pub mod catalog;
pub mod content;
pub mod costs;
pub mod decision;
pub mod evaluators;
pub mod limits;
pub mod progress;
pub mod report;
