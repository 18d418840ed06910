/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Fragments bound for INPUT. The kernel reassembles before the LOCAL_IN hook
 * (ip_local_deliver -> ip_defrag), so INPUT classifies whole datagrams: the matches see the
 * first fragment's transport header, -m length and the counters the whole length, -f never
 * matches, REJECT quotes the reassembled datagram, and a datagram that never completes is
 * never classified. Here every fragment goes on to the kernel's reassembly (it is kept
 * there, as without bpfipt) until the one that completes the datagram arrives: that one is
 * classified as the whole datagram and carries the verdict (passed: the kernel completes
 * and delivers; dropped or rejected: the kernel's queue never completes).
 * FORWARD and OUTPUT see fragments one by one, as the kernel's hooks do without conntrack. */
#ifndef BPFIPT_FRAG_H
#define BPFIPT_FRAG_H

#include "common.h"
#include "parse.h"
#include "reject.h"

/* The datagram's first bytes kept for REJECT's quote (ICMP_QUOTE_MAX), and room for the
 * verifier's bound on one fragment's copy. */
#define FRAG_Q_OFF_MAX ICMP_QUOTE_MAX
#define FRAG_Q_SIZE (ICMP_QUOTE_MAX + 1024)

struct frag_key {
	__be32 saddr;
	__be32 daddr;
	__u16 id;
	__u8 proto;
	__u8 pad;
};

struct frag_val {
	__u64 born;	/* bpf_ktime_get_ns() of the datagram's first fragment to arrive */
	__u32 have;	/* payload bytes seen */
	__u32 total;	/* payload length, known from the last fragment (0: not yet) */
	__u32 first;	/* the offset 0 fragment was seen: p holds its view */
	__u32 ihl;
	struct pkt p;
	__u8 q[FRAG_Q_SIZE];	/* the datagram as reassembled, from its start */
};

/* A plain hash, not an LRU: an entry evicted between two fragments of its datagram would
 * let the kernel complete the datagram unclassified. When full, entries older than the
 * kernel's default reassembly timeout are removed; if that frees nothing the fragment is
 * dropped (fail closed, BPFIPT_R_FRAG_FULL). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct frag_key);
	__type(value, struct frag_val);
	__uint(map_flags, BPF_F_NO_PREALLOC);	/* ~1.8 KB an entry, mostly unused */
} frag4 SEC(".maps");

/* A zeroed value to create entries from (never written). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct frag_val);
} frag_zero SEC(".maps");

enum { FRAG_PENDING = 0, FRAG_COMPLETE = 1, FRAG_FULL = 2 };

/* net.ipv4.ipfrag_time's default: the kernel has given up on the datagram by then. */
#define FRAG_TIMEOUT_NS (30ULL * 1000000000ULL)

static long frag_gc(void *map, struct frag_key *k, struct frag_val *v, __u64 *now)
{
	if (*now - v->born > FRAG_TIMEOUT_NS)
		bpf_map_delete_elem(map, k);
	return 0;
}

/* Records the fragment in st->p; when it completes its datagram, st->p becomes the
 * reassembled datagram's view (and reject_buf its first bytes) and FRAG_COMPLETE is
 * returned; FRAG_FULL when the datagram cannot be tracked. Overlapping fragments (the kernel
 * drops the whole datagram) are not detected. */
static __always_inline int frag_collect(struct __sk_buff *skb, struct state *st, __u32 half)
{
	struct pkt *p = &st->p;
	struct frag_key k = {};
	struct frag_val *v;
	__u32 zero = 0, off, len, ihl, at, n, total;
	__u64 now = bpf_ktime_get_ns();
	__u8 *buf;

	k.saddr = p->saddr;
	k.daddr = p->daddr;
	k.id = p->ipid;
	k.proto = p->proto;
	v = bpf_map_lookup_elem(&frag4, &k);
	if (v && now - v->born > FRAG_TIMEOUT_NS) {
		/* A datagram the kernel has given up on: this fragment starts another. */
		bpf_map_delete_elem(&frag4, &k);
		v = NULL;
	}
	if (!v) {
		struct frag_val *z = bpf_map_lookup_elem(&frag_zero, &zero);

		if (!z)
			return FRAG_FULL;
		if (bpf_map_update_elem(&frag4, &k, z, BPF_NOEXIST) < 0) {
			bpf_for_each_map_elem(&frag4, frag_gc, &now, 0);
			if (bpf_map_update_elem(&frag4, &k, z, BPF_NOEXIST) < 0)
				return FRAG_FULL;
		}
		v = bpf_map_lookup_elem(&frag4, &k);
		if (!v)
			return FRAG_FULL;
		v->born = now;
	}
	ihl = p->ihl & 0x3c;
	off = (__u32)p->fragoff * 8;
	len = p->tot_len - ihl;
	__sync_fetch_and_add(&v->have, len);
	if (!p->more_frags)
		v->total = off + len;
	if (off == 0) {
		__u32 idx = half * BPFIPT_MAX_CHAINS + BPFIPT_CHAIN_INPUT;
		struct bpfipt_chain *c = bpf_map_lookup_elem(&chains, &idx);

		if (c && (c->needs & BPFIPT_CHAIN_NEEDS_TCPOPTS))
			load_tcp_options(skb, p);
		__builtin_memcpy(&v->p, p, sizeof(*p));
		v->ihl = ihl;
		v->first = 1;
		if (ihl >= 20 && ihl <= 60 &&
		    bpf_skb_load_bytes(skb, ETH_HLEN_, v->q, ihl) < 0)
			return FRAG_PENDING;
	}
	/* This fragment's share of the quoted bytes. */
	at = v->ihl + off;
	if (at < FRAG_Q_OFF_MAX && v->ihl >= 20) {
		n = FRAG_Q_OFF_MAX - at;
		if (n > len)
			n = len;
		if (n > 0 && n <= 1024 && at <= FRAG_Q_OFF_MAX)
			bpf_skb_load_bytes(skb, ETH_HLEN_ + ihl, v->q + at, n);
	}
	total = v->total;
	if (!v->first || !total || v->have < total)
		return FRAG_PENDING;
	/* Complete: the datagram as ip_frag_reasm leaves it (the first fragment's header with
	 * the whole length, no fragment bits). */
	__builtin_memcpy(p, &v->p, sizeof(*p));
	ihl = v->ihl;
	if (ihl < 20 || ihl > 60 || total > 0xffff - ihl)
		goto drop_entry;
	p->tot_len = ihl + total;
	p->bytes = p->tot_len;
	p->l4len = total;
	p->fragoff = 0;
	p->more_frags = 0;
	p->reasm = 1;
	if (p->l4len >= 4 && port_proto(p->proto)) {
		p->has_ports = 1;
		p->trunc_ports = p->l4len < (p->proto == IPPROTO_TCP ? 20 :
					     p->proto == IPPROTO_UDP ? 8 : 4);
	}
	if (p->proto == IPPROTO_TCP && p->tcpdoff > 20)
		p->opts_ok = p->l4len >= p->tcpdoff;
	buf = bpf_map_lookup_elem(&reject_buf, &zero);
	if (buf) {
		__u16 tl = bpf_htons(p->tot_len);
		__u64 sum;

		__builtin_memcpy(buf, v->q, ICMP_QUOTE_MAX);
		buf[2] = tl & 0xff;
		buf[3] = tl >> 8;
		buf[6] = 0;
		buf[7] = 0;
		buf[10] = 0;
		buf[11] = 0;
		sum = bpf_csum_diff(NULL, 0, (__be32 *)buf, ihl & 0x3c, 0);
		{
			__u16 c = csum_fold32(sum);

			buf[10] = c & 0xff;
			buf[11] = c >> 8;
		}
	}
	bpf_map_delete_elem(&frag4, &k);
	return FRAG_COMPLETE;
drop_entry:
	bpf_map_delete_elem(&frag4, &k);
	return FRAG_PENDING;
}

/* Ends the kernel's reassembly of the datagram st->p completed, when INPUT dropped or
 * rejected it: the fragments already queued would otherwise wait for ipfrag_time, and the
 * kernel then sends "fragment reassembly time exceeded" if the first was among them, which
 * after an iptables DROP it never does. The skb becomes an empty fragment of the datagram
 * (offset 0, MF): ip_frag_queue discards a fragment whose end equals its offset together
 * with its queue (discard_qp: inet_frag_kill), silently. */
static __always_inline int frag_to_killer(struct __sk_buff *skb, const struct pkt *p)
{
	void *data, *end;
	struct iphdr *ip;
	__be16 old_len, old_frag, new_len, new_frag;
	__u32 ihl = p->ihl & 0x3c;

	if (ihl < 20)
		return -1;
	if (bpf_skb_change_tail(skb, ETH_HLEN_ + ihl, 0) < 0)
		return -1;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	ip = data + ETH_HLEN_;
	if ((void *)(ip + 1) > end)
		return -1;
	old_len = ip->tot_len;
	old_frag = ip->frag_off;
	new_len = bpf_htons(ihl);
	new_frag = bpf_htons(0x2000);	/* IP_MF, offset 0 */
	ip->tot_len = new_len;
	ip->frag_off = new_frag;
	bpf_l3_csum_replace(skb, ETH_HLEN_ + 10, old_len, new_len, 2);
	bpf_l3_csum_replace(skb, ETH_HLEN_ + 10, old_frag, new_frag, 2);
	skb->tc_index = BPFIPT_TC_INDEX_FRAG_KILL;
	return 0;
}

/* A REJECTed datagram: its skb becomes the reply, so a clone ends the reassembly. */
static __always_inline void frag_kill_clone(struct __sk_buff *skb, const struct pkt *p)
{
	if (frag_to_killer(skb, p) == 0)
		bpf_clone_redirect(skb, skb->ifindex, BPF_F_INGRESS);
	skb->tc_index = 0;
}

#endif
