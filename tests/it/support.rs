//! The engine helpers and temporary directories, from the test kit.

pub use zhijian_test_kit::engine::*;
pub use zhijian_test_kit::tmp::*;
