//! Panic isolation: a panic inside an agent's execution fails that attempt only, and one
//! inside an engine task is reported with the task's name, instead of unwinding through the
//! runtime and losing the task silently. Used by the runner, the dispatcher and the daemon's
//! task watcher.

/// A panic caught by [`CatchUnwind`], with its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Panicked(pub String);

/// Polls a future, turning a panic inside it into `Err` with the panic's message, so the
/// caller can fail one attempt (an agent) or report one task (the engine's loops) instead of
/// losing the task silently.
pub struct CatchUnwind<F>(pub F);

impl<F: std::future::Future + Unpin> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| std::pin::Pin::new(inner).poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(value)) => std::task::Poll::Ready(Ok(value)),
            Err(payload) => std::task::Poll::Ready(Err(Panicked(panic_message(payload.as_ref())))),
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
