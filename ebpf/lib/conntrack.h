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
 * TCP follows tcp_in_window's windows (seen[] of each direction); a received packet with a
 * bad TCP, UDP or ICMP checksum is INVALID (nf_conntrack_checksum). Not modelled: reassembly
 * (nf_defrag_ipv4: later fragments are INVALID here), the SCTP/DCCP/GRE trackers (generic
 * here).
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

/* The bytes of a segment being checksummed, a chunk at a time. */
#define CT_CSUM_CHUNK 256

struct ct_csum_buf {
	__u8 b[CT_CSUM_CHUNK];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ct_csum_buf);
} ct_csum_scratch SEC(".maps");

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
	__u32 sack;	/* the highest right edge of the first SACK option's blocks, else ack */
	__u16 win;	/* raw window field */
	__u8 flags;
	__u8 ok;	/* a whole header (tcp_error's length checks) */
	__u8 has_ws;	/* a window scale option */
	__u8 ws;	/* its shift, at most 14 */
	__u8 sack_perm;	/* a SACK-permitted option */
	__u8 has_opts;	/* any option bytes (tcp_options resets the scale only then) */
};

#define TCP_MAX_WSCALE 14

/* The walk over a segment's options (bpf_loop's context). */
struct tcp_optwalk {
	__u8 b[64];
	__u32 i;	/* offset of the next option */
	__u32 len;	/* option bytes */
	__u32 sack;	/* as tcp_seg.sack */
	__u8 sack_done;
	__u8 has_ws;
	__u8 ws;
	__u8 sack_perm;
};

/* One option of tcp_options and tcp_sack of nf_conntrack_proto_tcp.c, walked together:
 * the same stops at an end, a "silly" or a partial option; only the first SACK option
 * counts. A bpf_loop callback, verified once (a loop inlined into ct_begin multiplied the
 * verifier's states past its limit). Returns 1 to stop. */
static long tcp_opt_step(__u32 n, void *ctx)
{
	struct tcp_optwalk *w = ctx;
	__u32 i = w->i, len = w->len, op, sz;

	if (i >= len || i >= 40 || len > 40)
		return 1;
	op = w->b[i & 63];
	if (op == 0)
		return 1;
	if (op == 1) {
		w->i = i + 1;
		return 0;
	}
	if (len - i < 2)
		return 1;
	sz = w->b[(i + 1) & 63];
	if (sz < 2 || sz > len - i)
		return 1;
	if (op == 4 && sz == 2) {
		w->sack_perm = 1;
	} else if (op == 3 && sz == 3) {
		__u8 v = w->b[(i + 2) & 63];

		w->ws = v > TCP_MAX_WSCALE ? TCP_MAX_WSCALE : v;
		w->has_ws = 1;
	} else if (op == 5 && !w->sack_done && sz >= 10 && (sz - 2) % 8 == 0) {
		w->sack_done = 1;
		for (__u32 k = 0; k < 4; k++) {
			__u32 at = i + 2 + 8 * k + 4, edge;

			if (8 * k + 2 >= sz)
				break;
			edge = ((__u32)w->b[at & 63] << 24) | ((__u32)w->b[(at + 1) & 63] << 16) |
			       ((__u32)w->b[(at + 2) & 63] << 8) | w->b[(at + 3) & 63];
			if ((__s32)(edge - w->sack) > 0)
				w->sack = edge;
		}
	}
	w->i = i + sz;
	return 0;
}

/* Whether 12 option bytes from `o` are timestamps alone (NOP, NOP, TS), which nearly every
 * segment of a Linux peer carries and which hold nothing the option walk looks for: it is
 * skipped, as tcp_sack's own fast path does. */
static __always_inline int tcp_opts_ts_alone(const __u8 *o)
{
	return o[0] == 1 && o[1] == 1 && o[2] == 8 && o[3] == 10;
}

/* The TCP header at `off` of a segment of `l4len` bytes. A global function: its own
 * stack frame (the options walk) is not added to ct_begin's. */
__noinline int ct_tcp_read(struct __sk_buff *skb, __u32 off, __u32 l4len, struct tcp_seg *t)
{
	__u8 h[20];
	struct tcp_optwalk w;
	const __u8 *d, *end;
	__u32 doff, olen;

	if (!skb || !t)
		return 0;
	t->ok = 0;
	off &= 0xffff;
	if (l4len < 20)
		return 0;
	/* The header from the linear data when it is there (nearly always: a helper call
	 * less per tracked segment), else copied out of the fragments. Callers pass the
	 * Ethernet and IP headers' length, below 256: the verifier needs a bound that small
	 * (with 0xffff, d + 20 could pass its 64 KiB limit) to check d against the end. */
	d = (const __u8 *)(long)skb->data + (off & 0xff);
	end = (const __u8 *)(long)skb->data_end;
	if (off < 256 && d + 20 <= end)
		__builtin_memcpy(h, d, 20);
	else if (bpf_skb_load_bytes(skb, off, h, 20) < 0)
		return 0;
	doff = (h[12] >> 4) * 4;
	if (doff < 20 || l4len < doff)
		return 0;
	t->seq = ((__u32)h[4] << 24) | ((__u32)h[5] << 16) | ((__u32)h[6] << 8) | h[7];
	t->ack = ((__u32)h[8] << 24) | ((__u32)h[9] << 16) | ((__u32)h[10] << 8) | h[11];
	t->sack = t->ack;
	t->flags = h[13];
	t->win = ((__u16)h[14] << 8) | h[15];
	t->end = t->seq + (l4len - doff) + !!(t->flags & TH_SYN) + !!(t->flags & TH_FIN);
	t->has_ws = t->ws = t->sack_perm = t->has_opts = 0;
	if (doff == 32 && off < 256 && d + 24 <= end && tcp_opts_ts_alone(d + 20)) {
		/* Read in place, not copied out. */
		t->has_opts = 1;
	} else if (doff > 20) {
		olen = doff - 20;
		/* Kept as computed: clang would fold both bounds into one unsigned compare,
		 * which leaves the verifier without the lower one. */
		asm volatile("" : "+r"(olen));
		__builtin_memset(&w, 0, sizeof(w));
		if (olen >= 1 && olen <= 40 && bpf_skb_load_bytes(skb, off + 20, w.b, olen) == 0) {
			w.len = olen;
			w.sack = t->sack;
			if (olen != 12 || !tcp_opts_ts_alone(w.b))
				bpf_loop(40, tcp_opt_step, &w, 0);
			t->has_opts = 1;
			t->sack = w.sack;
			t->has_ws = w.has_ws;
			t->ws = w.ws;
			t->sack_perm = w.sack_perm;
		}
	}
	t->ok = 1;
	return 0;
}

/* Signed sequence comparisons (before/after of net/tcp.h). */
static __always_inline int seq_before(__u32 a, __u32 b)
{
	return (__s32)(a - b) < 0;
}

#define seq_after(a, b) seq_before(b, a)

/* tcp_options applied to a direction's state. */
static __always_inline void tcp_opts_to(struct bpfipt_ct_tcp_dir *d, const struct tcp_seg *t)
{
	if (!t->has_opts)
		return;
	d->td_scale = 0;
	d->flags &= BPFIPT_CT_TCPF_BE_LIBERAL;
	if (t->sack_perm)
		d->flags |= BPFIPT_CT_TCPF_SACK_PERM;
	if (t->has_ws) {
		d->td_scale = t->ws;
		d->flags |= BPFIPT_CT_TCPF_WINDOW_SCALE;
	}
}

/* tcp_init_sender: a SYN/ACK answering a SYN, or a SYN of the reply direction. */
static __always_inline void tcp_init_sender(struct bpfipt_ct_tcp_dir *snd,
					    struct bpfipt_ct_tcp_dir *rcv,
					    const struct tcp_seg *t, __u32 dir)
{
	snd->td_end = snd->td_maxend = t->end;
	snd->td_maxwin = t->win ? t->win : 1;
	tcp_opts_to(snd, t);
	/* RFC 1323: scaling only when both sides offered it. */
	if (dir == 1 && !((snd->flags & BPFIPT_CT_TCPF_WINDOW_SCALE) &&
			  (rcv->flags & BPFIPT_CT_TCPF_WINDOW_SCALE))) {
		snd->td_scale = 0;
		rcv->td_scale = 0;
	}
}

enum { CT_TCP_ACCEPT = 0, CT_TCP_IGNORE = 1, CT_TCP_INVALID = 2 };

/* nf_tcp_store_invalid: a liberal sender (picked-up connection) or tcp_be_liberal accepts
 * what is out of window. */
static __always_inline int tcp_out_of_window(const struct bpfipt_ct_tcp_dir *snd,
					     const struct bpfipt_ct_config *c, int ret)
{
	if ((snd->flags & BPFIPT_CT_TCPF_BE_LIBERAL) || c->be_liberal)
		return CT_TCP_ACCEPT;
	return ret;
}

/* MAXACKWINDOW */
static __always_inline __u32 tcp_maxackwin(const struct bpfipt_ct_tcp_dir *snd)
{
	return snd->td_maxwin > 66000 ? snd->td_maxwin : 66000;
}

/* tcp_in_window of nf_conntrack_proto_tcp.c (no NAT sequence offsets). */
static __always_inline int tcp_in_window(struct bpfipt_ct_entry *e, struct bpfipt_ct_tcp_dir *snd,
					 struct bpfipt_ct_tcp_dir *rcv, __u32 dir, __u32 index,
					 const struct tcp_seg *t, const struct bpfipt_ct_config *c)
{
	__u32 seq = t->seq, ack = t->ack, sack = t->ack, end = t->end, win = t->win, swin;
	int in_recv_win;

	if (rcv->flags & BPFIPT_CT_TCPF_SACK_PERM)
		sack = t->sack;
	if (snd->td_maxwin == 0) {
		if (t->flags & TH_SYN) {
			tcp_init_sender(snd, rcv, t, dir);
			if (!(t->flags & TH_ACK))
				/* Simultaneous open */
				return CT_TCP_ACCEPT;
		} else {
			/* Mid-stream: its history is lost, use what the packet says. */
			snd->td_end = end;
			swin = win << (snd->td_scale & 15);
			snd->td_maxwin = swin ? swin : 1;
			snd->td_maxend = end + snd->td_maxwin;
			if (rcv->td_maxwin == 0)
				rcv->td_end = rcv->td_maxend = sack;
			else if (sack == rcv->td_end + 1)
				/* likely a reply to a keepalive */
				rcv->td_end++;
		}
	} else if ((t->flags & TH_SYN) && seq_after(end, snd->td_end) &&
		   (e->tcp_state == BPFIPT_TCP_SYN_SENT || e->tcp_state == BPFIPT_TCP_SYN_RECV)) {
		/* RFC 793: a reinitialized TCP uses higher sequence numbers. */
		tcp_init_sender(snd, rcv, t, dir);
		if (dir == 1 && !(t->flags & TH_ACK))
			return CT_TCP_ACCEPT;
	}
	if (!(t->flags & TH_ACK))
		ack = sack = rcv->td_end;
	else if ((t->flags & (TH_ACK | TH_RST)) == (TH_ACK | TH_RST) && ack == 0)
		/* broken stacks: RST with ACK and a zero ack */
		ack = sack = rcv->td_end;
	if ((t->flags & TH_RST) && seq == 0 && e->tcp_state == BPFIPT_TCP_SYN_SENT)
		/* a RST answering a SYN */
		seq = end = snd->td_end;

	if (!seq_before(seq, snd->td_maxend + 1)) {
		__u32 overshot = end - snd->td_maxend + 1;
		int ack_ok = seq_after(sack, rcv->td_end - tcp_maxackwin(snd) - 1);

		in_recv_win = rcv->td_maxwin && seq_after(end, snd->td_end - rcv->td_maxwin - 1);
		if (in_recv_win && ack_ok && overshot <= rcv->td_maxwin &&
		    seq_before(sack, rcv->td_end + 1)) {
			/* More than the window allows: ignored, but an ACK of it must pass. */
			snd->td_end = end;
			snd->flags |= BPFIPT_CT_TCPF_DATA_UNACKNOWLEDGED;
			return tcp_out_of_window(snd, c, CT_TCP_IGNORE);
		}
		return tcp_out_of_window(snd, c, CT_TCP_INVALID);	/* SEQ over */
	}
	if (!seq_before(sack, rcv->td_end + 1))
		return tcp_out_of_window(snd, c, CT_TCP_INVALID);	/* ACK over */
	in_recv_win = !rcv->td_maxwin || seq_after(end, snd->td_end - rcv->td_maxwin - 1);
	if (!in_recv_win)
		return tcp_out_of_window(snd, c, CT_TCP_IGNORE);	/* SEQ under */
	if (!seq_after(sack, rcv->td_end - tcp_maxackwin(snd) - 1))
		return tcp_out_of_window(snd, c, CT_TCP_IGNORE);	/* ACK under */

	if (!(t->flags & TH_SYN))
		win <<= (snd->td_scale & 15);
	swin = win + (sack - ack);
	if (snd->td_maxwin < swin)
		snd->td_maxwin = swin;
	if (seq_after(end, snd->td_end)) {
		snd->td_end = end;
		snd->flags |= BPFIPT_CT_TCPF_DATA_UNACKNOWLEDGED;
	}
	if (t->flags & TH_ACK) {
		if (!(snd->flags & BPFIPT_CT_TCPF_MAXACK_SET)) {
			snd->td_maxack = ack;
			snd->flags |= BPFIPT_CT_TCPF_MAXACK_SET;
		} else if (seq_after(ack, snd->td_maxack)) {
			snd->td_maxack = ack;
		}
	}
	if (rcv->td_maxwin != 0 && seq_after(end, snd->td_maxend))
		rcv->td_maxwin += end - snd->td_maxend;
	if (seq_after(sack + win, rcv->td_maxend - 1)) {
		rcv->td_maxend = sack + win;
		if (win == 0)
			rcv->td_maxend++;
	}
	if (ack == rcv->td_end)
		rcv->flags &= ~BPFIPT_CT_TCPF_DATA_UNACKNOWLEDGED;
	if (index == TCP_ACK_SET) {
		/* retransmissions */
		if (e->last_dir == dir && e->last_seq == seq && e->last_ack == ack &&
		    e->last_end == end && e->last_win == t->win) {
			if (e->retrans < 255)
				e->retrans++;
		} else {
			e->last_dir = dir;
			e->last_seq = seq;
			e->last_ack = ack;
			e->last_end = end;
			e->last_win = t->win;
			e->retrans = 0;
		}
	}
	return CT_TCP_ACCEPT;
}

/* nf_ct_tcp_state_reset */
static __always_inline void tcp_dir_reset(struct bpfipt_ct_tcp_dir *d)
{
	d->td_end = d->td_maxend = d->td_maxwin = d->td_maxack = 0;
	d->td_scale = 0;
	d->flags &= BPFIPT_CT_TCPF_BE_LIBERAL;
}

/* nf_conntrack_tcp_established */
static __always_inline int tcp_established(const struct bpfipt_ct_entry *e)
{
	return e->tcp_state == BPFIPT_TCP_ESTABLISHED && (e->status & BPFIPT_IPS_ASSURED);
}

/* tcp_can_early_drop: a closing connection. */
static __always_inline int tcp_closing(__u32 st)
{
	return st == BPFIPT_TCP_FIN_WAIT || st == BPFIPT_TCP_LAST_ACK ||
	       st == BPFIPT_TCP_TIME_WAIT || st == BPFIPT_TCP_CLOSE ||
	       st == BPFIPT_TCP_CLOSE_WAIT;
}

/* nf_tcp_handle_invalid: an out-of-window FIN or RST answering one of the other side
 * shortens an assured connection's life to the unacknowledged timeout. */
static __always_inline void tcp_handle_invalid(struct bpfipt_ct_entry *e, __u32 dir,
					       __u32 index, const struct bpfipt_ct_config *c,
					       __u64 now)
{
	__u64 left, to;

	if (!(e->status & BPFIPT_IPS_ASSURED))
		return;
	if (index != TCP_RST_SET && index != TCP_FIN_SET)
		return;
	if (e->last_dir != dir &&
	    (e->last_index == TCP_FIN_SET || e->last_index == TCP_RST_SET)) {
		left = e->expires > now ? e->expires - now : 0;
		if (left < 120 * NS_PER_SEC)
			return;
		to = ct_timeout(c, BPFIPT_TCP_UNACK);
		if (left > to)
			e->expires = now + to;
	} else {
		e->last_index = index;
		e->last_dir = dir;
	}
}

/* nf_conntrack_tcp_packet. Returns 0 when the packet is INVALID, 1 when it belongs to
 * the connection, 2 when the connection must be reopened (the old entry is deleted and
 * the packet starts a new one), 3 when the entry must be deleted after this packet (a
 * RST as the only reply). `e` is updated in place. */
/* A global function, verified once: window tracking inlined into ct_begin passed the
 * verifier's limit of a million instructions. */
__noinline int tcp_packet(struct bpfipt_ct_entry *e, __u32 dir, const struct tcp_seg *t,
			  const struct bpfipt_ct_config *c, __u64 now)
{
	__u32 index, old, nw, res;
	struct bpfipt_ct_tcp_dir *snd, *rcv;
	__u64 timeout, tnw;

	if (!e || !t || !c)
		return 0;
	index = tcp_index(t->flags);
	old = e->tcp_state;
	if (old > 9 || dir > 1 || index > 5)
		return 0;
	snd = dir ? &e->seen[1] : &e->seen[0];
	rcv = dir ? &e->seen[0] : &e->seen[1];
	{
		/* One bounded index: the three checks above are not all kept by clang. */
		__u32 ix = (dir * 6 + index) * 10 + old;

		asm volatile("" : "+r"(ix));
		if (ix >= 120)
			return 0;
		nw = ((const __u8 *)tcp_states)[ix];
	}
	switch (nw) {
	case BPFIPT_TCP_SYN_SENT:
		if (old < BPFIPT_TCP_TIME_WAIT)
			break;
		if (((snd->flags | rcv->flags) & BPFIPT_CT_TCPF_CLOSE_INIT) ||
		    (e->last_dir == dir && e->last_index == TCP_RST_SET))
			return 2;
		/* fallthrough */
	case BPFIPT_TCP_IGNORE:
		if (index == TCP_SYNACK_SET && e->last_index == TCP_SYN_SET && e->last_dir != dir &&
		    t->ack == e->last_end) {
			/* A SYN/ACK for a SYN we ignored: back in sync from what it noted. */
			struct bpfipt_ct_tcp_dir *l = e->last_dir ? &e->seen[1] : &e->seen[0];

			old = BPFIPT_TCP_SYN_SENT;
			nw = BPFIPT_TCP_SYN_RECV;
			l->td_end = l->td_maxend = e->last_end;
			l->td_maxwin = e->last_win ? e->last_win : 1;
			l->td_scale = e->last_wscale;
			e->last_flags &= ~BPFIPT_CT_TCPF_EXP_CHALLENGE_ACK;
			l->flags = e->last_flags;
			tcp_dir_reset(snd);
			break;
		}
		e->last_index = index;
		e->last_dir = dir;
		e->last_seq = t->seq;
		e->last_end = t->end;
		e->last_win = t->win;
		if (index == TCP_SYN_SET && dir == 0) {
			/* Note the SYN's options for the SYN/ACK that may follow. */
			e->last_flags = 0;
			e->last_wscale = 0;
			if (t->has_ws) {
				e->last_flags |= BPFIPT_CT_TCPF_WINDOW_SCALE;
				e->last_wscale = t->ws;
			}
			if (t->sack_perm)
				e->last_flags |= BPFIPT_CT_TCPF_SACK_PERM;
			if (old == BPFIPT_TCP_LAST_ACK)
				e->last_flags |= BPFIPT_CT_TCPF_EXP_CHALLENGE_ACK;
		}
		if (old == BPFIPT_TCP_SYN_SENT && index == TCP_ACK_SET && dir == 1)
			e->last_ack = t->ack;	/* a possible challenge ACK */
		return 1;
	case BPFIPT_TCP_MAX:
		return 0;
	case BPFIPT_TCP_TIME_WAIT:
		/* RFC 5961 challenge ACK to a SYN we let through in LAST_ACK: not the last ACK. */
		if (old == BPFIPT_TCP_LAST_ACK && index == TCP_ACK_SET && e->last_dir != dir &&
		    e->last_index == TCP_SYN_SET &&
		    (e->last_flags & BPFIPT_CT_TCPF_EXP_CHALLENGE_ACK)) {
			e->last_flags &= ~BPFIPT_CT_TCPF_EXP_CHALLENGE_ACK;
			return 1;
		}
		break;
	case BPFIPT_TCP_SYN_SENT2:
		e->last_flags |= BPFIPT_CT_TCPF_SIMULTANEOUS_OPEN;
		break;
	case BPFIPT_TCP_SYN_RECV:
		if (dir == 1 && index == TCP_ACK_SET &&
		    (e->last_flags & BPFIPT_CT_TCPF_SIMULTANEOUS_OPEN))
			nw = BPFIPT_TCP_ESTABLISHED;
		break;
	case BPFIPT_TCP_CLOSE:
		if (index != TCP_RST_SET)
			break;
		/* Closing: the tuple may be reused already, no window checks. */
		if (tcp_closing(old))
			goto in_window;
		if ((rcv->flags & BPFIPT_CT_TCPF_MAXACK_SET) && e->last_index != TCP_SYN_SET) {
			if (t->seq == 0 && !tcp_established(e))
				break;	/* answers a SYN we let through */
			if (seq_before(t->seq, rcv->td_maxack) && !c->ignore_invalid_rst)
				return 0;	/* invalid RST */
			if (!tcp_established(e) || t->seq == rcv->td_maxack)
				break;
			if (e->last_index == TCP_ACK_SET && e->last_dir == dir &&
			    t->seq == e->last_end)
				break;	/* a RST right after data */
			/* Not the exact sequence number: keep the state for a challenge ACK. */
			nw = old;
		}
		if ((((e->status & BPFIPT_IPS_SEEN_REPLY) && e->last_index == TCP_SYN_SET &&
		      e->last_dir != dir) ||
		     (!(e->status & BPFIPT_IPS_ASSURED) && e->last_index == TCP_ACK_SET)) &&
		    t->ack == e->last_end)
			/* a RST to a SYN or ACK we let through: no window check */
			goto in_window;
		if (old == BPFIPT_TCP_SYN_SENT && e->last_index == TCP_ACK_SET && e->last_dir == 1 &&
		    t->seq == e->last_ack)
			/* a RST answering a challenge ACK */
			goto in_window;
		break;
	}
	res = tcp_in_window(e, snd, rcv, dir, index, t, c);
	if (res == CT_TCP_IGNORE)
		return 1;
	if (res == CT_TCP_INVALID) {
		tcp_handle_invalid(e, dir, index, c, now);
		return 0;
	}
in_window:
	e->last_index = index;
	e->last_dir = dir;
	e->tcp_state = nw;
	if (old != nw && nw == BPFIPT_TCP_FIN_WAIT)
		snd->flags |= BPFIPT_CT_TCPF_CLOSE_INIT;
	tnw = ct_timeout(c, nw);
	if (e->retrans >= c->max_retrans && tnw > ct_timeout(c, BPFIPT_TCP_RETRANS))
		timeout = ct_timeout(c, BPFIPT_TCP_RETRANS);
	else if (index == TCP_RST_SET)
		timeout = ct_timeout(c, BPFIPT_TCP_CLOSE);
	else if (((e->seen[0].flags | e->seen[1].flags) & BPFIPT_CT_TCPF_DATA_UNACKNOWLEDGED) &&
		 tnw > ct_timeout(c, BPFIPT_TCP_UNACK))
		timeout = ct_timeout(c, BPFIPT_TCP_UNACK);
	else if (e->last_win == 0 && tnw > ct_timeout(c, BPFIPT_TCP_RETRANS))
		timeout = ct_timeout(c, BPFIPT_TCP_RETRANS);
	else
		timeout = tnw;
	if (!(e->status & BPFIPT_IPS_SEEN_REPLY)) {
		/* SEEN_REPLY is set after the tracker: a first reply lands here too. */
		if (t->flags & TH_RST)
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

/* tcp_new: whether a segment may open a connection, its first state and window. */
static __always_inline int tcp_new(struct bpfipt_ct_entry *e, const struct tcp_seg *t,
				   const struct bpfipt_ct_config *c)
{
	__u32 st = tcp_states[0][tcp_index(t->flags) % 6][BPFIPT_TCP_NONE];
	struct bpfipt_ct_tcp_dir *s = &e->seen[0];

	if (st >= BPFIPT_TCP_MAX)
		return 0;
	if (st != BPFIPT_TCP_SYN_SENT && !c->loose)
		return 0;
	/* The entry is zeroed by the caller (the kernel's memset of proto.tcp). */
	e->tcp_state = BPFIPT_TCP_NONE;
	s->td_end = t->end;
	s->td_maxwin = t->win ? t->win : 1;
	if (st == BPFIPT_TCP_SYN_SENT) {
		s->td_maxend = t->end;
		tcp_opts_to(s, t);
	} else {
		/* Picked up mid-stream: SACK and liberal windows assumed, for window scaling. */
		s->td_maxend = t->end + s->td_maxwin;
		s->flags = e->seen[1].flags = BPFIPT_CT_TCPF_SACK_PERM | BPFIPT_CT_TCPF_BE_LIBERAL;
	}
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

/* The running sum over a segment (bpf_loop's context). */
struct ct_csum_walk {
	struct __sk_buff *skb;
	struct ct_csum_buf *buf;
	__u32 off;	/* next byte */
	__u32 end;	/* byte after the segment */
	__s64 sum;	/* 32-bit partial sum as bpf_csum_diff returns it */
};

static long ct_csum_step(__u32 n, void *ctx)
{
	struct ct_csum_walk *w = ctx;
	__u32 len, words;
	__s64 r;

	if (w->off >= w->end)
		return 1;
	len = w->end - w->off;
	if (len > CT_CSUM_CHUNK)
		len = CT_CSUM_CHUNK;
	asm volatile("" : "+r"(len));
	if (len < 1 || len > CT_CSUM_CHUNK)
		return 1;
	/* A last chunk is padded with zeros to whole 32-bit words (RFC 1071). */
	*(__u32 *)&w->buf->b[(len - 1) & (CT_CSUM_CHUNK - 4)] = 0;
	if (bpf_skb_load_bytes(w->skb, w->off, w->buf->b, len) < 0) {
		w->sum = -1;
		return 1;
	}
	words = (len + 3) & ~3u;
	asm volatile("" : "+r"(words));
	if (words < 4 || words > CT_CSUM_CHUNK)
		return 1;
	r = bpf_csum_diff(0, 0, (__be32 *)w->buf->b, words, (__u32)w->sum);
	if (r < 0) {
		w->sum = -1;
		return 1;
	}
	w->sum = r;
	w->off += len;
	return 0;
}

/* nf_checksum at PRE_ROUTING: whether the segment's TCP, UDP or ICMP checksum is wrong.
 * Not checked, as the kernel does not: a checksum the device verified
 * (CHECKSUM_UNNECESSARY: bpf_csum_level answers), and one a local sender left to be
 * completed (CHECKSUM_PARTIAL, which a TC program cannot read: the field then holds the
 * pseudo-header's sum, which no complete segment does unless by chance). */
__noinline int ct_csum_bad(struct __sk_buff *skb, const struct pkt *p)
{
	__u32 zero = 0, l4off, ph;
	struct ct_csum_walk w = {};
	__u8 f[2];
	__u16 field;

	if (!skb || !p)
		return 0;
	if (bpf_csum_level(skb, BPF_CSUM_LEVEL_QUERY) >= 0)
		return 0;
	l4off = ETH_HLEN + (p->ihl & 0x3c);
	w.skb = skb;
	w.off = l4off;
	w.end = l4off + p->l4len;
	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) {
		__u32 at = (l4off + (p->proto == IPPROTO_TCP ? 16 : 6)) & 0xff;
		const __u8 *d = (const __u8 *)(long)skb->data + at;

		/* From the linear data when it is there: a helper call less per segment. */
		if (d + 2 <= (const __u8 *)(long)skb->data_end) {
			f[0] = d[0];
			f[1] = d[1];
		} else if (bpf_skb_load_bytes(skb, at, f, 2) < 0) {
			return 0;
		}
		field = ((__u16)f[0] << 8) | f[1];
		if (p->proto == IPPROTO_UDP && field == 0)
			return 0;	/* no checksum */
		ph = csum_pseudo4(p->saddr, p->daddr, p->proto, p->l4len);
		/* the folded sum as it lies in memory, read in network order */
		if (field == bpf_ntohs((__u16)csum_fold(ph)))
			return 0;	/* CHECKSUM_PARTIAL */
		w.sum = ph;
	} else if (p->proto != IPPROTO_ICMP) {
		return 0;
	}
	/* Only a sum that must be computed needs the buffer. */
	w.buf = bpf_map_lookup_elem(&ct_csum_scratch, &zero);
	if (!w.buf)
		return 0;
	bpf_loop(65536 / CT_CSUM_CHUNK + 1, ct_csum_step, &w, 0);
	if (w.sum < 0 || w.off != w.end)
		return 0;
	return csum_fold((__u32)w.sum) != 0xffff;
}

/* Tracks the packet: fills the ct_pkt a rule sees. Returns 0, or -1 when the packet must
 * be dropped before any rule (table full, as init_conntrack's drop). */
static __always_inline int ct_track(struct __sk_buff *skb, const struct pkt *p,
				    struct ct_pkt *r, const struct bpfipt_ct_config *c,
				    int prerouting)
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
		ct_tcp_read(skb, ETH_HLEN + (p->ihl & 0x3c), p->l4len, &t);
		if (!t.ok)
			return 0;
		if (prerouting && c->checksum && ct_csum_bad(skb, p)) {
			ct_stat(BPFIPT_CTS_INVALID_PKT);
			return 0;
		}
		if (!tcp_flags_valid(t.flags))
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
		if (prerouting && c->checksum && ct_csum_bad(skb, p)) {
			ct_stat(BPFIPT_CTS_INVALID_PKT);
			return 0;
		}
	} else if (p->proto == IPPROTO_ICMP) {
		__u8 h[8];

		if (p->l4len < 8 || bpf_skb_load_bytes(skb, ETH_HLEN + (p->ihl & 0x3c), h, 8) < 0)
			return 0;
		if (prerouting && c->checksum && ct_csum_bad(skb, p)) {
			ct_stat(BPFIPT_CTS_INVALID_PKT);
			return 0;
		}
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
static __always_inline int ct_match(const struct bpfipt_match *m, const struct pkt *p)
{
	struct ct_pkt *r;
	const __u8 *u = m->u.raw;
	__u16 flags, inv;

	if (!p->ct)
		return 0;
	r = ct_pkt_get();
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
static __always_inline int ct_shortcut(const struct pkt *p, __u32 states)
{
	struct ct_pkt *r;

	if (!p->ct)
		return 0;
	r = ct_pkt_get();
	if (!r || !r->on || !(r->bits & states))
		return 0;
	ct_stat(BPFIPT_CTS_SHORTCUT);
	return 1;
}

/* Before classification: the packet's state. `lo_in`: INPUT at lo's ingress (the state
 * comes with the packet from OUTPUT); `reject_reply`: a reply our REJECT built;
 * `prerouting`: a received packet (INPUT, FORWARD), whose checksum conntrack checks at
 * PRE_ROUTING (nf_conntrack_checksum), unlike a local one's. Returns -1
 * when the packet is dropped before any rule. */
/* ct_begin and ct_end are global functions, verified once on their own: inlined into both
 * hooks with fragments, REJECT and classification, the verifier's state count passed its
 * limit of a million instructions. What they find goes to the per-CPU ct_pkt. */
__noinline int ct_begin(struct __sk_buff *skb, const struct pkt *p, int lo_in, int reject_reply,
			int prerouting)
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
	return ct_track(skb, p, r, c, prerouting);
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
