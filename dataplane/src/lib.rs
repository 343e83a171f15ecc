//! The wlbs data plane: wire formats, the filter, connection descriptors and the worker poll
//! loop. It holds no I/O policy and parses no configuration: the control plane sets it up and
//! publishes what it needs; the data plane never calls back into the control plane.

pub mod conn;
pub mod filter;
pub mod wire;
pub mod worker;
