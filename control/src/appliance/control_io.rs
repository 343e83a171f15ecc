//! The control thread's frames: what it makes of the frames the workers hand it (heartbeats,
//! identities, remote control datagrams), and how its own frames leave (its own TX queue, or
//! worker 0's).

use std::net::Ipv4Addr;

use dpdk::{Burst, Mempool, TxQueue};
use tracing::{debug, warn};
use wlbs_dataplane::wire::EthernetAddress;
use wlbs_dataplane::worker::ControlChannel;

use crate::heartbeat;
use crate::membership::wire::{self, DecodeError};

/// A usable frame from another host.
pub(super) enum FromPeer {
    Ping(Box<wire::Decoded>),
    Identity(Box<wire::Identity>),
}

/// What the control thread made of the frames the workers handed it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlCounts {
    pub heartbeats: u64,
    pub identities: u64,
    /// EtherType 0x886F with a code that is not NLB's (other Microsoft protocols share it).
    pub unknown_code: u64,
    pub malformed: u64,
    /// Dropped by a worker because its ring to the control thread was full.
    pub ring_full: u64,
    /// Heartbeats refused with a cluster key: missing or wrong tag, or replayed.
    pub rejected: u64,
}

impl ControlCounts {
    /// Takes one frame from a worker; a wlbs heartbeat comes back for the membership core.
    pub(super) fn take(
        &mut self,
        frame: &[u8],
        auth: Option<(&wire::ClusterKey, &mut wire::ReplayGuard)>,
    ) -> Option<FromPeer> {
        match wire::decode(frame, auth) {
            Ok(d) => {
                self.heartbeats += 1;
                debug!(
                    "heartbeat from host {} (cluster {}, dedicated {})",
                    d.ping.priority, d.cluster_ip, d.ping.dedicated_ip
                );
                Some(FromPeer::Ping(Box::new(d)))
            }
            // An NLB heartbeat that is not ours (a Windows host): counted, not used.
            Err(DecodeError::NotWlbs | DecodeError::BadState(_)) => {
                self.heartbeats += 1;
                None
            }
            Err(DecodeError::Identity(id)) => {
                self.identities += 1;
                debug!(
                    "identity: host {} is {:?} ({})",
                    id.repr.host_priority,
                    id.repr.host_name,
                    id.repr
                        .dedicated_ip
                        .map_or("no dedicated IP".into(), |a| a.to_string())
                );
                Some(FromPeer::Identity(id))
            }
            Err(e @ (DecodeError::Unauthenticated | DecodeError::Replayed)) => {
                self.rejected += 1;
                // Rate limited: the first one, then one line per 1,000.
                if self.rejected % 1000 == 1 {
                    let src = frame.get(6..12).map(|m| {
                        m.iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(":")
                    });
                    warn!(
                        "heartbeat or identity from {} refused: {e} ({} refused so far)",
                        src.unwrap_or_default(),
                        self.rejected
                    );
                }
                None
            }
            Err(DecodeError::Frame(heartbeat::Error::UnknownCode(_))) => {
                self.unknown_code += 1;
                None
            }
            Err(DecodeError::Frame(_) | DecodeError::BadConfig(_)) => {
                self.malformed += 1;
                None
            }
        }
    }
}

/// A remote control datagram as it arrived: who sent it, and the command.
pub(super) struct RemoteDatagram {
    src_mac: [u8; 6],
    pub(super) src_ip: Ipv4Addr,
    pub(super) src_port: u16,
    pub(super) payload: Vec<u8>,
}

impl RemoteDatagram {
    /// An untagged IPv4/UDP frame (`worker::is_udp_to` checked the rest).
    pub(super) fn parse(frame: &[u8]) -> Option<RemoteDatagram> {
        let ihl = (*frame.get(14)? & 0x0f) as usize * 4;
        let total = u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]) as usize;
        let udp = frame.get(14 + ihl..14 + total.max(ihl))?;
        let len = u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]) as usize;
        Some(RemoteDatagram {
            src_mac: frame.get(6..12)?.try_into().ok()?,
            src_ip: Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]),
            src_port: u16::from_be_bytes([udp[0], udp[1]]),
            payload: udp.get(8..len.max(8))?.to_vec(),
        })
    }

    /// The answer, from the cluster IP and port back to the sender.
    pub(super) fn reply(
        &self,
        src_mac: EthernetAddress,
        cluster_ip: Ipv4Addr,
        port: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let udp_len = 8 + payload.len();
        let total = 20 + udp_len;
        let mut f = Vec::with_capacity(14 + total);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&src_mac.0);
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[6] = 0x40; // don't fragment
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&cluster_ip.octets());
        ip[16..20].copy_from_slice(&self.src_ip.octets());
        let sum = !wlbs_dataplane::wire::checksum::data(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&port.to_be_bytes());
        f.extend_from_slice(&self.src_port.to_be_bytes());
        f.extend_from_slice(&(udp_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]); // no UDP checksum (optional over IPv4)
        f.extend_from_slice(payload);
        if f.len() < 60 {
            f.resize(60, 0);
        }
        f
    }
}

/// Which port a control frame leaves on.
#[derive(Clone, Copy)]
pub(super) enum Side {
    Cluster,
    Host,
}

/// The control thread's own TX queue on each port, when the driver has one to spare; else
/// its frames go through worker 0's queue (a ring worker 0 drains every loop).
pub(super) struct ControlTx {
    pub(super) cluster: Option<TxQueue>,
    pub(super) host: Option<TxQueue>,
}

impl ControlTx {
    /// Sends one frame. A frame that cannot go out is dropped (the next heartbeat follows
    /// within a period; ARP is retried by its sender).
    pub(super) fn send_mbuf(&mut self, side: Side, worker0: &ControlChannel, m: dpdk::Mbuf) {
        let (tx, ring) = match side {
            Side::Cluster => (self.cluster.as_mut(), &worker0.tx),
            Side::Host => (self.host.as_mut(), &worker0.host_tx),
        };
        match tx {
            Some(tx) => {
                let mut burst = Burst::new();
                let _ = burst.push(m);
                tx.tx_burst(&mut burst);
            }
            None => {
                let _ = ring.push(m);
            }
        }
    }

    pub(super) fn send_bytes(
        &mut self,
        pool: &Mempool,
        side: Side,
        worker0: &ControlChannel,
        frame: &[u8],
    ) {
        let Some(mut m) = pool.alloc() else {
            warn!("no mbuf for a control frame");
            return;
        };
        match m.append(frame.len()) {
            Some(room) => room.copy_from_slice(frame),
            None => return,
        }
        self.send_mbuf(side, worker0, m);
    }
}
