//! Flowspec in: RFC 8955 / RFC 8956 routes from a BGP speaker (GoBGP, over
//! its gRPC API) become policies of origin `flowspec:<peer>`.
//!
//! - [`config`], the `[flowspec]` table.
//! - [`rfc8955`], a route -> a policy, or why it cannot be enforced exactly (pure).
//! - [`gobgp`], the speaker's table and peers, as events.
//! - [`sync`], the table -> the Flowspec policies (reconcile by the NLRI's canonical text).

pub mod config;
pub mod gobgp;
pub mod rfc8955;
pub mod sync;
