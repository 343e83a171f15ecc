//! Making the cluster port receive frames for the cluster MAC, as NLB's driver did by
//! changing the NIC's address, and saying plainly what worked.
//!
//! - unicast (`02-BF-a-b-c-d`): the port's own MAC becomes the cluster MAC; else the cluster
//!   MAC is added as an extra unicast filter; else promiscuous mode. Each step is read back
//!   (the port's MAC, or promiscuous mode on) before it counts.
//! - multicast and igmp (`03-BF-...`, `01-00-5E-7F-...`): the cluster MAC goes in the port's
//!   multicast list (or as an extra filter); else all-multicast; else promiscuous mode.
//!
//! Every step a driver refuses is kept with its error, so the log can say why the fallback
//! was needed; a fallback in unicast mode is KB Q193598's cause 3 (a NIC that cannot change
//! its MAC) and is reported as the `mac_not_programmable` diagnostic.

use std::fmt;

use crate::macs::MacMode;

/// The operations on a port this needs ([`dpdk::Port`] has them; tests use a port whose
/// driver refuses some, as real drivers do).
pub trait MacPort {
    fn mac(&self) -> Result<[u8; 6], String>;
    fn set_mac(&mut self, mac: [u8; 6]) -> Result<(), String>;
    fn add_mac(&mut self, mac: [u8; 6]) -> Result<(), String>;
    fn set_multicast_list(&mut self, macs: &[[u8; 6]]) -> Result<(), String>;
    fn set_promiscuous(&mut self, on: bool) -> Result<(), String>;
    fn promiscuous(&self) -> bool;
    fn set_allmulticast(&mut self, on: bool) -> Result<(), String>;
    fn allmulticast(&self) -> bool;
}

impl MacPort for dpdk::Port {
    fn mac(&self) -> Result<[u8; 6], String> {
        dpdk::Port::mac(self).map_err(|e| e.to_string())
    }
    fn set_mac(&mut self, mac: [u8; 6]) -> Result<(), String> {
        dpdk::Port::set_mac(self, mac).map_err(|e| e.to_string())
    }
    fn add_mac(&mut self, mac: [u8; 6]) -> Result<(), String> {
        dpdk::Port::add_mac(self, mac).map_err(|e| e.to_string())
    }
    fn set_multicast_list(&mut self, macs: &[[u8; 6]]) -> Result<(), String> {
        dpdk::Port::set_multicast_list(self, macs).map_err(|e| e.to_string())
    }
    fn set_promiscuous(&mut self, on: bool) -> Result<(), String> {
        dpdk::Port::set_promiscuous(self, on).map_err(|e| e.to_string())
    }
    fn promiscuous(&self) -> bool {
        dpdk::Port::promiscuous(self)
    }
    fn set_allmulticast(&mut self, on: bool) -> Result<(), String> {
        dpdk::Port::set_allmulticast(self, on).map_err(|e| e.to_string())
    }
    fn allmulticast(&self) -> bool {
        dpdk::Port::allmulticast(self)
    }
}

/// How the port was made to receive the cluster MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The port's own MAC is the cluster MAC (NLB's way in unicast mode).
    PortMac,
    /// An extra unicast MAC filter.
    UnicastFilter,
    /// The port's multicast list.
    MulticastList,
    /// An extra MAC filter holding the multicast cluster MAC.
    MulticastFilter,
    /// Promiscuous mode: every frame (unicast fallback).
    Promiscuous,
    /// All-multicast mode: every multicast frame (multicast fallback).
    AllMulticast,
}

impl Method {
    pub fn describe(self) -> &'static str {
        match self {
            Method::PortMac => "as the port's MAC address",
            Method::UnicastFilter => "as an extra unicast MAC filter",
            Method::MulticastList => "in the port's multicast list",
            Method::MulticastFilter => "as an extra multicast MAC filter",
            Method::Promiscuous => "by promiscuous mode (fallback)",
            Method::AllMulticast => "by all-multicast mode (fallback)",
        }
    }

    /// A fallback that takes more than the cluster MAC.
    pub fn is_fallback(self) -> bool {
        matches!(self, Method::Promiscuous | Method::AllMulticast)
    }
}

/// What programming the port did: the method that worked and why the better ones did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Programmed {
    pub mode: MacMode,
    pub cluster_mac: [u8; 6],
    pub method: Method,
    /// The methods tried before, each with the reason it was not used.
    pub refused: Vec<(Method, String)>,
}

impl fmt::Display for Programmed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cluster MAC {} received {}",
            self.mode,
            mac_string(self.cluster_mac),
            self.method.describe()
        )?;
        for (method, why) in &self.refused {
            write!(f, "; {} refused: {why}", method.describe())?;
        }
        Ok(())
    }
}

/// Makes `port` receive frames for `cluster_mac` in `mode`.
pub fn program(
    port: &mut impl MacPort,
    mode: MacMode,
    cluster_mac: [u8; 6],
) -> Result<Programmed, String> {
    // The better ways first; promiscuous mode (every frame) is the last resort in both.
    let ways: &[Method] = match mode {
        MacMode::Unicast => &[Method::PortMac, Method::UnicastFilter, Method::Promiscuous],
        MacMode::Multicast | MacMode::Igmp => &[
            Method::MulticastList,
            Method::MulticastFilter,
            Method::AllMulticast,
            Method::Promiscuous,
        ],
    };
    let mut refused = Vec::new();
    for &method in ways {
        match try_way(port, method, cluster_mac) {
            Ok(()) => {
                return Ok(Programmed {
                    mode,
                    cluster_mac,
                    method,
                    refused,
                })
            }
            Err(e) => refused.push((method, e)),
        }
    }
    // Every way refused: the fallback's own failure last ("...; promiscuous mode: ...").
    let (_, last) = refused.pop().expect("at least one way is tried");
    Err(format!(
        "the cluster port cannot receive the cluster MAC {}: {}; promiscuous mode: {last}",
        mac_string(cluster_mac),
        reasons(&refused)
    ))
}

/// One way of receiving `mac`, checked by reading the port back where it can be.
fn try_way(port: &mut impl MacPort, method: Method, mac: [u8; 6]) -> Result<(), String> {
    let off = || Err("the driver accepted it but it reads back off".to_string());
    match method {
        Method::PortMac => port.set_mac(mac).and_then(|()| read_back(port, mac)),
        Method::UnicastFilter | Method::MulticastFilter => port.add_mac(mac),
        Method::MulticastList => port.set_multicast_list(&[mac]),
        Method::AllMulticast => {
            port.set_allmulticast(true)?;
            if port.allmulticast() {
                Ok(())
            } else {
                off()
            }
        }
        Method::Promiscuous => {
            port.set_promiscuous(true)?;
            if port.promiscuous() {
                Ok(())
            } else {
                off()
            }
        }
    }
}

fn read_back(port: &impl MacPort, want: [u8; 6]) -> Result<(), String> {
    let got = port.mac()?;
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "the driver accepted the change but the port's MAC reads back as {}",
            mac_string(got)
        ))
    }
}

fn reasons(refused: &[(Method, String)]) -> String {
    refused
        .iter()
        .map(|(m, e)| format!("{} refused ({e})", m.describe()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn mac_string(mac: [u8; 6]) -> String {
    wlbs_dataplane::wire::EthernetAddress(mac).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port whose driver supports only what `supports` lists, like a real PMD: a refused
    /// operation returns the error DPDK's `-ENOTSUP` becomes.
    struct Driver {
        mac: [u8; 6],
        set_mac: bool,
        /// Accepts a MAC change but keeps its address (a driver bug seen in the field).
        set_mac_ignored: bool,
        add_mac: bool,
        mc_list: bool,
        promisc: bool,
        allmulti: bool,
        promisc_on: bool,
        allmulti_on: bool,
        filters: Vec<[u8; 6]>,
    }

    impl Driver {
        fn new() -> Driver {
            Driver {
                mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                set_mac: true,
                set_mac_ignored: false,
                add_mac: true,
                mc_list: true,
                promisc: true,
                allmulti: true,
                promisc_on: false,
                allmulti_on: false,
                filters: Vec::new(),
            }
        }
    }

    const ENOTSUP: &str = "Operation not supported";

    impl MacPort for Driver {
        fn mac(&self) -> Result<[u8; 6], String> {
            Ok(self.mac)
        }
        fn set_mac(&mut self, mac: [u8; 6]) -> Result<(), String> {
            if !self.set_mac {
                return Err(format!("rte_eth_dev_default_mac_addr_set: {ENOTSUP}"));
            }
            if !self.set_mac_ignored {
                self.mac = mac;
            }
            Ok(())
        }
        fn add_mac(&mut self, mac: [u8; 6]) -> Result<(), String> {
            if !self.add_mac {
                return Err(format!("rte_eth_dev_mac_addr_add: {ENOTSUP}"));
            }
            self.filters.push(mac);
            Ok(())
        }
        fn set_multicast_list(&mut self, macs: &[[u8; 6]]) -> Result<(), String> {
            if !self.mc_list {
                return Err(format!("rte_eth_dev_set_mc_addr_list: {ENOTSUP}"));
            }
            self.filters.extend_from_slice(macs);
            Ok(())
        }
        fn set_promiscuous(&mut self, on: bool) -> Result<(), String> {
            if !self.promisc {
                return Err(format!("rte_eth_promiscuous_enable: {ENOTSUP}"));
            }
            self.promisc_on = on;
            Ok(())
        }
        fn promiscuous(&self) -> bool {
            self.promisc_on
        }
        fn set_allmulticast(&mut self, on: bool) -> Result<(), String> {
            if !self.allmulti {
                return Err(format!("rte_eth_allmulticast_enable: {ENOTSUP}"));
            }
            self.allmulti_on = on;
            Ok(())
        }
        fn allmulticast(&self) -> bool {
            self.allmulti_on
        }
    }

    const UNICAST: [u8; 6] = [0x02, 0xbf, 192, 0, 2, 10];
    const MULTICAST: [u8; 6] = [0x03, 0xbf, 192, 0, 2, 10];

    #[test]
    fn unicast_takes_the_port_mac_when_the_driver_allows_it() {
        let mut d = Driver::new();
        let p = program(&mut d, MacMode::Unicast, UNICAST).unwrap();
        assert_eq!(p.method, Method::PortMac);
        assert!(p.refused.is_empty());
        assert_eq!(d.mac, UNICAST);
        assert_eq!(
            p.to_string(),
            "unicast cluster MAC 02:bf:c0:00:02:0a received as the port's MAC address"
        );
    }

    #[test]
    fn unicast_falls_back_to_a_filter_then_promiscuous_and_says_why() {
        let mut d = Driver::new();
        d.set_mac = false;
        let p = program(&mut d, MacMode::Unicast, UNICAST).unwrap();
        assert_eq!(p.method, Method::UnicastFilter);
        assert_eq!(d.filters, vec![UNICAST]);

        let mut d = Driver::new();
        d.set_mac_ignored = true;
        d.add_mac = false;
        let p = program(&mut d, MacMode::Unicast, UNICAST).unwrap();
        assert_eq!(p.method, Method::Promiscuous);
        assert!(p.method.is_fallback());
        assert!(d.promisc_on);
        let line = p.to_string();
        assert!(
            line.contains("as the port's MAC address refused: the driver accepted the change but the port's MAC reads back as 52:54:00:12:34:56"),
            "{line}"
        );
        assert!(
            line.contains("as an extra unicast MAC filter refused: rte_eth_dev_mac_addr_add: Operation not supported"),
            "{line}"
        );
    }

    #[test]
    fn a_port_that_takes_nothing_is_an_error_naming_every_refusal() {
        let mut d = Driver::new();
        d.set_mac = false;
        d.add_mac = false;
        d.promisc = false;
        let e = program(&mut d, MacMode::Unicast, UNICAST).unwrap_err();
        assert!(
            e.contains("cannot receive the cluster MAC 02:bf:c0:00:02:0a"),
            "{e}"
        );
        assert!(
            e.contains("promiscuous mode: rte_eth_promiscuous_enable"),
            "{e}"
        );
    }

    #[test]
    fn multicast_falls_back_to_promiscuous_when_even_all_multicast_is_refused() {
        let mut d = Driver::new();
        d.mc_list = false;
        d.add_mac = false;
        d.allmulti = false;
        let p = program(&mut d, MacMode::Igmp, MULTICAST).unwrap();
        assert_eq!(p.method, Method::Promiscuous);
        assert_eq!(p.refused.len(), 3);
        d.promisc = false;
        d.promisc_on = false;
        assert!(program(&mut d, MacMode::Igmp, MULTICAST).is_err());
    }

    #[test]
    fn multicast_uses_the_list_else_a_filter_else_all_multicast() {
        let mut d = Driver::new();
        let p = program(&mut d, MacMode::Multicast, MULTICAST).unwrap();
        assert_eq!(p.method, Method::MulticastList);
        assert_eq!(
            d.mac,
            [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            "the NIC keeps its MAC"
        );

        let mut d = Driver::new();
        d.mc_list = false;
        assert_eq!(
            program(&mut d, MacMode::Igmp, MULTICAST).unwrap().method,
            Method::MulticastFilter
        );

        let mut d = Driver::new();
        d.mc_list = false;
        d.add_mac = false;
        let p = program(&mut d, MacMode::Multicast, MULTICAST).unwrap();
        assert_eq!(p.method, Method::AllMulticast);
        assert!(d.allmulti_on);
        assert_eq!(p.refused.len(), 2);
    }
}
