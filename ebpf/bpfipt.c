// SPDX-License-Identifier: GPL-2.0
/* The datapath of the IPv4 filter table: TC ingress (INPUT) and TC egress (FORWARD,
 * OUTPUT) of every interface of the namespace. */
#include "lib/common.h"
#include "lib/verdict.h"

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

char _license[] SEC("license") = "GPL";
