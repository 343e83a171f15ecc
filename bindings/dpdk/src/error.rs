use std::ffi::CStr;

/// What can go wrong in a DPDK call. Messages name the call and DPDK's own explanation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{call} failed: {message} ({code})")]
    Dpdk {
        call: &'static str,
        code: i32,
        message: String,
    },
    #[error("the EAL was already initialised in this process; DPDK allows one EAL per process")]
    EalAlreadyInitialised,
    #[error("no DPDK port named {name:?}; ports: {available}")]
    NoSuchPort { name: String, available: String },
    #[error("{0}")]
    InvalidArgument(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Text for a DPDK error number (positive errno or DPDK's own `rte_errno` values).
pub(crate) fn strerror(code: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string.
    unsafe { CStr::from_ptr(dpdk_sys::rte_strerror(code.abs())) }
        .to_string_lossy()
        .into_owned()
}

/// Turns a DPDK return code (negative errno on failure) into a `Result`.
pub(crate) fn check(call: &'static str, ret: i32) -> Result<i32> {
    if ret < 0 {
        Err(Error::Dpdk {
            call,
            code: ret,
            message: strerror(ret),
        })
    } else {
        Ok(ret)
    }
}

/// For calls that report failure through `rte_errno` (and NULL or -1).
pub(crate) fn from_rte_errno(call: &'static str) -> Error {
    // SAFETY: reads the calling thread's rte_errno.
    let code = unsafe { dpdk_sys::wlbs_rte_errno() };
    Error::Dpdk {
        call,
        code: -code,
        message: strerror(code),
    }
}
