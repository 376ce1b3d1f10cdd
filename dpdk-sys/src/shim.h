/* ringside dpdk-sys: the headers bindgen reads, and the shim over DPDK's static inline
 * functions (which have no symbol in the shared libraries). Each shim is a plain call. */
#include <rte_config.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_bus_vdev.h>
#include <rte_version.h>
#include <rte_cycles.h>

/* rte_errno is a per-lcore (thread-local) variable. */
int rs_errno(void);
const char *rs_strerror(int e);

uint16_t rs_eth_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t rs_eth_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);

struct rte_mbuf *rs_pktmbuf_alloc(struct rte_mempool *mp);
int rs_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned n);
void rs_pktmbuf_free(struct rte_mbuf *m);
void rs_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned n);
/* Start of the packet data of the first segment (rte_pktmbuf_mtod). */
uint8_t *rs_pktmbuf_mtod(struct rte_mbuf *m);
/* Data length of the first segment, and of the whole packet. */
uint16_t rs_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t rs_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t rs_pktmbuf_nb_segs(const struct rte_mbuf *m);
/* Appends len bytes to the packet (single segment); NULL when the tailroom is too small. */
uint8_t *rs_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
uint16_t rs_pktmbuf_tailroom(const struct rte_mbuf *m);
void rs_pktmbuf_reset(struct rte_mbuf *m);
/* Copies a whole (possibly segmented) packet into buf; returns bytes copied or -1 if it does
 * not fit. */
int rs_pktmbuf_copy_out(const struct rte_mbuf *m, uint8_t *buf, uint32_t cap);
unsigned rs_mempool_avail_count(const struct rte_mempool *mp);

unsigned rs_lcore_id(void);
uint64_t rs_get_tsc_hz(void);
uint64_t rs_rdtsc(void);
