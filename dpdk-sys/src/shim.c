#include "shim.h"

int rs_errno(void) { return rte_errno; }
const char *rs_strerror(int e) { return rte_strerror(e); }

uint16_t rs_eth_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_rx_burst(port, queue, pkts, n);
}
uint16_t rs_eth_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_tx_burst(port, queue, pkts, n);
}
struct rte_mbuf *rs_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }
int rs_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned n) {
    return rte_pktmbuf_alloc_bulk(mp, mbufs, n);
}
void rs_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }
void rs_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned n) { rte_pktmbuf_free_bulk(mbufs, n); }
uint8_t *rs_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, uint8_t *); }
uint16_t rs_pktmbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }
uint32_t rs_pktmbuf_pkt_len(const struct rte_mbuf *m) { return rte_pktmbuf_pkt_len(m); }
uint16_t rs_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }
uint8_t *rs_pktmbuf_append(struct rte_mbuf *m, uint16_t len) {
    return (uint8_t *)rte_pktmbuf_append(m, len);
}
uint16_t rs_pktmbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }
void rs_pktmbuf_reset(struct rte_mbuf *m) { rte_pktmbuf_reset(m); }
int rs_pktmbuf_copy_out(const struct rte_mbuf *m, uint8_t *buf, uint32_t cap) {
    uint32_t len = rte_pktmbuf_pkt_len(m);
    if (len > cap) return -1;
    const void *p = rte_pktmbuf_read(m, 0, len, buf);
    if (p == NULL) return -1;
    if (p != buf) rte_memcpy(buf, p, len);
    return (int)len;
}
unsigned rs_mempool_avail_count(const struct rte_mempool *mp) { return rte_mempool_avail_count(mp); }
unsigned rs_lcore_id(void) { return rte_lcore_id(); }
uint64_t rs_get_tsc_hz(void) { return rte_get_tsc_hz(); }
uint64_t rs_rdtsc(void) { return rte_rdtsc(); }
