/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Classification of one packet by one table: netfilter's first-match semantics over
 * anchored candidate lists.
 *
 * Every rule is listed under one condition it cannot match without (its anchor: a source
 * or destination prefix, a port interval, a protocol, an interface name), or in the chain's
 * FLOAT list. For a packet, the lists of the classes it falls in are merged by priority
 * (rule order); each candidate is evaluated in full, in the kernel's order (ip_packet_match,
 * then the matches in rule order); the first that matches acts. Precedence:
 *   1. a candidate with a smaller priority always comes first (rule order);
 *   2. after a RETURN, candidates up to the jumping rule's priority are skipped;
 *   3. when no candidate is left, the chain's tail acts (policy, or RETURN for a user chain).
 */
#ifndef BPFIPT_CLASSIFY_H
#define BPFIPT_CLASSIFY_H

#include "common.h"
#include "counters.h"
#include "conntrack.h"

#define MAX_STEPS (1 << 22)

/* Adds the list (st->half, field, st->chain, cls, plen), chunk 0, as a head, when it exists:
 * from the per-CPU cache when it holds it for this generation, else from the lists map. */
static __always_inline void add_head(struct state *st, __u32 field, __u32 cls, __u32 plen)
{
	struct bpfipt_list_key k = {};
	struct bpfipt_list *l;
	struct lcache_ent *e;
	__u32 h = st->nheads, i;
	struct head *hd;

	if (h >= BPFIPT_MAX_HEADS)
		return;
	k.half = st->half;
	k.field = field;
	k.chain = st->chain;
	k.cls = cls;
	k.plen = plen;
	k.chunk = 0;
	i = ((cls ^ (plen << 24) ^ (field << 20) ^ st->chain) * 0x9e3779b1u) >> (32 - LCACHE_BITS);
	e = &st->lcache[i & (LCACHE_N - 1)];
	if (!e->valid || e->gen != st->gen || ((__u64 *)&e->key)[0] != ((__u64 *)&k)[0] ||
	    ((__u64 *)&e->key)[1] != ((__u64 *)&k)[1]) {
		l = bpf_map_lookup_elem(&lists, &k);
		e->gen = st->gen;
		e->valid = 1;
		e->key = k;
		if (l)
			e->l = *l;
		else
			e->l.n = 0;
	}
	if (e->l.n == 0)
		return;
	hd = &st->heads[h];
	hd->key = k;
	hd->n = e->l.n;
	hd->more = e->l.more;
	hd->pos = 0;
	__builtin_memcpy(hd->e, e->l.e, sizeof(hd->e));
	st->nheads = h + 1;
}

/* The classes of `addr` in st->chain's `field` (the addrs trie's value; n == 0: none), from
 * the per-CPU cache when it has them for this generation. The trie walks a node per bit that
 * tells its entries apart, a dozen cache lines at 5000 classes; most packets repeat the
 * addresses of packets before them, whose answer the cache holds in one line. */
static __always_inline struct bpfipt_addr_val addr_classes(struct state *st, __u32 field,
							   __be32 addr)
{
	__u32 tag = (st->chain << 8) | (st->half << 4) | (field << 1) | 1;
	__u32 i = ((addr ^ (tag << 12)) * 0x9e3779b1u) >> (32 - ACACHE_BITS);
	struct acache_ent *e = &st->acache[i & (ACACHE_N - 1)];
	struct bpfipt_addr_key k = {};
	struct bpfipt_addr_val *v;

	if (e->tag == tag && e->addr == addr && e->gen == st->gen)
		return e->v;
	k.prefixlen = 64;
	k.half = st->half;
	k.field = field;
	k.chain_hi = st->chain >> 8;
	k.chain_lo = st->chain & 0xff;
	__builtin_memcpy(k.addr, &addr, 4);
	v = bpf_map_lookup_elem(&addrs, &k);
	e->gen = st->gen;
	e->addr = addr;
	e->tag = tag;
	if (v)
		e->v = *v;
	else
		e->v.n = 0;
	return e->v;
}

static __always_inline void add_addr_heads(struct state *st, __u32 field, __be32 addr)
{
	struct bpfipt_addr_val v = addr_classes(st, field, addr);
	__u32 a = bpf_ntohl(addr);

#pragma unroll
	for (int i = 0; i < BPFIPT_MAX_ANCESTORS; i++) {
		__u32 plen, mask;

		if (i >= v.n)
			break;
		plen = v.plen[i];
		if (plen == 0 || plen > 32)
			continue;
		mask = plen == 32 ? 0xffffffffu : ~(0xffffffffu >> plen);
		add_head(st, field, a & mask, plen);
	}
}

static __always_inline __u32 port_class(__u32 half, __u32 field, __u16 port)
{
	__u32 idx = ((half * 2) + field) * 65536 + port;
	__u32 *c = bpf_map_lookup_elem(&ports, &idx);

	return c ? *c : 0;
}

/* Loads the candidate lists of the packet's classes in st->chain; returns 0. A global
 * function, checked once by the verifier for both callers (classify, classify_step): inlined
 * in both, it made egress and ingress 2.4x and 3.4x longer to verify. */
__noinline int setup_chain(struct state *st __arg_nonnull,
			   const struct bpfipt_chain *c __arg_nonnull)
{
	struct pkt *p = &st->p;
	__u32 f = c->fields;

	st->nheads = 0;
	if (f & (1 << BPFIPT_F_SRC))
		add_addr_heads(st, BPFIPT_F_SRC, p->saddr);
	if (f & (1 << BPFIPT_F_DST))
		add_addr_heads(st, BPFIPT_F_DST, p->daddr);
	if (p->trunc_ports) {
		if (f & ((1 << BPFIPT_F_SPORT) | (1 << BPFIPT_F_DPORT)))
			add_head(st, BPFIPT_F_DPORT, BPFIPT_CLASS_TRUNC, 0);
	} else if (p->has_ports) {
		if (f & (1 << BPFIPT_F_SPORT))
			add_head(st, BPFIPT_F_SPORT, port_class(st->half, 0, p->sport), 0);
		if (f & (1 << BPFIPT_F_DPORT))
			add_head(st, BPFIPT_F_DPORT, port_class(st->half, 1, p->dport), 0);
	}
	if (f & (1 << BPFIPT_F_PROTO))
		add_head(st, BPFIPT_F_PROTO, p->proto, 0);
	if ((f & (1 << BPFIPT_F_IIF)) && p->has_in)
		add_head(st, BPFIPT_F_IIF, p->in_hash, 0);
	if ((f & (1 << BPFIPT_F_OIF)) && p->has_out)
		add_head(st, BPFIPT_F_OIF, p->out_hash, 0);
	if (f & (1 << BPFIPT_F_FLOAT))
		add_head(st, BPFIPT_F_FLOAT, 0, 0);
	return 0;
}

/* Moves head h to its next entry, loading the next chunk when needed. */
static __always_inline void advance(struct state *st, __u32 h)
{
	struct head *hd;
	struct bpfipt_list *l;

	if (h >= BPFIPT_MAX_HEADS)
		return;
	hd = &st->heads[h];
	hd->pos++;
	if (hd->pos < hd->n)
		return;
	if (!hd->more) {
		hd->n = 0;
		return;
	}
	hd->key.chunk++;
	l = bpf_map_lookup_elem(&lists, &hd->key);
	if (!l || l->n == 0) {
		hd->n = 0;
		return;
	}
	hd->n = l->n;
	hd->more = l->more;
	hd->pos = 0;
	__builtin_memcpy(hd->e, l->e, sizeof(hd->e));
}

/* ifname_compare_aligned: 16 bytes compared under the rule's mask. */
static __always_inline int ifname_differs(const char *dev, const char *name, const __u8 *mask)
{
	const __u64 *d = (const __u64 *)dev, *n = (const __u64 *)name, *m = (const __u64 *)mask;

	return (((d[0] ^ n[0]) & m[0]) | ((d[1] ^ n[1]) & m[1])) != 0;
}

#define INVF(r, flag, cond) ((cond) ^ !!((r)->invflags & (flag)))

/* ip_packet_match */
static __always_inline int ip_match(const struct bpfipt_rule *r, const struct pkt *p)
{
	__u8 need = r->need;

	if (need & BPFIPT_NEED_ADDR) {
		if (INVF(r, 0x08, (p->saddr & r->smsk) != r->src) ||
		    INVF(r, 0x10, (p->daddr & r->dmsk) != r->dst))
			return 0;
	}
	if ((need & BPFIPT_NEED_IIF) &&
	    INVF(r, 0x01, ifname_differs(p->in, r->iif, r->iifmask)))
		return 0;
	if ((need & BPFIPT_NEED_OIF) &&
	    INVF(r, 0x02, ifname_differs(p->out, r->oif, r->oifmask)))
		return 0;
	if ((need & BPFIPT_NEED_PROTO) && r->proto && INVF(r, 0x40, p->proto != r->proto))
		return 0;
	if ((need & BPFIPT_NEED_FRAG) && INVF(r, 0x20, (r->ipflags & 1) && !p->fragoff))
		return 0;
	return 1;
}

static __always_inline int port_in(__u16 lo, __u16 hi, __u16 v, int inv)
{
	return (v >= lo && v <= hi) ^ inv;
}

static __always_inline int multiport_match(const struct bpfipt_match *m, __u16 s, __u16 d)
{
	__u32 i;
	int inv = !!(m->inv & BPFIPT_INV_ANY);

	for (i = 0; i < 15; i++) {
		__u16 lo, hi;

		if (i >= m->count)
			break;
		lo = m->u.multiport.ports[i];
		hi = lo;
		if (m->u.multiport.pflags[i]) {
			if (i + 1 >= 15)
				break;
			i++;
			hi = m->u.multiport.ports[i];
		}
		if (((m->flags & 1) && s >= lo && s <= hi) ||
		    ((m->flags & 2) && d >= lo && d <= hi))
			return !inv;
	}
	return inv;
}

enum { M_NO = 0, M_YES = 1, M_HOTDROP = 2 };

/* tcp_find_option of xt_tcpudp.c over the options parse.h read: EOL and NOP are one byte,
 * any other kind says its length (a zero length steps one byte). Like the kernel, the length
 * of a kind in the last option byte is read past the options (the first payload byte; 0 if
 * none). */
static __always_inline int tcp_option_match(const struct bpfipt_match *m, const struct pkt *p)
{
	int inv = !!(m->inv & BPFIPT_INV_OPTION);
	__u32 i = 0, len = p->optlen;
	__u8 want = m->u.tcp.option;

	if (p->tcpdoff < 20)
		return M_HOTDROP;
	if (p->tcpdoff == 20)
		return inv ? M_YES : M_NO;
	/* skb_header_pointer fails when the options are not all in the packet. */
	if (!p->opts_ok)
		return M_HOTDROP;
#pragma unroll
	for (int s = 0; s < 40; s++) {
		__u8 k, l;

		if (i >= len || i >= 40)
			break;
		k = p->opts[i & 63];
		if (k == want)
			return inv ? M_NO : M_YES;
		if (k < 2) {
			i++;
			continue;
		}
		l = p->opts[(i + 1) & 63];
		i += l ? l : 1;
	}
	return inv ? M_YES : M_NO;
}

/* One match, as its kernel match function decides. */
static __always_inline int match_one(const struct bpfipt_match *m, const struct pkt *p)
{
	switch (m->kind) {
	case BPFIPT_M_TCP:
		if (p->fragoff)
			return p->fragoff == 1 ? M_HOTDROP : M_NO;
		if (p->l4len < 20)
			return M_HOTDROP;
		if (!(port_in(m->u.tcp.spts[0], m->u.tcp.spts[1], p->sport,
			      !!(m->inv & BPFIPT_INV_SPT)) &&
		      port_in(m->u.tcp.dpts[0], m->u.tcp.dpts[1], p->dport,
			      !!(m->inv & BPFIPT_INV_DPT)) &&
		      (((p->tcpflags & m->u.tcp.flg_mask) == m->u.tcp.flg_cmp) ^
		       !!(m->inv & BPFIPT_INV_FLAGS))))
			return M_NO;
		if (m->u.tcp.option)
			return tcp_option_match(m, p);
		return M_YES;
	case BPFIPT_M_UDP:
		if (p->fragoff)
			return M_NO;
		if (p->l4len < 8)
			return M_HOTDROP;
		return port_in(m->u.tcp.spts[0], m->u.tcp.spts[1], p->sport,
			       !!(m->inv & BPFIPT_INV_SPT)) &&
		       port_in(m->u.tcp.dpts[0], m->u.tcp.dpts[1], p->dport,
			       !!(m->inv & BPFIPT_INV_DPT));
	case BPFIPT_M_ICMP:
		if (p->fragoff)
			return M_NO;
		if (p->l4len < 8)
			return M_HOTDROP;
		return (m->u.icmp.type == 0xff ||
			(p->icmp_type == m->u.icmp.type && p->icmp_code >= m->u.icmp.code[0] &&
			 p->icmp_code <= m->u.icmp.code[1])) ^
		       !!(m->inv & BPFIPT_INV_ANY);
	case BPFIPT_M_MULTIPORT:
		if (p->fragoff)
			return M_NO;
		if (p->l4len < 4)
			return M_HOTDROP;
		return multiport_match(m, p->sport, p->dport);
	case BPFIPT_M_IPRANGE:
		if (m->inv & BPFIPT_IPRANGE_SRC) {
			int out = p->saddr_h < m->u.iprange.src[0] || p->saddr_h > m->u.iprange.src[1];

			if (out ^ !!(m->inv & BPFIPT_INV_SPT))
				return M_NO;
		}
		if (m->inv & BPFIPT_IPRANGE_DST) {
			int out = p->daddr_h < m->u.iprange.dst[0] || p->daddr_h > m->u.iprange.dst[1];

			if (out ^ !!(m->inv & BPFIPT_INV_DPT))
				return M_NO;
		}
		return M_YES;
	case BPFIPT_M_MARK:
		return ((p->mark & m->u.mark.mask) == m->u.mark.mark) ^ !!(m->inv & BPFIPT_INV_ANY);
	case BPFIPT_M_LENGTH:
		return (p->tot_len >= m->u.length.min && p->tot_len <= m->u.length.max) ^
		       !!(m->inv & BPFIPT_INV_ANY);
	case BPFIPT_M_CONNTRACK:
	case BPFIPT_M_CT_ADDR:
		return ct_match(m, p);
	case BPFIPT_M_TTL:
		switch (m->flags) {
		case BPFIPT_TTL_EQ:
			return p->ttl == m->u.ttl.value;
		case BPFIPT_TTL_NE:
			return p->ttl != m->u.ttl.value;
		case BPFIPT_TTL_LT:
			return p->ttl < m->u.ttl.value;
		case BPFIPT_TTL_GT:
			return p->ttl > m->u.ttl.value;
		}
		return M_NO;
	}
	return M_NO;
}

/* The whole rule: M_YES, M_NO or M_HOTDROP. A global function: the verifier checks it once, on
 * its own, for any rule and packet, not again at each call site and caller state (inlined, it
 * was most of what the verifier walked, and kept classify_direct out of the programs). */
__noinline int rule_match(const struct bpfipt_rule *r __arg_nonnull,
			  const struct pkt *p __arg_nonnull)
{
	if (!ip_match(r, p))
		return M_NO;
#pragma unroll
	for (int i = 0; i < BPFIPT_MAX_MATCHES; i++) {
		int v;

		if (i >= r->nmatch)
			break;
		v = match_one(&r->m[i], p);
		if (v != M_YES)
			return v;
	}
	return M_YES;
}

static __always_inline void finish(struct state *st, __u32 verdict, __u32 reason)
{
	st->verdict = verdict;
	st->reason = reason;
	st->done = 1;
}

/* A built-in chain's policy, counted on its tail (ipt_do_table's underflow). */
static __always_inline void policy_verdict(struct state *st, __u32 tail_slot, __u32 policy)
{
	st_count(st, tail_slot);
	/* A record never written (zero) is the kernel's initial table: ACCEPT. */
	if (policy == BPFIPT_T_DROP)
		finish(st, TC_ACT_SHOT, BPFIPT_R_POLICY_DROP);
	else
		finish(st, TC_ACT_OK, BPFIPT_R_POLICY_ACCEPT);
}

/* The policy of the hook's built-in chain. */
static __always_inline void apply_policy(struct state *st)
{
	__u32 idx = st->half * BPFIPT_MAX_CHAINS + st->hook_chain;
	struct bpfipt_chain *c = bpf_map_lookup_elem(&chains, &idx);

	if (!c) {
		finish(st, TC_ACT_SHOT, BPFIPT_R_NO_STATE);
		return;
	}
	policy_verdict(st, c->tail_slot, c->policy);
}

/* The targets that stay in the chain: no target (go on), ACCEPT, DROP, REJECT. Returns 1 when
 * r's target is one of them (st->done when it ends the scan), 0 for RETURN, jumps, gotos. */
static __always_inline int chain_target(struct state *st, const struct bpfipt_rule *r)
{
	switch (r->target) {
	case BPFIPT_T_NONE:
		return 1;
	case BPFIPT_T_ACCEPT:
		finish(st, TC_ACT_OK, BPFIPT_R_RULE_ACCEPT);
		return 1;
	case BPFIPT_T_DROP:
		finish(st, TC_ACT_SHOT, BPFIPT_R_RULE_DROP);
		return 1;
	case BPFIPT_T_REJECT:
		st->reject = r->reject + 1;
		finish(st, TC_ACT_SHOT, BPFIPT_R_REJECT);
		return 1;
	}
	return 0;
}

/* RETURN: back to the caller after its jumping rule, or the hook's policy. */
static __always_inline void do_return(struct state *st)
{
	__u32 d = st->depth;

	if (d == 0) {
		apply_policy(st);
		return;
	}
	d--;
	if (d >= BPFIPT_MAX_STACK) {
		finish(st, TC_ACT_SHOT, BPFIPT_R_NO_STATE);
		return;
	}
	st->depth = d;
	st->chain = st->stack[d].chain;
	st->resume = st->stack[d].prio;
	st->phase = PHASE_SETUP;
}

/* The rule in `slot` for st->p: matched in full, then, when it matches, counted and its
 * target taken if it stays in the chain (chain_target). Returns the rule when it matched and
 * its target leaves the chain (RETURN, a jump, a goto), else NULL; st->done when the scan
 * ended (a verdict, a hotdrop, a missing rule). */
static __always_inline struct bpfipt_rule *evaluate(struct state *st, __u32 slot)
{
	struct bpfipt_rule *r = bpf_map_lookup_elem(&rules, &slot);
	int m;

	if (!r) {
		finish(st, TC_ACT_SHOT, BPFIPT_R_NO_STATE);
		return NULL;
	}
	m = rule_match(r, &st->p);
	if (m == M_NO)
		return NULL;
	if (m == M_HOTDROP) {
		finish(st, TC_ACT_SHOT, BPFIPT_R_HOTDROP);
		return NULL;
	}
	st_count(st, slot);
	if (chain_target(st, r))
		return NULL;
	return r;
}

/* One step of the classification: set a chain up, or evaluate one candidate. */
static long classify_step(__u32 idx, void *ctx)
{
	__u32 zero = 0, best = BPFIPT_MAX_HEADS, bprio = 0xffffffffu, slot, cidx;
	struct state *st = bpf_map_lookup_elem(&scratch, &zero);
	struct bpfipt_chain *c;
	struct bpfipt_rule *r;

	if (!st)
		return 1;
	if (st->done)
		return 1;
	if (st->chain >= BPFIPT_MAX_CHAINS) {
		finish(st, TC_ACT_SHOT, BPFIPT_R_NO_STATE);
		return 1;
	}
	cidx = st->half * BPFIPT_MAX_CHAINS + st->chain;
	if (st->phase == PHASE_SETUP) {
		c = bpf_map_lookup_elem(&chains, &cidx);
		if (!c) {
			finish(st, TC_ACT_SHOT, BPFIPT_R_NO_STATE);
			return 1;
		}
		/* Never a direct chain: classify_direct runs those (compile makes only hook
		 * chains direct, and a direct chain never jumps, so no RETURN comes back to one). */
		setup_chain(st, c);
		st->phase = PHASE_SCAN;
		return 0;
	}
#pragma unroll
	for (int h = 0; h < BPFIPT_MAX_HEADS; h++) {
		struct head *hd = &st->heads[h];
		__u32 pos;

		if (h >= st->nheads)
			break;
		pos = hd->pos;
		if (pos >= hd->n || pos >= BPFIPT_CHUNK)
			continue;
		if (hd->e[pos].prio < bprio) {
			bprio = hd->e[pos].prio;
			best = h;
		}
	}
	if (best >= BPFIPT_MAX_HEADS) {
		/* End of the chain: its tail. */
		c = bpf_map_lookup_elem(&chains, &cidx);
		if (!c) {
			finish(st, TC_ACT_SHOT, BPFIPT_R_NO_STATE);
			return 1;
		}
		if (c->policy == BPFIPT_T_RETURN) {
			st_count(st, c->tail_slot);
			do_return(st);
		} else {
			apply_policy(st);
		}
		return st->done ? 1 : 0;
	}
	{
		struct head *hd = &st->heads[best];
		__u32 pos = hd->pos;

		if (pos >= BPFIPT_CHUNK)
			return 1;
		slot = hd->e[pos].slot;
	}
	advance(st, best);
	if (bprio <= st->resume)
		return 0;
	st->prio = bprio;
	r = evaluate(st, slot);
	if (!r)
		return st->done ? 1 : 0;
	switch (r->target) {
	case BPFIPT_T_RETURN:
		do_return(st);
		return st->done ? 1 : 0;
	case BPFIPT_T_JUMP: {
		__u32 d = st->depth;

		if (d >= BPFIPT_MAX_STACK) {
			finish(st, TC_ACT_SHOT, BPFIPT_R_LOOP_LIMIT);
			return 1;
		}
		st->stack[d].chain = st->chain;
		st->stack[d].prio = st->prio;
		st->depth = d + 1;
		st->chain = r->chain;
		st->resume = 0;
		st->phase = PHASE_SETUP;
		return 0;
	}
	case BPFIPT_T_GOTO:
		st->chain = r->chain;
		st->resume = 0;
		st->phase = PHASE_SETUP;
		return 0;
	}
	finish(st, TC_ACT_SHOT, BPFIPT_R_NO_STATE);
	return 1;
}

/* A direct chain (compile: a hook chain of at most BPFIPT_DIRECT_MAX rules whose targets
 * all stay in it): its rules in order, then its policy, without the candidate lists. */
static __always_inline void classify_direct(struct state *st, const struct bpfipt_chain *c)
{
	for (__u32 i = 0; i < BPFIPT_DIRECT_MAX; i++) {
		struct bpfipt_rule *r;

		if (i >= c->ndirect)
			break;
		r = evaluate(st, c->direct_slot[i]);
		if (st->done)
			return;
		if (r) {
			/* compile makes only chains whose rules stay in them direct */
			finish(st, TC_ACT_SHOT, BPFIPT_R_NO_STATE);
			return;
		}
	}
	policy_verdict(st, c->tail_slot, c->policy);
}

/* Classifies st->p through the table from chain `entry`, whose record the caller has read
 * (c); st->verdict is the outcome. */
static __always_inline void classify(struct state *st, __u32 gen, __u32 entry,
				     const struct bpfipt_chain *c)
{
	st->half = gen & 1;
	st->gen = gen;
	st->chain = entry;
	st->hook_chain = entry;
	st->done = 0;
	st->reject = 0;
	st->ncounted = 0;
	if (c->direct) {
		classify_direct(st, c);
		return;
	}
	st->resume = 0;
	st->depth = 0;
	/* The hook's chain is set up here, from the record the caller read: one bpf_loop step
	 * (the callback's call, its scratch and chain lookups) fewer per packet. */
	setup_chain(st, c);
	st->phase = PHASE_SCAN;
	st->verdict = TC_ACT_SHOT;
	st->reason = BPFIPT_R_LOOP_LIMIT;
	bpf_loop(MAX_STEPS, classify_step, NULL, 0);
}

#endif
