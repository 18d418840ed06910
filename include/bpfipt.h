/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* Map key/value layouts shared by the datapath (ebpf/) and the loader (translator/src/
 * dataplane.rs mirrors them with #[repr(C)] types; a test compares them with the object's
 * BTF). Every map whose content depends on the ruleset is halved: the half is part of the key.
 */
#ifndef BPFIPT_H
#define BPFIPT_H

#include <linux/types.h>

/* Chain ids: the built-in chains of the filter table are fixed, user chains follow. */
#define BPFIPT_CHAIN_INPUT 0
#define BPFIPT_CHAIN_FORWARD 1
#define BPFIPT_CHAIN_OUTPUT 2
#define BPFIPT_MAX_CHAINS 4096

/* Jump stack depth (the kernel's is the number of user chains; deeper graphs fall back). */
#define BPFIPT_MAX_STACK 16
/* Matches per rule record (comment is not stored). */
#define BPFIPT_MAX_MATCHES 6
/* Entries of one chunk of a candidate list. */
#define BPFIPT_CHUNK 15
/* A built-in chain of at most this many rules, none of which leaves the chain (jump, goto,
 * RETURN), is evaluated rule by rule from its record (classify.h classify_direct). */
#define BPFIPT_DIRECT_MAX 8
/* Nested address classes a packet can hit per field and chain. */
#define BPFIPT_MAX_ANCESTORS 6
/* Candidate list heads merged at once. */
#define BPFIPT_MAX_HEADS 20
/* tc_index marking a reply built by REJECT: classified as OUTPUT. */
#define BPFIPT_TC_INDEX_REPLY 0xb1f7
/* tc_index marking the empty fragment frag.h sends to end a datagram's reassembly: passed. */
#define BPFIPT_TC_INDEX_FRAG_KILL 0xb1f8

/* Fields a rule can be indexed under (its anchor). */
enum bpfipt_field {
	BPFIPT_F_SRC = 0,
	BPFIPT_F_DST = 1,
	BPFIPT_F_SPORT = 2,
	BPFIPT_F_DPORT = 3,
	BPFIPT_F_PROTO = 4,
	BPFIPT_F_IIF = 5,
	BPFIPT_F_OIF = 6,
	BPFIPT_F_FLOAT = 7,
	BPFIPT_NFIELDS = 8,
};

/* DPORT class listing every port-anchored rule, for packets whose ports are unknown
 * (first fragment with less than 4 bytes of L4 header): their matches hotdrop. */
#define BPFIPT_CLASS_TRUNC 0xffffffffu

/* What a rule does (struct bpfipt_rule.target). */
enum bpfipt_target {
	BPFIPT_T_NONE = 0,	/* no -j: count and continue */
	BPFIPT_T_ACCEPT = 1,
	BPFIPT_T_DROP = 2,
	BPFIPT_T_RETURN = 3,
	BPFIPT_T_JUMP = 4,
	BPFIPT_T_GOTO = 5,
	BPFIPT_T_REJECT = 6,
};

/* Match kinds (struct bpfipt_match.kind). */
enum bpfipt_match_kind {
	BPFIPT_M_NONE = 0,
	BPFIPT_M_TCP = 1,
	BPFIPT_M_UDP = 2,
	BPFIPT_M_ICMP = 3,
	BPFIPT_M_MULTIPORT = 4,
	BPFIPT_M_IPRANGE = 5,
	BPFIPT_M_MARK = 6,
	BPFIPT_M_LENGTH = 7,
	BPFIPT_M_TTL = 8,
};

/* REJECT --reject-with, numbered as enum ipt_reject_with. */
enum bpfipt_reject {
	BPFIPT_REJ_NET_UNREACH = 0,
	BPFIPT_REJ_HOST_UNREACH = 1,
	BPFIPT_REJ_PROT_UNREACH = 2,
	BPFIPT_REJ_PORT_UNREACH = 3,
	BPFIPT_REJ_ECHOREPLY = 4,
	BPFIPT_REJ_NET_PROHIBITED = 5,
	BPFIPT_REJ_HOST_PROHIBITED = 6,
	BPFIPT_REJ_TCP_RESET = 7,
	BPFIPT_REJ_ADMIN_PROHIBITED = 8,
};

/* Why a packet got its verdict: one numbered space, never reused (stats map index). */
enum bpfipt_reason {
	BPFIPT_R_PASS_NOT_IPV4 = 0,
	BPFIPT_R_PASS_NOT_LOCAL = 1,
	BPFIPT_R_PASS_FALLBACK = 2,
	BPFIPT_R_PASS_SKIPPED_CHAIN = 3,
	BPFIPT_R_RULE_ACCEPT = 4,
	BPFIPT_R_RULE_DROP = 5,
	BPFIPT_R_POLICY_ACCEPT = 6,
	BPFIPT_R_POLICY_DROP = 7,
	BPFIPT_R_REJECT = 8,
	BPFIPT_R_HOTDROP = 9,
	BPFIPT_R_MALFORMED = 10,
	BPFIPT_R_LOOP_LIMIT = 11,
	BPFIPT_R_REJECT_SENT = 12,
	BPFIPT_R_REJECT_NO_REPLY = 13,
	BPFIPT_R_NO_STATE = 14,
	/* A fragment for INPUT, passed on to reassembly (frag.h). */
	BPFIPT_R_FRAG_PENDING = 15,
	/* A fragment for INPUT dropped: too many datagrams being reassembled. */
	BPFIPT_R_FRAG_FULL = 16,
	/* TC ingress: XDP classified the packet through INPUT and accepted it (xdp.h). */
	BPFIPT_R_XDP_INPUT_DONE = 17,
	/* XDP: a forwarded packet accepted by FORWARD and redirected to its output device. */
	BPFIPT_R_XDP_FORWARDED = 18,
	/* XDP: left to the TC path untouched (conntrack, fragments, REJECT, a check the kernel
	 * makes that XDP cannot, ...). */
	BPFIPT_R_XDP_PASS = 19,
	BPFIPT_NREASONS = 20,
};

/* config: ARRAY, one entry, not halved. */
struct bpfipt_config {
	__u32 gen;	/* active half = gen & 1 */
	__u32 fallback;	/* non-zero: the kernel enforces the family, pass everything */
	__u32 default_ttl;	/* net.ipv4.ip_default_ttl, for REJECT replies (0: 64) */
	__u32 lo_ifindex;	/* where replies to local addresses go (0: 1) */
	/* Non-zero: the policy of an INPUT chain that is skipped (empty, policy ACCEPT) is
	 * counted by the LOCAL_IN netfilter hook program (translator nfhook.rs), not by the TC
	 * or XDP programs. */
	__u32 input_by_nf;
	/* ct_config.enabled, mirrored here so that an untracked packet's hook reads one map
	 * value fewer: the hooks (TC and XDP) read this one. It is set after the tracker's own
	 * flag and cleared before it (conntrack.rs set_enabled). */
	__u32 ct_on;
};

/* chains: ARRAY [2 * BPFIPT_MAX_CHAINS], index half * BPFIPT_MAX_CHAINS + chain. */
struct bpfipt_chain {
	__u32 fields;	/* bit per enum bpfipt_field that has lists in this chain */
	__u32 tail_slot;	/* counters slot of the policy / user chain's RETURN */
	__u8 policy;	/* BPFIPT_T_ACCEPT or _DROP (built-in), BPFIPT_T_RETURN (user) */
	__u8 skip;	/* empty built-in chain with policy ACCEPT */
	__u16 needs;	/* built-in chains: BPFIPT_CHAIN_NEEDS_* of the table */
	/* Built-in chains whose first rule is an unconditional `-m conntrack --ctstate S -j
	 * ACCEPT` (or -m state): S (BPFIPT_CTS_* bits), else 0. A packet in S is that rule's
	 * without classification, counted on ct_accept_slot (the paper's shortcut). */
	__u16 ct_accept;
	/* 1: the chain's rules are the ndirect slots of direct_slot, in rule order, evaluated
	 * one by one without the index (few rules, none leaving the chain). */
	__u8 direct;
	__u8 ndirect;
	__u32 ct_accept_slot;
	__u32 direct_slot[BPFIPT_DIRECT_MAX];
};

/* The table has rules on interface names: look the devices' names up. */
#define BPFIPT_CHAIN_NEEDS_IFNAMES 0x0001
/* The table has --tcp-option rules: read a TCP packet's options. */
#define BPFIPT_CHAIN_NEEDS_TCPOPTS 0x0002

/* lists: HASH, a chunk of the candidate list of one class of one field of one chain. */
struct bpfipt_list_key {
	__u8 half;
	__u8 field;
	__u16 chain;
	__u32 cls;	/* address, port interval start, protocol, interface name hash, 0 */
	__u32 plen;	/* address classes: prefix length; else 0 */
	__u32 chunk;
};

struct bpfipt_cand {
	__u32 prio;
	__u32 slot;
};

struct bpfipt_list {
	__u16 n;	/* entries used in this chunk */
	__u16 more;	/* chunk + 1 exists */
	__u32 pad;
	struct bpfipt_cand e[BPFIPT_CHUNK];
};

/* addrs: LPM trie per chain and address field. data: half, field, chain (big endian),
 * address; prefixlen = 32 + prefix length. */
struct bpfipt_addr_key {
	__u32 prefixlen;
	__u8 half;
	__u8 field;
	__u8 chain_hi;
	__u8 chain_lo;
	__u8 addr[4];
};

/* The class hit and its enclosing classes of the same chain, longest first. */
struct bpfipt_addr_val {
	__u8 n;
	__u8 plen[BPFIPT_MAX_ANCESTORS];
	__u8 pad;
};

/* ports: ARRAY [2 halves][2 fields (sport, dport)][65536] -> start of the elementary
 * interval holding the port. */

/* ifnames: HASH ifindex -> name (not halved, kept by the daemon). */
struct bpfipt_ifname {
	char name[16];
	__u32 hash;
};

/* local4: LPM trie of local and broadcast addresses (not halved). data: address. */
struct bpfipt_local_key {
	__u32 prefixlen;
	__u8 addr[4];
};

/* Kinds of local4 entries (the route type that put them there). */
#define BPFIPT_LOCAL_UNICAST 1
#define BPFIPT_LOCAL_BROADCAST 2

struct bpfipt_local_val {
	__u32 kind;
};

/* local4f, entry 0: which /32 addresses local4x may hold. Bit h of an address is set when one
 * of them hashes there, h = (host-order address * BPFIPT_LOCAL_HASH_MUL) >> (32 - BITS)
 * (verdict.h local_kind, layout.rs local_hash); a clear bit spares a packet the hash lookup
 * (nearly every forwarded packet: a host has a few local addresses). */
#define BPFIPT_LOCAL_FILTER_BITS 12
#define BPFIPT_LOCAL_HASH_MUL 0x9E3779B1u
struct bpfipt_local_filter {
	__u64 bits[(1 << BPFIPT_LOCAL_FILTER_BITS) / 64];
};

/* One match of a rule. Ports and addresses in host order. */
struct bpfipt_match {
	__u8 kind;
	__u8 inv;	/* BPFIPT_INV_* bits */
	__u8 flags;	/* multiport: 1 src, 2 dst, 3 either; ttl: mode */
	__u8 count;	/* multiport: entries in ports */
	union {
		struct {
			__u16 spts[2];
			__u16 dpts[2];
			__u8 flg_mask;
			__u8 flg_cmp;
			__u8 option;	/* --tcp-option kind, 0: none */
		} tcp;	/* also udp (flags and option unused) */
		struct {
			__u8 type;
			__u8 code[2];
		} icmp;
		struct {
			__u16 ports[15];
			__u8 pflags[15];	/* 1: ports[i]..ports[i+1] is a range */
		} multiport;
		struct {
			__u32 src[2];
			__u32 dst[2];
		} iprange;
		struct {
			__u32 mark;
			__u32 mask;
		} mark;
		struct {
			__u16 min;
			__u16 max;
		} length;
		struct {
			__u8 value;
		} ttl;
		__u8 raw[48];
	} u;
};

#define BPFIPT_INV_SPT 0x01	/* tcp/udp --sport, iprange --src-range */
#define BPFIPT_INV_DPT 0x02	/* tcp/udp --dport, iprange --dst-range */
#define BPFIPT_INV_FLAGS 0x04	/* tcp --tcp-flags */
#define BPFIPT_INV_ANY 0x08	/* icmp, multiport, mark, length */
#define BPFIPT_INV_OPTION 0x40	/* tcp --tcp-option */
#define BPFIPT_IPRANGE_SRC 0x10
#define BPFIPT_IPRANGE_DST 0x20

/* ttl modes as enum ipt_ttl (xt_ttl.h) */
#define BPFIPT_TTL_EQ 0
#define BPFIPT_TTL_NE 1
#define BPFIPT_TTL_LT 2
#define BPFIPT_TTL_GT 3

/* rules: ARRAY by slot, not halved (a slot never changes while referenced). */
struct bpfipt_rule {
	__u32 src;	/* network order, as ipt_ip */
	__u32 smsk;
	__u32 dst;
	__u32 dmsk;
	__u16 proto;
	__u8 ipflags;	/* IPT_F_FRAG */
	__u8 invflags;	/* IPT_INV_* */
	__u8 need;	/* BPFIPT_NEED_*: which ip checks can fail */
	__u8 nmatch;
	__u8 target;	/* enum bpfipt_target */
	__u8 reject;	/* enum bpfipt_reject */
	__u32 chain;	/* jump/goto target chain */
	__u32 pad;
	struct bpfipt_match m[BPFIPT_MAX_MATCHES];
	/* Last: read only for rules with -i / -o (need), so that what every rule's match reads
	 * (the addresses, the flags, the first match) shares the record's first cache line. */
	char iif[16];
	__u8 iifmask[16];
	char oif[16];
	__u8 oifmask[16];
};

#define BPFIPT_NEED_ADDR 0x01
#define BPFIPT_NEED_IIF 0x02
#define BPFIPT_NEED_OIF 0x04
#define BPFIPT_NEED_PROTO 0x08
#define BPFIPT_NEED_FRAG 0x10

/* counters: ARRAY of one stripe of slots per possible CPU (index cpu * stride + slot). */
struct bpfipt_counter {
	__u64 packets;
	__u64 bytes;
};

#endif
