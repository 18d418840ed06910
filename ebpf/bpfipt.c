// SPDX-License-Identifier: GPL-2.0
/* The datapath of the IPv4 filter table: TC ingress (INPUT) and TC egress (FORWARD,
 * OUTPUT) of every interface of the namespace, and XDP as an option. */
#include "lib/common.h"
#include "lib/verdict.h"
#include "lib/xdp.h"

SEC("classifier")
int bpfipt_ingress(struct __sk_buff *skb)
{
	return hook_ingress(skb);
}

SEC("classifier")
int bpfipt_egress(struct __sk_buff *skb)
{
	return hook_egress(skb);
}

/* The XDP option (xdp.h): INPUT's early verdicts and the forwarding fast path. */
SEC("xdp")
int bpfipt_xdp(struct xdp_md *ctx)
{
	return hook_xdp(ctx);
}

char _license[] SEC("license") = "GPL";
