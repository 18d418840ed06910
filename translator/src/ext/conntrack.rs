//! Connection tracking matches: `-m conntrack` revisions 1 to 3
//! (net/netfilter/xt_conntrack.c) and `-m state` (net/netfilter/xt_state.c).

use std::net::IpAddr;
use std::ops::RangeInclusive;

use super::wire::{canonical, expect_size, known_bits, Rd, Wr};
use super::{Cond, ParseError};
use crate::abi::Family;
use crate::check::{Errno, ExtCtx};

/// Connection states as the two matches test them. The bit values differ between them
/// (`XT_CONNTRACK_STATE_*` vs `XT_STATE_*`), the meaning does not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtStates {
    pub invalid: bool,
    pub established: bool,
    pub related: bool,
    pub new: bool,
    pub untracked: bool,
    /// `conntrack` only: the connection is source-NATed (`XT_CONNTRACK_STATE_SNAT`).
    pub snat: bool,
    /// `conntrack` only: destination-NATed (`XT_CONNTRACK_STATE_DNAT`).
    pub dnat: bool,
}

/// `XT_CONNTRACK_STATE_BIT(ctinfo)`: 1 << (ctinfo % IP_CT_IS_REPLY + 1); ESTABLISHED = 0,
/// RELATED = 1, NEW = 2. Shared by both matches.
const ST_INVALID: u32 = 1 << 0;
const ST_ESTABLISHED: u32 = 1 << 1;
const ST_RELATED: u32 = 1 << 2;
const ST_NEW: u32 = 1 << 3;
/// `IP_CT_NUMBER` is 5: conntrack puts SNAT, DNAT, UNTRACKED above it, state UNTRACKED.
const CT_SNAT: u32 = 1 << 6;
const CT_DNAT: u32 = 1 << 7;
const CT_UNTRACKED: u32 = 1 << 8;
const STATE_UNTRACKED: u32 = 1 << 6;

impl CtStates {
    fn from_bits(v: u32, untracked_bit: u32, nat: bool) -> CtStates {
        CtStates {
            invalid: v & ST_INVALID != 0,
            established: v & ST_ESTABLISHED != 0,
            related: v & ST_RELATED != 0,
            new: v & ST_NEW != 0,
            untracked: v & untracked_bit != 0,
            snat: nat && v & CT_SNAT != 0,
            dnat: nat && v & CT_DNAT != 0,
        }
    }

    fn bits(&self, untracked_bit: u32) -> u32 {
        let b = |set: bool, bit: u32| if set { bit } else { 0 };
        b(self.invalid, ST_INVALID)
            | b(self.established, ST_ESTABLISHED)
            | b(self.related, ST_RELATED)
            | b(self.new, ST_NEW)
            | b(self.untracked, untracked_bit)
            | b(self.snat, CT_SNAT)
            | b(self.dnat, CT_DNAT)
    }
}

/// `-m state --state`. Mirrors `struct xt_state_info` (include/uapi/linux/netfilter/xt_state.h).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub states: CtStates,
}

const STATE_KNOWN: u32 = ST_INVALID | ST_ESTABLISHED | ST_RELATED | ST_NEW | STATE_UNTRACKED;

impl State {
    pub fn parse(data: &[u8]) -> Result<State, ParseError> {
        expect_size("state", data, 4)?;
        let mask = Rd(data).u32(0);
        known_bits("state", "statemask", mask.into(), STATE_KNOWN.into())?;
        let s = State {
            states: CtStates::from_bits(mask, STATE_UNTRACKED, false),
        };
        canonical("state", s, State::emit, data)
    }

    pub fn emit(&self) -> Vec<u8> {
        Wr::new(4).u32(0, self.states.bits(STATE_UNTRACKED)).done()
    }
}

/// An address and its mask (`union nf_inet_addr` pairs); the mask need not be a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrMask {
    pub addr: IpAddr,
    pub mask: IpAddr,
    /// IPv4 only: the last 12 bytes of the address and of the mask unions, which the kernel
    /// ignores. iptables sets the mask's to ones for an address without a prefix length.
    pub v4_unused: [u8; 24],
}

/// The connection's direction relative to the packet (`--ctdir`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtDirection {
    Original,
    Reply,
}

const F_STATE: u16 = 1 << 0;
const F_PROTO: u16 = 1 << 1;
const F_ORIGSRC: u16 = 1 << 2;
const F_ORIGDST: u16 = 1 << 3;
const F_REPLSRC: u16 = 1 << 4;
const F_REPLDST: u16 = 1 << 5;
const F_STATUS: u16 = 1 << 6;
const F_EXPIRES: u16 = 1 << 7;
const F_ORIGSRC_PORT: u16 = 1 << 8;
const F_ORIGDST_PORT: u16 = 1 << 9;
const F_REPLSRC_PORT: u16 = 1 << 10;
const F_REPLDST_PORT: u16 = 1 << 11;
const F_DIRECTION: u16 = 1 << 12;
const F_STATE_ALIAS: u16 = 1 << 13;
const F_KNOWN: u16 = (1 << 14) - 1;

const CT_STATE_KNOWN: u32 =
    ST_INVALID | ST_ESTABLISHED | ST_RELATED | ST_NEW | CT_SNAT | CT_DNAT | CT_UNTRACKED;

/// Offsets shared by the three revisions.
const ADDRS: [usize; 4] = [0, 32, 64, 96];
const EXPIRES: usize = 128;
const L4PROTO: usize = 136;
const PORTS: usize = 138;
const MATCH_FLAGS: usize = 146;
const INVERT_FLAGS: usize = 148;
const STATE_MASK: usize = 150;
/// Revision 3: the high ends of the port ranges.
const PORTS_HIGH: usize = 154;

/// `sizeof(struct xt_conntrack_mtinfo{1,2,3})`.
fn size(revision: u8) -> usize {
    match revision {
        1 => 152,
        2 => 156,
        _ => 164,
    }
}

/// `-m conntrack`. Each condition is present when its `match_flags` bit is set; its
/// `invert_flags` bit negates it. Mirrors `struct xt_conntrack_mtinfo1`, `_mtinfo2` and
/// `_mtinfo3` (include/uapi/linux/netfilter/xt_conntrack.h): revision 1 keeps the state and
/// status masks in a byte, revisions 1 and 2 a single port in network order, revision 3 port
/// ranges in host order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conntrack {
    /// 1, 2 or 3: the payload layout.
    pub revision: u8,
    pub family: Family,
    pub state: Option<Cond<CtStates>>,
    /// The layer 4 protocol number of the connection.
    pub proto: Option<Cond<u16>>,
    pub origsrc: Option<Cond<AddrMask>>,
    pub origdst: Option<Cond<AddrMask>>,
    pub replsrc: Option<Cond<AddrMask>>,
    pub repldst: Option<Cond<AddrMask>>,
    /// Host-order ports; before revision 3 a single port (start == end).
    pub origsrc_port: Option<Cond<RangeInclusive<u16>>>,
    pub origdst_port: Option<Cond<RangeInclusive<u16>>>,
    pub replsrc_port: Option<Cond<RangeInclusive<u16>>>,
    pub repldst_port: Option<Cond<RangeInclusive<u16>>>,
    /// `IPS_*` status bits, any of which must be set.
    pub status: Option<Cond<u16>>,
    /// Remaining lifetime in seconds.
    pub expires: Option<Cond<RangeInclusive<u32>>>,
    pub direction: Option<CtDirection>,
    /// `XT_CONNTRACK_STATE_ALIAS`: iptables made this from `-m state` (it prints it so).
    pub state_alias: bool,
}

impl Conntrack {
    pub fn parse(family: Family, revision: u8, data: &[u8]) -> Result<Conntrack, ParseError> {
        if !(1..=3).contains(&revision) {
            return Err(ParseError::Value {
                ext: "conntrack",
                field: "revision",
                value: revision.into(),
            });
        }
        expect_size("conntrack", data, size(revision))?;
        let r = Rd(data);
        let flags = r.u16(MATCH_FLAGS);
        let inv = r.u16(INVERT_FLAGS);
        known_bits("conntrack", "match_flags", flags.into(), F_KNOWN.into())?;
        let cond = |bit: u16| (flags & bit != 0).then_some(inv & bit != 0);
        let (state_mask, status_mask) = if revision == 1 {
            (r.u8(STATE_MASK) as u32, r.u8(STATE_MASK + 1) as u16)
        } else {
            (r.u16(STATE_MASK) as u32, r.u16(STATE_MASK + 2))
        };
        known_bits(
            "conntrack",
            "state_mask",
            state_mask.into(),
            CT_STATE_KNOWN.into(),
        )?;
        let addr = |i: usize, bit: u16| {
            cond(bit).map(|inv| Cond {
                value: AddrMask {
                    addr: r.inet_addr(family, ADDRS[i]),
                    mask: r.inet_addr(family, ADDRS[i] + 16),
                    v4_unused: if family == Family::V4 {
                        let mut u = [0u8; 24];
                        u[..12].copy_from_slice(&r.bytes::<12>(ADDRS[i] + 4));
                        u[12..].copy_from_slice(&r.bytes::<12>(ADDRS[i] + 20));
                        u
                    } else {
                        [0; 24]
                    },
                },
                inv,
            })
        };
        let port = |i: usize, bit: u16| {
            cond(bit).map(|inv| Cond {
                value: if revision == 3 {
                    r.u16(PORTS + 2 * i)..=r.u16(PORTS_HIGH + 2 * i)
                } else {
                    let p = r.be16(PORTS + 2 * i);
                    p..=p
                },
                inv,
            })
        };
        let c = Conntrack {
            revision,
            family,
            state: cond(F_STATE).map(|inv| Cond {
                value: CtStates::from_bits(state_mask, CT_UNTRACKED, true),
                inv,
            }),
            proto: cond(F_PROTO).map(|inv| Cond {
                value: r.u16(L4PROTO),
                inv,
            }),
            origsrc: addr(0, F_ORIGSRC),
            origdst: addr(1, F_ORIGDST),
            replsrc: addr(2, F_REPLSRC),
            repldst: addr(3, F_REPLDST),
            origsrc_port: port(0, F_ORIGSRC_PORT),
            origdst_port: port(1, F_ORIGDST_PORT),
            replsrc_port: port(2, F_REPLSRC_PORT),
            repldst_port: port(3, F_REPLDST_PORT),
            status: cond(F_STATUS).map(|inv| Cond {
                value: status_mask,
                inv,
            }),
            expires: cond(F_EXPIRES).map(|inv| Cond {
                value: r.u32(EXPIRES)..=r.u32(EXPIRES + 4),
                inv,
            }),
            direction: cond(F_DIRECTION).map(|inv| {
                if inv {
                    CtDirection::Reply
                } else {
                    CtDirection::Original
                }
            }),
            state_alias: flags & F_STATE_ALIAS != 0,
        };
        canonical("conntrack", c, Conntrack::emit, data)
    }

    /// For revisions 1 and 2 only the start of a port range is written, and revision 1 keeps
    /// the low byte of the state and status masks.
    pub fn emit(&self) -> Vec<u8> {
        let mut w = Wr::new(size(self.revision));
        let mut flags = 0u16;
        let mut inv = 0u16;
        let mut mark = |bit: u16, i: bool| {
            flags |= bit;
            if i {
                inv |= bit;
            }
        };
        let mut state_mask = 0u32;
        let mut status_mask = 0u16;
        if let Some(s) = &self.state {
            mark(F_STATE, s.inv);
            state_mask = s.value.bits(CT_UNTRACKED);
        }
        if let Some(p) = &self.proto {
            mark(F_PROTO, p.inv);
            w.u16(L4PROTO, p.value);
        }
        for (i, (a, bit)) in [
            (&self.origsrc, F_ORIGSRC),
            (&self.origdst, F_ORIGDST),
            (&self.replsrc, F_REPLSRC),
            (&self.repldst, F_REPLDST),
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(a) = a {
                mark(bit, a.inv);
                w.inet_addr(ADDRS[i], a.value.addr)
                    .inet_addr(ADDRS[i] + 16, a.value.mask);
                if a.value.addr.is_ipv4() {
                    w.bytes(ADDRS[i] + 4, &a.value.v4_unused[..12])
                        .bytes(ADDRS[i] + 20, &a.value.v4_unused[12..]);
                }
            }
        }
        for (i, (p, bit)) in [
            (&self.origsrc_port, F_ORIGSRC_PORT),
            (&self.origdst_port, F_ORIGDST_PORT),
            (&self.replsrc_port, F_REPLSRC_PORT),
            (&self.repldst_port, F_REPLDST_PORT),
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(p) = p {
                mark(bit, p.inv);
                if self.revision == 3 {
                    w.u16(PORTS + 2 * i, *p.value.start())
                        .u16(PORTS_HIGH + 2 * i, *p.value.end());
                } else {
                    w.be16(PORTS + 2 * i, *p.value.start());
                }
            }
        }
        if let Some(s) = &self.status {
            mark(F_STATUS, s.inv);
            status_mask = s.value;
        }
        if let Some(e) = &self.expires {
            mark(F_EXPIRES, e.inv);
            w.u32(EXPIRES, *e.value.start())
                .u32(EXPIRES + 4, *e.value.end());
        }
        if let Some(d) = self.direction {
            mark(F_DIRECTION, d == CtDirection::Reply);
        }
        if self.state_alias {
            flags |= F_STATE_ALIAS;
        }
        if self.revision == 1 {
            w.u8(STATE_MASK, state_mask as u8)
                .u8(STATE_MASK + 1, status_mask as u8);
        } else {
            w.u16(STATE_MASK, state_mask as u16)
                .u16(STATE_MASK + 2, status_mask);
        }
        w.u16(MATCH_FLAGS, flags).u16(INVERT_FLAGS, inv).done()
    }
}

/// `conntrack_mt_check`/`state_mt_check`: they only take a reference on the namespace's
/// conntrack (`nf_ct_netns_get`), which cannot fail when conntrack is built in, as on the
/// reference kernel (CONFIG_NF_CONNTRACK=y; checked by the kernel tests).
pub fn check(_ctx: &ExtCtx<'_>, _data: &[u8]) -> Result<(), Errno> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn sample(revision: u8) -> Conntrack {
        Conntrack {
            revision,
            family: Family::V4,
            state: Some(Cond {
                value: CtStates {
                    established: true,
                    related: true,
                    ..Default::default()
                },
                inv: false,
            }),
            proto: Some(Cond {
                value: 6,
                inv: true,
            }),
            origsrc: Some(Cond {
                value: AddrMask {
                    addr: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 0)),
                    mask: IpAddr::V4(Ipv4Addr::new(255, 255, 0, 0)),
                    v4_unused: [0xff; 24],
                },
                inv: false,
            }),
            origdst: None,
            replsrc: None,
            repldst: None,
            origsrc_port: None,
            origdst_port: Some(Cond {
                value: 80..=80,
                inv: false,
            }),
            replsrc_port: None,
            repldst_port: None,
            status: None,
            expires: Some(Cond {
                value: 10..=20,
                inv: true,
            }),
            direction: Some(CtDirection::Reply),
            state_alias: false,
        }
    }

    #[test]
    fn every_revision_round_trips() {
        for rev in 1..=3 {
            let c = sample(rev);
            let b = c.emit();
            assert_eq!(b.len(), crate::abi::xt_align(size(rev)));
            assert_eq!(Conntrack::parse(Family::V4, rev, &b), Ok(c));
        }
    }

    #[test]
    fn ports_before_revision_3_are_network_order() {
        let b = sample(2).emit();
        assert_eq!(&b[PORTS + 2..PORTS + 4], &80u16.to_be_bytes());
        let b = sample(3).emit();
        assert_eq!(&b[PORTS + 2..PORTS + 4], &80u16.to_ne_bytes());
    }

    #[test]
    fn invert_without_condition_is_not_canonical() {
        let mut b = vec![0u8; 168];
        b[INVERT_FLAGS] = F_PROTO as u8;
        assert!(matches!(
            Conntrack::parse(Family::V4, 3, &b),
            Err(ParseError::NotCanonical { .. })
        ));
    }

    #[test]
    fn state_bits_differ_from_conntrack_bits() {
        let s = State {
            states: CtStates {
                untracked: true,
                ..Default::default()
            },
        };
        assert_eq!(s.emit()[..4], 64u32.to_ne_bytes());
        let mut bad = s.emit();
        bad[1] = 1;
        assert!(matches!(State::parse(&bad), Err(ParseError::Value { .. })));
    }
}
