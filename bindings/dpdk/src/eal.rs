use std::ffi::{c_int, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{check, from_rte_errno, Error, Result};

static EAL_STARTED: AtomicBool = AtomicBool::new(false);

/// The initialised DPDK Environment Abstraction Layer. One per process, ever: DPDK cannot
/// initialise twice, not even after `rte_eal_cleanup`. Dropping it waits for every worker lcore
/// and cleans the EAL up (hugepage files, the runtime folder's locks).
pub struct Eal {
    // Not Send: the EAL is torn down from the thread that brought it up (the main lcore).
    _main_thread: std::marker::PhantomData<*const ()>,
}

/// A port's id and DPDK name (`net_pcap0`, `0000:01:00.0`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortName {
    pub id: u16,
    pub name: String,
}

impl Eal {
    /// Initialises the EAL with `args` (`args[0]` is the program name, as in `argv`).
    pub fn init<S: AsRef<str>>(args: &[S]) -> Result<Eal> {
        if EAL_STARTED.swap(true, Ordering::SeqCst) {
            return Err(Error::EalAlreadyInitialised);
        }
        let owned: Vec<CString> = args
            .iter()
            .map(|a| {
                CString::new(a.as_ref()).map_err(|_| {
                    Error::InvalidArgument(format!(
                        "EAL argument {:?} contains a NUL byte",
                        a.as_ref()
                    ))
                })
            })
            .collect::<Result<_>>()?;
        // rte_eal_init may permute argv; give it a private array of pointers into `owned`,
        // which outlives the call.
        let mut argv: Vec<*mut std::ffi::c_char> =
            owned.iter().map(|c| c.as_ptr() as *mut _).collect();
        // SAFETY: argv holds argc valid NUL-terminated strings that live across the call.
        let ret = unsafe { dpdk_sys::rte_eal_init(argv.len() as c_int, argv.as_mut_ptr()) };
        if ret < 0 {
            return Err(from_rte_errno("rte_eal_init"));
        }
        Ok(Eal {
            _main_thread: std::marker::PhantomData,
        })
    }

    /// The main lcore (the one that called `init`).
    pub fn main_lcore(&self) -> u32 {
        // SAFETY: a getter over EAL configuration, valid after init.
        unsafe { dpdk_sys::rte_get_main_lcore() }
    }

    /// Every enabled lcore except the main one, in id order.
    pub fn worker_lcores(&self) -> Vec<u32> {
        let mut lcores = Vec::new();
        // SAFETY: rte_get_next_lcore only reads EAL configuration.
        let mut id = unsafe { dpdk_sys::rte_get_next_lcore(u32::MAX, 1, 0) };
        while id < dpdk_sys::RTE_MAX_LCORE {
            lcores.push(id);
            // SAFETY: as above.
            id = unsafe { dpdk_sys::rte_get_next_lcore(id, 1, 0) };
        }
        lcores
    }

    /// Every ethdev port the EAL found (vdevs and probed PCI devices).
    pub fn ports(&self) -> Vec<PortName> {
        let mut ports = Vec::new();
        // SAFETY: rte_eth_find_next walks the port table; ids it returns are valid.
        let mut id = unsafe { dpdk_sys::rte_eth_find_next(0) };
        while (id as u32) < dpdk_sys::RTE_MAX_ETHPORTS {
            ports.push(PortName {
                id,
                name: port_name(id).unwrap_or_default(),
            });
            // SAFETY: as above.
            id = unsafe { dpdk_sys::rte_eth_find_next(id + 1) };
        }
        ports
    }

    /// Finds a port by DPDK device name, or by its id written in decimal.
    pub fn find_port(&self, name_or_id: &str) -> Result<u16> {
        let ports = self.ports();
        let found = match name_or_id.parse::<u16>() {
            Ok(id) => ports.iter().find(|p| p.id == id),
            Err(_) => ports.iter().find(|p| p.name == name_or_id),
        };
        found.map(|p| p.id).ok_or_else(|| Error::NoSuchPort {
            name: name_or_id.to_string(),
            available: if ports.is_empty() {
                "none (add --vdev or bind a NIC to vfio-pci)".to_string()
            } else {
                ports
                    .iter()
                    .map(|p| format!("{} ({})", p.id, p.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
    }

    /// Runs `f` on worker lcore `lcore`. The lcore must be idle.
    pub fn launch<F>(&self, lcore: u32, f: F) -> Result<LaunchHandle>
    where
        F: FnOnce() -> i32 + Send + 'static,
    {
        type Job = Box<dyn FnOnce() -> i32 + Send>;
        extern "C" fn trampoline(arg: *mut c_void) -> c_int {
            // SAFETY: `arg` is the Box<Job> leaked below, handed to exactly one lcore.
            let job: Box<Job> = unsafe { Box::from_raw(arg as *mut Job) };
            // A panic must not unwind into C.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).unwrap_or(-1)
        }
        let job: Box<Job> = Box::new(Box::new(f));
        let arg = Box::into_raw(job) as *mut c_void;
        // SAFETY: trampoline matches lcore_function_t; arg is valid until trampoline takes it.
        let ret = unsafe { dpdk_sys::rte_eal_remote_launch(Some(trampoline), arg, lcore) };
        if ret < 0 {
            // SAFETY: the launch failed, so no lcore owns `arg`; take it back.
            drop(unsafe { Box::from_raw(arg as *mut Job) });
            return check("rte_eal_remote_launch", ret).map(|_| unreachable!());
        }
        Ok(LaunchHandle { lcore })
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        // The runtime folder (/var/run/dpdk/<file-prefix>) belongs to the primary process of
        // its prefix; rte_eal_cleanup leaves it behind. A primary that exits cleanly removes
        // it, so finished runs leave nothing there (a killed one cannot: whoever killed it
        // removes the folder, as the tests and the lab do).
        // SAFETY: plain getters, valid while the EAL is up; the path is copied before cleanup.
        let runtime_dir = unsafe {
            let primary = dpdk_sys::rte_eal_process_type() == dpdk_sys::RTE_PROC_PRIMARY;
            let dir = dpdk_sys::rte_eal_get_runtime_dir();
            (primary && !dir.is_null())
                .then(|| std::ffi::CStr::from_ptr(dir).to_string_lossy().into_owned())
        };
        // SAFETY: waits for any still-running lcore jobs, then releases EAL resources; nothing
        // in this process uses DPDK after the Eal is dropped.
        unsafe {
            dpdk_sys::rte_eal_mp_wait_lcore();
            dpdk_sys::rte_eal_cleanup();
        }
        if let Some(dir) = runtime_dir.filter(|d| !d.is_empty()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A job running on a worker lcore.
#[must_use = "wait() for the lcore to learn its exit code"]
pub struct LaunchHandle {
    lcore: u32,
}

impl LaunchHandle {
    pub fn lcore(&self) -> u32 {
        self.lcore
    }

    /// Blocks until the job returns, and gives its return value.
    pub fn wait(self) -> i32 {
        // SAFETY: waits on an lcore id that was launched.
        unsafe { dpdk_sys::rte_eal_wait_lcore(self.lcore) }
    }
}

pub(crate) fn port_name(id: u16) -> Option<String> {
    let mut buf = [0 as std::ffi::c_char; dpdk_sys::RTE_ETH_NAME_MAX_LEN as usize];
    // SAFETY: buf has the size DPDK documents as the maximum name length.
    let ret = unsafe { dpdk_sys::rte_eth_dev_get_name_by_port(id, buf.as_mut_ptr()) };
    if ret < 0 {
        return None;
    }
    // SAFETY: on success DPDK wrote a NUL-terminated string into buf.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}
