//! Fault injection for the fault suite: `ORDERLY_FAILPOINTS=heartbeat,completer` makes the
//! named engine loops panic when they reach their failpoint, so tests can prove that a dying
//! task is noticed; `dispatcher_hang` makes the dispatcher stop making progress without dying
//! (a wedged loop, which only the liveness check notices). Failpoints sit at the edges of the
//! engine's loops, never inside a statement's function. Read once; unset (the normal case)
//! costs one atomic load per call.

use std::sync::OnceLock;

static ARMED: OnceLock<Vec<String>> = OnceLock::new();

/// Whether the failpoint `name` is armed (for failpoints that do something else than panic).
pub fn armed(name: &str) -> bool {
    let armed = ARMED.get_or_init(|| {
        std::env::var("ORDERLY_FAILPOINTS")
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    });
    armed.iter().any(|a| a == name)
}

/// Arms failpoints from code instead of the environment, for a test that calls the library
/// in a process of its own. Returns false when the failpoints were already read.
pub fn arm(names: &[&str]) -> bool {
    ARMED.set(names.iter().map(|n| (*n).to_owned()).collect()).is_ok()
}

/// Panics if the failpoint `name` is armed.
pub fn hit(name: &str) {
    if armed(name) {
        panic!("failpoint `{name}` armed by ORDERLY_FAILPOINTS");
    }
}
