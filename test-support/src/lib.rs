//! Test support for ampguard, kept out of the shipped library: Ethernet frames
//! built byte by byte (`packet`) and the UDP payloads of real amplified and
//! ordinary replies (`payloads`). Used by xdp-user's unit tests, the tests/
//! crate (BPF_PROG_TEST_RUN, differential and lab tests), the bench and the demo.
//! It depends on nothing in ampguard, so the frames it builds are written from
//! the formats, not from the parser they test.

pub mod packet;
pub mod payloads;
