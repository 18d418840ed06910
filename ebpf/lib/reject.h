/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* REJECT: the packet becomes its reply (ICMP error as icmp_send builds it, or TCP RST as
 * nf_send_reset does) and is sent back out; the original is consumed (NF_DROP). The reply
 * carries skb->tc_index = BPFIPT_TC_INDEX_REPLY so egress classifies it as OUTPUT, as the
 * kernel's ip_local_out would. */
#ifndef BPFIPT_REJECT_H
#define BPFIPT_REJECT_H

#include "common.h"
#include "counters.h"
#include "parse.h"

/* icmp_send: RFC 1812 4.3.2.3, at most 576 bytes of reply. */
#define ICMP_REPLY_MAX 576
#define ICMP_QUOTE_MAX (ICMP_REPLY_MAX - 28)

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8[ICMP_REPLY_MAX]);
} reject_buf SEC(".maps");

static __always_inline __u16 csum_fold32(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ~s & 0xffff;
}

/* icmp_pointers[type].error, and types above NR_ICMP_TYPES: never answered. */
static __always_inline int icmp_is_error(__u8 type)
{
	return type == 3 || type == 4 || type == 5 || type == 11 || type == 12 || type > 18;
}

static __always_inline __u32 cfg_ttl(void)
{
	__u32 zero = 0;
	struct bpfipt_config *c = bpf_map_lookup_elem(&config, &zero);

	return c && c->default_ttl ? c->default_ttl : 64;
}

static __always_inline __u32 cfg_lo(void)
{
	__u32 zero = 0;
	struct bpfipt_config *c = bpf_map_lookup_elem(&config, &zero);

	return c && c->lo_ifindex ? c->lo_ifindex : 1;
}

static __always_inline __u32 local_kind_of(__be32 a)
{
	struct bpfipt_local_key k = { .prefixlen = 32 };
	struct bpfipt_local_val *v;

	__builtin_memcpy(k.addr, &a, 4);
	v = bpf_map_lookup_elem(&local4, &k);
	return v ? v->kind : 0;
}

/* Sends the rewritten skb toward daddr: lo's egress when local, else out of the device the
 * offending packet arrived on, with the kernel's output route lookup and neighbour
 * resolution (bpf_redirect_neigh without a nexthop). bpf_fib_lookup is not used here: it
 * refuses devices without forwarding. Replies thus follow the reverse path. */
static __always_inline int send_reply(struct __sk_buff *skb, __be32 daddr, __u32 in_ifindex)
{
	skb->tc_index = BPFIPT_TC_INDEX_REPLY;
	skb->mark = 0;	/* IP4_REPLY_MARK without fwmark_reflect */
	if (local_kind_of(daddr) == BPFIPT_LOCAL_UNICAST) {
		__u8 eth[14] = {};

		eth[12] = 0x08;
		bpf_skb_store_bytes(skb, 0, eth, sizeof(eth), 0);
		return bpf_redirect(cfg_lo(), 0);
	}
	if (!in_ifindex)
		return TC_ACT_SHOT;
	return bpf_redirect_neigh(in_ifindex, NULL, 0, 0);
}

/* The source of an ICMP error: the offending packet's destination when it was ours,
 * else what routing picks toward its source (__icmp_send). Only a forwarded packet needs
 * the lookup, and forwarding is on for the device it came from. */
static __always_inline int icmp_source(struct __sk_buff *skb, const struct pkt *p, __be32 *src,
				       __u32 in_ifindex)
{
	struct bpf_fib_lookup fib = {};
	long r;

	if (local_kind_of(p->daddr) == BPFIPT_LOCAL_UNICAST) {
		*src = p->daddr;
		return 0;
	}
	/* Toward a local address, routing picks that address. */
	if (local_kind_of(p->saddr) == BPFIPT_LOCAL_UNICAST) {
		*src = p->saddr;
		return 0;
	}
	if (!in_ifindex)
		return -1;
	fib.family = 2;
	fib.ipv4_dst = p->saddr;
	fib.ifindex = in_ifindex;
	r = bpf_fib_lookup(skb, &fib, sizeof(fib),
			   BPF_FIB_LOOKUP_OUTPUT | BPF_FIB_LOOKUP_SKIP_NEIGH | BPF_FIB_LOOKUP_SRC);
	if (r != BPF_FIB_LKUP_RET_SUCCESS && r != BPF_FIB_LKUP_RET_NO_NEIGH)
		return -1;
	*src = fib.ipv4_src;
	return 0;
}

static __always_inline int reply_allowed(struct __sk_buff *skb, const struct pkt *p)
{
	__u32 d = p->daddr_h;

	if (p->fragoff)
		return 0;
	/* RTCF_BROADCAST | RTCF_MULTICAST, and skb->pkt_type != PACKET_HOST */
	if (d == 0xffffffffu || (d >> 28) == 0xe || local_kind_of(p->daddr) == BPFIPT_LOCAL_BROADCAST)
		return 0;
	if (skb->pkt_type != 0)
		return 0;
	return 1;
}

static __always_inline int send_unreach(struct __sk_buff *skb, const struct pkt *p, __u8 code,
					__u32 in_ifindex)
{
	__u32 zero = 0, quoted, i;
	__u8 *buf = bpf_map_lookup_elem(&reject_buf, &zero);
	struct {
		struct iphdr ip;
		__u8 type, code;
		__u16 csum;
		__u32 unused;
	} h = {};
	__be32 src;
	__u64 sum;

	if (!buf)
		return TC_ACT_SHOT;
	if (p->proto == IPPROTO_ICMP && (p->l4len < 8 || icmp_is_error(p->icmp_type)))
		return TC_ACT_SHOT;
	if (icmp_source(skb, p, &src, in_ifindex) < 0)
		return TC_ACT_SHOT;
	quoted = p->tot_len;
	if (quoted > ICMP_QUOTE_MAX)
		quoted = ICMP_QUOTE_MAX;
	if (quoted < 20)
		return TC_ACT_SHOT;
	__builtin_memset(buf, 0, ICMP_REPLY_MAX);
	if (bpf_skb_load_bytes(skb, ETH_HLEN_, buf, quoted) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_change_tail(skb, ETH_HLEN_ + quoted, 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_adjust_room(skb, 28, BPF_ADJ_ROOM_MAC, 0) < 0)
		return TC_ACT_SHOT;
	h.ip.version = 4;
	h.ip.ihl = 5;
	h.ip.tos = (p->tos & 0x1e) | 0xc0;	/* RT_TOS(tos) | IPTOS_PREC_INTERNETCONTROL */
	h.ip.tot_len = bpf_htons(28 + quoted);
	/* The kernel's ICMP socket picks an id per packet (ip_select_ident); not DF. */
	h.ip.id = bpf_get_prandom_u32() & 0xffff;
	h.ip.ttl = cfg_ttl();
	h.ip.protocol = IPPROTO_ICMP;
	h.ip.saddr = src;
	h.ip.daddr = p->saddr;
	h.ip.check = csum_fold32(bpf_csum_diff(NULL, 0, (__be32 *)&h.ip, 20, 0));
	h.type = 3;
	h.code = code;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&h.type, 8, 0);
	/* Zero padding to a multiple of 4 adds nothing to the sum. */
	i = (quoted + 3) & ~3u;
	if (i > 512) {
		sum = bpf_csum_diff(NULL, 0, (__be32 *)buf, 512, sum);
		i -= 512;
		if (i > 64)
			return TC_ACT_SHOT;
		sum = bpf_csum_diff(NULL, 0, (__be32 *)(buf + 512), i, sum);
	} else {
		sum = bpf_csum_diff(NULL, 0, (__be32 *)buf, i & 0x3fc, sum);
	}
	h.csum = csum_fold32(sum);
	if (bpf_skb_store_bytes(skb, ETH_HLEN_, &h, sizeof(h), 0) < 0)
		return TC_ACT_SHOT;
	return send_reply(skb, p->saddr, in_ifindex);
}

static __always_inline int send_reset(struct __sk_buff *skb, const struct pkt *p, __u32 in_ifindex)
{
	struct tcph {
		__be16 source, dest;
		__be32 seq, ack_seq;
		__u8 doff_res;
		__u8 flags;
		__be16 window, check, urg;
	} oth, th = {};
	struct {
		__be32 saddr, daddr;
		__u8 zero, proto;
		__be16 len;
	} ph;
	struct iphdr ip = {};
	__u32 payload;

	if (p->proto != IPPROTO_TCP || p->l4len < 20)
		return TC_ACT_SHOT;
	if (bpf_skb_load_bytes(skb, ETH_HLEN_ + (p->ihl & 0x3c), &oth, sizeof(oth)) < 0)
		return TC_ACT_SHOT;
	if (oth.flags & 0x04)	/* no RST for RST */
		return TC_ACT_SHOT;
	th.source = oth.dest;
	th.dest = oth.source;
	th.doff_res = 5 << 4;
	if (oth.flags & 0x10) {
		th.seq = oth.ack_seq;
		th.flags = 0x04;
	} else {
		payload = p->tot_len - p->ihl - ((oth.doff_res >> 4) << 2);
		th.ack_seq = bpf_htonl(bpf_ntohl(oth.seq) + !!(oth.flags & 0x02) +
				       (oth.flags & 0x01) + payload);
		th.flags = 0x14;
	}
	ip.version = 4;
	ip.ihl = 5;
	ip.tot_len = bpf_htons(40);
	ip.frag_off = bpf_htons(0x4000);	/* IP_DF */
	ip.ttl = cfg_ttl();
	ip.protocol = IPPROTO_TCP;
	ip.saddr = p->daddr;
	ip.daddr = p->saddr;
	ip.check = csum_fold32(bpf_csum_diff(NULL, 0, (__be32 *)&ip, 20, 0));
	ph.saddr = ip.saddr;
	ph.daddr = ip.daddr;
	ph.zero = 0;
	ph.proto = IPPROTO_TCP;
	ph.len = bpf_htons(20);
	th.check = csum_fold32(bpf_csum_diff(NULL, 0, (__be32 *)&th, 20,
					     bpf_csum_diff(NULL, 0, (__be32 *)&ph, 12, 0)));
	if (bpf_skb_change_tail(skb, ETH_HLEN_ + 40, 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, ETH_HLEN_, &ip, 20, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN_ + 20, &th, 20, 0) < 0)
		return TC_ACT_SHOT;
	return send_reply(skb, p->saddr, in_ifindex);
}

/* ICMP_DEST_UNREACH codes of ipt_REJECT's reject_tg. */
static __always_inline int unreach_code(__u32 with)
{
	switch (with) {
	case BPFIPT_REJ_NET_UNREACH:
		return 0;
	case BPFIPT_REJ_HOST_UNREACH:
		return 1;
	case BPFIPT_REJ_PROT_UNREACH:
		return 2;
	case BPFIPT_REJ_PORT_UNREACH:
		return 3;
	case BPFIPT_REJ_NET_PROHIBITED:
		return 9;	/* ICMP_NET_ANO */
	case BPFIPT_REJ_HOST_PROHIBITED:
		return 10;	/* ICMP_HOST_ANO */
	case BPFIPT_REJ_ADMIN_PROHIBITED:
		return 13;	/* ICMP_PKT_FILTERED */
	}
	return -1;
}

/* ipt_REJECT's reject_tg: a reply when the kernel would send one; the packet is dropped
 * in every case. */
static __always_inline int do_reject(struct __sk_buff *skb, struct state *st, __u32 with,
				     __u32 in_ifindex)
{
	struct pkt *p = &st->p;
	int r, code;

	if (!reply_allowed(skb, p)) {
		count_reason(BPFIPT_R_REJECT_NO_REPLY);
		return TC_ACT_SHOT;
	}
	if (with == BPFIPT_REJ_TCP_RESET)
		r = send_reset(skb, p, in_ifindex);
	else if ((code = unreach_code(with)) >= 0)
		r = send_unreach(skb, p, code, in_ifindex);
	else
		r = TC_ACT_SHOT;
	count_reason(r == TC_ACT_SHOT ? BPFIPT_R_REJECT_NO_REPLY : BPFIPT_R_REJECT_SENT);
	return r;
}

#endif
