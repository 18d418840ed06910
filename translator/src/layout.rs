//! `#[repr(C)]` mirrors of the map keys and values of `include/bpfipt.h`, shared by
//! `compile` (which fills them) and `dataplane` (which writes them). A test compares every
//! size and field offset with the BTF of the compiled object (Cilium's alignchecker).

include!(concat!(env!("OUT_DIR"), "/reasons.rs"));

pub const CHAIN_INPUT: u32 = 0;
pub const CHAIN_FORWARD: u32 = 1;
pub const CHAIN_OUTPUT: u32 = 2;
pub const MAX_CHAINS: u32 = 4096;
pub const MAX_STACK: usize = 16;
pub const MAX_MATCHES: usize = 4;
pub const CHUNK: usize = 15;
pub const MAX_ANCESTORS: usize = 6;
pub const TC_INDEX_REPLY: u32 = 0xb1f7;
pub const CLASS_TRUNC: u32 = 0xffff_ffff;

/// `enum bpfipt_field`: what a rule is indexed under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Field {
    Src = 0,
    Dst = 1,
    Sport = 2,
    Dport = 3,
    Proto = 4,
    Iif = 5,
    Oif = 6,
    Float = 7,
}

/// `enum bpfipt_target`
pub mod target {
    pub const NONE: u8 = 0;
    pub const ACCEPT: u8 = 1;
    pub const DROP: u8 = 2;
    pub const RETURN: u8 = 3;
    pub const JUMP: u8 = 4;
    pub const GOTO: u8 = 5;
    pub const REJECT: u8 = 6;
}

/// `enum bpfipt_match_kind`
pub mod kind {
    pub const TCP: u8 = 1;
    pub const UDP: u8 = 2;
    pub const ICMP: u8 = 3;
    pub const MULTIPORT: u8 = 4;
    pub const IPRANGE: u8 = 5;
    pub const MARK: u8 = 6;
    pub const LENGTH: u8 = 7;
    pub const TTL: u8 = 8;
}

/// `BPFIPT_INV_*`, `BPFIPT_IPRANGE_*`
pub mod inv {
    pub const SPT: u8 = 0x01;
    pub const DPT: u8 = 0x02;
    pub const FLAGS: u8 = 0x04;
    pub const ANY: u8 = 0x08;
    pub const IPRANGE_SRC: u8 = 0x10;
    pub const IPRANGE_DST: u8 = 0x20;
}

/// `BPFIPT_NEED_*`
pub mod need {
    pub const ADDR: u8 = 0x01;
    pub const IIF: u8 = 0x02;
    pub const OIF: u8 = 0x04;
    pub const PROTO: u8 = 0x08;
    pub const FRAG: u8 = 0x10;
}

pub const LOCAL_UNICAST: u32 = 1;
pub const LOCAL_BROADCAST: u32 = 2;

/// `struct bpfipt_config`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Config {
    pub gen: u32,
    pub fallback: u32,
    pub default_ttl: u32,
    pub lo_ifindex: u32,
}

/// `struct bpfipt_chain`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ChainRec {
    pub fields: u32,
    pub tail_slot: u32,
    pub policy: u8,
    pub skip: u8,
    pub pad: u16,
}

/// `struct bpfipt_list_key`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(C)]
pub struct ListKey {
    pub half: u8,
    pub field: u8,
    pub chain: u16,
    pub cls: u32,
    pub plen: u32,
    pub chunk: u32,
}

/// `struct bpfipt_cand`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[repr(C)]
pub struct Cand {
    pub prio: u32,
    pub slot: u32,
}

/// `struct bpfipt_list`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ListVal {
    pub n: u16,
    pub more: u16,
    pub pad: u32,
    pub e: [Cand; CHUNK],
}

/// `struct bpfipt_addr_key`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(C)]
pub struct AddrKey {
    pub prefixlen: u32,
    pub half: u8,
    pub field: u8,
    pub chain_hi: u8,
    pub chain_lo: u8,
    pub addr: [u8; 4],
}

/// `struct bpfipt_addr_val`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct AddrVal {
    pub n: u8,
    pub plen: [u8; MAX_ANCESTORS],
    pub pad: u8,
}

/// `struct bpfipt_ifname`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Ifname {
    pub name: [u8; 16],
    pub hash: u32,
}

/// `struct bpfipt_local_key`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct LocalKey {
    pub prefixlen: u32,
    pub addr: [u8; 4],
}

/// `struct bpfipt_local_val`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct LocalVal {
    pub kind: u32,
}

/// `struct bpfipt_match`: kind, inv, flags, count, then a 48-byte union (host order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct MatchRec {
    pub kind: u8,
    pub inv: u8,
    pub flags: u8,
    pub count: u8,
    pub u: [u32; 12],
}

impl MatchRec {
    /// The union as bytes, to fill it field by field at the C offsets.
    pub fn bytes_mut(&mut self) -> &mut [u8; 48] {
        // SAFETY: [u32; 12] and [u8; 48] have the same size; u8 has no alignment need.
        unsafe { &mut *(self.u.as_mut_ptr() as *mut [u8; 48]) }
    }
    pub fn put_u16(&mut self, off: usize, v: u16) {
        self.bytes_mut()[off..off + 2].copy_from_slice(&v.to_ne_bytes());
    }
    pub fn put_u32(&mut self, off: usize, v: u32) {
        self.bytes_mut()[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    pub fn put_u8(&mut self, off: usize, v: u8) {
        self.bytes_mut()[off] = v;
    }
}

/// `struct bpfipt_rule`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct RuleRec {
    pub src: u32,
    pub smsk: u32,
    pub dst: u32,
    pub dmsk: u32,
    pub iif: [u8; 16],
    pub iifmask: [u8; 16],
    pub oif: [u8; 16],
    pub oifmask: [u8; 16],
    pub proto: u16,
    pub ipflags: u8,
    pub invflags: u8,
    pub need: u8,
    pub nmatch: u8,
    pub target: u8,
    pub reject: u8,
    pub chain: u32,
    pub pad: u32,
    pub m: [MatchRec; MAX_MATCHES],
}

/// `struct bpfipt_counter`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// A plain-old-data value: its bytes are what the C side reads.
///
/// # Safety
/// Implementors are `#[repr(C)]` without padding holes that could leak uninitialised bytes.
pub unsafe trait Pod: Copy + 'static {
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: Pod types are repr(C) plain data.
        unsafe {
            std::slice::from_raw_parts(
                self as *const Self as *const u8,
                std::mem::size_of::<Self>(),
            )
        }
    }
    fn from_bytes(b: &[u8]) -> Self {
        assert_eq!(b.len(), std::mem::size_of::<Self>());
        // SAFETY: length checked; every bit pattern is valid for these types.
        unsafe { std::ptr::read_unaligned(b.as_ptr() as *const Self) }
    }
}

// SAFETY: all repr(C), all fields integers, explicit padding fields.
unsafe impl Pod for Config {}
unsafe impl Pod for ChainRec {}
unsafe impl Pod for ListKey {}
unsafe impl Pod for ListVal {}
unsafe impl Pod for AddrKey {}
unsafe impl Pod for AddrVal {}
unsafe impl Pod for Ifname {}
unsafe impl Pod for LocalKey {}
unsafe impl Pod for LocalVal {}
unsafe impl Pod for RuleRec {}
unsafe impl Pod for Counter {}
unsafe impl Pod for u32 {}
unsafe impl Pod for u64 {}

/// 32-bit FNV-1a of an interface name padded to 16 bytes: the IIF/OIF class and the
/// `ifnames` hash (computed only here, so both sides agree).
pub fn ifname_hash(name: &[u8; 16]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}
