//! The vector catalogue the controller works with: built-in vectors (from
//! `xdp_common::vector`) plus any defined in the configuration.

use xdp_common::vector::{self, BUILTIN};

/// The built-in UDP source port -> vector id table.
pub fn default_port_table() -> Vec<(u16, u8)> {
    BUILTIN.iter().flat_map(|v| v.ports.iter().map(move |p| (*p, v.id))).collect()
}

/// Vector id by name (built-ins only, for now).
pub fn id_of(name: &str) -> Option<u8> {
    vector::builtin_by_name(name).map(|v| v.id)
}

/// Vector name by id.
pub fn name_of(id: u8) -> Option<&'static str> {
    vector::builtin_by_id(id).map(|v| v.name)
}
