//! Raw FFI to the system's DPDK (22.11), generated at build time by bindgen from
//! `wrapper.h`. `static inline` fast-path functions such as `rte_eth_rx_burst` keep their C
//! names here and link to out-of-line wrappers compiled by `build.rs`.
//!
//! Everything here is `unsafe`; the `dpdk` crate is the safe layer over it.
#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code
)]
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
