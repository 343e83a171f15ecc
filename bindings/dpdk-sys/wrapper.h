/* The slice of DPDK 22.11 that wlbs uses. bindgen reads this; the static inline functions
 * it names get out-of-line wrappers (wrap_static_fns) compiled by build.rs. */
#include <rte_config.h>
#include <rte_common.h>
#include <rte_errno.h>
#include <rte_eal.h>
#include <rte_lcore.h>
#include <rte_launch.h>
#include <rte_cycles.h>
#include <rte_pause.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ether.h>
#include <rte_ethdev.h>
#include <rte_ring.h>

/* rte_errno is a per-lcore TLS variable behind a macro; expose it as a function. */
static inline int wlbs_rte_errno(void) { return rte_errno; }
