/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Connection tracking: the map layouts shared by ebpf/lib/conntrack.h and
 * translator/src/conntrack.rs (mirrored there with #[repr(C)] types, checked against the
 * object's BTF). None of these maps is halved: connections do not follow the ruleset. */
#ifndef BPFIPT_CT_H
#define BPFIPT_CT_H

#include <linux/types.h>

/* Match kinds of struct bpfipt_match (beyond enum bpfipt_match_kind, kept apart so the
 * numbering there stays free). -m conntrack is split in two records: the AND of its
 * conditions is order-free, and one record has no room for four address pairs. */
#define BPFIPT_M_CONNTRACK 32	/* state, proto, ports, status, expire, direction */
#define BPFIPT_M_CT_ADDR 33	/* orig/repl src/dst address and mask */

/* xt_conntrack's match_flags / invert_flags bits (XT_CONNTRACK_*). */
#define BPFIPT_CT_F_STATE 0x0001
#define BPFIPT_CT_F_PROTO 0x0002
#define BPFIPT_CT_F_ORIGSRC 0x0004
#define BPFIPT_CT_F_ORIGDST 0x0008
#define BPFIPT_CT_F_REPLSRC 0x0010
#define BPFIPT_CT_F_REPLDST 0x0020
#define BPFIPT_CT_F_STATUS 0x0040
#define BPFIPT_CT_F_EXPIRES 0x0080
#define BPFIPT_CT_F_ORIGSRC_PORT 0x0100
#define BPFIPT_CT_F_ORIGDST_PORT 0x0200
#define BPFIPT_CT_F_REPLSRC_PORT 0x0400
#define BPFIPT_CT_F_REPLDST_PORT 0x0800
#define BPFIPT_CT_F_DIRECTION 0x1000

/* State bits as XT_CONNTRACK_STATE_BIT(ctinfo) and XT_CONNTRACK_STATE_*. */
#define BPFIPT_CTS_INVALID 0x01
#define BPFIPT_CTS_ESTABLISHED 0x02
#define BPFIPT_CTS_RELATED 0x04
#define BPFIPT_CTS_NEW 0x08
#define BPFIPT_CTS_UNTRACKED 0x100

/* enum ip_conntrack_status bits the datapath sets. */
#define BPFIPT_IPS_EXPECTED 0x01
#define BPFIPT_IPS_SEEN_REPLY 0x02
#define BPFIPT_IPS_ASSURED 0x04
#define BPFIPT_IPS_CONFIRMED 0x08

/* enum tcp_conntrack */
enum bpfipt_tcp_state {
	BPFIPT_TCP_NONE = 0,
	BPFIPT_TCP_SYN_SENT = 1,
	BPFIPT_TCP_SYN_RECV = 2,
	BPFIPT_TCP_ESTABLISHED = 3,
	BPFIPT_TCP_FIN_WAIT = 4,
	BPFIPT_TCP_CLOSE_WAIT = 5,
	BPFIPT_TCP_LAST_ACK = 6,
	BPFIPT_TCP_TIME_WAIT = 7,
	BPFIPT_TCP_CLOSE = 8,
	BPFIPT_TCP_SYN_SENT2 = 9,
	BPFIPT_TCP_MAX = 10,	/* invalid */
	BPFIPT_TCP_IGNORE = 11,
	BPFIPT_TCP_RETRANS = 12,
	BPFIPT_TCP_UNACK = 13,
};

/* Timeouts (seconds) in struct bpfipt_ct_config.timeout: TCP by enum bpfipt_tcp_state
 * (RETRANS and UNACK included), then these. */
enum bpfipt_ct_timeout {
	BPFIPT_CTT_UDP = 14,
	BPFIPT_CTT_UDP_STREAM = 15,
	BPFIPT_CTT_ICMP = 16,
	BPFIPT_CTT_GENERIC = 17,
	BPFIPT_CTT_N = 18,
};

/* ct_config: ARRAY, one entry, written by the daemon. */
struct bpfipt_ct_config {
	__u32 enabled;	/* some rule of the active ruleset uses conntrack state */
	__u32 max;	/* nf_conntrack_max */
	__u32 loose;	/* nf_conntrack_tcp_loose */
	__u32 be_liberal;	/* nf_conntrack_tcp_be_liberal */
	__u32 timeout[BPFIPT_CTT_N];
	__u32 max_retrans;	/* nf_conntrack_tcp_max_retrans */
	__u32 ignore_invalid_rst;	/* nf_conntrack_tcp_ignore_invalid_rst */
	__u32 checksum;	/* nf_conntrack_checksum */
	__u32 pad;
};

/* ct_count: ARRAY, one entry: connections in the table (nf_conntrack_count), kept by the
 * datapath on insert and delete, recounted by the daemon's garbage collection. */

/* ct: HASH keyed by the tuple with its two ends in a fixed order (lower (address, port)
 * first), so both directions find the one entry. ICMP: both ports are the id, `cls` the
 * query's request type. */
struct bpfipt_ct_key {
	__be32 addr_lo;
	__be32 addr_hi;
	__u16 port_lo;
	__u16 port_hi;
	__u8 proto;
	__u8 cls;
	__u8 pad[2];
};

/* TCP window tracking of one direction (struct ip_ct_tcp_state). */
struct bpfipt_ct_tcp_dir {
	__u32 td_end;	/* max of seq + len */
	__u32 td_maxend;	/* max of ack + max(win, 1) */
	__u32 td_maxwin;	/* max(win) */
	__u32 td_maxack;	/* max of ack */
	__u8 td_scale;	/* window scale factor */
	__u8 flags;	/* BPFIPT_CT_TCPF_* */
	__u8 pad[2];
};

struct bpfipt_ct_entry {
	__u64 expires;	/* bpf_ktime_get_ns() when the entry dies */
	__u64 stream_ts;	/* UDP: after this, replies make the flow a stream */
	__be32 orig_src;
	__be32 orig_dst;
	__u16 orig_sport;	/* host order; ICMP: the id */
	__u16 orig_dport;	/* host order; ICMP: type << 8 | code */
	__u32 status;	/* BPFIPT_IPS_* */
	__u32 last_end;	/* TCP: seq + length of the last ignored or ACK segment */
	__u8 proto;
	__u8 tcp_state;	/* enum bpfipt_tcp_state */
	__u8 last_index;	/* TCP: flag class (tcp_bit_set) of the last in-window segment */
	__u8 last_dir;
	__u8 retrans;	/* TCP: repeats of the last ACK segment */
	__u8 last_wscale;	/* TCP: window scale of the last ignored SYN */
	__u8 last_flags;	/* TCP: BPFIPT_CT_TCPF_* of the last ignored SYN, SIMULTANEOUS_OPEN */
	__u8 pad;
	__u32 last_seq;
	__u32 last_ack;
	__u16 last_win;	/* TCP: raw window of the last ACK or ignored segment */
	__u8 pad2[2];
	struct bpfipt_ct_tcp_dir seen[2];	/* TCP: by direction, original first */
};

/* IP_CT_TCP_FLAG_* and the last_flags bits of nf_conntrack_tcp.h. */
#define BPFIPT_CT_TCPF_WINDOW_SCALE 0x01
#define BPFIPT_CT_TCPF_SACK_PERM 0x02
#define BPFIPT_CT_TCPF_CLOSE_INIT 0x04
#define BPFIPT_CT_TCPF_BE_LIBERAL 0x08
#define BPFIPT_CT_TCPF_DATA_UNACKNOWLEDGED 0x10
#define BPFIPT_CT_TCPF_MAXACK_SET 0x20
#define BPFIPT_CT_TCPF_EXP_CHALLENGE_ACK 0x40
#define BPFIPT_CT_TCPF_SIMULTANEOUS_OPEN 0x80

/* ct_stats: PERCPU_ARRAY of counters. */
enum bpfipt_ct_stat {
	BPFIPT_CTS_FOUND = 0,
	BPFIPT_CTS_NEW_CONFIRMED = 1,
	BPFIPT_CTS_INVALID_PKT = 2,
	BPFIPT_CTS_RELATED_PKT = 3,
	BPFIPT_CTS_TABLE_FULL = 4,
	BPFIPT_CTS_EXPIRED = 5,
	BPFIPT_CTS_SHORTCUT = 6,
	BPFIPT_CT_NSTATS = 7,
};

/* Set by OUTPUT at lo's egress, read by INPUT at lo's ingress: the packet keeps the
 * conntrack state it got at OUTPUT, as the kernel's loopback keeps skb->_nfct. Carried in
 * skb->cb[0] (this magic) and cb[1] (state bit, bit 8: reply direction): kernel 6.18 zeroes
 * skb->tc_index between lo's egress and its ingress (bpf_printk: 0xc008 written at egress, 0
 * read at ingress), while the qdisc cb area survives until ip_rcv clears it. */
#define BPFIPT_CB_CT_MAGIC 0xb1f7c7a9u

#endif
