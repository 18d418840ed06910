/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* The XDP option: the namespace's ingress classification at XDP, on the maps of the TC
 * programs (one ruleset, one generation, the same counters).
 *
 * XDP acts only where it does exactly what the TC path would; anything else is passed
 * untouched (nothing counted) and the TC programs classify it as without XDP:
 *   1. INPUT (destination local): classified; DROP (rule, policy, hotdrop) is an XDP_DROP,
 *      ACCEPT passes with metadata that tells TC ingress it is done (xdp_meta.h). REJECT,
 *      fragments (reassembled before INPUT), --tcp-option tables and conntrack go to TC.
 *   2. Not local: the fast path of the paper. The kernel's forwarding checks that XDP can
 *      make (destination MAC, header checksum, martians, TTL, rp_filter off, FIB with the
 *      device's forwarding switch, MTU, a resolved neighbour, no ICMP redirect due) pass;
 *      FORWARD is classified with -i the arrival device, -o the FIB's device and the TTL
 *      decremented (as netfilter's FORWARD hook sees it). ACCEPT: TTL decremented, MACs
 *      rewritten, redirected (the egress TC program never sees the frame: counted once);
 *      DROP: XDP_DROP. Anything else (REJECT, a check failed) goes to the stack untouched.
 * Counts are deferred (st->defer) until XDP acts, so a packet passed on is counted by TC only.
 */
#ifndef BPFIPT_XDP_LIB_H
#define BPFIPT_XDP_LIB_H

#include "common.h"
#include "verdict.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct bpfipt_xdp_dev);
} xdp_devs SEC(".maps");

#define AF_INET_ 2

/* parse_ipv4 for a frame at XDP: the same fields with the same definitions (all of the frame
 * is linear here; no mark yet). */
static __always_inline int xdp_parse(struct xdp_md *ctx, struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN_;
	__u8 *l4;
	__u32 l3len;

	if ((void *)(eth + 1) > end)
		return PARSE_NOT_IPV4;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IPV4;
	if ((void *)(ip + 1) > end)
		return PARSE_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_MALFORMED;
	l3len = (__u32)(end - (void *)ip);
	p->tot_len = bpf_ntohs(ip->tot_len);
	p->ihl = ip->ihl * 4;
	if (p->tot_len < p->ihl || p->tot_len > l3len)
		return PARSE_MALFORMED;
	fill_ipv4(p, ip, p->tot_len, 0);
	if (p->fragoff) {
		p->trunc_ports = p->proto == IPPROTO_TCP && p->fragoff == 1;
		return PARSE_OK;
	}
	l4 = data + ETH_HLEN_ + (p->ihl & 0x3c);
	return parse_l4(p, l4, end);
}

/* Classifies st->p through `entry` with deferred counts. Returns 1 when XDP can act on the
 * verdict (st->verdict, TC_ACT_OK or TC_ACT_SHOT), 0 when TC must do it all again. */
static __always_inline int xdp_classify(struct state *st, const struct bpfipt_config *cfg,
					__u32 gen, __u32 entry, __u32 in_dev, __u32 out_dev)
{
	__u32 idx = (gen & 1) * BPFIPT_MAX_CHAINS + entry;
	struct bpfipt_chain *c = bpf_map_lookup_elem(&chains, &idx);

	/* --tcp-option needs the options read (TC does). */
	if (!c || (c->needs & BPFIPT_CHAIN_NEEDS_TCPOPTS))
		return 0;
	if (c->skip) {
		/* Empty with policy ACCEPT: the policy counts it (as run_hook does). */
		st->counted[0] = c->tail_slot;
		st->ncounted = skip_counted(cfg, entry) ? 1 : 0;
		st->reason = BPFIPT_R_PASS_SKIPPED_CHAIN;
		st->verdict = TC_ACT_OK;
		return 1;
	}
	load_ifnames(&st->p, c->needs, in_dev, out_dev);
	st->defer = 1;
	classify(st, gen, entry, c);
	st->defer = 0;
	if (st->reject || st->ncounted > BPFIPT_XDP_MAX_COUNTS)
		return 0;
	return st->verdict == TC_ACT_OK || st->verdict == TC_ACT_SHOT;
}

/* The counts of a verdict XDP acts on. */
static __always_inline void xdp_count(struct state *st)
{
#pragma unroll
	for (int i = 0; i < BPFIPT_XDP_MAX_COUNTS; i++) {
		if (i >= st->ncounted)
			break;
		count_slot(st->counted[i], st->p.bytes);
	}
	count_reason(st->reason);
}

static __always_inline int xdp_pass(void)
{
	count_reason(BPFIPT_R_XDP_PASS);
	return XDP_PASS;
}

/* ip_fast_csum: a header whose sum is wrong is dropped by ip_rcv before any hook. */
static __always_inline int ip_csum_ok(struct iphdr *ip)
{
	__u32 sum = 0;
	__u16 *w = (__u16 *)ip;

#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	return csum_fold(sum) == 0xffff;
}

/* Addresses ip_route_input_slow treats as martians or multicast: left to the stack. */
static __always_inline int special_addr(__u32 a)
{
	__u32 top = a >> 24;

	return top == 0 || top == 127 || top >= 224;
}

/* The largest transport segment whose checksum XDP verifies (an Ethernet MTU's). */
#define XDP_CSUM_MAX 1480

/* Whether the TCP or UDP checksum of the (unfragmented, option-free) datagram is complete and
 * right: a CHECKSUM_PARTIAL frame's field holds only the pseudo-header sum, and a wrong
 * checksum is the receiver's to drop; both go to the stack. UDP without checksum is fine. */
static __always_inline int l4_csum_ok(struct xdp_md *ctx, const struct pkt *p)
{
	void *end = (void *)(long)ctx->data_end;
	__u8 *l4 = (void *)(long)ctx->data + ETH_HLEN_ + 20;
	__u32 n = p->l4len, sum;

	if (p->proto == IPPROTO_UDP) {
		if ((void *)(l4 + 8) > end)
			return 0;
		if (l4[6] == 0 && l4[7] == 0)
			return 1;
	}
	if (n > XDP_CSUM_MAX)
		return 0;
	sum = csum_pseudo4(p->saddr, p->daddr, p->proto, n);
	for (__u32 i = 0; i < XDP_CSUM_MAX / 2; i++) {
		__u16 *w = (__u16 *)(l4 + 2 * i);

		if (2 * i + 2 > n)
			break;
		if ((void *)(w + 1) > end)
			return 0;
		sum += *w;
	}
	if (n & 1) {
		__u8 *b = l4 + (n & 0x7fe);

		if ((void *)(b + 1) > end)
			return 0;
		/* The last byte, padded with a zero byte after it. */
		sum += *b;
	}
	return csum_fold(sum) == 0xffff;
}

static __always_inline int xdp_input(struct xdp_md *ctx, struct state *st,
				     const struct bpfipt_config *cfg, __u32 gen)
{
	__u32 *meta;

	if (st->p.fragoff || st->p.more_frags)
		/* INPUT sees reassembled datagrams: TC's frag.h follows them. */
		return xdp_pass();
	if (!xdp_classify(st, cfg, gen, BPFIPT_CHAIN_INPUT, ctx->ingress_ifindex, 0))
		return xdp_pass();
	if (st->verdict == TC_ACT_SHOT) {
		xdp_count(st);
		return XDP_DROP;
	}
	if (bpf_xdp_adjust_meta(ctx, -4) < 0)
		/* No room or no metadata on this driver: TC classifies it. */
		return xdp_pass();
	meta = (void *)(long)ctx->data_meta;
	if ((void *)(meta + 1) > (void *)(long)ctx->data)
		return xdp_pass();
	*meta = BPFIPT_XDP_META_ACCEPTED;
	xdp_count(st);
	return XDP_PASS;
}

/* ip_decrease_ttl: the checksum updated for the TTL byte going down by one. */
static __always_inline void decrease_ttl(struct iphdr *ip)
{
	__u32 check = ip->check;

	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xffff));
	ip->ttl--;
}

static __always_inline int xdp_forward(struct xdp_md *ctx, struct state *st,
				       const struct bpfipt_config *cfg, __u32 gen)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN_;
	__u32 in_dev = ctx->ingress_ifindex;
	struct bpf_fib_lookup fib = {};
	struct bpfipt_xdp_dev *dev;
	long r;

	if ((void *)(ip + 1) > end)
		return xdp_pass();
	dev = bpf_map_lookup_elem(&xdp_devs, &in_dev);
	if (!dev || !(dev->flags & BPFIPT_XDP_DEV_FAST))
		return xdp_pass();
	/* ip_rcv: only frames for this host (PACKET_HOST) are routed. */
	if (__builtin_memcmp(eth->h_dest, dev->mac, 6) != 0)
		return xdp_pass();
	/* IP options (ip_forward_options, router alert) and fragments are the stack's. */
	if (st->p.ihl != 20 || st->p.fragoff || st->p.more_frags)
		return xdp_pass();
	if (!ip_csum_ok(ip))
		return xdp_pass();
	if (special_addr(st->p.saddr_h) || special_addr(st->p.daddr_h) ||
	    local_kind(st->p.saddr))
		return xdp_pass();
	/* ip_forward sends time exceeded. */
	if (st->p.ttl <= 1)
		return xdp_pass();
	fib.family = AF_INET_;
	fib.tos = st->p.tos;
	fib.l4_protocol = st->p.proto;
	fib.sport = bpf_htons(st->p.sport);
	fib.dport = bpf_htons(st->p.dport);
	fib.tot_len = st->p.tot_len;
	fib.ipv4_src = st->p.saddr;
	fib.ipv4_dst = st->p.daddr;
	fib.ifindex = in_dev;
	/* As the input route of a forwarded packet: the arrival device's forwarding switch
	 * (FWD_DISABLED), unicast routes only, the output device's MTU (FRAG_NEEDED), a
	 * resolved neighbour (NO_NEIGH). Every failure is the stack's to handle. */
	r = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (r != BPF_FIB_LKUP_RET_SUCCESS)
		return xdp_pass();
	if (dev->flags & BPFIPT_XDP_DEV_VERIFY_CSUM) {
		/* Only TCP and UDP checksums are left unfinished (and SCTP's CRC): other
		 * protocols' senders complete theirs, except SCTP, which goes to the stack. */
		if (st->p.proto == IPPROTO_SCTP)
			return xdp_pass();
		if ((st->p.proto == IPPROTO_TCP || st->p.proto == IPPROTO_UDP) &&
		    !l4_csum_ok(ctx, &st->p))
			return xdp_pass();
	}
	/* Out the arrival device: the kernel may send an ICMP redirect. */
	if (fib.ifindex == in_dev)
		return xdp_pass();
	if (dev->flags & BPFIPT_XDP_DEV_NATIVE) {
		/* A native redirect to a device that cannot send it is lost: the stack's. */
		struct bpfipt_xdp_dev *out = bpf_map_lookup_elem(&xdp_devs, &fib.ifindex);

		if (!out || !(out->flags & BPFIPT_XDP_DEV_NDO_XMIT))
			return xdp_pass();
	}
	st->p.ttl -= 1;
	if (!xdp_classify(st, cfg, gen, BPFIPT_CHAIN_FORWARD, in_dev, fib.ifindex))
		return xdp_pass();
	if (st->verdict == TC_ACT_SHOT) {
		xdp_count(st);
		return XDP_DROP;
	}
	/* The frame may carry padding after the datagram (short Ethernet frames): the kernel
	 * trims it (ip_rcv_core) before forwarding. */
	{
		long extra = (long)(end - data) - (ETH_HLEN_ + st->p.tot_len);

		if (extra > 0 && bpf_xdp_adjust_tail(ctx, -(int)extra) < 0)
			return xdp_pass();
	}
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	ip = data + ETH_HLEN_;
	if ((void *)(ip + 1) > end)
		return xdp_pass();
	xdp_count(st);
	count_reason(BPFIPT_R_XDP_FORWARDED);
	decrease_ttl(ip);
	__builtin_memcpy(eth->h_dest, fib.dmac, 6);
	__builtin_memcpy(eth->h_source, fib.smac, 6);
	return bpf_redirect(fib.ifindex, 0);
}

static __always_inline int hook_xdp(struct xdp_md *ctx)
{
	struct bpfipt_config *cfg = get_config();
	struct state *st = get_state();
	__u32 gen;
	int r;

	if (!cfg || !st)
		return XDP_PASS;
	if (cfg->fallback)
		return XDP_PASS;
	/* Tracking is TC's. The tracker (as the hooks read its switch, cfg->ct_on) is switched
	 * on before the flip to a ruleset that needs it and off after the flip away from the
	 * last one: read around the generation, a packet never classifies a conntrack ruleset
	 * without it. */
	if (*(volatile __u32 *)&cfg->ct_on)
		return xdp_pass();
	gen = *(volatile __u32 *)&cfg->gen;
	if (*(volatile __u32 *)&cfg->ct_on)
		return xdp_pass();
	r = xdp_parse(ctx, &st->p);
	if (r != PARSE_OK)
		/* Not IPv4, or for ip_rcv to drop: as without XDP. */
		return XDP_PASS;
	st->p.ct = 0;
	if (local_kind(st->p.daddr))
		return xdp_input(ctx, st, cfg, gen);
	return xdp_forward(ctx, st, cfg, gen);
}

#endif
