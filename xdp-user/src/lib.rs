//! ampguard's controller library: the data-plane handle, the reference model,
//! the packet builder used by tests and benchmarks, and (in later modules) the
//! daemon, API and alert intake.

pub mod clock;
pub mod dataplane;
pub mod model;
pub mod packet;
pub mod vectors;
