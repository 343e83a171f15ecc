//! The cluster port and the cluster MAC (`[cluster] mode`): programming the port, and the
//! sources and destinations the mode asks of every frame.

use anyhow::Result;
use dpdk::Port;
use tracing::{info, warn};
use wlbs_dataplane::wire::EthernetAddress;

use crate::config::ClusterMacSetting;
use crate::diagnostics::Diagnostics;
use crate::macfilter::{self, MacPort};
use crate::macs::{ClusterMacs, IgmpVersion, MacMode};
use crate::neighbour::{Diagnostic, NeighbourConfig};

/// How this host's cluster port handles the cluster MAC (`[cluster] mode`), decided at start.
pub(super) struct MacPlan {
    pub(super) cluster_mac: EthernetAddress,
    /// Unicast mode with masking: the source of every frame leaving the cluster port.
    pub(super) masked_source: Option<EthernetAddress>,
    /// Source of the control thread's own frames (heartbeats).
    pub(super) source: EthernetAddress,
    pub(super) heartbeat_destination: EthernetAddress,
    pub(super) neighbour: NeighbourConfig,
    /// For `query`: "unicast cluster MAC ... received as the port's MAC address".
    pub(super) describe: String,
}

impl MacPlan {
    /// Writes the masked source into a frame leaving the cluster port (unicast mode).
    pub(super) fn mask(&self, frame: &mut [u8]) {
        if let (Some(src), Some(field)) = (self.masked_source, frame.get_mut(6..12)) {
            field.copy_from_slice(&src.0);
        }
    }
}

/// Makes the cluster port receive the cluster MAC (and the host side's own MAC), and works
/// out the sources and destinations the mode asks for.
pub(super) fn program_cluster_port(
    cluster: &mut Port,
    c: &crate::config::Cluster,
    host: &crate::config::Host,
    dp: &crate::config::Dataplane,
    diagnostics: &mut Diagnostics,
) -> Result<MacPlan> {
    let mode = c.mode.0;
    let cluster_mac = c.cluster_mac();
    let programmed = macfilter::program(cluster, mode, cluster_mac.0)
        .map_err(|e| anyhow::anyhow!("[cluster] mode = {mode:?}: {e}"))?;
    info!("cluster port {}: {programmed}", cluster.name());
    if mode == MacMode::Unicast && programmed.method.is_fallback() {
        let d = Diagnostic::MacNotProgrammable {
            fallback: format!(
                "promiscuous mode ({})",
                programmed
                    .refused
                    .iter()
                    .map(|(m, e)| format!("{} refused: {e}", m.describe()))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        };
        diagnostics.report(&d, 0);
        warn!("{d}");
    }
    // Frames for the host side's own MAC (its dedicated IP) arrive on the cluster port too.
    if !cluster.promiscuous() {
        let why = match dp.host_mac {
            Some(mac) => match MacPort::add_mac(cluster, mac.0 .0) {
                Ok(()) => None,
                Err(e) => Some(format!(
                    "adding host_mac {} as a MAC filter failed ({e})",
                    mac.0
                )),
            },
            None => Some(
                "[dataplane] host_mac is not set, so the host side's MAC is unknown".to_string(),
            ),
        };
        if let Some(why) = why {
            match cluster.set_promiscuous(true) {
                Ok(()) => info!("cluster port {}: promiscuous mode: {why}", cluster.name()),
                Err(e) => warn!(
                    "cluster port {}: {why}, and promiscuous mode was refused ({e}): frames for the host side's own MAC will not arrive",
                    cluster.name()
                ),
            }
        }
    }
    let nic_mac = EthernetAddress(cluster.mac()?);
    let priority = host.priority;
    let masked_source = (mode == MacMode::Unicast && c.mask_source_mac)
        .then(|| ClusterMacs::new(c.ip).masked_source(priority));
    if mode == MacMode::Unicast && !c.mask_source_mac {
        warn!(
            "[cluster] mask_source_mac = false in unicast mode: frames leave the cluster port with the port's own MAC {nic_mac} as their source{}",
            if nic_mac == cluster_mac {
                ", which is the cluster MAC: the switch will learn it and send all cluster traffic to one port (KB Q258609)"
            } else {
                ""
            }
        );
    }
    let mut neighbour = NeighbourConfig::new(c.ip, priority, nic_mac);
    neighbour.mode = mode;
    neighbour.igmp_version = if c.igmp_version == 1 {
        IgmpVersion::V1
    } else {
        IgmpVersion::V2
    };
    neighbour.vips = c.vips.clone();
    neighbour.dedicated_ip = match host.dedicated_ip {
        Some(std::net::IpAddr::V4(a)) => Some(a),
        _ => None,
    };
    neighbour.cluster_mac = match c.mac {
        ClusterMacSetting::Given(mac) => Some(mac),
        ClusterMacSetting::Auto => None,
    };
    neighbour.mask_source_mac = c.mask_source_mac;
    neighbour.multicast_spoof = c.multicast_spoof;
    Ok(MacPlan {
        cluster_mac,
        masked_source,
        source: masked_source.unwrap_or(nic_mac),
        heartbeat_destination: if mode == MacMode::Unicast {
            EthernetAddress::BROADCAST
        } else {
            cluster_mac
        },
        neighbour,
        describe: programmed.to_string(),
    })
}
