/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Maps and per-packet state shared by the datapath's header libraries. */
#ifndef BPFIPT_COMMON_H
#define BPFIPT_COMMON_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "bpfipt.h"
#include "bpfipt_xdp.h"

#ifndef __noinline
#define __noinline __attribute__((noinline))
#endif
/* A global function's pointer argument the verifier takes as never NULL (kernel 6.8+). */
#ifndef __arg_nonnull
#define __arg_nonnull __attribute__((btf_decl_tag("arg:nonnull")))
#endif

/* Map sizes are placeholders: the loader sets them (EbpfLoader::set_max_entries). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfipt_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * BPFIPT_MAX_CHAINS);
	__type(key, __u32);
	__type(value, struct bpfipt_chain);
} chains SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct bpfipt_rule);
} rules SEC(".maps");

/* Rule counters: one stripe of `counter_stride` slots per possible CPU, so a CPU adds to its
 * own stripe without atomics (as a PERCPU_ARRAY would), and the daemon reads them all through
 * mmap instead of a per-key copy (a batch read of 10000 per-CPU slots cost milliseconds). */
const volatile __u32 counter_stride = 1024;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct bpfipt_counter);
	__uint(map_flags, BPF_F_MMAPABLE);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct bpfipt_list_key);
	__type(value, struct bpfipt_list);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} lists SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__type(key, struct bpfipt_addr_key);
	__type(value, struct bpfipt_addr_val);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * 2 * 65536);
	__type(key, __u32);
	__type(value, __u32);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct bpfipt_ifname);
} ifnames SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__type(key, struct bpfipt_local_key);
	__type(value, struct bpfipt_local_val);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} local4 SEC(".maps");

/* The /32 entries of local4 (nearly all: addresses and broadcasts), looked up exactly: a
 * hash lookup costs less than the trie's for every forwarded packet. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __be32);
	__type(value, struct bpfipt_local_val);
} local4x SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfipt_local_filter);
} local4f SEC(".maps");

/* Entry 0: how many local4 entries are shorter than /32 outside 127.0.0.0/8 (lo's own /8
 * is tested by address); 0: local4x alone decides for other addresses. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} local4_wide SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BPFIPT_NREASONS);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* What classification needs from a packet, read once. */
struct pkt {
	/* What the parse writes for every packet comes first, in 52 bytes: one cache line when
	 * the state is aligned, two at most. */
	__be32 saddr;
	__be32 daddr;
	__u32 saddr_h;
	__u32 daddr_h;
	__u32 mark;
	__u32 bytes;	/* as the kernel counts: the IP datagram */
	__u16 tot_len;
	__u16 fragoff;	/* ntohs(frag_off) & IP_OFFSET */
	__u16 l4len;	/* L4 bytes present */
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 ttl;
	__u8 tos;
	__u8 has_ports;	/* port protocol, first fragment, 4 bytes of L4 */
	__u8 trunc_ports;	/* ports unknown, port matches must still run (hotdrop) */
	__u8 tcpflags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 ihl;	/* header length in bytes */
	__u8 more_frags;	/* IP_MF */
	__u8 udp_csum0;	/* UDP without checksum (check field 0) */
	__u8 tcpdoff;	/* TCP header length in bytes (doff * 4) */
	__u8 optlen;	/* option bytes read into opts (when the table needs them) */
	__u8 opts_ok;	/* all doff * 4 - 20 option bytes are in the packet */
	__u8 reasm;	/* a reassembled datagram (frag.h): the datagram's first bytes are in
			 * reject_buf, the options already in opts */
	__u8 ct;	/* the tracker runs for this packet (verdict.h ct_on): ct_pkt is its */
	__u16 ipid;
	/* Written only when the table has rules on interface names (load_ifnames). */
	__u8 has_in;
	__u8 has_out;
	__u16 pad3;
	__u32 in_hash;
	__u32 out_hash;
	char in[16];
	char out[16];
	__u8 opts[64];	/* the options, and the byte after them (tcp_find_option reads it) */
};

struct head {
	struct bpfipt_list_key key;
	__u16 n;
	__u16 more;
	__u16 pos;
	__u16 pad;
	struct bpfipt_cand e[BPFIPT_CHUNK];
};

struct frame {
	__u32 chain;
	__u32 prio;
};

enum { PHASE_SETUP = 0, PHASE_SCAN = 1 };

/* A per-CPU cache of the addrs trie's answers (classify.h addr_classes). An entry holds for
 * one generation: the daemon writes a half only while it is inactive and flips after (the
 * generation changes), or, writing addresses or lists into the active half, bumps the
 * generation by 2 after the writes (dataplane.rs write). */
#define ACACHE_BITS 8
#define ACACHE_N (1 << ACACHE_BITS)

/* The same for the lists map's first chunks (classify.h add_head): a chain's lists hashed by a
 * 16-byte key, a jhash and a bucket walk per list of a packet. */
#define LCACHE_BITS 5
#define LCACHE_N (1 << LCACHE_BITS)

struct lcache_ent {
	__u32 gen;
	__u32 valid;
	struct bpfipt_list_key key;
	struct bpfipt_list l;	/* l.n == 0: no such list */
};

struct acache_ent {
	__u32 gen;
	__be32 addr;
	__u32 tag;	/* chain << 8 | half << 4 | field << 1 | 1: never 0 */
	struct bpfipt_addr_val v;	/* n == 0: no class */
};

struct state {
	struct pkt p;
	__u32 half;
	__u32 gen;	/* the config's generation the packet is classified in (half = gen & 1) */
	__u32 chain;
	__u32 hook_chain;
	__u32 resume;	/* skip candidates with prio <= resume (after RETURN) */
	__u32 prio;	/* the candidate being evaluated */
	__u32 depth;
	__u32 nheads;
	__u32 phase;
	__u32 verdict;	/* TC_ACT_* when done */
	__u32 reason;
	__u32 reject;	/* enum bpfipt_reject + 1 when REJECT */
	__u32 done;
	__u32 defer;	/* XDP: slots to count go to counted[] until the verdict is sure */
	__u32 ncounted;
	__s32 lkind;	/* ingress: local_kind_fast's answer, -1 when the parse must decide */
	__u32 counted[BPFIPT_XDP_MAX_COUNTS];
	struct frame stack[BPFIPT_MAX_STACK];
	struct head heads[BPFIPT_MAX_HEADS];
	struct acache_ent acache[ACACHE_N];
	struct lcache_ent lcache[LCACHE_N];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct state);
} scratch SEC(".maps");

/* The IPv4 pseudo-header's part of a TCP or UDP checksum (RFC 768, 793): its 16-bit words
 * summed as they lie in memory (a one's-complement sum is byte-order free), unfolded. */
static __always_inline __u32 csum_pseudo4(__be32 saddr, __be32 daddr, __u8 proto, __u16 len)
{
	return (saddr & 0xffff) + (saddr >> 16) + (daddr & 0xffff) + (daddr >> 16) +
	       bpf_htons((__u16)proto) + bpf_htons(len);
}

/* A 32-bit one's-complement sum folded to 16 bits (twice: the first leaves at most 0x1fffe):
 * 0xffff for data whose checksum is right. */
static __always_inline __u32 csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	return (s & 0xffff) + (s >> 16);
}

#endif
