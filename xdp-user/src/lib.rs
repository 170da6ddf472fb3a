//! ampguard's controller library: the data-plane handle (the only code that
//! touches the maps), the policy store, the HTTP API, alert intake, built-in
//! detection, the daemon and the CLI. The reference model is test support: behind the `model`
//! feature (the tests/ crate turns it on), not in the shipped binary.

pub mod alerts;
pub(crate) mod api;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod detection;
pub mod flowspec;
pub(crate) mod logging;
pub(crate) mod memory;
/// The XDP decision as plain Rust, for the differential and verdict tests.
#[cfg(any(test, feature = "model"))]
pub mod model;
pub mod profiles;
pub mod store;
pub mod text;
pub mod vectors;

/// The git commit the binary was built from (`-dirty`: with changes not in
/// it; "unknown" outside a git checkout), from build.rs.
pub(crate) const COMMIT: &str = env!("AMPGUARD_COMMIT");
/// When it was built (UTC; SOURCE_DATE_EPOCH when set).
pub(crate) const BUILD_DATE: &str = env!("AMPGUARD_BUILD_DATE");
/// `ampguard --version`.
pub(crate) const LONG_VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("AMPGUARD_COMMIT"), ", built ", env!("AMPGUARD_BUILD_DATE"), ")");
