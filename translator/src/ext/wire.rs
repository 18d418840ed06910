//! Field access on extension payloads: bounds-safe reads (a short payload reads as zeroes,
//! never panics), writes into a zeroed buffer, and the canonical-bytes check that makes every
//! typed value round-trip byte for byte.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use super::ParseError;
use crate::abi::{xt_align, Family};

/// Reads fields of a payload in host byte order (the kernel's `__u16`/`__u32`) or network
/// order (`__be16`, addresses).
#[derive(Clone, Copy)]
pub(crate) struct Rd<'a>(pub &'a [u8]);

impl Rd<'_> {
    pub fn bytes<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(s) = self.0.get(off..off + N) {
            out.copy_from_slice(s);
        }
        out
    }
    pub fn u8(&self, off: usize) -> u8 {
        self.0.get(off).copied().unwrap_or(0)
    }
    pub fn u16(&self, off: usize) -> u16 {
        u16::from_ne_bytes(self.bytes(off))
    }
    pub fn be16(&self, off: usize) -> u16 {
        u16::from_be_bytes(self.bytes(off))
    }
    pub fn u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.bytes(off))
    }
    pub fn u64(&self, off: usize) -> u64 {
        u64::from_ne_bytes(self.bytes(off))
    }
    /// A `union nf_inet_addr` (16 bytes) as the family's address: IPv4 uses the first four.
    pub fn inet_addr(&self, family: Family, off: usize) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(self.bytes::<4>(off))),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(self.bytes::<16>(off))),
        }
    }
    /// A range of host-order `__u16` at `lo` and `hi`.
    pub fn u16_range(&self, lo: usize, hi: usize) -> RangeInclusive<u16> {
        self.u16(lo)..=self.u16(hi)
    }
    /// A fixed-size C string field: the bytes before the first NUL (all of them if none).
    pub fn c_str(&self, off: usize, len: usize) -> Vec<u8> {
        let field = self.0.get(off..off + len).unwrap_or(&[]);
        crate::abi::c_str(field).to_vec()
    }
}

/// Builds a payload: a zeroed buffer of the extension's aligned size.
pub(crate) struct Wr(pub Vec<u8>);

impl Wr {
    /// A buffer for a kernel struct of `size` bytes, padded to `XT_ALIGN(size)`.
    pub fn new(size: usize) -> Wr {
        Wr(vec![0; xt_align(size)])
    }
    pub fn bytes(&mut self, off: usize, v: &[u8]) -> &mut Self {
        self.0[off..off + v.len()].copy_from_slice(v);
        self
    }
    pub fn u8(&mut self, off: usize, v: u8) -> &mut Self {
        self.bytes(off, &[v])
    }
    pub fn u16(&mut self, off: usize, v: u16) -> &mut Self {
        self.bytes(off, &v.to_ne_bytes())
    }
    pub fn be16(&mut self, off: usize, v: u16) -> &mut Self {
        self.bytes(off, &v.to_be_bytes())
    }
    pub fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.bytes(off, &v.to_ne_bytes())
    }
    pub fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.bytes(off, &v.to_ne_bytes())
    }
    /// Writes an address into a `union nf_inet_addr` at `off`.
    pub fn inet_addr(&mut self, off: usize, a: IpAddr) -> &mut Self {
        match a {
            IpAddr::V4(a) => self.bytes(off, &a.octets()),
            IpAddr::V6(a) => self.bytes(off, &a.octets()),
        }
    }
    /// Writes a C string into a field of `len` bytes (truncated to `len`; NUL-padded).
    pub fn c_str(&mut self, off: usize, len: usize, s: &[u8]) -> &mut Self {
        let n = s.len().min(len);
        self.bytes(off, &s[..n])
    }
    pub fn done(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

/// Checks that `data` is the payload of a kernel struct of `size` bytes (`XT_ALIGN(size)`).
pub(crate) fn expect_size(ext: &'static str, data: &[u8], size: usize) -> Result<(), ParseError> {
    if data.len() != xt_align(size) {
        return Err(ParseError::Size {
            ext,
            expected: xt_align(size),
            actual: data.len(),
        });
    }
    Ok(())
}

/// Accepts `value` only if emitting it gives back `data` exactly: a byte the typed value does
/// not carry (struct padding, a field of a condition that is not in use, an unused union
/// member) must be what emit writes there, zero.
pub(crate) fn canonical<T>(
    ext: &'static str,
    value: T,
    emit: impl Fn(&T) -> Vec<u8>,
    data: &[u8],
) -> Result<T, ParseError> {
    let out = emit(&value);
    if let Some(offset) = out.iter().zip(data).position(|(a, b)| a != b) {
        return Err(ParseError::NotCanonical { ext, offset });
    }
    if out.len() != data.len() {
        return Err(ParseError::Size {
            ext,
            expected: out.len(),
            actual: data.len(),
        });
    }
    Ok(value)
}

/// A known-bits check for a flags field.
pub(crate) fn known_bits(
    ext: &'static str,
    field: &'static str,
    value: u64,
    known: u64,
) -> Result<(), ParseError> {
    if value & !known != 0 {
        return Err(ParseError::Value { ext, field, value });
    }
    Ok(())
}
