//! Address matches: `-m iprange` (net/netfilter/xt_iprange.c) and `-m addrtype`
//! (net/netfilter/xt_addrtype.c).

use std::net::IpAddr;
use std::ops::RangeInclusive;

use super::wire::{canonical, expect_size, known_bits, Rd, Wr};
use super::ParseError;
use crate::abi::{Family, Hook};
use crate::check::{Errno, ExtCtx};

const IPRANGE_SRC: u8 = 1 << 0;
const IPRANGE_DST: u8 = 1 << 1;
const IPRANGE_SRC_INV: u8 = 1 << 4;
const IPRANGE_DST_INV: u8 = 1 << 5;
/// `sizeof(struct xt_iprange_mtinfo)`.
const IPRANGE_SIZE: usize = 68;

/// An address range of one side of the packet, inclusive, compared in host order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrRange {
    pub range: RangeInclusive<IpAddr>,
    pub inv: bool,
}

/// `-m iprange --src-range/--dst-range`, revision 1.
/// Mirrors `struct xt_iprange_mtinfo` (include/uapi/linux/netfilter/xt_iprange.h).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpRange {
    pub family: Family,
    pub src: Option<AddrRange>,
    pub dst: Option<AddrRange>,
}

impl IpRange {
    pub fn parse(family: Family, data: &[u8]) -> Result<IpRange, ParseError> {
        expect_size("iprange", data, IPRANGE_SIZE)?;
        let r = Rd(data);
        let flags = r.u8(64);
        known_bits(
            "iprange",
            "flags",
            flags.into(),
            (IPRANGE_SRC | IPRANGE_DST | IPRANGE_SRC_INV | IPRANGE_DST_INV).into(),
        )?;
        let side = |set: u8, inv: u8, off: usize| {
            (flags & set != 0).then(|| AddrRange {
                range: r.inet_addr(family, off)..=r.inet_addr(family, off + 16),
                inv: flags & inv != 0,
            })
        };
        let v = IpRange {
            family,
            src: side(IPRANGE_SRC, IPRANGE_SRC_INV, 0),
            dst: side(IPRANGE_DST, IPRANGE_DST_INV, 32),
        };
        canonical("iprange", v, IpRange::emit, data)
    }

    pub fn emit(&self) -> Vec<u8> {
        let mut w = Wr::new(IPRANGE_SIZE);
        let mut flags = 0;
        for (side, set, inv, off) in [
            (&self.src, IPRANGE_SRC, IPRANGE_SRC_INV, 0),
            (&self.dst, IPRANGE_DST, IPRANGE_DST_INV, 32),
        ] {
            if let Some(s) = side {
                flags |= set | if s.inv { inv } else { 0 };
                w.inet_addr(off, *s.range.start())
                    .inet_addr(off + 16, *s.range.end());
            }
        }
        w.u8(64, flags).done()
    }
}

/// Address types (`XT_ADDRTYPE_*`: bit `1 << RTN_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrTypes(pub u16);

impl AddrTypes {
    pub const UNSPEC: u16 = 1 << 0;
    pub const UNICAST: u16 = 1 << 1;
    pub const LOCAL: u16 = 1 << 2;
    pub const BROADCAST: u16 = 1 << 3;
    pub const ANYCAST: u16 = 1 << 4;
    pub const MULTICAST: u16 = 1 << 5;
    pub const BLACKHOLE: u16 = 1 << 6;
    pub const UNREACHABLE: u16 = 1 << 7;
    pub const PROHIBIT: u16 = 1 << 8;
    pub const THROW: u16 = 1 << 9;
    pub const NAT: u16 = 1 << 10;
    pub const XRESOLVE: u16 = 1 << 11;
    const ALL: u16 = (1 << 12) - 1;

    pub fn contains(self, bit: u16) -> bool {
        self.0 & bit != 0
    }
}

const XT_ADDRTYPE_INVERT_SOURCE: u32 = 0x1;
const XT_ADDRTYPE_INVERT_DEST: u32 = 0x2;
const XT_ADDRTYPE_LIMIT_IFACE_IN: u32 = 0x4;
const XT_ADDRTYPE_LIMIT_IFACE_OUT: u32 = 0x8;
/// `sizeof(struct xt_addrtype_info_v1)`.
const ADDRTYPE_V1_SIZE: usize = 8;

/// `-m addrtype --src-type/--dst-type [--limit-iface-in|out]`, revision 1. An empty type set
/// is no condition. Mirrors `struct xt_addrtype_info_v1`
/// (include/uapi/linux/netfilter/xt_addrtype.h).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrType {
    pub source: AddrTypes,
    pub source_inv: bool,
    pub dest: AddrTypes,
    pub dest_inv: bool,
    /// Look the address up on the incoming interface only.
    pub limit_iface_in: bool,
    /// Look the address up on the outgoing interface only.
    pub limit_iface_out: bool,
}

impl AddrType {
    pub fn parse(data: &[u8]) -> Result<AddrType, ParseError> {
        expect_size("addrtype", data, ADDRTYPE_V1_SIZE)?;
        let r = Rd(data);
        let flags = r.u32(4);
        known_bits("addrtype", "flags", flags.into(), 0xf)?;
        for (field, v) in [("source", r.u16(0)), ("dest", r.u16(2))] {
            known_bits("addrtype", field, v.into(), AddrTypes::ALL.into())?;
        }
        Ok(AddrType {
            source: AddrTypes(r.u16(0)),
            source_inv: flags & XT_ADDRTYPE_INVERT_SOURCE != 0,
            dest: AddrTypes(r.u16(2)),
            dest_inv: flags & XT_ADDRTYPE_INVERT_DEST != 0,
            limit_iface_in: flags & XT_ADDRTYPE_LIMIT_IFACE_IN != 0,
            limit_iface_out: flags & XT_ADDRTYPE_LIMIT_IFACE_OUT != 0,
        })
    }

    pub fn emit(&self) -> Vec<u8> {
        let bit = |b: bool, v: u32| if b { v } else { 0 };
        let flags = bit(self.source_inv, XT_ADDRTYPE_INVERT_SOURCE)
            | bit(self.dest_inv, XT_ADDRTYPE_INVERT_DEST)
            | bit(self.limit_iface_in, XT_ADDRTYPE_LIMIT_IFACE_IN)
            | bit(self.limit_iface_out, XT_ADDRTYPE_LIMIT_IFACE_OUT);
        Wr::new(ADDRTYPE_V1_SIZE)
            .u16(0, self.source.0)
            .u16(2, self.dest.0)
            .u32(4, flags)
            .done()
    }
}

/// `addrtype_mt_checkentry_v1`: not both interface limits; no output-interface limit from
/// PREROUTING/INPUT, no input-interface limit from OUTPUT/POSTROUTING; for IPv6 no BLACKHOLE,
/// nothing from PROHIBIT up, no BROADCAST. All EINVAL.
pub fn check_addrtype_v1(ctx: &ExtCtx<'_>, data: &[u8]) -> Result<(), Errno> {
    let r = Rd(data);
    let flags = r.u32(4);
    let iface_in = flags & XT_ADDRTYPE_LIMIT_IFACE_IN != 0;
    let iface_out = flags & XT_ADDRTYPE_LIMIT_IFACE_OUT != 0;
    let inbound = Hook::PreRouting.bit() | Hook::LocalIn.bit();
    let outbound = Hook::PostRouting.bit() | Hook::LocalOut.bit();
    if iface_in && iface_out {
        return Err(libc::EINVAL);
    }
    if ctx.hook_mask & inbound != 0 && iface_out {
        return Err(libc::EINVAL);
    }
    if ctx.hook_mask & outbound != 0 && iface_in {
        return Err(libc::EINVAL);
    }
    if ctx.family == Family::V6 {
        let types = r.u16(0) | r.u16(2);
        if types & AddrTypes::BLACKHOLE != 0
            || types >= AddrTypes::PROHIBIT
            || types & AddrTypes::BROADCAST != 0
        {
            return Err(libc::EINVAL);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn iprange_v4_uses_the_first_four_bytes() {
        let v = IpRange {
            family: Family::V4,
            src: Some(AddrRange {
                range: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
                    ..=IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
                inv: true,
            }),
            dst: None,
        };
        let b = v.emit();
        assert_eq!(&b[..4], &[10, 0, 0, 1]);
        assert_eq!(&b[16..20], &[10, 0, 0, 9]);
        assert_eq!(b[64], IPRANGE_SRC | IPRANGE_SRC_INV);
        assert_eq!(IpRange::parse(Family::V4, &b), Ok(v));
    }

    #[test]
    fn iprange_inversion_without_a_range_is_not_canonical() {
        let mut b = vec![0u8; 72];
        b[64] = IPRANGE_DST_INV;
        assert_eq!(
            IpRange::parse(Family::V6, &b),
            Err(ParseError::NotCanonical {
                ext: "iprange",
                offset: 64
            })
        );
        b[64] = IPRANGE_DST;
        b[32..48].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        assert!(IpRange::parse(Family::V6, &b).is_ok());
    }

    #[test]
    fn addrtype_unknown_type_bits_are_errors() {
        let mut b = AddrType {
            source: AddrTypes(AddrTypes::LOCAL),
            source_inv: false,
            dest: AddrTypes::default(),
            dest_inv: true,
            limit_iface_in: true,
            limit_iface_out: false,
        }
        .emit();
        assert!(AddrType::parse(&b).is_ok());
        b[1] = 0x80;
        assert!(matches!(
            AddrType::parse(&b),
            Err(ParseError::Value {
                field: "source",
                ..
            })
        ));
    }
}
