/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Rule and chain counters (per slot, in one stripe per CPU) and verdict reasons. */
#ifndef BPFIPT_COUNTERS_H
#define BPFIPT_COUNTERS_H

#include "common.h"

/* Counts a packet on a rule or chain tail slot, as ADD_COUNTER in ipt_do_table. */
static __always_inline void count_slot(__u32 slot, __u32 bytes)
{
	__u32 i = bpf_get_smp_processor_id() * counter_stride + slot;
	struct bpfipt_counter *c = bpf_map_lookup_elem(&counters, &i);

	if (c) {
		c->packets += 1;
		c->bytes += bytes;
	}
}

/* Counts a slot for the packet being classified, or, when XDP classifies it (st->defer),
 * notes the slot: XDP counts only if it acts on the verdict itself (xdp.h). */
static __always_inline void st_count(struct state *st, __u32 slot)
{
	__u32 n = st->ncounted;

	if (!st->defer) {
		count_slot(slot, st->p.bytes);
		return;
	}
	if (n < BPFIPT_XDP_MAX_COUNTS)
		st->counted[n] = slot;
	st->ncounted = n + 1;
}

static __always_inline void count_reason(__u32 reason)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &reason);

	if (v)
		*v += 1;
}

#endif
