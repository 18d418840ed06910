//! `-m multiport` (net/netfilter/xt_multiport.c): up to 15 ports or port ranges of TCP, UDP,
//! UDP-Lite, SCTP or DCCP. The kernel registers revision 1 only; revision 0 is parsed so that
//! old payloads stay readable.

use std::ops::RangeInclusive;

use super::registry::XT_INV_PROTO;
use super::wire::{canonical, expect_size, Rd, Wr};
use super::ParseError;
use crate::check::{Errno, ExtCtx};

/// `XT_MULTI_PORTS`.
pub const MAX_PORTS: usize = 15;
/// `sizeof(struct xt_multiport)` and `sizeof(struct xt_multiport_v1)`.
const V0_SIZE: usize = 32;
const V1_SIZE: usize = 48;
const PORTS: usize = 2;
const PFLAGS: usize = 32;
const INVERT: usize = 47;

/// Which port of the packet is compared (`enum xt_multiport_flags`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `XT_MULTIPORT_SOURCE`, `--sports`.
    Source,
    /// `XT_MULTIPORT_DESTINATION`, `--dports`.
    Destination,
    /// `XT_MULTIPORT_EITHER`, `--ports`.
    Either,
}

impl Direction {
    fn from_raw(v: u8) -> Option<Direction> {
        match v {
            0 => Some(Direction::Source),
            1 => Some(Direction::Destination),
            2 => Some(Direction::Either),
            _ => None,
        }
    }
    fn raw(self) -> u8 {
        self as u8
    }
}

/// One element of the list: a port takes one slot, a range two (`pflags` set on the first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    Port(u16),
    Range(RangeInclusive<u16>),
}

impl PortSpec {
    /// The ports the element covers.
    pub fn range(&self) -> RangeInclusive<u16> {
        match self {
            PortSpec::Port(p) => *p..=*p,
            PortSpec::Range(r) => r.clone(),
        }
    }
    fn slots(&self) -> usize {
        match self {
            PortSpec::Port(_) => 1,
            PortSpec::Range(_) => 2,
        }
    }
}

/// Revision 1. Mirrors `struct xt_multiport_v1` (include/uapi/linux/netfilter/xt_multiport.h).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Multiport {
    pub direction: Direction,
    /// At most [`MAX_PORTS`] slots in all.
    pub ports: Vec<PortSpec>,
    pub invert: bool,
}

impl Multiport {
    pub fn parse(data: &[u8]) -> Result<Multiport, ParseError> {
        expect_size("multiport", data, V1_SIZE)?;
        let r = Rd(data);
        let direction = direction(r.u8(0))?;
        let count = count(r.u8(1))?;
        let mut ports = Vec::new();
        let mut i = 0;
        while i < count {
            let p = r.u16(PORTS + 2 * i);
            if r.u8(PFLAGS + i) != 0 {
                // A range needs its end in the next slot, itself not a range start.
                if i + 1 >= count || r.u8(PFLAGS + i + 1) != 0 {
                    return Err(ParseError::Value {
                        ext: "multiport",
                        field: "pflags",
                        value: i as u64,
                    });
                }
                ports.push(PortSpec::Range(p..=r.u16(PORTS + 2 * (i + 1))));
                i += 2;
            } else {
                ports.push(PortSpec::Port(p));
                i += 1;
            }
        }
        let m = Multiport {
            direction,
            ports,
            invert: r.u8(INVERT) != 0,
        };
        canonical("multiport", m, Multiport::emit, data)
    }

    /// Slots past [`MAX_PORTS`] are dropped.
    pub fn emit(&self) -> Vec<u8> {
        let mut w = Wr::new(V1_SIZE);
        let mut i = 0;
        for p in &self.ports {
            if i + p.slots() > MAX_PORTS {
                break;
            }
            let r = p.range();
            w.u16(PORTS + 2 * i, *r.start());
            if let PortSpec::Range(_) = p {
                w.u8(PFLAGS + i, 1).u16(PORTS + 2 * (i + 1), *r.end());
            }
            i += p.slots();
        }
        w.u8(0, self.direction.raw())
            .u8(1, i as u8)
            .u8(INVERT, u8::from(self.invert))
            .done()
    }
}

/// Revision 0: single ports, no negation. Mirrors `struct xt_multiport`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiportV0 {
    pub direction: Direction,
    pub ports: Vec<u16>,
}

impl MultiportV0 {
    pub fn parse(data: &[u8]) -> Result<MultiportV0, ParseError> {
        expect_size("multiport", data, V0_SIZE)?;
        let r = Rd(data);
        let direction = direction(r.u8(0))?;
        let count = count(r.u8(1))?;
        let m = MultiportV0 {
            direction,
            ports: (0..count).map(|i| r.u16(PORTS + 2 * i)).collect(),
        };
        canonical("multiport", m, MultiportV0::emit, data)
    }

    pub fn emit(&self) -> Vec<u8> {
        let mut w = Wr::new(V0_SIZE);
        let n = self.ports.len().min(MAX_PORTS);
        for (i, p) in self.ports.iter().take(n).enumerate() {
            w.u16(PORTS + 2 * i, *p);
        }
        w.u8(0, self.direction.raw()).u8(1, n as u8).done()
    }
}

fn direction(v: u8) -> Result<Direction, ParseError> {
    Direction::from_raw(v).ok_or(ParseError::Value {
        ext: "multiport",
        field: "flags",
        value: v.into(),
    })
}

fn count(v: u8) -> Result<usize, ParseError> {
    if v as usize > MAX_PORTS {
        return Err(ParseError::Value {
            ext: "multiport",
            field: "count",
            value: v.into(),
        });
    }
    Ok(v as usize)
}

/// `multiport_mt_check`/`multiport_mt6_check`: a port protocol without `!`, a known
/// direction, at most 15 slots, then well-formed ranges (start slot followed by a plain end
/// slot, start <= end).
pub fn check(ctx: &ExtCtx<'_>, data: &[u8]) -> Result<(), Errno> {
    let r = Rd(data);
    let proto = ctx.entry.proto();
    let proto_ok =
        matches!(proto, 6 | 17 | 136 | 132 | 33) && ctx.entry.ip_invflags() & XT_INV_PROTO == 0;
    let count = r.u8(1) as usize;
    if !proto_ok || r.u8(0) > 2 || count > MAX_PORTS {
        return Err(libc::EINVAL);
    }
    let mut i = 0;
    while i < count {
        if r.u8(PFLAGS + i) != 0 {
            i += 1;
            if i >= count
                || r.u8(PFLAGS + i) != 0
                || r.u16(PORTS + 2 * (i - 1)) > r.u16(PORTS + 2 * i)
            {
                return Err(libc::EINVAL);
            }
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_take_two_slots() {
        let m = Multiport {
            direction: Direction::Destination,
            ports: vec![
                PortSpec::Port(22),
                PortSpec::Range(1000..=2000),
                PortSpec::Port(80),
            ],
            invert: true,
        };
        let b = m.emit();
        assert_eq!(b[1], 4);
        assert_eq!(&b[PFLAGS..PFLAGS + 4], &[0, 1, 0, 0]);
        assert_eq!(Multiport::parse(&b), Ok(m));
    }

    #[test]
    fn dangling_range_start_is_an_error() {
        let mut b = vec![0u8; 48];
        b[1] = 1;
        b[PFLAGS] = 1;
        assert!(matches!(
            Multiport::parse(&b),
            Err(ParseError::Value {
                field: "pflags",
                ..
            })
        ));
        b[1] = 16;
        assert!(matches!(
            Multiport::parse(&b),
            Err(ParseError::Value { field: "count", .. })
        ));
    }
}
