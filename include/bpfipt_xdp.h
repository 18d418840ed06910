/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* The XDP option: layouts shared by ebpf/lib/xdp.h and translator/src/xdp.rs. */
#ifndef BPFIPT_XDP_H
#define BPFIPT_XDP_H

#include <linux/types.h>

/* xdp_devs: HASH ifindex -> what the fast path must know of an arriving device (not halved,
 * kept by the daemon from rtnetlink and the device's sysctls). */
struct bpfipt_xdp_dev {
	__u8 mac[6];	/* frames to another address are PACKET_OTHERHOST: ip_rcv drops them */
	__u16 flags;	/* BPFIPT_XDP_DEV_* */
};

/* Forwarded packets from this device may take the fast path: rp_filter is off for it
 * (net.ipv4.conf.{all,DEV}.rp_filter), so the kernel's input route checks nothing that
 * bpf_fib_lookup does not. */
#define BPFIPT_XDP_DEV_FAST 0x0001
/* The program runs in the driver (native mode): a redirect goes through the target's
 * ndo_xdp_xmit, not the generic path's ndo_start_xmit. */
#define BPFIPT_XDP_DEV_NATIVE 0x0002
/* Native redirects to this device are sent (NETDEV_XDP_ACT_NDO_XMIT; a veth has it only while
 * its peer has an XDP program or GRO on, else the frames are dropped). */
#define BPFIPT_XDP_DEV_NDO_XMIT 0x0004
/* A veth in native mode: a frame from a local sender may carry CHECKSUM_PARTIAL (an
 * unfinished transport checksum), which a native redirect does not finish; only frames whose
 * checksum verifies take the fast path. */
#define BPFIPT_XDP_DEV_VERIFY_CSUM 0x0008

/* The 4 bytes of XDP metadata (bpf_xdp_adjust_meta) by which XDP tells the TC ingress program
 * that it classified the packet through INPUT, counted it and accepted it. */
#define BPFIPT_XDP_META_ACCEPTED 0xb1f7acceu

/* Counter slots one XDP classification may defer (rules without a verdict, user chain
 * tails); more and XDP leaves the packet to TC. */
#define BPFIPT_XDP_MAX_COUNTS 32

#endif
