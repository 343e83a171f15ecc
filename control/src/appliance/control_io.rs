//! The control thread's frames: what it makes of the frames the workers hand it (heartbeats,
//! identities, remote control datagrams), and how its own frames leave (its own TX queue, or
//! worker 0's).

use std::net::Ipv4Addr;

use dpdk::{Burst, Mempool, TxQueue};
use tracing::{debug, warn};
use wlbs_dataplane::wire::{ethernet, ipv4, udp, EtherType, EthernetAddress, IpProtocol};
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
        let eth = ethernet::Frame::new_checked(frame).ok()?;
        let ip = ipv4::Packet::new_checked(eth.payload()).ok()?;
        let udp = udp::Packet::new_checked(ip.payload()).ok()?;
        Some(RemoteDatagram {
            src_mac: eth.src_addr().0,
            src_ip: ip.src_addr(),
            src_port: udp.src_port(),
            payload: udp.payload().to_vec(),
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
        let datagram = udp::Repr {
            src_port: port,
            dst_port: self.src_port,
            payload,
        };
        let ip = ipv4::Repr {
            src_addr: cluster_ip,
            dst_addr: self.src_ip,
            protocol: IpProtocol::UDP,
            payload_len: datagram.buffer_len(),
            ttl: 64,
            dscp: 0,
            ecn: 0,
            ident: 0,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        };
        let len = ethernet::HEADER_LEN + ip.buffer_len();
        let mut f = vec![0u8; len.max(MIN_FRAME_LEN)];
        ethernet::Repr {
            src_addr: src_mac,
            dst_addr: EthernetAddress(self.src_mac),
            ethertype: EtherType::IPV4,
        }
        .emit(&mut ethernet::Frame::new_unchecked(&mut f[..]));
        let mut packet = ipv4::Packet::new_unchecked(&mut f[ethernet::HEADER_LEN..len]);
        ip.emit(&mut packet);
        datagram.emit(
            &mut udp::Packet::new_unchecked(packet.payload_mut()),
            &ip.pseudo_header(),
        );
        f
    }
}

/// Shortest Ethernet frame without FCS: shorter answers are padded.
const MIN_FRAME_LEN: usize = 60;

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
