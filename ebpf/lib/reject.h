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

/* icmp_pointers[type].error (the unassigned 1, 2, 6, 7, 9, 10 count as errors), and types
 * above NR_ICMP_TYPES: never answered. Kernel 6.18: INPUT `-p icmp -j REJECT` answers types
 * 0, 8 and 13-18 only. */
static __always_inline int icmp_is_error(__u8 type)
{
	return (type >= 1 && type <= 7) || type == 9 || type == 10 ||
	       type == 11 || type == 12 || type > 18;
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

/* Where a reply goes: as ip_local_out routes it (ip_route_me_harder for a RST, icmp_route_lookup
 * for an ICMP error). */
struct reply_route {
	__u32 ifindex;
	__be32 nexthop;
	__be32 saddr;
};

/* The kernel's output route lookup toward daddr from saddr (0: let routing choose the
 * source, fib_result_prefsrc): a flow with iif = lo and no oif, as ip_route_output_key_hash
 * builds it, hence the ingress perspective on lo (BPF_FIB_LOOKUP_OUTPUT would pin the
 * nexthop to one device). bpf_fib_lookup refuses when lo does not forward
 * (net.ipv4.ip_forward=0): then the reply goes back out the device the offending packet came
 * in on, or the one it was leaving by (`fallback_dev`), the reverse path. Returns 0, or -1
 * when the kernel would send nothing (no route, unreachable, prohibited, blackhole). */
static __always_inline int route_reply(struct __sk_buff *skb, __be32 saddr, __be32 daddr,
				       __u8 tos, __u32 fallback_dev, struct reply_route *rt)
{
	struct bpf_fib_lookup fib = {};
	long r;

	if (local_kind_of(daddr) == BPFIPT_LOCAL_UNICAST) {
		/* Toward a local address: through lo, and routing picks that address as the
		 * source. */
		rt->ifindex = cfg_lo();
		rt->nexthop = 0;
		rt->saddr = saddr ? saddr : daddr;
		return 0;
	}
	fib.family = 2;	/* AF_INET */
	fib.tos = tos;
	fib.ipv4_src = saddr;
	fib.ipv4_dst = daddr;
	fib.ifindex = cfg_lo();
	r = bpf_fib_lookup(skb, &fib, sizeof(fib),
			   BPF_FIB_LOOKUP_SKIP_NEIGH | (saddr ? 0 : BPF_FIB_LOOKUP_SRC));
	if (r == BPF_FIB_LKUP_RET_SUCCESS || r == BPF_FIB_LKUP_RET_NO_NEIGH) {
		rt->ifindex = fib.ifindex;
		rt->nexthop = fib.ipv4_dst;
		rt->saddr = saddr ? saddr : fib.ipv4_src;
		return rt->saddr ? 0 : -1;
	}
	if (r == BPF_FIB_LKUP_RET_FWD_DISABLED && fallback_dev && saddr) {
		rt->ifindex = fallback_dev;
		rt->nexthop = 0;
		rt->saddr = saddr;
		return 0;
	}
	return -1;
}

/* Sends the rewritten skb along rt, marked so that the egress program of the routed device
 * classifies it as OUTPUT (the kernel's replies go through ip_local_out), with the kernel's
 * neighbour resolution. Toward a local address that device is lo: bpf_redirect_neigh then
 * gives the reply a local route, so that loopback delivers it to INPUT like the kernel's
 * (injected at lo's ingress without a route, a local source would be a martian). */
static __always_inline int send_reply(struct __sk_buff *skb, const struct reply_route *rt)
{
	skb->tc_index = BPFIPT_TC_INDEX_REPLY;
	skb->mark = 0;	/* IP4_REPLY_MARK without fwmark_reflect */
	if (rt->nexthop) {
		struct bpf_redir_neigh nh = {};

		nh.nh_family = 2;	/* AF_INET */
		nh.ipv4_nh = rt->nexthop;
		return bpf_redirect_neigh(rt->ifindex, &nh, sizeof(nh), 0);
	}
	return bpf_redirect_neigh(rt->ifindex, NULL, 0, 0);
}

/* nf_reject_verify_csum: the protocols whose checksum REJECT does not verify. */
static __always_inline int csum_unchecked(const struct pkt *p)
{
	__u8 x = p->proto;

	return x == 47 || x == 51 || x == 50 || x == IPPROTO_SCTP || x == IPPROTO_UDPLITE ||
	       x == IPPROTO_DCCP || (x == IPPROTO_UDP && p->udp_csum0);
}

/* A packet generated by the kernel's own ICMP socket (echo and timestamp replies; errors are
 * never answered anyway): icmp_reply holds that socket's lock while the reply crosses
 * OUTPUT, so the icmp_send of a REJECT there cannot take it and sends nothing
 * (icmp_xmit_lock). Kernel 6.18: an echo reply REJECTed in OUTPUT got no error. */
static __always_inline int from_icmp_socket(struct __sk_buff *skb, const struct pkt *p)
{
	struct bpf_sock *sk = skb->sk;

	if (!sk || p->proto != IPPROTO_ICMP || (p->icmp_type != 0 && p->icmp_type != 14))
		return 0;
	sk = bpf_sk_fullsock(sk);
	return sk && sk->type == 3 /* SOCK_RAW */ && sk->protocol == IPPROTO_ICMP;
}

static __always_inline int reply_allowed(struct __sk_buff *skb, const struct pkt *p)
{
	__u32 d = p->daddr_h;

	if (p->fragoff)
		return 0;
	/* A first fragment: REJECT verifies the transport checksum (nf_ip_checksum) over what
	 * the fragment holds, a part of what the checksum covers, so it fails. */
	if (p->more_frags && !csum_unchecked(p))
		return 0;
	if (from_icmp_socket(skb, p))
		return 0;
	/* RTCF_BROADCAST | RTCF_MULTICAST, and skb->pkt_type != PACKET_HOST */
	if (d == 0xffffffffu || (d >> 28) == 0xe || local_kind_of(p->daddr) == BPFIPT_LOCAL_BROADCAST)
		return 0;
	if (skb->pkt_type != 0)
		return 0;
	return 1;
}

static __always_inline int send_unreach(struct __sk_buff *skb, const struct pkt *p, __u8 code,
					__u32 to_us, __u32 fallback_dev)
{
	__u32 zero = 0, quoted, i;
	__u8 *buf = bpf_map_lookup_elem(&reject_buf, &zero);
	struct {
		struct iphdr ip;
		__u8 type, code;
		__u16 csum;
		__u32 unused;
	} h = {};
	struct reply_route rt;
	__u8 tos = (p->tos & 0x1e) | 0xc0;	/* RT_TOS(tos) | IPTOS_PREC_INTERNETCONTROL */
	__u64 sum;

	if (!buf)
		return TC_ACT_SHOT;
	if (p->proto == IPPROTO_ICMP && (p->l4len < 8 || icmp_is_error(p->icmp_type)))
		return TC_ACT_SHOT;
	/* __icmp_send: the source is the offending packet's destination when its route was
	 * local (RTCF_LOCAL), else what routing picks toward its source. */
	if (route_reply(skb, to_us ? p->daddr : 0, p->saddr, tos, fallback_dev, &rt) < 0)
		return TC_ACT_SHOT;
	quoted = p->tot_len;
	if (quoted > ICMP_QUOTE_MAX)
		quoted = ICMP_QUOTE_MAX;
	if (quoted < 20)
		return TC_ACT_SHOT;
	/* A reassembled datagram: frag.h left its first bytes in buf, zeros after them. */
	if (!p->reasm) {
		__builtin_memset(buf, 0, ICMP_REPLY_MAX);
		if (bpf_skb_load_bytes(skb, ETH_HLEN_, buf, quoted) < 0)
			return TC_ACT_SHOT;
	}
	if (bpf_skb_change_tail(skb, ETH_HLEN_ + quoted, 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_adjust_room(skb, 28, BPF_ADJ_ROOM_MAC, 0) < 0)
		return TC_ACT_SHOT;
	h.ip.version = 4;
	h.ip.ihl = 5;
	h.ip.tos = tos;
	h.ip.tot_len = bpf_htons(28 + quoted);
	/* The kernel's ICMP socket picks an id per packet (ip_select_ident); not DF. */
	h.ip.id = bpf_get_prandom_u32() & 0xffff;
	h.ip.ttl = cfg_ttl();
	h.ip.protocol = IPPROTO_ICMP;
	h.ip.saddr = rt.saddr;
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
	if (p->reasm && (quoted > ICMP_QUOTE_MAX ||
			 bpf_skb_store_bytes(skb, ETH_HLEN_ + sizeof(h), buf, quoted, 0) < 0))
		return TC_ACT_SHOT;
	return send_reply(skb, &rt);
}

static __always_inline int send_reset(struct __sk_buff *skb, const struct pkt *p,
				      __u32 fallback_dev)
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
	struct reply_route rt;
	__u32 payload;

	if (p->proto != IPPROTO_TCP || p->l4len < 20)
		return TC_ACT_SHOT;
	/* nf_send_reset: from the offending packet's destination, routed by ip_route_me_harder
	 * (a non-local source is allowed: FLOWI_FLAG_ANYSRC). */
	if (route_reply(skb, p->daddr, p->saddr, 0, fallback_dev, &rt) < 0)
		return TC_ACT_SHOT;
	if (p->reasm) {
		__u32 zero = 0;
		__u8 *buf = bpf_map_lookup_elem(&reject_buf, &zero);

		if (!buf)
			return TC_ACT_SHOT;
		__builtin_memcpy(&oth, buf + (p->ihl & 0x3c), sizeof(oth));
	} else if (bpf_skb_load_bytes(skb, ETH_HLEN_ + (p->ihl & 0x3c), &oth, sizeof(oth)) < 0) {
		return TC_ACT_SHOT;
	}
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
	return send_reply(skb, &rt);
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
 * in every case. `to_us`: the packet was classified in INPUT (its route is local);
 * `fallback_dev`: where the reply goes when the FIB cannot be asked (see route_reply). */
static __always_inline int do_reject(struct __sk_buff *skb, struct state *st, __u32 with,
				     __u32 to_us, __u32 fallback_dev)
{
	struct pkt *p = &st->p;
	int r, code;

	if (!reply_allowed(skb, p)) {
		count_reason(BPFIPT_R_REJECT_NO_REPLY);
		return TC_ACT_SHOT;
	}
	if (with == BPFIPT_REJ_TCP_RESET)
		r = send_reset(skb, p, fallback_dev);
	else if ((code = unreach_code(with)) >= 0)
		r = send_unreach(skb, p, code,
				 to_us || local_kind_of(p->daddr) == BPFIPT_LOCAL_UNICAST,
				 fallback_dev);
	else
		r = TC_ACT_SHOT;
	count_reason(r == TC_ACT_SHOT ? BPFIPT_R_REJECT_NO_REPLY : BPFIPT_R_REJECT_SENT);
	return r;
}

#endif
