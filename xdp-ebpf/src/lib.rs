#![no_std]
// Intentionally empty: the program is the `xdp-ebpf` binary (src/main.rs).
