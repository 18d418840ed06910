//! Zero-copy views of the kernel's ip_tables/ip6_tables structures and their emit.
//!
//! Mirrors `include/uapi/linux/netfilter_ipv4/ip_tables.h`, `netfilter_ipv6/ip6_tables.h` and
//! `netfilter/x_tables.h`. All integers are in host byte order except addresses, which the
//! structures keep in network order. Every accessor bounds-checks: a view over a short or
//! corrupt buffer returns `None`/an error, never panics.

use std::fmt;

pub use bpfipt_proto::kabi::{
    COUNTERS_INFO_HDR, COUNTERS_SIZE, EXTENSION_MAXNAMELEN, GETINFO_SIZE, GET_ENTRIES_HDR,
    REPLACE_HDR, TABLE_MAXNAMELEN, XT_HDR,
};

/// `NF_INET_NUMHOOKS`.
pub const NUMHOOKS: usize = 5;

/// Standard target verdicts as stored in `xt_standard_target.verdict`: `-NF_x - 1`.
pub const VERDICT_DROP: i32 = -1;
pub const VERDICT_ACCEPT: i32 = -2;
pub const VERDICT_QUEUE: i32 = -4;
/// `XT_RETURN` (`-NF_REPEAT - 1`).
pub const VERDICT_RETURN: i32 = -5;
/// `NF_MAX_VERDICT` (`NF_STOP`).
pub const NF_MAX_VERDICT: i32 = 5;

/// `XT_STANDARD_TARGET` and `XT_ERROR_TARGET`.
pub const STANDARD_TARGET: &str = "";
pub const ERROR_TARGET: &str = "ERROR";
/// `sizeof(struct xt_standard_target)` and `sizeof(struct xt_error_target)`.
pub const STANDARD_TARGET_SIZE: usize = 40;
pub const ERROR_TARGET_SIZE: usize = 64;
/// `XT_FUNCTION_MAXNAMELEN`: the chain name carried by an ERROR target.
pub const FUNCTION_MAXNAMELEN: usize = 30;

/// `XT_ALIGN`: structures in a blob are aligned to 8 bytes on 64-bit machines.
pub const fn xt_align(n: usize) -> usize {
    (n + 7) & !7
}

/// Address family of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn from_af(af: i32) -> Option<Family> {
        match af {
            libc::AF_INET => Some(Family::V4),
            libc::AF_INET6 => Some(Family::V6),
            _ => None,
        }
    }

    pub fn af(self) -> i32 {
        match self {
            Family::V4 => libc::AF_INET,
            Family::V6 => libc::AF_INET6,
        }
    }

    /// `sizeof(struct ipt_entry)` / `sizeof(struct ip6t_entry)`.
    pub fn entry_size(self) -> usize {
        bpfipt_proto::kabi::entry_size(self.af())
    }

    /// Offsets of `target_offset`, `next_offset`, `comefrom`, `counters` in the entry.
    pub(crate) fn offsets(self) -> (usize, usize, usize, usize) {
        match self {
            Family::V4 => (88, 90, 92, 96),
            Family::V6 => (140, 142, 144, 152),
        }
    }

    /// `IPT_F_MASK`/`IP6T_F_MASK` and `IPT_INV_MASK`/`IP6T_INV_MASK`.
    pub fn flag_masks(self) -> (u8, u8) {
        match self {
            Family::V4 => (0x03, 0x7f),
            Family::V6 => (0x07, 0x7f),
        }
    }

    /// The name iptables uses for the family's tools.
    pub fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }
}

/// Netfilter hooks, in the kernel's numbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Hook {
    PreRouting = 0,
    LocalIn = 1,
    Forward = 2,
    LocalOut = 3,
    PostRouting = 4,
}

impl Hook {
    pub const ALL: [Hook; NUMHOOKS] = [
        Hook::PreRouting,
        Hook::LocalIn,
        Hook::Forward,
        Hook::LocalOut,
        Hook::PostRouting,
    ];

    pub fn from_index(i: usize) -> Option<Hook> {
        Hook::ALL.get(i).copied()
    }

    /// The built-in chain name iptables shows for the hook.
    pub fn chain_name(self) -> &'static str {
        match self {
            Hook::PreRouting => "PREROUTING",
            Hook::LocalIn => "INPUT",
            Hook::Forward => "FORWARD",
            Hook::LocalOut => "OUTPUT",
            Hook::PostRouting => "POSTROUTING",
        }
    }

    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

fn rd_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn rd_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn rd_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(off..off + 8)?.try_into().ok()?))
}
fn wr_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_ne_bytes());
}
fn wr_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}
fn wr_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// A C string inside a fixed-size field: the bytes up to the first NUL (or the whole field).
pub fn c_str(field: &[u8]) -> &[u8] {
    let n = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    &field[..n]
}

/// Writes `s` into a fixed-size field, NUL-padded (truncated to leave a NUL).
pub fn put_c_str(field: &mut [u8], s: &[u8]) {
    field.fill(0);
    let n = s.len().min(field.len().saturating_sub(1));
    field[..n].copy_from_slice(&s[..n]);
}

/// `struct ipt_replace` / `struct ip6t_replace` without the entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplaceHdr {
    /// Table name; the kernel forces a NUL at the last byte.
    pub name: Vec<u8>,
    pub valid_hooks: u32,
    pub num_entries: u32,
    pub size: u32,
    pub hook_entry: [u32; NUMHOOKS],
    pub underflow: [u32; NUMHOOKS],
    pub num_counters: u32,
    /// User-space pointer where the kernel writes the old counters.
    pub counters_ptr: u64,
}

impl ReplaceHdr {
    pub fn parse(b: &[u8]) -> Option<ReplaceHdr> {
        if b.len() < REPLACE_HDR {
            return None;
        }
        let mut name = b[..TABLE_MAXNAMELEN].to_vec();
        name[TABLE_MAXNAMELEN - 1] = 0;
        let name = c_str(&name).to_vec();
        let mut hook_entry = [0; NUMHOOKS];
        let mut underflow = [0; NUMHOOKS];
        for i in 0..NUMHOOKS {
            hook_entry[i] = rd_u32(b, 44 + 4 * i)?;
            underflow[i] = rd_u32(b, 64 + 4 * i)?;
        }
        Some(ReplaceHdr {
            name,
            valid_hooks: rd_u32(b, 32)?,
            num_entries: rd_u32(b, 36)?,
            size: rd_u32(b, 40)?,
            hook_entry,
            underflow,
            num_counters: rd_u32(b, 84)?,
            counters_ptr: rd_u64(b, 88)?,
        })
    }

    pub fn emit(&self) -> Vec<u8> {
        let mut b = vec![0u8; REPLACE_HDR];
        put_c_str(&mut b[..TABLE_MAXNAMELEN], &self.name);
        wr_u32(&mut b, 32, self.valid_hooks);
        wr_u32(&mut b, 36, self.num_entries);
        wr_u32(&mut b, 40, self.size);
        for i in 0..NUMHOOKS {
            wr_u32(&mut b, 44 + 4 * i, self.hook_entry[i]);
            wr_u32(&mut b, 64 + 4 * i, self.underflow[i]);
        }
        wr_u32(&mut b, 84, self.num_counters);
        wr_u64(&mut b, 88, self.counters_ptr);
        b
    }

    pub fn name_str(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// `struct ipt_getinfo` / `struct ip6t_getinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetInfo {
    pub name: Vec<u8>,
    pub valid_hooks: u32,
    pub hook_entry: [u32; NUMHOOKS],
    pub underflow: [u32; NUMHOOKS],
    pub num_entries: u32,
    pub size: u32,
}

impl GetInfo {
    pub fn emit(&self) -> Vec<u8> {
        let mut b = vec![0u8; GETINFO_SIZE];
        put_c_str(&mut b[..TABLE_MAXNAMELEN], &self.name);
        wr_u32(&mut b, 32, self.valid_hooks);
        for i in 0..NUMHOOKS {
            wr_u32(&mut b, 36 + 4 * i, self.hook_entry[i]);
            wr_u32(&mut b, 56 + 4 * i, self.underflow[i]);
        }
        wr_u32(&mut b, 76, self.num_entries);
        wr_u32(&mut b, 80, self.size);
        b
    }

    pub fn parse(b: &[u8]) -> Option<GetInfo> {
        if b.len() < GETINFO_SIZE {
            return None;
        }
        let mut hook_entry = [0; NUMHOOKS];
        let mut underflow = [0; NUMHOOKS];
        for i in 0..NUMHOOKS {
            hook_entry[i] = rd_u32(b, 36 + 4 * i)?;
            underflow[i] = rd_u32(b, 56 + 4 * i)?;
        }
        Some(GetInfo {
            name: c_str(&b[..TABLE_MAXNAMELEN]).to_vec(),
            valid_hooks: rd_u32(b, 32)?,
            hook_entry,
            underflow,
            num_entries: rd_u32(b, 76)?,
            size: rd_u32(b, 80)?,
        })
    }
}

/// `struct xt_counters`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub pcnt: u64,
    pub bcnt: u64,
}

impl Counters {
    pub fn add(&mut self, o: Counters) {
        self.pcnt = self.pcnt.wrapping_add(o.pcnt);
        self.bcnt = self.bcnt.wrapping_add(o.bcnt);
    }
}

/// Parses an array of `struct xt_counters`.
pub fn parse_counters(b: &[u8]) -> Vec<Counters> {
    b.chunks_exact(COUNTERS_SIZE)
        .map(|c| Counters {
            pcnt: rd_u64(c, 0).unwrap_or(0),
            bcnt: rd_u64(c, 8).unwrap_or(0),
        })
        .collect()
}

/// Emits an array of `struct xt_counters`.
pub fn emit_counters(c: &[Counters]) -> Vec<u8> {
    let mut b = Vec::with_capacity(c.len() * COUNTERS_SIZE);
    for x in c {
        b.extend_from_slice(&x.pcnt.to_ne_bytes());
        b.extend_from_slice(&x.bcnt.to_ne_bytes());
    }
    b
}

/// `struct xt_counters_info` header (name and count) of SET_ADD_COUNTERS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountersInfo {
    pub name: Vec<u8>,
    pub num_counters: u32,
}

impl CountersInfo {
    pub fn parse(b: &[u8]) -> Option<CountersInfo> {
        if b.len() < COUNTERS_INFO_HDR {
            return None;
        }
        let mut name = b[..TABLE_MAXNAMELEN].to_vec();
        name[TABLE_MAXNAMELEN - 1] = 0;
        Some(CountersInfo {
            name: c_str(&name).to_vec(),
            num_counters: rd_u32(b, 32)?,
        })
    }
}

/// A match or target header with its payload (`struct xt_entry_match`/`xt_entry_target`).
#[derive(Clone, Copy)]
pub struct XtObj<'a> {
    /// The whole object: header and data, `size()` bytes.
    pub bytes: &'a [u8],
}

impl<'a> XtObj<'a> {
    pub fn size(&self) -> usize {
        rd_u16(self.bytes, 0).unwrap_or(0) as usize
    }
    /// The name field up to its NUL.
    pub fn name(&self) -> &'a [u8] {
        c_str(&self.bytes[2..2 + EXTENSION_MAXNAMELEN])
    }
    pub fn name_str(&self) -> String {
        String::from_utf8_lossy(self.name()).into_owned()
    }
    pub fn revision(&self) -> u8 {
        self.bytes[XT_HDR - 1]
    }
    /// The payload after the 32-byte header.
    pub fn data(&self) -> &'a [u8] {
        &self.bytes[XT_HDR..]
    }
    /// The verdict of a standard target (`xt_standard_target.verdict`).
    pub fn verdict(&self) -> Option<i32> {
        rd_u32(self.bytes, XT_HDR).map(|v| v as i32)
    }
}

impl fmt::Debug for XtObj<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}(rev {}, {} bytes)",
            self.name_str(),
            self.revision(),
            self.size()
        )
    }
}

/// One entry of a blob (`struct ipt_entry`/`ip6t_entry` with its matches and target). Built
/// only by [`entries`], which checks that the entry, its matches and its target lie inside the
/// blob; the checks the kernel makes on them are in `check`.
#[derive(Clone, Copy)]
pub struct Entry<'a> {
    pub family: Family,
    /// Offset of the entry in the blob.
    pub offset: usize,
    /// The entry's `next_offset` bytes.
    pub bytes: &'a [u8],
}

impl<'a> Entry<'a> {
    pub fn target_offset(&self) -> usize {
        rd_u16(self.bytes, self.family.offsets().0).unwrap_or(0) as usize
    }
    pub fn next_offset(&self) -> usize {
        rd_u16(self.bytes, self.family.offsets().1).unwrap_or(0) as usize
    }
    pub fn comefrom(&self) -> u32 {
        rd_u32(self.bytes, self.family.offsets().2).unwrap_or(0)
    }
    /// The `ipt_ip`/`ip6t_ip6` header: everything before `nfcache`.
    pub fn ip(&self) -> &'a [u8] {
        let n = match self.family {
            Family::V4 => 84,
            Family::V6 => 136,
        };
        &self.bytes[..n]
    }
    /// `ip.proto`.
    pub fn proto(&self) -> u16 {
        let off = match self.family {
            Family::V4 => 80,
            Family::V6 => 128,
        };
        rd_u16(self.bytes, off).unwrap_or(0)
    }
    /// `ip.flags`.
    pub fn ip_flags(&self) -> u8 {
        match self.family {
            Family::V4 => self.bytes[82],
            Family::V6 => self.bytes[131],
        }
    }
    /// `ip.invflags`.
    pub fn ip_invflags(&self) -> u8 {
        match self.family {
            Family::V4 => self.bytes[83],
            Family::V6 => self.bytes[132],
        }
    }
    /// The kernel's `unconditional()`: no matches and an all-zero ip header. An entry with
    /// matches is conditional even when they always match.
    pub fn unconditional(&self) -> bool {
        self.target_offset() == self.family.entry_size() && self.ip().iter().all(|&b| b == 0)
    }
    /// The matches, in order. Stops at the first malformed one.
    pub fn matches(&self) -> impl Iterator<Item = XtObj<'a>> + 'a {
        let bytes = self.bytes;
        let end = self.target_offset().min(bytes.len());
        let mut off = self.family.entry_size();
        std::iter::from_fn(move || {
            if off + XT_HDR > end {
                return None;
            }
            let sz = rd_u16(bytes, off)? as usize;
            if sz < XT_HDR || off + sz > end {
                return None;
            }
            let o = XtObj {
                bytes: &bytes[off..off + sz],
            };
            off += sz;
            Some(o)
        })
    }
    /// The target, if its header and declared size fit inside the entry.
    pub fn target(&self) -> Option<XtObj<'a>> {
        let t = self.target_offset();
        let sz = rd_u16(self.bytes, t)? as usize;
        if sz < XT_HDR || t + sz > self.bytes.len() {
            return None;
        }
        Some(XtObj {
            bytes: &self.bytes[t..t + sz],
        })
    }
    /// The verdict if the target is the standard target.
    pub fn standard_verdict(&self) -> Option<i32> {
        let t = self.target()?;
        if t.name() == STANDARD_TARGET.as_bytes() {
            t.verdict()
        } else {
            None
        }
    }
    /// The chain name if this is a chain head (an ERROR target carrying a name).
    pub fn error_name(&self) -> Option<&'a [u8]> {
        let t = self.target()?;
        if t.name() == ERROR_TARGET.as_bytes() && !t.data().is_empty() {
            Some(c_str(&t.data()[..t.data().len().min(FUNCTION_MAXNAMELEN)]))
        } else {
            None
        }
    }
}

impl fmt::Debug for Entry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("offset", &self.offset)
            .field("next", &self.next_offset())
            .field("matches", &self.matches().collect::<Vec<_>>())
            .field("target", &self.target())
            .finish()
    }
}

/// Walks a blob that has passed the size checks of `check` (every `next_offset` sane):
/// yields entries until the end or the first entry that does not fit.
pub fn entries(family: Family, blob: &[u8]) -> impl Iterator<Item = Entry<'_>> {
    let mut off = 0usize;
    let esz = family.entry_size();
    let (_, no, _, _) = family.offsets();
    std::iter::from_fn(move || {
        if off + esz > blob.len() {
            return None;
        }
        let next = rd_u16(blob, off + no)? as usize;
        if next < esz || off + next > blob.len() {
            return None;
        }
        let e = Entry {
            family,
            offset: off,
            bytes: &blob[off..off + next],
        };
        off += next;
        Some(e)
    })
}

/// Writes `comefrom` of the entry at `offset`.
pub fn set_comefrom(family: Family, blob: &mut [u8], offset: usize, v: u32) {
    wr_u32(blob, offset + family.offsets().2, v);
}

/// Writes the counters of the entry at `offset`.
pub fn set_entry_counters(family: Family, blob: &mut [u8], offset: usize, c: Counters) {
    let o = offset + family.offsets().3;
    wr_u64(blob, o, c.pcnt);
    wr_u64(blob, o + 8, c.bcnt);
}

/// Reads the counters stored in the entry at `offset`.
pub fn entry_counters(family: Family, blob: &[u8], offset: usize) -> Counters {
    let o = offset + family.offsets().3;
    Counters {
        pcnt: rd_u64(blob, o).unwrap_or(0),
        bcnt: rd_u64(blob, o + 8).unwrap_or(0),
    }
}

/// Builders for entries, used for initial tables and in tests.
pub mod build {
    use super::*;

    /// A standard-target entry with an all-zero ip header: a policy or an unconditional jump.
    pub fn standard_entry(family: Family, verdict: i32) -> Vec<u8> {
        let esz = family.entry_size();
        let mut b = vec![0u8; esz + STANDARD_TARGET_SIZE];
        let (to, no, _, _) = family.offsets();
        wr_u16(&mut b, to, esz as u16);
        wr_u16(&mut b, no, (esz + STANDARD_TARGET_SIZE) as u16);
        wr_u16(&mut b, esz, STANDARD_TARGET_SIZE as u16);
        wr_u32(&mut b, esz + XT_HDR, verdict as u32);
        b
    }

    /// An ERROR-target entry: a user chain head (`name`) or the table's end ("ERROR").
    pub fn error_entry(family: Family, name: &[u8]) -> Vec<u8> {
        let esz = family.entry_size();
        let mut b = vec![0u8; esz + ERROR_TARGET_SIZE];
        let (to, no, _, _) = family.offsets();
        wr_u16(&mut b, to, esz as u16);
        wr_u16(&mut b, no, (esz + ERROR_TARGET_SIZE) as u16);
        wr_u16(&mut b, esz, ERROR_TARGET_SIZE as u16);
        put_c_str(
            &mut b[esz + 2..esz + 2 + EXTENSION_MAXNAMELEN],
            ERROR_TARGET.as_bytes(),
        );
        put_c_str(
            &mut b[esz + XT_HDR..esz + XT_HDR + FUNCTION_MAXNAMELEN],
            name,
        );
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_entry_walks() {
        let mut blob = build::standard_entry(Family::V4, VERDICT_ACCEPT);
        blob.extend(build::error_entry(Family::V4, b"ERROR"));
        let es: Vec<_> = entries(Family::V4, &blob).collect();
        assert_eq!(es.len(), 2);
        assert_eq!(es[0].standard_verdict(), Some(VERDICT_ACCEPT));
        assert!(es[0].unconditional());
        assert_eq!(es[1].error_name(), Some(&b"ERROR"[..]));
        assert_eq!(es[1].offset, 152);
    }

    #[test]
    fn v6_sizes() {
        let e = build::standard_entry(Family::V6, VERDICT_DROP);
        assert_eq!(e.len(), 208);
        let es: Vec<_> = entries(Family::V6, &e).collect();
        assert_eq!(es[0].target_offset(), 168);
        assert_eq!(es[0].standard_verdict(), Some(VERDICT_DROP));
    }

    #[test]
    fn short_buffers_do_not_panic() {
        assert!(ReplaceHdr::parse(&[0u8; 95]).is_none());
        assert_eq!(entries(Family::V4, &[0u8; 50]).count(), 0);
        let mut e = build::standard_entry(Family::V4, VERDICT_ACCEPT);
        e[90] = 0xff; // next_offset beyond the blob
        assert_eq!(entries(Family::V4, &e).count(), 0);
    }
}
