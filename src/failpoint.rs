//! Fault injection for the fault suite: `ORDERLY_FAILPOINTS=heartbeat,completer` makes the
//! named engine loops panic when they reach their failpoint, so tests can prove that a dying
//! task is noticed; `dispatcher_hang` makes the dispatcher stop making progress without dying
//! (a wedged loop, which only the liveness check notices); `roll_up_before_commit` holds each
//! completion batch for two seconds between its roll-up and its commit (`db::queue`), so a
//! test can finish another item of the order inside that window. Read once; unset (the normal case) costs one
//! atomic load per call.

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

/// Polls a future, turning a panic inside it into `Err` with the panic's message, so the
/// caller can fail one attempt (an agent) or report one task (the engine's loops) instead of
/// losing the task silently.
pub struct CatchUnwind<F>(pub F);

impl<F: std::future::Future + Unpin> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| std::pin::Pin::new(inner).poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(value)) => std::task::Poll::Ready(Ok(value)),
            Err(payload) => std::task::Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}
