//! ampguard's controller library: the data-plane handle (the only code that
//! touches the maps), the reference model, the policy store, the HTTP API,
//! alert intake, the daemon and the CLI.

pub mod alerts;
pub mod api;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod memory;
pub mod model;
pub mod packet;
pub mod payloads;
pub mod profiles;
pub mod store;
pub mod text;
pub mod vectors;
