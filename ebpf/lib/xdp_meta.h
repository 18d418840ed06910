/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* The TC side of the XDP option: whether XDP already classified this packet (xdp.h). */
#ifndef BPFIPT_XDP_META_H
#define BPFIPT_XDP_META_H

#include "common.h"

/* XDP leaves 4 bytes of metadata in front of a packet it classified through INPUT, counted
 * and accepted; the kernel keeps them for the skb (skb_metadata_set on XDP_PASS, generic and
 * veth alike) and nothing on the wire can put them there. */
static __always_inline int xdp_classified(struct __sk_buff *skb)
{
	void *meta = (void *)(long)skb->data_meta;
	void *data = (void *)(long)skb->data;

	if (meta + 4 > data)
		return 0;
	return *(__u32 *)meta == BPFIPT_XDP_META_ACCEPTED;
}

#endif
