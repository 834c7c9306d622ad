//! zhijian's tools, outside the product: the load generator and its
//! pass-through baseline (`loadgen`), synthetic conversations and a large
//! generated rulebook (`synth`), and the invariants the fuzz targets and
//! the seeded smoke test check (`invariants`). The binary `zhijian-tools`
//! runs them.

pub mod invariants;
pub mod loadgen;
pub mod synth;
