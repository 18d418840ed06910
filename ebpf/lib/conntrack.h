/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Connection tracking as nf_conntrack shows it to a ruleset (net/netfilter/
 * nf_conntrack_core.c, _proto_tcp.c, _proto_udp.c, _proto_icmp.c, _proto_generic.c).
 *
 * Per packet, before classification (the kernel tracks in PREROUTING/OUTPUT, before filter):
 *   1. an ICMP error quoting a tracked flow is RELATED to it, quoting nothing is INVALID;
 *   2. a packet of a known flow updates it in place (even if filter then drops it);
 *   3. a packet of no known flow prepares a new entry: the packet is NEW, and the entry is
 *      inserted only when the hook accepts the packet (the kernel confirms at the last hook);
 *   4. a packet a tracker refuses (bad TCP flags, a reply-only ICMP type, ...) is INVALID.
 * Not modelled: TCP window tracking (tcp_in_window: out-of-window segments are INVALID in
 * the kernel), checksum validation (nf_conntrack_checksum), reassembly (nf_defrag_ipv4:
 * later fragments are INVALID here), the SCTP/DCCP/GRE trackers (generic here), early drop.
 */
#ifndef BPFIPT_CONNTRACK_H
#define BPFIPT_CONNTRACK_H

#include "common.h"
#include "bpfipt_ct.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct bpfipt_ct_key);
	__type(value, struct bpfipt_ct_entry);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfipt_ct_config);
} ct_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} ct_count SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BPFIPT_CT_NSTATS);
	__type(key, __u32);
	__type(value, __u64);
} ct_stats SEC(".maps");

/* What tracking found for the packet being classified. */
struct ct_pkt {
	__u32 on;	/* tracking ran for this packet */
	__u32 bits;	/* BPFIPT_CTS_*: the state a rule sees */
	__u32 dir;	/* 0 original, 1 reply */
	__u32 tracked;	/* a connection is attached (not INVALID) */
	__u32 create;	/* insert `e` under `key` when the packet is accepted */
	__u32 pad;
	struct bpfipt_ct_key key;
	struct bpfipt_ct_entry e;	/* the connection as a rule sees it */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ct_pkt);
} ct_scratch SEC(".maps");

#define NS_PER_SEC 1000000000ull
/* CONFIG_HZ of the reference kernel: remaining lifetimes are whole jiffies / HZ there. */
#define CT_JIFFY_NS (NS_PER_SEC / 250)

static __always_inline void ct_stat(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&ct_stats, &i);

	if (v)
		*v += 1;
}

static __always_inline struct ct_pkt *ct_pkt_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&ct_scratch, &zero);
}

static __always_inline struct bpfipt_ct_config *ct_cfg(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&ct_config, &zero);
}

static __always_inline __u64 ct_timeout(const struct bpfipt_ct_config *c, __u32 i)
{
	if (i >= BPFIPT_CTT_N)
		return 0;
	return (__u64)c->timeout[i] * NS_PER_SEC;
}

static __always_inline void ct_count_add(__s64 d)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&ct_count, &zero);

	if (n)
		__sync_fetch_and_add(n, d);
}

static __always_inline void ct_delete(const struct bpfipt_ct_key *k)
{
	if (bpf_map_delete_elem(&ct, k) == 0)
		ct_count_add(-1);
}

/* Seconds left, as nf_ct_expires(ct) / HZ. */
static __always_inline __u32 ct_remaining(const struct bpfipt_ct_entry *e, __u64 now)
{
	__u64 left;

	if (!(e->status & BPFIPT_IPS_CONFIRMED))
		/* Not in the table yet: its whole timeout. */
		return (e->expires - e->stream_ts + 2 * NS_PER_SEC) / NS_PER_SEC;
	if (e->expires <= now)
		return 0;
	left = (e->expires - now + CT_JIFFY_NS - 1) / CT_JIFFY_NS;
	return left / 250;
}

/* The key of a tuple: its lower end first. */
static __always_inline void ct_key(struct bpfipt_ct_key *k, __be32 s, __be32 d, __u16 sp,
				   __u16 dp, __u8 proto, __u8 cls)
{
	__u64 a = ((__u64)bpf_ntohl(s) << 16) | sp, b = ((__u64)bpf_ntohl(d) << 16) | dp;

	__builtin_memset(k, 0, sizeof(*k));
	if (a <= b) {
		k->addr_lo = s;
		k->addr_hi = d;
		k->port_lo = sp;
		k->port_hi = dp;
	} else {
		k->addr_lo = d;
		k->addr_hi = s;
		k->port_lo = dp;
		k->port_hi = sp;
	}
	k->proto = proto;
	k->cls = cls;
}

/* invmap of nf_conntrack_proto_icmp.c: the other type of a query pair, + 1 (0: none). */
static __always_inline __u32 icmp_inv(__u8 t)
{
	switch (t) {
	case 8: return 0 + 1;
	case 0: return 8 + 1;
	case 13: return 14 + 1;
	case 14: return 13 + 1;
	case 15: return 16 + 1;
	case 16: return 15 + 1;
	case 17: return 18 + 1;
	case 18: return 17 + 1;
	}
	return 0;
}

/* The request type of a query pair: the key's class. */
static __always_inline __u8 icmp_cls(__u8 t)
{
	return (t == 0 || t == 14 || t == 16 || t == 18) ? icmp_inv(t) - 1 : t;
}

/* The entry's original tuple ports for the protocol: (sport, dport) with ICMP's id and
 * type/code (icmp_pkt_to_tuple). */
static __always_inline int ct_l4_ports(__u8 proto, __u16 sport, __u16 dport, __u8 itype,
				       __u8 icode, __u16 id, __u16 *a, __u16 *b)
{
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_UDPLITE) {
		*a = sport;
		*b = dport;
	} else if (proto == IPPROTO_ICMP) {
		*a = id;
		*b = ((__u16)itype << 8) | icode;
	} else {
		*a = 0;
		*b = 0;
	}
	return 0;
}

/* Looks the tuple up; an expired entry is removed and not found. *dir: the packet's
 * direction in the connection. */
static __always_inline struct bpfipt_ct_entry *ct_find(const struct bpfipt_ct_key *k,
							__be32 s, __u16 sp, __u64 now,
							__u32 *dir)
{
	struct bpfipt_ct_entry *e = bpf_map_lookup_elem(&ct, k);

	if (!e)
		return 0;
	if (e->expires <= now) {
		ct_stat(BPFIPT_CTS_EXPIRED);
		ct_delete(k);
		return 0;
	}
	*dir = !(e->orig_src == s && e->orig_sport == sp);
	return e;
}

/* ctinfo of a packet of a known connection (resolve_normal_ct). */
static __always_inline __u32 ct_bits(const struct bpfipt_ct_entry *e, __u32 dir)
{
	if (dir || (e->status & BPFIPT_IPS_SEEN_REPLY))
		return BPFIPT_CTS_ESTABLISHED;
	if (e->status & BPFIPT_IPS_EXPECTED)
		return BPFIPT_CTS_RELATED;
	return BPFIPT_CTS_NEW;
}

/* tcp_conntracks[dir][index][state] of nf_conntrack_proto_tcp.c, states sNO..sS2. */
#define sNO BPFIPT_TCP_NONE
#define sSS BPFIPT_TCP_SYN_SENT
#define sSR BPFIPT_TCP_SYN_RECV
#define sES BPFIPT_TCP_ESTABLISHED
#define sFW BPFIPT_TCP_FIN_WAIT
#define sCW BPFIPT_TCP_CLOSE_WAIT
#define sLA BPFIPT_TCP_LAST_ACK
#define sTW BPFIPT_TCP_TIME_WAIT
#define sCL BPFIPT_TCP_CLOSE
#define sS2 BPFIPT_TCP_SYN_SENT2
#define sIV BPFIPT_TCP_MAX
#define sIG BPFIPT_TCP_IGNORE

static const __u8 tcp_states[2][6][10] = {
	{
		/* original: syn, synack, fin, ack, rst, none */
		{ sSS, sSS, sIG, sIG, sIG, sIG, sIG, sSS, sSS, sS2 },
		{ sIV, sIV, sSR, sIV, sIV, sIV, sIV, sIV, sIV, sSR },
		{ sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV },
		{ sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV },
		{ sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL },
		{ sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV },
	},
	{
		/* reply */
		{ sIV, sS2, sIV, sIV, sIV, sIV, sIV, sSS, sIV, sS2 },
		{ sIV, sSR, sIG, sIG, sIG, sIG, sIG, sIG, sIG, sSR },
		{ sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV },
		{ sIV, sIG, sSR, sES, sCW, sCW, sTW, sTW, sCL, sIG },
		{ sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL },
		{ sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV },
	},
};

enum { TCP_SYN_SET = 0, TCP_SYNACK_SET, TCP_FIN_SET, TCP_ACK_SET, TCP_RST_SET, TCP_NONE_SET };

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_PSH 0x08
#define TH_ACK 0x10
#define TH_URG 0x20

/* get_conntrack_index */
static __always_inline __u32 tcp_index(__u8 f)
{
	if (f & TH_RST)
		return TCP_RST_SET;
	if (f & TH_SYN)
		return (f & TH_ACK) ? TCP_SYNACK_SET : TCP_SYN_SET;
	if (f & TH_FIN)
		return TCP_FIN_SET;
	if (f & TH_ACK)
		return TCP_ACK_SET;
	return TCP_NONE_SET;
}

/* tcp_valid_flags (PSH, ECE and CWR ignored). */
static __always_inline int tcp_flags_valid(__u8 f)
{
	f &= TH_FIN | TH_SYN | TH_RST | TH_ACK | TH_URG;
	switch (f) {
	case TH_SYN:
	case TH_SYN | TH_URG:
	case TH_SYN | TH_ACK:
	case TH_RST:
	case TH_RST | TH_ACK:
	case TH_FIN | TH_ACK:
	case TH_FIN | TH_ACK | TH_URG:
	case TH_ACK:
	case TH_ACK | TH_URG:
		return 1;
	}
	return 0;
}

/* What the TCP tracker needs beyond struct pkt. */
struct tcp_seg {
	__u32 seq;
	__u32 ack;
	__u32 end;	/* seq + payload + SYN + FIN (segment_seq_plus_len) */
	__u8 flags;
	__u8 ok;	/* a whole header (tcp_error's length checks) */
};

static __always_inline void tcp_read(struct __sk_buff *skb, const struct pkt *p,
				     struct tcp_seg *t)
{
	__u8 h[20];
	__u32 doff;

	t->ok = 0;
	if (p->l4len < 20 || bpf_skb_load_bytes(skb, ETH_HLEN + (p->ihl & 0x3c), h, 20) < 0)
		return;
	doff = (h[12] >> 4) * 4;
	if (doff < 20 || p->l4len < doff)
		return;
	t->seq = ((__u32)h[4] << 24) | ((__u32)h[5] << 16) | ((__u32)h[6] << 8) | h[7];
	t->ack = ((__u32)h[8] << 24) | ((__u32)h[9] << 16) | ((__u32)h[10] << 8) | h[11];
	t->flags = h[13];
	t->end = t->seq + (p->l4len - doff) + !!(t->flags & TH_SYN) + !!(t->flags & TH_FIN);
	t->ok = 1;
}

/* nf_conntrack_tcp_packet without tcp_in_window. Returns 0 when the packet is INVALID,
 * 1 when it belongs to the connection, 2 when the connection must be reopened (the old
 * entry is deleted and the packet starts a new one), 3 when the entry must be deleted
 * after this packet (a RST as the only reply). `e` is updated in place. */
static __always_inline int tcp_packet(struct bpfipt_ct_entry *e, __u32 dir,
				      const struct tcp_seg *t, const struct bpfipt_ct_config *c,
				      __u64 now)
{
	__u32 index = tcp_index(t->flags), old = e->tcp_state, nw;
	__u64 timeout;

	if (old > 9 || dir > 1 || index > 5)
		return 0;
	nw = tcp_states[dir][index][old];
	switch (nw) {
	case BPFIPT_TCP_SYN_SENT:
		if (old < BPFIPT_TCP_TIME_WAIT)
			break;
		if ((e->tcp_flags & (BPFIPT_CT_TCP_CLOSE_INIT_ORIG | BPFIPT_CT_TCP_CLOSE_INIT_REPLY)) ||
		    (e->last_dir == dir && e->last_index == TCP_RST_SET))
			return 2;
		/* fallthrough */
	case BPFIPT_TCP_IGNORE:
		if (index == TCP_SYNACK_SET && e->last_index == TCP_SYN_SET && e->last_dir != dir &&
		    t->ack == e->last_end) {
			/* A SYN/ACK for a SYN we ignored: back in sync. */
			old = BPFIPT_TCP_SYN_SENT;
			nw = BPFIPT_TCP_SYN_RECV;
			break;
		}
		e->last_index = index;
		e->last_dir = dir;
		e->last_end = t->end;
		return 1;
	case BPFIPT_TCP_MAX:
		return 0;
	case BPFIPT_TCP_SYN_SENT2:
		e->tcp_flags |= BPFIPT_CT_TCP_SIMULTANEOUS_OPEN;
		break;
	case BPFIPT_TCP_SYN_RECV:
		if (dir == 1 && index == TCP_ACK_SET &&
		    (e->tcp_flags & BPFIPT_CT_TCP_SIMULTANEOUS_OPEN))
			nw = BPFIPT_TCP_ESTABLISHED;
		break;
	}
	e->last_index = index;
	e->last_dir = dir;
	e->tcp_state = nw;
	if (old != nw && nw == BPFIPT_TCP_FIN_WAIT)
		e->tcp_flags |= dir ? BPFIPT_CT_TCP_CLOSE_INIT_REPLY : BPFIPT_CT_TCP_CLOSE_INIT_ORIG;
	if (index == TCP_RST_SET)
		timeout = ct_timeout(c, BPFIPT_TCP_CLOSE);
	else
		timeout = ct_timeout(c, nw);
	if (!(e->status & BPFIPT_IPS_SEEN_REPLY)) {
		/* SEEN_REPLY is set after the tracker: a first reply lands here too. */
		if (index == TCP_RST_SET)
			return 3;
		if (index == TCP_SYN_SET && old == BPFIPT_TCP_SYN_SENT)
			return 1;	/* a retransmitted SYN does not renew the timeout */
		if (nw == BPFIPT_TCP_ESTABLISHED && timeout > ct_timeout(c, BPFIPT_TCP_UNACK))
			timeout = ct_timeout(c, BPFIPT_TCP_UNACK);
	} else if (!(e->status & BPFIPT_IPS_ASSURED) &&
		   (old == BPFIPT_TCP_SYN_RECV || old == BPFIPT_TCP_ESTABLISHED) &&
		   nw == BPFIPT_TCP_ESTABLISHED) {
		e->status |= BPFIPT_IPS_ASSURED;
	}
	e->expires = now + timeout;
	return 1;
}

/* tcp_new: whether a segment may open a connection, and its first state. */
static __always_inline int tcp_new(struct bpfipt_ct_entry *e, const struct tcp_seg *t,
				   const struct bpfipt_ct_config *c)
{
	__u32 st = tcp_states[0][tcp_index(t->flags) % 6][BPFIPT_TCP_NONE];

	if (st >= BPFIPT_TCP_MAX)
		return 0;
	if (st != BPFIPT_TCP_SYN_SENT && !c->loose)
		return 0;
	e->tcp_state = BPFIPT_TCP_NONE;
	e->last_index = TCP_NONE_SET;
	return 1;
}

/* udp_packet: unreplied until a reply, a stream (ASSURED, longer timeout) once the flow
 * still talks both ways 2 s after it started. */
static __always_inline void udp_packet(struct bpfipt_ct_entry *e,
				       const struct bpfipt_ct_config *c, __u64 now)
{
	if (e->status & BPFIPT_IPS_SEEN_REPLY) {
		__u64 extra = ct_timeout(c, BPFIPT_CTT_UDP);

		if (now > e->stream_ts) {
			extra = ct_timeout(c, BPFIPT_CTT_UDP_STREAM);
			e->status |= BPFIPT_IPS_ASSURED;
		}
		e->expires = now + extra;
	} else {
		e->expires = now + ct_timeout(c, BPFIPT_CTT_UDP);
	}
}

static __always_inline int icmp_is_err(__u8 t)
{
	return t == 3 || t == 4 || t == 5 || t == 11 || t == 12;
}

/* nf_conntrack_inet_error: an ICMP error is RELATED to the connection its quoted packet
 * belongs to, if it is addressed to where the quoted packet came from. */
static __always_inline void icmp_error(struct __sk_buff *skb, const struct pkt *p,
				       struct ct_pkt *r, __u64 now)
{
	__u32 off = ETH_HLEN + (p->ihl & 0x3c) + 8, ihl, dir = 0;
	__u8 ip[20], l4[8];
	__u16 a, b;
	__u8 proto, cls = 0;
	__be32 s, d;
	struct bpfipt_ct_entry *e;

	if (bpf_skb_load_bytes(skb, off, ip, 20) < 0)
		return;
	ihl = (ip[0] & 0xf) * 4;
	if ((ip[0] >> 4) != 4 || ihl < 20)
		return;
	proto = ip[9];
	__builtin_memcpy(&s, &ip[12], 4);
	__builtin_memcpy(&d, &ip[16], 4);
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_UDPLITE ||
	    proto == IPPROTO_ICMP) {
		if (bpf_skb_load_bytes(skb, off + (ihl & 0x3c), l4, 8) < 0)
			return;
		if (proto == IPPROTO_ICMP) {
			/* The quoted query must have a reply type (nf_ct_invert_tuple). */
			if (!icmp_inv(l4[0]))
				return;
			cls = icmp_cls(l4[0]);
			ct_l4_ports(proto, 0, 0, l4[0], l4[1], ((__u16)l4[4] << 8) | l4[5], &a, &b);
		} else {
			ct_l4_ports(proto, ((__u16)l4[0] << 8) | l4[1], ((__u16)l4[2] << 8) | l4[3],
				    0, 0, 0, &a, &b);
		}
	} else {
		a = b = 0;
	}
	if (proto == IPPROTO_ICMP)
		ct_key(&r->key, s, d, a, a, proto, cls);
	else
		ct_key(&r->key, s, d, a, b, proto, 0);
	e = ct_find(&r->key, s, a, now, &dir);
	if (!e)
		return;
	if (proto == IPPROTO_ICMP) {
		__u16 rep = ((icmp_inv(e->orig_dport >> 8) - 1) << 8) | (e->orig_dport & 0xff);

		if (b == e->orig_dport && s == e->orig_src)
			dir = 0;
		else if (b == rep && s == e->orig_dst)
			dir = 1;
		else
			return;
	}
	/* The error travels against the quoted packet; it must go to the quoted source. */
	if (p->daddr != s)
		return;
	r->e = *e;
	r->tracked = 1;
	r->bits = BPFIPT_CTS_RELATED;
	r->dir = !dir;
	ct_stat(BPFIPT_CTS_RELATED_PKT);
}

/* Tracks the packet: fills the ct_pkt a rule sees. Returns 0, or -1 when the packet must
 * be dropped before any rule (table full, as init_conntrack's drop). */
static __always_inline int ct_track(struct __sk_buff *skb, const struct pkt *p,
				    struct ct_pkt *r, const struct bpfipt_ct_config *c)
{
	__u64 now = bpf_ktime_get_ns();
	struct bpfipt_ct_entry *e;
	struct tcp_seg t = {};
	__u16 a, b, id = 0;
	__u32 dir = 0;
	__u8 cls = 0;
	int v;

	r->on = 1;
	r->bits = BPFIPT_CTS_INVALID;
	r->dir = 0;
	r->tracked = 0;
	r->create = 0;
	if (p->fragoff)
		/* The kernel reassembles first; later fragments are not modelled. */
		return 0;
	if (p->proto == IPPROTO_TCP) {
		tcp_read(skb, p, &t);
		if (!t.ok || !tcp_flags_valid(t.flags))
			return 0;
	} else if (p->proto == IPPROTO_UDP || p->proto == IPPROTO_UDPLITE) {
		__u8 h[8];

		if (p->l4len < 8 || bpf_skb_load_bytes(skb, ETH_HLEN + (p->ihl & 0x3c), h, 8) < 0)
			return 0;
		if (p->proto == IPPROTO_UDP) {
			__u16 ulen = ((__u16)h[4] << 8) | h[5];

			if (ulen > p->l4len || ulen < 8)
				return 0;
		}
	} else if (p->proto == IPPROTO_ICMP) {
		__u8 h[8];

		if (p->l4len < 8 || bpf_skb_load_bytes(skb, ETH_HLEN + (p->ihl & 0x3c), h, 8) < 0)
			return 0;
		if (p->icmp_type > 18)
			return 0;
		if (icmp_is_err(p->icmp_type)) {
			icmp_error(skb, p, r, now);
			if (!r->tracked)
				ct_stat(BPFIPT_CTS_INVALID_PKT);
			return 0;
		}
		id = ((__u16)h[4] << 8) | h[5];
		/* A type without a counterpart makes no tuple. */
		if (!icmp_inv(p->icmp_type))
			return 0;
		cls = icmp_cls(p->icmp_type);
	}
	ct_l4_ports(p->proto, p->sport, p->dport, p->icmp_type, p->icmp_code, id, &a, &b);
	if (p->proto == IPPROTO_ICMP)
		ct_key(&r->key, p->saddr, p->daddr, a, a, p->proto, cls);
	else
		ct_key(&r->key, p->saddr, p->daddr, a, b, p->proto, 0);
	e = ct_find(&r->key, p->saddr, a, now, &dir);
	if (e && p->proto == IPPROTO_ICMP) {
		/* The type tells the direction (both ends may be one address, as on lo). */
		__u16 rep = ((icmp_inv(e->orig_dport >> 8) - 1) << 8) | (e->orig_dport & 0xff);

		if (b == e->orig_dport && p->saddr == e->orig_src)
			dir = 0;
		else if (b == rep && p->saddr == e->orig_dst)
			dir = 1;
		else
			/* Another tuple in the kernel (e.g. an echo reply sent as a request). */
			e = 0;
	}
	if (e) {
		ct_stat(BPFIPT_CTS_FOUND);
		r->bits = ct_bits(e, dir);
		r->dir = dir;
		if (p->proto == IPPROTO_TCP) {
			v = tcp_packet(e, dir, &t, c, now);
			if (v == 0) {
				ct_stat(BPFIPT_CTS_INVALID_PKT);
				r->bits = BPFIPT_CTS_INVALID;
				return 0;
			}
			if (v == 2) {
				/* Reopened: the old connection goes, this packet starts a new one. */
				ct_delete(&r->key);
				e = 0;
				goto fresh;
			}
			if (dir)
				e->status |= BPFIPT_IPS_SEEN_REPLY;
			r->e = *e;
			r->tracked = 1;
			if (v == 3)
				ct_delete(&r->key);
			return 0;
		}
		if (p->proto == IPPROTO_UDP || p->proto == IPPROTO_UDPLITE)
			udp_packet(e, c, now);
		else if (p->proto == IPPROTO_ICMP)
			e->expires = now + ct_timeout(c, BPFIPT_CTT_ICMP);
		else
			e->expires = now + ct_timeout(c, BPFIPT_CTT_GENERIC);
		if (dir)
			e->status |= BPFIPT_IPS_SEEN_REPLY;
		r->e = *e;
		r->tracked = 1;
		return 0;
	}
fresh:
	/* A new connection, confirmed if the packet is accepted. */
	__builtin_memset(&r->e, 0, sizeof(r->e));
	r->e.orig_src = p->saddr;
	r->e.orig_dst = p->daddr;
	r->e.orig_sport = a;
	r->e.orig_dport = b;
	r->e.proto = p->proto;
	r->e.stream_ts = now + 2 * NS_PER_SEC;
	r->dir = 0;
	if (p->proto == IPPROTO_TCP) {
		if (!tcp_new(&r->e, &t, c)) {
			ct_stat(BPFIPT_CTS_INVALID_PKT);
			return 0;
		}
		if (tcp_packet(&r->e, 0, &t, c, now) == 0) {
			ct_stat(BPFIPT_CTS_INVALID_PKT);
			return 0;
		}
	} else if (p->proto == IPPROTO_ICMP) {
		/* Only a request opens an ICMP connection (valid_new). */
		if (!(p->icmp_type == 8 || p->icmp_type == 13 || p->icmp_type == 15 ||
		      p->icmp_type == 17)) {
			ct_stat(BPFIPT_CTS_INVALID_PKT);
			return 0;
		}
		r->e.expires = now + ct_timeout(c, BPFIPT_CTT_ICMP);
	} else if (p->proto == IPPROTO_UDP || p->proto == IPPROTO_UDPLITE) {
		r->e.expires = now + ct_timeout(c, BPFIPT_CTT_UDP);
	} else {
		r->e.expires = now + ct_timeout(c, BPFIPT_CTT_GENERIC);
	}
	{
		/* init_conntrack: no room, no connection, no packet. */
		__u32 zero = 0;
		__u64 *n = bpf_map_lookup_elem(&ct_count, &zero);

		if (n && *n >= c->max) {
			ct_stat(BPFIPT_CTS_TABLE_FULL);
			return -1;
		}
	}
	r->bits = BPFIPT_CTS_NEW;
	r->tracked = 1;
	r->create = 1;
	return 0;
}

/* __nf_conntrack_confirm: the new connection enters the table with its accepted packet. */
static __always_inline int ct_confirm(struct ct_pkt *r)
{
	if (!r->on || !r->create)
		return 0;
	r->create = 0;
	r->e.status |= BPFIPT_IPS_CONFIRMED;
	if (bpf_map_update_elem(&ct, &r->key, &r->e, BPF_NOEXIST) == 0) {
		ct_count_add(1);
		ct_stat(BPFIPT_CTS_NEW_CONFIRMED);
		return 0;
	}
	/* Another CPU confirmed the same tuple first (the kernel's clash): keep that one. A full
	 * map is the only other failure; the packet is dropped as the kernel's would be. */
	if (bpf_map_lookup_elem(&ct, &r->key))
		return 0;
	ct_stat(BPFIPT_CTS_TABLE_FULL);
	return -1;
}

/* At lo's ingress: the state OUTPUT gave the packet at lo's egress (loopback keeps it). */
static __always_inline void ct_from_tag(const struct pkt *p, struct ct_pkt *r, __u32 tag)
{
	struct bpfipt_ct_entry *e;

	r->on = 1;
	r->create = 0;
	r->bits = tag & 0xff;
	r->dir = (tag >> 8) & 1;
	r->tracked = r->bits != BPFIPT_CTS_INVALID;
	__builtin_memset(&r->e, 0, sizeof(r->e));
	if (!r->tracked)
		return;
	r->e.proto = p->proto;
	r->e.orig_src = r->dir ? p->daddr : p->saddr;
	r->e.orig_dst = r->dir ? p->saddr : p->daddr;
	r->e.status = BPFIPT_IPS_CONFIRMED;
	if (r->bits == BPFIPT_CTS_RELATED || !p->has_ports)
		return;
	/* The connection as it is now, for the matches on its tuple, status and expiry. */
	ct_key(&r->key, p->saddr, p->daddr, p->sport, p->dport, p->proto, 0);
	e = bpf_map_lookup_elem(&ct, &r->key);
	if (e)
		r->e = *e;
}

/* A TCP RST built by our REJECT: nf_send_reset attaches the offending packet's connection
 * as RELATED in the other direction (nf_ct_attach); `r` still holds that packet's tracking
 * (the reply is sent on this CPU right after it). Returns 0 when the reply must be tracked
 * on its own (the offending packet had no connection). */
static __always_inline int ct_reject_reply(struct ct_pkt *r)
{
	if (!r->on || !r->tracked || r->bits == BPFIPT_CTS_INVALID)
		return 0;
	r->bits = BPFIPT_CTS_RELATED;
	r->dir = !r->dir;
	r->create = 0;
	return 1;
}

static __always_inline __u16 rd16(const __u8 *b, __u32 o)
{
	return *(const __u16 *)(b + o);
}

static __always_inline __u32 rd32(const __u8 *b, __u32 o)
{
	return *(const __u32 *)(b + o);
}

static __always_inline int ct_port_ok(const __u8 *u, __u32 o, __u16 flags, __u16 inv,
				      __u16 bit, __u16 port)
{
	if (!(flags & bit))
		return 1;
	return (port >= rd16(u, o) && port <= rd16(u, o + 2)) ^ !!(inv & bit);
}

/* conntrack_mt (and state_mt, lowered to its state part): 1 match, 0 no match. */
static __always_inline int ct_match(const struct bpfipt_match *m)
{
	struct ct_pkt *r = ct_pkt_get();
	const __u8 *u = m->u.raw;
	__u16 flags, inv;

	if (!r || !r->on)
		return 0;
	if (m->kind == BPFIPT_M_CT_ADDR) {
		const struct bpfipt_ct_entry *e = &r->e;
		/* reply tuple: src = orig dst, dst = orig src */
		__be32 v[4] = { e->orig_src, e->orig_dst, e->orig_dst, e->orig_src };

		flags = rd16(u, 32);
		inv = rd16(u, 34);
		if (!r->tracked)
			return 1;	/* decided by the state part */
#pragma unroll
		for (int i = 0; i < 4; i++) {
			__u16 bit = BPFIPT_CT_F_ORIGSRC << i;

			if ((flags & bit) &&
			    ((((v[i] ^ rd32(u, 8 * i)) & rd32(u, 8 * i + 4)) == 0) ^ !(inv & bit)))
				return 0;
		}
		return 1;
	}
	flags = rd16(u, 2);
	inv = rd16(u, 4);
	if (flags & BPFIPT_CT_F_STATE) {
		if (!!(rd16(u, 0) & r->bits) ^ !(inv & BPFIPT_CT_F_STATE))
			return 0;
	}
	if (!r->tracked)
		return !!(flags & BPFIPT_CT_F_STATE);
	if ((flags & BPFIPT_CT_F_DIRECTION) && ((r->dir == 0) ^ !(inv & BPFIPT_CT_F_DIRECTION)))
		return 0;
	if ((flags & BPFIPT_CT_F_PROTO) &&
	    ((r->e.proto == rd16(u, 6)) ^ !(inv & BPFIPT_CT_F_PROTO)))
		return 0;
	{
		const struct bpfipt_ct_entry *e = &r->e;
		__u16 rs = e->orig_dport, rdp = e->orig_sport;

		if (e->proto == IPPROTO_ICMP) {
			rs = e->orig_sport;
			rdp = ((icmp_inv(e->orig_dport >> 8) - 1) << 8) | (e->orig_dport & 0xff);
		}
		if (!ct_port_ok(u, 20, flags, inv, BPFIPT_CT_F_ORIGSRC_PORT, e->orig_sport) ||
		    !ct_port_ok(u, 24, flags, inv, BPFIPT_CT_F_ORIGDST_PORT, e->orig_dport) ||
		    !ct_port_ok(u, 28, flags, inv, BPFIPT_CT_F_REPLSRC_PORT, rs) ||
		    !ct_port_ok(u, 32, flags, inv, BPFIPT_CT_F_REPLDST_PORT, rdp))
			return 0;
	}
	if ((flags & BPFIPT_CT_F_STATUS) &&
	    (!!(rd32(u, 8) & r->e.status) ^ !(inv & BPFIPT_CT_F_STATUS)))
		return 0;
	if (flags & BPFIPT_CT_F_EXPIRES) {
		__u32 left = ct_remaining(&r->e, bpf_ktime_get_ns());

		if ((left >= rd32(u, 12) && left <= rd32(u, 16)) ^ !(inv & BPFIPT_CT_F_EXPIRES))
			return 0;
	}
	return 1;
}

/* The accept-established shortcut: whether the packet's state is one of `states`, those of
 * an unconditional first rule `--ctstate ... -j ACCEPT` of the chain, which then matches it
 * whatever else the packet holds (compile.rs sets them only for such a rule). */
static __always_inline int ct_shortcut(__u32 states)
{
	struct ct_pkt *r = ct_pkt_get();

	if (!r || !r->on || !(r->bits & states))
		return 0;
	ct_stat(BPFIPT_CTS_SHORTCUT);
	return 1;
}

/* Before classification: the packet's state. `lo_in`: INPUT at lo's ingress (the state
 * comes with the packet from OUTPUT); `reject_reply`: a reply our REJECT built. Returns -1
 * when the packet is dropped before any rule. */
/* ct_begin and ct_end are global functions, verified once on their own: inlined into both
 * hooks with fragments, REJECT and classification, the verifier's state count passed its
 * limit of a million instructions. What they find goes to the per-CPU ct_pkt. */
__noinline int ct_begin(struct __sk_buff *skb, const struct pkt *p, int lo_in, int reject_reply)
{
	struct bpfipt_ct_config *c = ct_cfg();
	struct ct_pkt *r = ct_pkt_get();

	if (!r || !skb || !p)
		return 0;
	if (!c || !c->enabled) {
		r->on = 0;
		return 0;
	}
	if (lo_in && skb->cb[0] == BPFIPT_CB_CT_MAGIC) {
		ct_from_tag(p, r, skb->cb[1]);
		skb->cb[0] = 0;
		return 0;
	}
	if (reject_reply && p->proto == IPPROTO_TCP && ct_reject_reply(r))
		return 0;
	return ct_track(skb, p, r, c);
}

/* After classification: confirm a new connection whose packet was accepted; at lo's egress
 * hand the state on to lo's ingress. Returns the verdict. */
__noinline int ct_end(struct __sk_buff *skb, int verdict, int lo_out)
{
	struct ct_pkt *r = ct_pkt_get();

	if (!r || !r->on || !skb)
		return verdict;
	if (verdict == TC_ACT_OK && ct_confirm(r) < 0)
		return TC_ACT_SHOT;
	if (lo_out && verdict == TC_ACT_OK) {
		skb->cb[0] = BPFIPT_CB_CT_MAGIC;
		skb->cb[1] = (r->bits & 0xff) | ((r->dir & 1) << 8);
	}
	return verdict;
}

#endif
