//! Waiting for something to happen: polled against a deadline, never a
//! fixed sleep that hopes it happened.

use std::time::{Duration, Instant};

/// How long a test waits for what it expects before it fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Waits until `check` holds, polling every 50 ms; fails the test, naming
/// `what`, after [`DEADLINE`].
pub async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
