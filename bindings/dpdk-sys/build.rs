//! Generates bindings to the system DPDK found by `pkg-config libdpdk` and compiles the
//! out-of-line wrappers for DPDK's `static inline` fast-path functions with DPDK's own cflags.

use std::env;
use std::path::PathBuf;

const INSTALL_HINT: &str = "libdpdk not found by pkg-config: run scripts/setup.sh, or apt-get install dpdk-dev libdpdk-dev pkg-config libclang-dev";

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=build.rs");

    match pkg_config::Config::new()
        .atleast_version("22.11")
        .cargo_metadata(true)
        .probe("libdpdk")
    {
        Ok(_) => {}
        Err(_) => {
            eprintln!("error: {INSTALL_HINT}");
            std::process::exit(1);
        }
    };

    // DPDK's cflags carry -include rte_config.h and -march; pass the same to clang and cc so the
    // struct layouts bindgen sees match the ones the library was built with.
    let cflags = pkg_config_cflags();
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let wrappers = out.join("static_fns.c");

    let builder = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_args(&cflags)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .wrap_static_fns(true)
        .wrap_static_fns_path(out.join("static_fns"))
        .derive_debug(false)
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .prepend_enum_name(false)
        .allowlist_function("rte_eal_(init|cleanup|remote_launch|wait_lcore|mp_wait_lcore|process_type|has_hugepages|get_runtime_dir)")
        .allowlist_function("rte_lcore_(id|count|is_enabled|to_socket_id)")
        .allowlist_function("rte_get_(main_lcore|next_lcore|tsc_hz|tsc_cycles)")
        .allowlist_function("rte_rdtsc")
        .allowlist_function("rte_socket_id")
        .allowlist_function("rte_strerror")
        .allowlist_function("rte_pause")
        .allowlist_function("wlbs_rte_errno")
        .allowlist_function("rte_pktmbuf_(pool_create|alloc|free|free_bulk|alloc_bulk|reset)")
        .allowlist_function("rte_mempool_(free|avail_count|in_use_count)")
        .allowlist_function("rte_eth_(dev_configure|dev_start|dev_stop|dev_close|dev_info_get|dev_count_avail|dev_get_port_by_name|dev_get_name_by_port|dev_socket_id|find_next|rx_queue_setup|tx_queue_setup|rx_burst|tx_burst|macaddr_get|dev_default_mac_addr_set|dev_mac_addr_add|dev_mac_addr_remove|promiscuous_enable|promiscuous_disable|promiscuous_get|allmulticast_enable|allmulticast_disable|allmulticast_get|dev_set_mc_addr_list|stats_get|stats_reset|xstats_get|xstats_get_names|link_get_nowait|dev_is_valid_port|dev_rss_hash_update)")
        .allowlist_function("rte_ring_(create|free|count)")
        .allowlist_type("rte_eth_conf|rte_eth_dev_info|rte_eth_stats|rte_eth_xstat|rte_eth_xstat_name|rte_eth_link|rte_eth_rxconf|rte_eth_txconf|rte_ether_addr|rte_mbuf|rte_mempool|rte_ring")
        .allowlist_var("RTE_ETH_.*|RTE_MAX_.*|RTE_MBUF_DEFAULT_BUF_SIZE|RTE_PKTMBUF_HEADROOM|SOCKET_ID_ANY|RTE_ETHER_ADDR_LEN|RTE_ETH_NAME_MAX_LEN|RTE_ETH_XSTATS_NAME_SIZE|RING_F_.*")
        // Packed and aligned at once: rustc refuses such types. wlbs parses these headers
        // itself in the dataplane, so opaque blobs of the right size are enough.
        .opaque_type("rte_l2tpv2_.*")
        .opaque_type("rte_gtp_.*")
        .opaque_type("rte_arp_hdr")
        .opaque_type("rte_arp_ipv4");

    let bindings = match builder.generate() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: bindgen failed on DPDK's headers ({e}); is libclang-dev installed? run scripts/setup.sh");
            std::process::exit(1);
        }
    };
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");

    let mut cc = cc::Build::new();
    cc.file(out.join("static_fns.c"))
        .include(env::current_dir().expect("cwd"))
        .opt_level(3)
        .warnings(false);
    for flag in &cflags {
        cc.flag(flag);
    }
    // The generated wrapper file includes wrapper.h by a path relative to the crate.
    cc.compile("wlbs_dpdk_static_fns");
    let _ = wrappers;
}

fn pkg_config_cflags() -> Vec<String> {
    let output = std::process::Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .unwrap_or_else(|_| {
            eprintln!("error: {INSTALL_HINT}");
            std::process::exit(1);
        });
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    // "-include rte_config.h" is two words that belong together.
    let mut flags = Vec::new();
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-include" {
            if let Some(file) = words.next() {
                flags.push(format!("-include{file}"));
            }
        } else {
            flags.push(w.to_string());
        }
    }
    flags
}
