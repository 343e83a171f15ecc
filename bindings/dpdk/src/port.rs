use std::ffi::CStr;
use std::marker::PhantomData;

use crate::eal::port_name;
use crate::error::{check, Error, Result};
use crate::mbuf::Burst;
use crate::mempool::Mempool;

// RSS hash-type bits from rte_ethdev.h (RTE_BIT64 macros bindgen cannot evaluate).
const RSS_IPV4: u64 = 1 << 2;
const RSS_FRAG_IPV4: u64 = 1 << 3;
const RSS_NONFRAG_IPV4_TCP: u64 = 1 << 4;
const RSS_NONFRAG_IPV4_UDP: u64 = 1 << 5;
const RSS_NONFRAG_IPV4_OTHER: u64 = 1 << 7;
const RSS_IPV6: u64 = 1 << 8;
const RSS_FRAG_IPV6: u64 = 1 << 9;
const RSS_NONFRAG_IPV6_TCP: u64 = 1 << 10;
const RSS_NONFRAG_IPV6_UDP: u64 = 1 << 11;
const RSS_NONFRAG_IPV6_OTHER: u64 = 1 << 13;
const RSS_IPV6_EX: u64 = 1 << 15;
const RSS_IPV6_TCP_EX: u64 = 1 << 16;
const RSS_IPV6_UDP_EX: u64 = 1 << 17;
/// RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP.
const RSS_WANTED: u64 = RSS_IPV4
    | RSS_FRAG_IPV4
    | RSS_NONFRAG_IPV4_OTHER
    | RSS_IPV6
    | RSS_FRAG_IPV6
    | RSS_NONFRAG_IPV6_OTHER
    | RSS_IPV6_EX
    | RSS_NONFRAG_IPV4_TCP
    | RSS_NONFRAG_IPV6_TCP
    | RSS_IPV6_TCP_EX
    | RSS_NONFRAG_IPV4_UDP
    | RSS_NONFRAG_IPV6_UDP
    | RSS_IPV6_UDP_EX;

/// How to set a port up.
#[derive(Debug, Clone)]
pub struct PortConfig {
    pub rx_queues: u16,
    pub tx_queues: u16,
    pub rx_descriptors: u16,
    pub tx_descriptors: u16,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            rx_queues: 1,
            tx_queues: 1,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
        }
    }
}

/// What the driver says it can do.
#[derive(Debug, Clone)]
pub struct DevInfo {
    pub driver: String,
    pub max_rx_queues: u16,
    pub max_tx_queues: u16,
    pub max_mac_addrs: u32,
    pub rss_offloads: u64,
}

/// Counters of `rte_eth_stats_get`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Frames the NIC dropped because no RX descriptor was free (the poll loop fell behind).
    pub rx_missed: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    /// Frames dropped because the mempool had no mbuf.
    pub rx_nombuf: u64,
}

/// Link state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub up: bool,
    pub speed_mbps: u32,
    pub full_duplex: bool,
}

/// One ethdev port. Configure it, take its queues, start it; dropping it stops and closes it.
/// Take care that workers using its queues have finished before that.
pub struct Port {
    id: u16,
    name: String,
    started: bool,
    rx_taken: Vec<bool>,
    tx_taken: Vec<bool>,
    rss: bool,
    // Keeps the RX queues' pool alive as long as the port can use it.
    _pool: Option<Mempool>,
}

impl Port {
    /// Opens port `id` (see `Eal::find_port`). The EAL must be up.
    pub fn open(id: u16) -> Result<Port> {
        // SAFETY: a validity check on a port id.
        if unsafe { dpdk_sys::rte_eth_dev_is_valid_port(id) } == 0 {
            return Err(Error::InvalidArgument(format!("port {id} does not exist")));
        }
        Ok(Port {
            id,
            name: port_name(id).unwrap_or_else(|| format!("port{id}")),
            started: false,
            rx_taken: Vec::new(),
            tx_taken: Vec::new(),
            rss: false,
            _pool: None,
        })
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn info(&self) -> Result<DevInfo> {
        let mut info = dpdk_sys::rte_eth_dev_info::default();
        // SAFETY: valid port; info is a properly sized out-parameter.
        check("rte_eth_dev_info_get", unsafe {
            dpdk_sys::rte_eth_dev_info_get(self.id, &mut info)
        })?;
        let driver = if info.driver_name.is_null() {
            String::new()
        } else {
            // SAFETY: driver_name is a static NUL-terminated string owned by the driver.
            unsafe { CStr::from_ptr(info.driver_name) }
                .to_string_lossy()
                .into_owned()
        };
        Ok(DevInfo {
            driver,
            max_rx_queues: info.max_rx_queues,
            max_tx_queues: info.max_tx_queues,
            max_mac_addrs: info.max_mac_addrs,
            rss_offloads: info.flow_type_rss_offloads,
        })
    }

    /// NUMA node of the device (-1 when unknown, as for vdevs).
    pub fn socket(&self) -> i32 {
        // SAFETY: a getter on a valid port.
        unsafe { dpdk_sys::rte_eth_dev_socket_id(self.id) }
    }

    /// Configures queues (RSS across RX queues when there are several and the driver supports
    /// it) and sets each RX queue up on `pool`. Returns whether RSS is on.
    pub fn configure(&mut self, cfg: &PortConfig, pool: &Mempool) -> Result<bool> {
        let info = self.info()?;
        if cfg.rx_queues == 0 || cfg.rx_queues > info.max_rx_queues {
            return Err(Error::InvalidArgument(format!(
                "port {} ({}): {} RX queues asked, driver {} allows 1..={}",
                self.id, self.name, cfg.rx_queues, info.driver, info.max_rx_queues
            )));
        }
        if cfg.tx_queues == 0 || cfg.tx_queues > info.max_tx_queues {
            return Err(Error::InvalidArgument(format!(
                "port {} ({}): {} TX queues asked, driver {} allows 1..={}",
                self.id, self.name, cfg.tx_queues, info.driver, info.max_tx_queues
            )));
        }
        let mut conf = dpdk_sys::rte_eth_conf::default();
        let rss_hf = RSS_WANTED & info.rss_offloads;
        self.rss = cfg.rx_queues > 1 && rss_hf != 0;
        if self.rss {
            conf.rxmode.mq_mode = dpdk_sys::RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = rss_hf;
        }
        // SAFETY: valid port, stopped; conf lives across the call (DPDK copies it).
        check("rte_eth_dev_configure", unsafe {
            dpdk_sys::rte_eth_dev_configure(self.id, cfg.rx_queues, cfg.tx_queues, &conf)
        })?;
        let socket = self.socket().max(0) as u32;
        for q in 0..cfg.rx_queues {
            // SAFETY: configured port, q < rx_queues, NULL rxconf means driver defaults, pool is
            // valid and kept alive by self._pool.
            check("rte_eth_rx_queue_setup", unsafe {
                dpdk_sys::rte_eth_rx_queue_setup(
                    self.id,
                    q,
                    cfg.rx_descriptors,
                    socket,
                    std::ptr::null(),
                    pool.as_ptr(),
                )
            })?;
        }
        for q in 0..cfg.tx_queues {
            // SAFETY: configured port, q < tx_queues, NULL txconf means driver defaults.
            check("rte_eth_tx_queue_setup", unsafe {
                dpdk_sys::rte_eth_tx_queue_setup(
                    self.id,
                    q,
                    cfg.tx_descriptors,
                    socket,
                    std::ptr::null(),
                )
            })?;
        }
        self.rx_taken = vec![false; cfg.rx_queues as usize];
        self.tx_taken = vec![false; cfg.tx_queues as usize];
        self._pool = Some(pool.clone());
        Ok(self.rss)
    }

    /// Whether `configure` turned RSS on.
    pub fn rss(&self) -> bool {
        self.rss
    }

    /// Hands out RX queue `q`, once: a queue has a single poller.
    pub fn rx_queue(&mut self, q: u16) -> Result<RxQueue> {
        take(&mut self.rx_taken, q, "RX", self.id)?;
        Ok(RxQueue {
            port: self.id,
            queue: q,
            _single_thread: PhantomData,
        })
    }

    /// Hands out TX queue `q`, once: DPDK TX queues are not thread-safe.
    pub fn tx_queue(&mut self, q: u16) -> Result<TxQueue> {
        take(&mut self.tx_taken, q, "TX", self.id)?;
        Ok(TxQueue {
            port: self.id,
            queue: q,
            _single_thread: PhantomData,
        })
    }

    pub fn start(&mut self) -> Result<()> {
        // SAFETY: configured port.
        check("rte_eth_dev_start", unsafe {
            dpdk_sys::rte_eth_dev_start(self.id)
        })?;
        self.started = true;
        Ok(())
    }

    pub fn stop(&mut self) -> Result<()> {
        if self.started {
            self.started = false;
            // SAFETY: started port; the caller has stopped its pollers.
            check("rte_eth_dev_stop", unsafe {
                dpdk_sys::rte_eth_dev_stop(self.id)
            })?;
        }
        Ok(())
    }

    pub fn mac(&self) -> Result<[u8; 6]> {
        let mut addr = dpdk_sys::rte_ether_addr::default();
        // SAFETY: valid port; addr is a 6-byte out-parameter.
        check("rte_eth_macaddr_get", unsafe {
            dpdk_sys::rte_eth_macaddr_get(self.id, &mut addr)
        })?;
        Ok(addr.addr_bytes)
    }

    /// Replaces the port's own (default) MAC address.
    pub fn set_mac(&mut self, mac: [u8; 6]) -> Result<()> {
        let mut addr = dpdk_sys::rte_ether_addr { addr_bytes: mac };
        // SAFETY: valid port; addr lives across the call.
        check("rte_eth_dev_default_mac_addr_set", unsafe {
            dpdk_sys::rte_eth_dev_default_mac_addr_set(self.id, &mut addr)
        })?;
        Ok(())
    }

    /// Adds an extra unicast (or multicast) MAC filter.
    pub fn add_mac(&mut self, mac: [u8; 6]) -> Result<()> {
        let mut addr = dpdk_sys::rte_ether_addr { addr_bytes: mac };
        // SAFETY: valid port; addr lives across the call; pool 0 is the default.
        check("rte_eth_dev_mac_addr_add", unsafe {
            dpdk_sys::rte_eth_dev_mac_addr_add(self.id, &mut addr, 0)
        })?;
        Ok(())
    }

    pub fn set_promiscuous(&mut self, on: bool) -> Result<()> {
        // SAFETY: valid port.
        let ret = unsafe {
            if on {
                dpdk_sys::rte_eth_promiscuous_enable(self.id)
            } else {
                dpdk_sys::rte_eth_promiscuous_disable(self.id)
            }
        };
        check("rte_eth_promiscuous_enable/disable", ret).map(|_| ())
    }

    pub fn promiscuous(&self) -> bool {
        // SAFETY: valid port.
        unsafe { dpdk_sys::rte_eth_promiscuous_get(self.id) == 1 }
    }

    pub fn set_allmulticast(&mut self, on: bool) -> Result<()> {
        // SAFETY: valid port.
        let ret = unsafe {
            if on {
                dpdk_sys::rte_eth_allmulticast_enable(self.id)
            } else {
                dpdk_sys::rte_eth_allmulticast_disable(self.id)
            }
        };
        check("rte_eth_allmulticast_enable/disable", ret).map(|_| ())
    }

    pub fn allmulticast(&self) -> bool {
        // SAFETY: valid port.
        unsafe { dpdk_sys::rte_eth_allmulticast_get(self.id) == 1 }
    }

    /// Replaces the port's list of multicast MAC filters.
    pub fn set_multicast_list(&mut self, macs: &[[u8; 6]]) -> Result<()> {
        let mut list: Vec<dpdk_sys::rte_ether_addr> = macs
            .iter()
            .map(|m| dpdk_sys::rte_ether_addr { addr_bytes: *m })
            .collect();
        // SAFETY: valid port; the list lives across the call, its length is passed.
        check("rte_eth_dev_set_mc_addr_list", unsafe {
            dpdk_sys::rte_eth_dev_set_mc_addr_list(self.id, list.as_mut_ptr(), list.len() as u32)
        })?;
        Ok(())
    }

    pub fn stats(&self) -> Result<PortStats> {
        port_stats(self.id)
    }

    /// Driver-specific extended statistics, by name.
    pub fn xstats(&self) -> Result<Vec<(String, u64)>> {
        // SAFETY: a NULL array asks for the count.
        let n = check("rte_eth_xstats_get_names", unsafe {
            dpdk_sys::rte_eth_xstats_get_names(self.id, std::ptr::null_mut(), 0)
        })? as usize;
        let mut names = vec![dpdk_sys::rte_eth_xstat_name::default(); n];
        let mut values = vec![dpdk_sys::rte_eth_xstat::default(); n];
        // SAFETY: both arrays have n entries.
        let got_names = check("rte_eth_xstats_get_names", unsafe {
            dpdk_sys::rte_eth_xstats_get_names(self.id, names.as_mut_ptr(), n as u32)
        })? as usize;
        // SAFETY: as above.
        let got = check("rte_eth_xstats_get", unsafe {
            dpdk_sys::rte_eth_xstats_get(self.id, values.as_mut_ptr(), n as u32)
        })? as usize;
        let mut out = Vec::with_capacity(got.min(n));
        for v in values.iter().take(got.min(n)) {
            let idx = v.id as usize;
            if idx < got_names.min(n) {
                // SAFETY: DPDK NUL-terminates names within the 64-byte array.
                let name = unsafe { CStr::from_ptr(names[idx].name.as_ptr()) };
                out.push((name.to_string_lossy().into_owned(), v.value));
            }
        }
        Ok(out)
    }

    pub fn link(&self) -> Result<Link> {
        let mut link = dpdk_sys::rte_eth_link::default();
        // SAFETY: valid port; link is an out-parameter.
        check("rte_eth_link_get_nowait", unsafe {
            dpdk_sys::rte_eth_link_get_nowait(self.id, &mut link)
        })?;
        Ok(Link {
            up: link.link_status() == dpdk_sys::RTE_ETH_LINK_UP as u16,
            speed_mbps: link.link_speed,
            full_duplex: link.link_duplex() == dpdk_sys::RTE_ETH_LINK_FULL_DUPLEX as u16,
        })
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        let _ = self.stop();
        // SAFETY: stopped port, nothing polls it any more (documented contract of Port).
        unsafe { dpdk_sys::rte_eth_dev_close(self.id) };
    }
}

fn take(taken: &mut [bool], q: u16, kind: &str, port: u16) -> Result<()> {
    match taken.get_mut(q as usize) {
        None => Err(Error::InvalidArgument(format!(
            "port {port} has no {kind} queue {q} (configured {})",
            taken.len()
        ))),
        Some(true) => Err(Error::InvalidArgument(format!(
            "port {port} {kind} queue {q} is already in use"
        ))),
        Some(slot) => {
            *slot = true;
            Ok(())
        }
    }
}

fn port_stats(id: u16) -> Result<PortStats> {
    let mut s = dpdk_sys::rte_eth_stats::default();
    // SAFETY: valid port id; s is an out-parameter. rte_eth_stats_get is safe to call from
    // any thread.
    check("rte_eth_stats_get", unsafe {
        dpdk_sys::rte_eth_stats_get(id, &mut s)
    })?;
    Ok(PortStats {
        rx_packets: s.ipackets,
        tx_packets: s.opackets,
        rx_bytes: s.ibytes,
        tx_bytes: s.obytes,
        rx_missed: s.imissed,
        rx_errors: s.ierrors,
        tx_errors: s.oerrors,
        rx_nombuf: s.rx_nombuf,
    })
}

/// An RX queue, polled by one thread (Send, not Sync).
pub struct RxQueue {
    port: u16,
    queue: u16,
    _single_thread: PhantomData<std::cell::Cell<()>>,
}

impl RxQueue {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Receives into the free slots of `burst`; returns how many arrived.
    #[inline]
    pub fn rx_burst(&mut self, burst: &mut Burst) -> usize {
        let (ptr, room) = burst.spare_raw();
        if room == 0 {
            return 0;
        }
        // SAFETY: this handle is the queue's only poller; ptr has room for `room` pointers.
        let n = unsafe { dpdk_sys::rte_eth_rx_burst(self.port, self.queue, ptr, room) } as usize;
        burst.filled(n);
        n
    }
}

/// A TX queue, used by one thread (Send, not Sync).
pub struct TxQueue {
    port: u16,
    queue: u16,
    _single_thread: PhantomData<std::cell::Cell<()>>,
}

impl TxQueue {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Hands the packets of `burst` to the driver, from the front; what the driver could not
    /// take stays in `burst` (retry, or `clear()` to drop it). Returns how many were sent.
    #[inline]
    pub fn tx_burst(&mut self, burst: &mut Burst) -> usize {
        let (ptr, len) = burst.raw_mut();
        if len == 0 {
            return 0;
        }
        // SAFETY: this handle is the queue's only user; ptr[..len] are owned mbufs, and the
        // driver takes ownership of the first n it reports.
        let n = unsafe { dpdk_sys::rte_eth_tx_burst(self.port, self.queue, ptr, len) } as usize;
        burst.consumed(n);
        n
    }
}

// SAFETY: a queue handle is used by one thread at a time (it is not Sync); DPDK allows a queue
// to be polled from any single thread.
unsafe impl Send for RxQueue {}
// SAFETY: as above.
unsafe impl Send for TxQueue {}
