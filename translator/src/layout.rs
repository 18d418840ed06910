//! `#[repr(C)]` mirrors of the map keys and values of `include/bpfipt.h`, shared by
//! `compile` (which fills them) and `dataplane` (which writes them). A test compares every
//! size and field offset with the BTF of the compiled object (Cilium's alignchecker).

include!(concat!(env!("OUT_DIR"), "/reasons.rs"));

pub const CHAIN_INPUT: u32 = 0;
pub const CHAIN_FORWARD: u32 = 1;
pub const CHAIN_OUTPUT: u32 = 2;
pub const MAX_CHAINS: u32 = 4096;
pub const MAX_STACK: usize = 16;
pub const MAX_MATCHES: usize = 6;
pub const CHUNK: usize = 15;
/// `BPFIPT_DIRECT_MAX`: rules of a built-in chain evaluated from its record (no index).
pub const DIRECT_MAX: usize = 8;
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
    pub const OPTION: u8 = 0x40;
}

/// `BPFIPT_NEED_*`
pub mod need {
    pub const ADDR: u8 = 0x01;
    pub const IIF: u8 = 0x02;
    pub const OIF: u8 = 0x04;
    pub const PROTO: u8 = 0x08;
    pub const FRAG: u8 = 0x10;
}

/// `BPFIPT_XDP_DEV_FAST` (include/bpfipt_xdp.h)
pub const XDP_DEV_FAST: u16 = 0x0001;
/// `BPFIPT_XDP_DEV_NATIVE`
pub const XDP_DEV_NATIVE: u16 = 0x0002;
/// `BPFIPT_XDP_DEV_NDO_XMIT`
pub const XDP_DEV_NDO_XMIT: u16 = 0x0004;
/// `BPFIPT_XDP_DEV_VERIFY_CSUM`
pub const XDP_DEV_VERIFY_CSUM: u16 = 0x0008;

/// `struct bpfipt_xdp_dev` (include/bpfipt_xdp.h)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct XdpDev {
    pub mac: [u8; 6],
    pub flags: u16,
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
    pub input_by_nf: u32,
    pub ct_on: u32,
}

/// `struct bpfipt_chain`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ChainRec {
    pub fields: u32,
    pub tail_slot: u32,
    pub policy: u8,
    pub skip: u8,
    /// Built-in chains: `CHAIN_NEEDS_*` of the table.
    pub needs: u16,
    /// State bits of an unconditional first rule `--ctstate S -j ACCEPT` (0: none), whose
    /// packets skip classification (`conntrack::accept_shortcut`).
    pub ct_accept: u16,
    /// 1: the chain's `ndirect` rules are `direct_slot`, in rule order, evaluated one by one
    /// without the index (a short built-in chain whose rules never leave it).
    pub direct: u8,
    pub ndirect: u8,
    /// The counters slot of that rule.
    pub ct_accept_slot: u32,
    pub direct_slot: [u32; DIRECT_MAX],
}

/// `BPFIPT_CHAIN_NEEDS_IFNAMES`
pub const CHAIN_NEEDS_IFNAMES: u16 = 0x0001;
/// `BPFIPT_CHAIN_NEEDS_TCPOPTS`
pub const CHAIN_NEEDS_TCPOPTS: u16 = 0x0002;

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

/// `BPFIPT_LOCAL_FILTER_BITS`
pub const LOCAL_FILTER_BITS: u32 = 12;
/// `BPFIPT_LOCAL_HASH_MUL`
pub const LOCAL_HASH_MUL: u32 = 0x9E37_79B1;

/// `struct bpfipt_local_filter`: local4f's one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct LocalFilter {
    pub bits: [u64; (1 << LOCAL_FILTER_BITS) / 64],
}

impl LocalFilter {
    /// The filter of these /32 addresses.
    pub fn of<'a>(addrs: impl IntoIterator<Item = &'a [u8; 4]>) -> Self {
        let mut f = LocalFilter {
            bits: [0; (1 << LOCAL_FILTER_BITS) / 64],
        };
        for a in addrs {
            let h = local_hash(*a) as usize;
            f.bits[h / 64] |= 1 << (h % 64);
        }
        f
    }
}

/// The bit of `addr` (network order bytes) in a LocalFilter, as verdict.h local_kind.
pub fn local_hash(addr: [u8; 4]) -> u32 {
    u32::from_be_bytes(addr).wrapping_mul(LOCAL_HASH_MUL) >> (32 - LOCAL_FILTER_BITS)
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
    pub fn u8_at(&self, off: usize) -> u8 {
        self.u[off / 4].to_ne_bytes()[off % 4]
    }
}

/// `struct bpfipt_rule`
#[derive(Clone, Copy, Debug, Default, Eq)]
#[repr(C)]
pub struct RuleRec {
    pub src: u32,
    pub smsk: u32,
    pub dst: u32,
    pub dmsk: u32,
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
    pub iif: [u8; 16],
    pub iifmask: [u8; 16],
    pub oif: [u8; 16],
    pub oifmask: [u8; 16],
}

// A record is compared and hashed as the bytes the datapath reads (no implicit padding).
impl PartialEq for RuleRec {
    fn eq(&self, o: &Self) -> bool {
        self.as_bytes() == o.as_bytes()
    }
}

impl std::hash::Hash for RuleRec {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(self.as_bytes());
    }
}

/// A fast non-cryptographic hasher for compile's maps (keys are ours, not an attacker's).
#[derive(Clone, Copy, Default)]
pub struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut c = bytes.chunks_exact(8);
        for w in &mut c {
            self.add(u64::from_ne_bytes(w.try_into().unwrap()));
        }
        for b in c.remainder() {
            self.add(*b as u64);
        }
    }
    fn write_u8(&mut self, v: u8) {
        self.add(v as u64)
    }
    fn write_u16(&mut self, v: u16) {
        self.add(v as u64)
    }
    fn write_u32(&mut self, v: u32) {
        self.add(v as u64)
    }
    fn write_u64(&mut self, v: u64) {
        self.add(v)
    }
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64)
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

pub type FxBuild = std::hash::BuildHasherDefault<FxHasher>;
pub type FxMap<K, V> = std::collections::HashMap<K, V, FxBuild>;
pub type FxSet<K> = std::collections::HashSet<K, FxBuild>;

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
unsafe impl Pod for LocalFilter {}
unsafe impl Pod for RuleRec {}
unsafe impl Pod for Counter {}
unsafe impl Pod for XdpDev {}
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

/// Cilium's alignchecker: the sizes and member offsets of the C structs, read from the BTF
/// of the compiled object, must equal the Rust mirrors'.
#[cfg(test)]
pub(crate) mod alignchecker {
    use super::*;
    use std::collections::HashMap;
    use std::mem::{offset_of, size_of};

    /// struct name -> (size, member name -> byte offset), from the object's `.BTF`.
    pub(crate) fn btf_structs() -> HashMap<String, (u32, HashMap<String, u32>)> {
        use object::{Object, ObjectSection};
        let obj = object::File::parse(crate::dataplane::OBJECT).unwrap();
        let btf = obj.section_by_name(".BTF").unwrap().data().unwrap();
        crate::btf::structs(btf, |_| true)
            .unwrap()
            .into_iter()
            .map(|(n, s)| (n, (s.size, s.members)))
            .collect()
    }

    macro_rules! check {
        ($btf:expr, $c:literal, $t:ty, [$($f:ident),*]) => {{
            let (size, members) = $btf.get($c).unwrap_or_else(|| panic!("{} not in BTF", $c));
            assert_eq!(*size as usize, size_of::<$t>(), "size of {}", $c);
            $(
                assert_eq!(
                    members.get(stringify!($f)).copied().unwrap_or_else(|| panic!("{}.{} not in BTF", $c, stringify!($f))) as usize,
                    offset_of!($t, $f),
                    "offset of {}.{}", $c, stringify!($f)
                );
            )*
            assert_eq!(members.len(), [$(stringify!($f)),*].len(), "members of {}", $c);
        }};
    }

    #[test]
    fn c_and_rust_layouts_agree() {
        let b = btf_structs();
        check!(
            b,
            "bpfipt_config",
            Config,
            [gen, fallback, default_ttl, lo_ifindex, input_by_nf, ct_on]
        );
        check!(
            b,
            "bpfipt_chain",
            ChainRec,
            [
                fields,
                tail_slot,
                policy,
                skip,
                needs,
                ct_accept,
                direct,
                ndirect,
                ct_accept_slot,
                direct_slot
            ]
        );
        check!(
            b,
            "bpfipt_list_key",
            ListKey,
            [half, field, chain, cls, plen, chunk]
        );
        check!(b, "bpfipt_cand", Cand, [prio, slot]);
        check!(b, "bpfipt_list", ListVal, [n, more, pad, e]);
        check!(
            b,
            "bpfipt_addr_key",
            AddrKey,
            [prefixlen, half, field, chain_hi, chain_lo, addr]
        );
        check!(b, "bpfipt_addr_val", AddrVal, [n, plen, pad]);
        check!(b, "bpfipt_ifname", Ifname, [name, hash]);
        check!(b, "bpfipt_local_key", LocalKey, [prefixlen, addr]);
        check!(b, "bpfipt_local_val", LocalVal, [kind]);
        check!(b, "bpfipt_local_filter", LocalFilter, [bits]);
        check!(b, "bpfipt_match", MatchRec, [kind, inv, flags, count, u]);
        check!(
            b,
            "bpfipt_rule",
            RuleRec,
            [
                src, smsk, dst, dmsk, proto, ipflags, invflags, need, nmatch, target, reject,
                chain, pad, m, iif, iifmask, oif, oifmask
            ]
        );
        check!(b, "bpfipt_counter", Counter, [packets, bytes]);
        check!(b, "bpfipt_xdp_dev", XdpDev, [mac, flags]);
    }
}
