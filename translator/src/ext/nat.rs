//! The nat table's targets: `SNAT`, `DNAT` (net/netfilter/xt_nat.c), `MASQUERADE`
//! (xt_MASQUERADE.c) and `REDIRECT` (xt_REDIRECT.c). All carry one address and port range.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use super::wire::{canonical, expect_size, Rd, Wr};
use super::ParseError;
use crate::abi::Family;
use crate::check::{Errno, ExtCtx};

/// `NF_NAT_RANGE_*` flags (include/uapi/linux/netfilter/nf_nat.h), kept raw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatFlags(pub u32);

impl NatFlags {
    /// The address range is set (else the target picks the address).
    pub const MAP_IPS: u32 = 1 << 0;
    /// The port range is set.
    pub const PROTO_SPECIFIED: u32 = 1 << 1;
    pub const PROTO_RANDOM: u32 = 1 << 2;
    pub const PERSISTENT: u32 = 1 << 3;
    pub const PROTO_RANDOM_FULLY: u32 = 1 << 4;
    /// Ports are shifted by `base_port` (revision 2).
    pub const PROTO_OFFSET: u32 = 1 << 5;
    pub const NETMAP: u32 = 1 << 6;

    pub fn contains(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
}

/// Which kernel struct carries the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatLayout {
    /// `struct nf_nat_ipv4_multi_range_compat`: IPv4 SNAT/DNAT revision 0, IPv4 MASQUERADE
    /// and REDIRECT.
    Compat,
    /// `struct nf_nat_range`: SNAT/DNAT revision 1, IPv6 MASQUERADE and REDIRECT.
    Range,
    /// `struct nf_nat_range2`: SNAT/DNAT revision 2, which adds `base_proto`.
    Range2,
}

impl NatLayout {
    /// The layout of `name` at `revision` for a table of `family`, if the target is one of
    /// the four.
    pub fn of(family: Family, name: &str, revision: u8) -> Option<NatLayout> {
        match (name, revision, family) {
            ("SNAT" | "DNAT", 0, Family::V4) => Some(NatLayout::Compat),
            ("SNAT" | "DNAT", 1, _) => Some(NatLayout::Range),
            ("SNAT" | "DNAT", 2, _) => Some(NatLayout::Range2),
            ("MASQUERADE" | "REDIRECT", 0, Family::V4) => Some(NatLayout::Compat),
            ("MASQUERADE" | "REDIRECT", 0, Family::V6) => Some(NatLayout::Range),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            NatLayout::Compat => 20,
            NatLayout::Range => 40,
            NatLayout::Range2 => 44,
        }
    }
}

/// A NAT range. Mirrors `struct nf_nat_ipv4_multi_range_compat` (with its single
/// `struct nf_nat_ipv4_range`), `struct nf_nat_range` and `struct nf_nat_range2`
/// (include/uapi/linux/netfilter/nf_nat.h). Ports are in host order here, network order in the
/// structs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nat {
    pub layout: NatLayout,
    /// `Compat` only: the number of ranges; the kernel accepts only 1. Others: 1.
    pub rangesize: u32,
    pub flags: NatFlags,
    /// `min_addr..=max_addr` (IPv4 in `Compat`).
    pub addr: RangeInclusive<IpAddr>,
    /// `min_proto..=max_proto`: ports (or ICMP ids).
    pub port: RangeInclusive<u16>,
    /// `Range2` only: `base_proto`, the port `PROTO_OFFSET` shifts from.
    pub base_port: u16,
}

impl Nat {
    pub fn parse(family: Family, layout: NatLayout, data: &[u8]) -> Result<Nat, ParseError> {
        expect_size("nat", data, layout.size())?;
        let r = Rd(data);
        let n = match layout {
            NatLayout::Compat => Nat {
                layout,
                rangesize: r.u32(0),
                flags: NatFlags(r.u32(4)),
                addr: r.inet_addr(Family::V4, 8)..=r.inet_addr(Family::V4, 12),
                port: r.be16(16)..=r.be16(18),
                base_port: 0,
            },
            NatLayout::Range | NatLayout::Range2 => Nat {
                layout,
                rangesize: 1,
                flags: NatFlags(r.u32(0)),
                addr: r.inet_addr(family, 4)..=r.inet_addr(family, 20),
                port: r.be16(36)..=r.be16(38),
                base_port: if layout == NatLayout::Range2 {
                    r.be16(40)
                } else {
                    0
                },
            },
        };
        canonical("nat", n, Nat::emit, data)
    }

    pub fn emit(&self) -> Vec<u8> {
        let mut w = Wr::new(self.layout.size());
        match self.layout {
            NatLayout::Compat => {
                w.u32(0, self.rangesize)
                    .u32(4, self.flags.0)
                    .inet_addr(8, *self.addr.start())
                    .inet_addr(12, *self.addr.end())
                    .be16(16, *self.port.start())
                    .be16(18, *self.port.end());
            }
            NatLayout::Range | NatLayout::Range2 => {
                w.u32(0, self.flags.0)
                    .inet_addr(4, *self.addr.start())
                    .inet_addr(20, *self.addr.end())
                    .be16(36, *self.port.start())
                    .be16(38, *self.port.end());
                if self.layout == NatLayout::Range2 {
                    w.be16(40, self.base_port);
                }
            }
        }
        w.done()
    }
}

/// `xt_nat_checkentry_v0`: one range only; then a conntrack reference, which cannot fail with
/// conntrack built in (CONFIG_NF_CONNTRACK=y on the reference kernel).
pub fn check_nat_v0(_ctx: &ExtCtx<'_>, data: &[u8]) -> Result<(), Errno> {
    if Rd(data).u32(0) != 1 {
        return Err(libc::EINVAL);
    }
    Ok(())
}

/// `xt_nat_checkentry`: IPv4 and IPv6 are the families it accepts.
pub fn check_nat(_ctx: &ExtCtx<'_>, _data: &[u8]) -> Result<(), Errno> {
    Ok(())
}

/// `masquerade_tg_check`/`redirect_tg4_check`: no address range, one range, in this order.
pub fn check_compat(_ctx: &ExtCtx<'_>, data: &[u8]) -> Result<(), Errno> {
    let r = Rd(data);
    if r.u32(4) & NatFlags::MAP_IPS != 0 || r.u32(0) != 1 {
        return Err(libc::EINVAL);
    }
    Ok(())
}

/// `masquerade_tg6_checkentry`/`redirect_tg6_checkentry`: no address range.
pub fn check_range_no_map_ips(_ctx: &ExtCtx<'_>, data: &[u8]) -> Result<(), Errno> {
    if Rd(data).u32(0) & NatFlags::MAP_IPS != 0 {
        return Err(libc::EINVAL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn compat_layout() {
        let n = Nat {
            layout: NatLayout::Compat,
            rangesize: 1,
            flags: NatFlags(NatFlags::MAP_IPS | NatFlags::PROTO_SPECIFIED),
            addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))..=IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)),
            port: 8080..=8090,
            base_port: 0,
        };
        let b = n.emit();
        assert_eq!(b.len(), 24);
        assert_eq!(&b[8..12], &[192, 0, 2, 1]);
        assert_eq!(&b[16..18], &8080u16.to_be_bytes());
        assert_eq!(Nat::parse(Family::V4, NatLayout::Compat, &b), Ok(n));
    }

    #[test]
    fn range2_v6() {
        let a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let n = Nat {
            layout: NatLayout::Range2,
            rangesize: 1,
            flags: NatFlags(NatFlags::MAP_IPS | NatFlags::PROTO_OFFSET),
            addr: a..=a,
            port: 1000..=2000,
            base_port: 80,
        };
        let b = n.emit();
        assert_eq!(b.len(), 48);
        assert_eq!(Nat::parse(Family::V6, NatLayout::Range2, &b), Ok(n));
        // A v6 address in a v4 rule's range does not fit the v4 view.
        assert!(Nat::parse(Family::V4, NatLayout::Range2, &b).is_err());
    }
}
