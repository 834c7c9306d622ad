//! The nats-server harness, from the test kit.

pub use zhijian_test_kit::nats::*;
pub use zhijian_test_kit::tmp::tempdir;
