/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* From a hook to a verdict: which chain a packet enters, with which devices. */
#ifndef BPFIPT_VERDICT_H
#define BPFIPT_VERDICT_H

#include "common.h"
#include "parse.h"
#include "classify.h"
#include "reject.h"
#include "frag.h"
#include "conntrack.h"
#include "xdp_meta.h"

static __always_inline struct state *get_state(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&scratch, &zero);
}

/* Whether the TC and XDP programs count a skipped chain's policy: all but INPUT's when the
 * LOCAL_IN program counts it (translator nfhook.rs). */
static __always_inline int skip_counted(const struct bpfipt_config *cfg, __u32 entry)
{
	return entry != BPFIPT_CHAIN_INPUT || !cfg->input_by_nf;
}

/* Runs the filter table for the chain `entry` and acts on its verdict. Devices: `in_dev`
 * and `out_dev` name the -i / -o devices (0: none); `reply_dev` is where a REJECT reply goes
 * when the FIB cannot be asked (reject.h route_reply). */
static __always_inline int run_hook(struct __sk_buff *skb, struct state *st,
				    const struct bpfipt_config *cfg, __u32 entry, __u32 in_dev,
				    __u32 out_dev, __u32 reply_dev)
{
	/* Read once: the half and the generation that tags the lookup caches (classify.h) must
	 * agree. */
	__u32 gen = *(volatile const __u32 *)&cfg->gen;
	__u32 idx = (gen & 1) * BPFIPT_MAX_CHAINS + entry;
	struct bpfipt_chain *c = bpf_map_lookup_elem(&chains, &idx);

	if (!c) {
		count_reason(BPFIPT_R_NO_STATE);
		return TC_ACT_OK;
	}
	if (c->skip) {
		/* Nothing to classify, but the kernel counts the policy. */
		if (skip_counted(cfg, entry))
			count_slot(c->tail_slot, st->p.bytes);
		count_reason(BPFIPT_R_PASS_SKIPPED_CHAIN);
		return TC_ACT_OK;
	}
	if (c->ct_accept && ct_shortcut(&st->p, c->ct_accept)) {
		/* The chain's first rule accepts this state unconditionally: no classification. */
		count_slot(c->ct_accept_slot, st->p.bytes);
		count_reason(BPFIPT_R_RULE_ACCEPT);
		return TC_ACT_OK;
	}
	load_ifnames(&st->p, c->needs, in_dev, out_dev);
	if (c->needs & BPFIPT_CHAIN_NEEDS_TCPOPTS)
		load_tcp_options(skb, &st->p);
	st->defer = 0;
	classify(st, gen, entry, c);
	count_reason(st->reason);
	if (st->reject) {
		if (st->p.reasm)
			frag_kill_clone(skb, &st->p);
		return do_reject(skb, st, st->reject - 1, entry == BPFIPT_CHAIN_INPUT, reply_dev);
	}
	if (st->verdict == TC_ACT_SHOT && st->p.reasm && frag_to_killer(skb, &st->p) == 0) {
		skb->tc_index = 0;
		return TC_ACT_OK;
	}
	return st->verdict;
}

static __always_inline struct bpfipt_config *get_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&config, &zero);
}

/* Whether daddr is one of ours (INPUT): local and broadcast routes, limited broadcast and
 * multicast. */
static __always_inline __u32 local_kind(__be32 daddr)
{
	struct bpfipt_local_key k = { .prefixlen = 32 };
	struct bpfipt_local_filter *f;
	struct bpfipt_local_val *v;
	__u32 a = bpf_ntohl(daddr), zero = 0, *wide, h;

	if (a == 0xffffffffu || (a >> 28) == 0xe)
		return BPFIPT_LOCAL_BROADCAST;
	/* A /32 is the longest match there is; shorter local routes are rare (lo's 127/8,
	 * AnyIP routes), so the trie is asked only when one could cover daddr. The filter (an
	 * inlined array lookup) answers most packets without local4x's hash lookup. */
	h = (a * BPFIPT_LOCAL_HASH_MUL) >> (32 - BPFIPT_LOCAL_FILTER_BITS);
	f = bpf_map_lookup_elem(&local4f, &zero);
	if (!f || ((f->bits[h >> 6] >> (h & 63)) & 1)) {
		v = bpf_map_lookup_elem(&local4x, &daddr);
		if (v)
			return v->kind;
	}
	wide = bpf_map_lookup_elem(&local4_wide, &zero);
	if ((a >> 24) != 127 && wide && *wide == 0)
		return 0;
	__builtin_memcpy(k.addr, &daddr, 4);
	v = bpf_map_lookup_elem(&local4, &k);
	return v ? v->kind : 0;
}

/* For a forwarded packet at ingress, whether daddr is local, read from the IPv4 header
 * alone: -1 when the full parse must decide (not IPv4, header not in the linear data,
 * malformed: parse_ipv4's header checks, or an L4 header parse_ipv4 would pull), else
 * local_kind. parse_ipv4 then finds nothing to report, so a non-local packet passes with
 * the same reason, untouched. */
static __always_inline int local_kind_fast(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN_;
	__u32 tot, ihl;

	if (skb->protocol != bpf_htons(ETH_P_IP) || (void *)(ip + 1) > end)
		return -1;
	if (ip->version != 4 || ip->ihl < 5)
		return -1;
	tot = bpf_ntohs(ip->tot_len);
	ihl = ip->ihl * 4;
	if (tot < ihl || tot > skb->len - ETH_HLEN_)
		return -1;
	if (ipv4_l4_outside(bpf_ntohs(ip->frag_off) & IP_OFFSET_, tot - ihl,
			    data + ETH_HLEN_ + ihl, end))
		return -1;
	return local_kind(ip->daddr);
}

/* Whether the packet's connection is tracked: ct_begin and ct_end are called only then
 * (they are subprograms). The answer goes to st->p.ct, which ct_match and ct_shortcut read
 * before the per-CPU ct_pkt (left as the last tracked packet left it): an untracked packet
 * touches neither ct_config nor ct_pkt. */
static __always_inline int ct_on(const struct bpfipt_config *cfg, struct state *st)
{
	st->p.ct = cfg->ct_on != 0;
	return st->p.ct;
}

/* ct_end's first test inline (a subprogram call saved when the packet is not tracked). From
 * st->p.ct, not the hook's ct_on() result: a constant kept across run_hook doubles the
 * verifier's states. */
static __always_inline int ct_end_if_on(struct __sk_buff *skb, struct state *st, int verdict,
					int lo_out)
{
	if (!st->p.ct)
		return verdict;
	return ct_end(skb, verdict, lo_out);
}

/* What both TC hooks do after reading the config and the scratch state: the family's
 * fallback, the packet parsed into st->p. Returns 0 when the packet passes untouched (reason
 * counted). */
static __always_inline int hook_begin(struct __sk_buff *skb, const struct bpfipt_config *cfg,
				      struct state *st)
{
	int r;

	if (cfg->fallback) {
		count_reason(BPFIPT_R_PASS_FALLBACK);
		return 0;
	}
	r = parse_ipv4(skb, &st->p);
	if (r != PARSE_OK) {
		count_reason(r == PARSE_NOT_IPV4 ? BPFIPT_R_PASS_NOT_IPV4 : BPFIPT_R_MALFORMED);
		return 0;
	}
	return 1;
}

static __always_inline int hook_ingress(struct __sk_buff *skb)
{
	struct bpfipt_config *cfg = get_config();
	struct state *st = get_state();
	int r, ct, kind;

	if (xdp_classified(skb)) {
		count_reason(BPFIPT_R_XDP_INPUT_DONE);
		return TC_ACT_OK;
	}
	if (!cfg || !st)
		return TC_ACT_OK;
	/* A forwarded packet is decided before the parse into the scratch state. A local one
	 * keeps the answer in the scratch state for after the parse, not in a register: kept
	 * in a register across the parse, it cost the verifier a third more states. */
	kind = cfg->fallback ? -1 : local_kind_fast(skb);
	if (kind == 0) {
		count_reason(BPFIPT_R_PASS_NOT_LOCAL);
		return TC_ACT_OK;
	}
	st->lkind = kind;
	if (!hook_begin(skb, cfg, st))
		return TC_ACT_OK;
	if (st->lkind < 0 && !local_kind(st->p.daddr)) {
		count_reason(BPFIPT_R_PASS_NOT_LOCAL);
		return TC_ACT_OK;
	}
	if (skb->tc_index == BPFIPT_TC_INDEX_FRAG_KILL) {
		/* frag.h's empty fragment, on its way to end a reassembly. */
		skb->tc_index = 0;
		count_reason(BPFIPT_R_FRAG_PENDING);
		return TC_ACT_OK;
	}
	if (st->p.fragoff || st->p.more_frags) {
		/* INPUT sees datagrams reassembled (ip_local_deliver defragments before the
		 * hook): a fragment waits for its datagram, whose last fragment to arrive
		 * carries the verdict. */
		r = frag_collect(skb, st, cfg->gen & 1);
		if (r == FRAG_FULL) {
			count_reason(BPFIPT_R_FRAG_FULL);
			return TC_ACT_SHOT;
		}
		if (r != FRAG_COMPLETE) {
			count_reason(BPFIPT_R_FRAG_PENDING);
			return TC_ACT_OK;
		}
	}
	ct = ct_on(cfg, st);
	if (ct && ct_begin(skb, &st->p, skb->ifindex == cfg_lo(), 0, 1) < 0)
		return TC_ACT_SHOT;
	r = run_hook(skb, st, cfg, BPFIPT_CHAIN_INPUT, skb->ifindex, 0, skb->ifindex);
	return ct_end_if_on(skb, st, r, 0);
}

static __always_inline int hook_egress(struct __sk_buff *skb)
{
	struct bpfipt_config *cfg = get_config();
	struct state *st = get_state();
	__u32 entry, in_ifindex;
	int r, reply, ct;

	if (!cfg || !st || !hook_begin(skb, cfg, st))
		return TC_ACT_OK;
	reply = skb->tc_index == BPFIPT_TC_INDEX_REPLY;
	if (reply || skb->ingress_ifindex == 0) {
		/* Locally generated (our REJECT replies included, as the kernel's go through
		 * ip_local_out): OUTPUT. */
		skb->tc_index = 0;
		entry = BPFIPT_CHAIN_OUTPUT;
		in_ifindex = 0;
	} else {
		entry = BPFIPT_CHAIN_FORWARD;
		in_ifindex = skb->ingress_ifindex;
	}
	ct = ct_on(cfg, st);
	if (ct && ct_begin(skb, &st->p, 0, reply, in_ifindex != 0) < 0)
		return TC_ACT_SHOT;
	r = run_hook(skb, st, cfg, entry, in_ifindex, skb->ifindex,
		     in_ifindex ? in_ifindex : skb->ifindex);
	return ct_end_if_on(skb, st, r, skb->ifindex == cfg_lo());
}

#endif
