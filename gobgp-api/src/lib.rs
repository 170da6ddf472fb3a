//! GoBGP's gRPC API (package `apipb`), generated at build time from the
//! vendored .proto files (see NOTICE). Only the client is generated.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod apipb {
    tonic::include_proto!("apipb");
}

pub use prost;
pub use prost_types;
pub use tonic;
