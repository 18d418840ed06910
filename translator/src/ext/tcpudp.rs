//! The protocol header matches: `tcp`, `udp`, `udplite` (net/netfilter/xt_tcpudp.c), `icmp`
//! (ip_tables.c) and `icmp6` (ip6_tables.c).

use std::ops::RangeInclusive;

use super::wire::{canonical, expect_size, known_bits, Rd, Wr};
use super::ParseError;
use crate::check::{Errno, ExtCtx};

const XT_TCP_INV_SRCPT: u8 = 0x01;
const XT_TCP_INV_DSTPT: u8 = 0x02;
const XT_TCP_INV_FLAGS: u8 = 0x04;
const XT_TCP_INV_OPTION: u8 = 0x08;
const XT_TCP_INV_MASK: u8 = 0x0f;
const XT_UDP_INV_MASK: u8 = 0x03;
/// `IPT_ICMP_INV` and `IP6T_ICMP_INV`.
const ICMP_INV: u8 = 0x01;

/// `sizeof(struct xt_tcp)`, `sizeof(struct xt_udp)`, `sizeof(struct ipt_icmp)`.
const TCP_SIZE: usize = 12;
const UDP_SIZE: usize = 10;
const ICMP_SIZE: usize = 4;

/// `-p tcp` with `--sport`, `--dport`, `--tcp-flags`, `--tcp-option`.
/// Mirrors `struct xt_tcp` (include/uapi/linux/netfilter/xt_tcpudp.h).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tcp {
    /// Matches when the port is inside (`spts[0]..=spts[1]`; empty when start > end).
    pub sport: RangeInclusive<u16>,
    pub sport_inv: bool,
    pub dport: RangeInclusive<u16>,
    pub dport_inv: bool,
    /// `(flags & flags_mask) == flags_cmp`.
    pub flags_mask: u8,
    pub flags_cmp: u8,
    pub flags_inv: bool,
    /// A TCP option kind that must be present; 0 for none.
    pub option: u8,
    pub option_inv: bool,
}

impl Tcp {
    pub fn parse(data: &[u8]) -> Result<Tcp, ParseError> {
        expect_size("tcp", data, TCP_SIZE)?;
        let r = Rd(data);
        let inv = r.u8(11);
        known_bits("tcp", "invflags", inv.into(), XT_TCP_INV_MASK.into())?;
        let t = Tcp {
            sport: r.u16_range(0, 2),
            sport_inv: inv & XT_TCP_INV_SRCPT != 0,
            dport: r.u16_range(4, 6),
            dport_inv: inv & XT_TCP_INV_DSTPT != 0,
            option: r.u8(8),
            flags_mask: r.u8(9),
            flags_cmp: r.u8(10),
            flags_inv: inv & XT_TCP_INV_FLAGS != 0,
            option_inv: inv & XT_TCP_INV_OPTION != 0,
        };
        canonical("tcp", t, Tcp::emit, data)
    }

    pub fn emit(&self) -> Vec<u8> {
        let inv = flag(self.sport_inv, XT_TCP_INV_SRCPT)
            | flag(self.dport_inv, XT_TCP_INV_DSTPT)
            | flag(self.flags_inv, XT_TCP_INV_FLAGS)
            | flag(self.option_inv, XT_TCP_INV_OPTION);
        Wr::new(TCP_SIZE)
            .u16(0, *self.sport.start())
            .u16(2, *self.sport.end())
            .u16(4, *self.dport.start())
            .u16(6, *self.dport.end())
            .u8(8, self.option)
            .u8(9, self.flags_mask)
            .u8(10, self.flags_cmp)
            .u8(11, inv)
            .done()
    }
}

/// `-p udp` (or `udplite`) with `--sport`, `--dport`.
/// Mirrors `struct xt_udp` (include/uapi/linux/netfilter/xt_tcpudp.h).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Udp {
    pub sport: RangeInclusive<u16>,
    pub sport_inv: bool,
    pub dport: RangeInclusive<u16>,
    pub dport_inv: bool,
}

impl Udp {
    pub fn parse(data: &[u8]) -> Result<Udp, ParseError> {
        expect_size("udp", data, UDP_SIZE)?;
        let r = Rd(data);
        let inv = r.u8(8);
        known_bits("udp", "invflags", inv.into(), XT_UDP_INV_MASK.into())?;
        let u = Udp {
            sport: r.u16_range(0, 2),
            sport_inv: inv & XT_TCP_INV_SRCPT != 0,
            dport: r.u16_range(4, 6),
            dport_inv: inv & XT_TCP_INV_DSTPT != 0,
        };
        canonical("udp", u, Udp::emit, data)
    }

    pub fn emit(&self) -> Vec<u8> {
        let inv = flag(self.sport_inv, XT_TCP_INV_SRCPT) | flag(self.dport_inv, XT_TCP_INV_DSTPT);
        Wr::new(UDP_SIZE)
            .u16(0, *self.sport.start())
            .u16(2, *self.sport.end())
            .u16(4, *self.dport.start())
            .u16(6, *self.dport.end())
            .u8(8, inv)
            .done()
    }
}

/// `-p icmp --icmp-type` / `-p icmpv6 --icmpv6-type`: a type and a code range.
/// Mirrors `struct ipt_icmp` (netfilter_ipv4/ip_tables.h) and `struct ip6t_icmp`
/// (netfilter_ipv6/ip6_tables.h), which have the same layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Icmp {
    pub icmp_type: u8,
    pub code: RangeInclusive<u8>,
    pub inv: bool,
}

impl Icmp {
    pub fn parse(data: &[u8]) -> Result<Icmp, ParseError> {
        expect_size("icmp", data, ICMP_SIZE)?;
        let r = Rd(data);
        known_bits("icmp", "invflags", r.u8(3).into(), ICMP_INV.into())?;
        let i = Icmp {
            icmp_type: r.u8(0),
            code: r.u8(1)..=r.u8(2),
            inv: r.u8(3) & ICMP_INV != 0,
        };
        canonical("icmp", i, Icmp::emit, data)
    }

    pub fn emit(&self) -> Vec<u8> {
        Wr::new(ICMP_SIZE)
            .u8(0, self.icmp_type)
            .u8(1, *self.code.start())
            .u8(2, *self.code.end())
            .u8(3, flag(self.inv, ICMP_INV))
            .done()
    }
}

pub(crate) fn flag(set: bool, bit: u8) -> u8 {
    if set {
        bit
    } else {
        0
    }
}

/// `tcp_mt_check`: no unknown invflags.
pub fn check_tcp(_ctx: &ExtCtx<'_>, data: &[u8]) -> Result<(), Errno> {
    if Rd(data).u8(11) & !XT_TCP_INV_MASK != 0 {
        return Err(libc::EINVAL);
    }
    Ok(())
}

/// `udp_mt_check` (also `udplite`): no unknown invflags.
pub fn check_udp(_ctx: &ExtCtx<'_>, data: &[u8]) -> Result<(), Errno> {
    if Rd(data).u8(8) & !XT_UDP_INV_MASK != 0 {
        return Err(libc::EINVAL);
    }
    Ok(())
}

/// `icmp_checkentry` / `icmp6_checkentry`: no unknown invflags.
pub fn check_icmp(_ctx: &ExtCtx<'_>, data: &[u8]) -> Result<(), Errno> {
    if Rd(data).u8(3) & !ICMP_INV != 0 {
        return Err(libc::EINVAL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_fields_round_trip() {
        let t = Tcp {
            sport: 1024..=65535,
            sport_inv: true,
            dport: 22..=22,
            dport_inv: false,
            flags_mask: 0x17,
            flags_cmp: 0x02,
            flags_inv: true,
            option: 0,
            option_inv: false,
        };
        let b = t.emit();
        assert_eq!(b.len(), 16);
        assert_eq!(Tcp::parse(&b), Ok(t));
    }

    #[test]
    fn tcp_unknown_invflags_and_padding_are_errors() {
        let mut b = vec![0u8; 16];
        b[11] = 0x10;
        assert_eq!(
            Tcp::parse(&b),
            Err(ParseError::Value {
                ext: "tcp",
                field: "invflags",
                value: 0x10
            })
        );
        b[11] = 0;
        b[13] = 1;
        assert_eq!(
            Tcp::parse(&b),
            Err(ParseError::NotCanonical {
                ext: "tcp",
                offset: 13
            })
        );
        assert!(matches!(
            Tcp::parse(&b[..8]),
            Err(ParseError::Size { expected: 16, .. })
        ));
    }

    #[test]
    #[allow(clippy::reversed_empty_ranges)] // deliberately: spts[0] > spts[1] matches nothing
    fn empty_port_range_survives() {
        let u = Udp {
            sport: 10..=5,
            sport_inv: false,
            dport: 0..=65535,
            dport_inv: true,
        };
        assert_eq!(Udp::parse(&u.emit()), Ok(u));
    }
}
