//! The wlbs control plane: configuration, the appliance's bring-up and control thread, and the
//! operator verbs of the `wlbs` binary.

pub mod appliance;
pub mod assignment;
pub mod cluster;
pub mod config;
pub mod consistency;
pub mod ctl;
pub mod diagnostics;
mod fnv;
pub mod heartbeat;
pub mod macfilter;
pub mod macs;
pub mod membership;
pub mod metrics;
pub mod neighbour;
pub mod pcap;
pub mod peers;
pub mod reload;
pub mod remote;
pub mod replay;
pub mod stats;
pub mod stats_http;
pub mod verbs;
