//! The xtables extensions: what the kernel offers, its checks, and typed values.
//!
//! - [`registry`]: every extension the reference kernel registers, with the sizes, table, hook
//!   and protocol restrictions `xt_check_match`/`xt_check_target` enforce, the user-visible
//!   payload size (`usersize`), and which checkentry functions are modeled natively.
//! - [`Registry`] is the [`ExtCheck`] the daemon uses: lookup, generic checks and modeled
//!   checkentry natively with the kernel's errnos; an unmodeled checkentry is
//!   [`ExtVerdict::Unmodeled`] and the kernel decides.
//! - [`Match`] and [`Target`]: a payload as a typed value (`parse`) and back (`emit`), byte for
//!   byte; anything not modeled is kept as `Other`.

mod addr;
pub mod build;
pub mod capture;
mod conntrack;
#[cfg(test)]
mod golden;
mod log;
mod meta;
mod multiport;
mod nat;
pub mod registry;
mod reject;
mod standard;
mod tcpudp;
mod wire;

use std::fmt;

pub use addr::{AddrRange, AddrType, AddrTypes, IpRange};
pub use conntrack::{AddrMask, Conntrack, CtDirection, CtStates, State};
pub use log::{Log, LogFlags};
pub use meta::{
    Comment, Length, Limit, Mark, MarkTarget, Statistic, StatisticMode, Ttl, TtlMode, LIMIT_SCALE,
};
pub use multiport::{Direction as MultiportDirection, Multiport, MultiportV0, PortSpec};
pub use nat::{Nat, NatFlags, NatLayout};
pub use registry::{ExtInfo, Kind, NfProto};
pub use reject::{RejectV4, RejectV6};
pub use tcpudp::{Icmp, Tcp, Udp};

use crate::abi::{Family, XtObj};
use crate::check::{ExtCheck, ExtCtx, ExtVerdict};
use registry::Checkentry;

/// A condition that can be negated (`!`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond<T> {
    pub value: T,
    pub inv: bool,
}

/// Why a payload is not a typed value. The payload itself is fine to keep as `Other`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not `XT_ALIGN(sizeof(struct))` bytes.
    Size {
        ext: &'static str,
        expected: usize,
        actual: usize,
    },
    /// A field holds a value with no typed meaning: unknown flag bits, an enum value the kernel
    /// does not define, a malformed list.
    Value {
        ext: &'static str,
        field: &'static str,
        value: u64,
    },
    /// A byte the typed value does not carry (padding, a field of a condition not in use, the
    /// other member of a union) is not zero, so emit could not give it back.
    NotCanonical { ext: &'static str, offset: usize },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Size {
                ext,
                expected,
                actual,
            } => write!(f, "{ext}: payload of {actual} bytes, expected {expected}"),
            ParseError::Value { ext, field, value } => {
                write!(f, "{ext}: {field} has an unsupported value {value:#x}")
            }
            ParseError::NotCanonical { ext, offset } => {
                write!(
                    f,
                    "{ext}: unexpected nonzero byte at payload offset {offset}"
                )
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// A match payload as a typed value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    Tcp(Tcp),
    Udp(Udp),
    UdpLite(Udp),
    /// IPv4 `icmp`.
    Icmp(Icmp),
    /// IPv6 `icmp6`.
    Icmp6(Icmp),
    Multiport(Multiport),
    MultiportV0(MultiportV0),
    IpRange(IpRange),
    AddrType(AddrType),
    /// Boxed: by far the largest value.
    Conntrack(Box<Conntrack>),
    State(State),
    Comment(Comment),
    Mark(Mark),
    Length(Length),
    /// IPv4 `ttl`.
    Ttl(Ttl),
    /// IPv6 `hl`.
    Hl(Ttl),
    Limit(Limit),
    Statistic(Statistic),
    /// Any other extension, or revision, kept as its payload.
    Other {
        name: String,
        revision: u8,
        data: Vec<u8>,
    },
}

impl Match {
    /// The typed value of a match payload (`data`: the bytes after the 32-byte header) in a
    /// table of `family`. Extensions without a typed value become `Other`.
    pub fn parse(
        family: Family,
        name: &str,
        revision: u8,
        data: &[u8],
    ) -> Result<Match, ParseError> {
        use Family::{V4, V6};
        Ok(match (name, revision, family) {
            ("tcp", 0, _) => Match::Tcp(Tcp::parse(data)?),
            ("udp", 0, _) => Match::Udp(Udp::parse(data)?),
            ("udplite", 0, _) => Match::UdpLite(Udp::parse(data)?),
            ("icmp", 0, V4) => Match::Icmp(Icmp::parse(data)?),
            ("icmp6", 0, V6) => Match::Icmp6(Icmp::parse(data)?),
            ("multiport", 0, _) => Match::MultiportV0(MultiportV0::parse(data)?),
            ("multiport", 1, _) => Match::Multiport(Multiport::parse(data)?),
            ("iprange", 1, _) => Match::IpRange(IpRange::parse(family, data)?),
            ("addrtype", 1, _) => Match::AddrType(AddrType::parse(data)?),
            ("conntrack", 1..=3, _) => {
                Match::Conntrack(Box::new(Conntrack::parse(family, revision, data)?))
            }
            ("state", 0, _) => Match::State(State::parse(data)?),
            ("comment", 0, _) => Match::Comment(Comment::parse(data)?),
            ("mark", 1, _) => Match::Mark(Mark::parse(data)?),
            ("length", 0, _) => Match::Length(Length::parse(data)?),
            ("ttl", 0, V4) => Match::Ttl(Ttl::parse(data)?),
            ("hl", 0, V6) => Match::Hl(Ttl::parse(data)?),
            ("limit", 0, _) => Match::Limit(Limit::parse(data)?),
            ("statistic", 0, _) => Match::Statistic(Statistic::parse(data)?),
            _ => Match::Other {
                name: name.to_string(),
                revision,
                data: data.to_vec(),
            },
        })
    }

    /// [`Match::parse`] of a match header and payload.
    pub fn from_obj(family: Family, m: &XtObj<'_>) -> Result<Match, ParseError> {
        Match::parse(family, &m.name_str(), m.revision(), m.data())
    }

    /// [`Match::parse`], keeping a payload that is not a valid typed value as `Other`.
    pub fn parse_or_other(family: Family, name: &str, revision: u8, data: &[u8]) -> Match {
        Match::parse(family, name, revision, data).unwrap_or_else(|_| Match::Other {
            name: name.to_string(),
            revision,
            data: data.to_vec(),
        })
    }

    /// The extension name in the match header.
    pub fn name(&self) -> &str {
        match self {
            Match::Tcp(_) => "tcp",
            Match::Udp(_) => "udp",
            Match::UdpLite(_) => "udplite",
            Match::Icmp(_) => "icmp",
            Match::Icmp6(_) => "icmp6",
            Match::Multiport(_) | Match::MultiportV0(_) => "multiport",
            Match::IpRange(_) => "iprange",
            Match::AddrType(_) => "addrtype",
            Match::Conntrack(_) => "conntrack",
            Match::State(_) => "state",
            Match::Comment(_) => "comment",
            Match::Mark(_) => "mark",
            Match::Length(_) => "length",
            Match::Ttl(_) => "ttl",
            Match::Hl(_) => "hl",
            Match::Limit(_) => "limit",
            Match::Statistic(_) => "statistic",
            Match::Other { name, .. } => name,
        }
    }

    /// The revision in the match header.
    pub fn revision(&self) -> u8 {
        match self {
            Match::Multiport(_) | Match::IpRange(_) | Match::AddrType(_) | Match::Mark(_) => 1,
            Match::Conntrack(c) => c.revision,
            Match::Other { revision, .. } => *revision,
            _ => 0,
        }
    }

    /// The payload bytes, `XT_ALIGN(size)` long.
    pub fn emit(&self) -> Vec<u8> {
        match self {
            Match::Tcp(m) => m.emit(),
            Match::Udp(m) | Match::UdpLite(m) => m.emit(),
            Match::Icmp(m) | Match::Icmp6(m) => m.emit(),
            Match::Multiport(m) => m.emit(),
            Match::MultiportV0(m) => m.emit(),
            Match::IpRange(m) => m.emit(),
            Match::AddrType(m) => m.emit(),
            Match::Conntrack(m) => m.emit(),
            Match::State(m) => m.emit(),
            Match::Comment(m) => m.emit(),
            Match::Mark(m) => m.emit(),
            Match::Length(m) => m.emit(),
            Match::Ttl(m) | Match::Hl(m) => m.emit(),
            Match::Limit(m) => m.emit(),
            Match::Statistic(m) => m.emit(),
            Match::Other { data, .. } => data.clone(),
        }
    }
}

/// A target payload as a typed value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The standard target: a verdict (`-NF_x - 1`) or a jump's blob offset.
    Standard(i32),
    /// ERROR: a user chain's name, or "ERROR" at the table's end.
    Error(String),
    /// IPv4 REJECT.
    Reject(RejectV4),
    /// IPv6 REJECT.
    Reject6(RejectV6),
    Log(Log),
    Mark(MarkTarget),
    Snat(Nat),
    Dnat(Nat),
    Masquerade(Nat),
    Redirect(Nat),
    /// Any other extension, or revision, kept as its payload.
    Other {
        name: String,
        revision: u8,
        data: Vec<u8>,
    },
}

impl Target {
    /// The typed value of a target payload in a table of `family`.
    pub fn parse(
        family: Family,
        name: &str,
        revision: u8,
        data: &[u8],
    ) -> Result<Target, ParseError> {
        use Family::{V4, V6};
        let nat = |name| NatLayout::of(family, name, revision).map(|l| Nat::parse(family, l, data));
        Ok(match (name, revision, family) {
            ("", 0, _) => Target::Standard(standard::parse_verdict(data)?),
            ("ERROR", 0, _) => Target::Error(standard::parse_error(data)?),
            ("REJECT", 0, V4) => Target::Reject(RejectV4::parse(data)?),
            ("REJECT", 0, V6) => Target::Reject6(RejectV6::parse(data)?),
            ("LOG", 0, _) => Target::Log(Log::parse(data)?),
            ("MARK", 2, _) => Target::Mark(MarkTarget::parse(data)?),
            ("SNAT" | "DNAT" | "MASQUERADE" | "REDIRECT", _, _) if nat(name).is_some() => {
                let n = nat(name).expect("layout checked")?;
                match name {
                    "SNAT" => Target::Snat(n),
                    "DNAT" => Target::Dnat(n),
                    "MASQUERADE" => Target::Masquerade(n),
                    _ => Target::Redirect(n),
                }
            }
            _ => Target::Other {
                name: name.to_string(),
                revision,
                data: data.to_vec(),
            },
        })
    }

    /// [`Target::parse`] of a target header and payload.
    pub fn from_obj(family: Family, t: &XtObj<'_>) -> Result<Target, ParseError> {
        Target::parse(family, &t.name_str(), t.revision(), t.data())
    }

    /// [`Target::parse`], keeping a payload that is not a valid typed value as `Other`.
    pub fn parse_or_other(family: Family, name: &str, revision: u8, data: &[u8]) -> Target {
        Target::parse(family, name, revision, data).unwrap_or_else(|_| Target::Other {
            name: name.to_string(),
            revision,
            data: data.to_vec(),
        })
    }

    /// The extension name in the target header.
    pub fn name(&self) -> &str {
        match self {
            Target::Standard(_) => "",
            Target::Error(_) => "ERROR",
            Target::Reject(_) | Target::Reject6(_) => "REJECT",
            Target::Log(_) => "LOG",
            Target::Mark(_) => "MARK",
            Target::Snat(_) => "SNAT",
            Target::Dnat(_) => "DNAT",
            Target::Masquerade(_) => "MASQUERADE",
            Target::Redirect(_) => "REDIRECT",
            Target::Other { name, .. } => name,
        }
    }

    /// The revision in the target header.
    pub fn revision(&self) -> u8 {
        match self {
            Target::Mark(_) => 2,
            Target::Snat(n) | Target::Dnat(n) => match n.layout {
                NatLayout::Compat => 0,
                NatLayout::Range => 1,
                NatLayout::Range2 => 2,
            },
            Target::Other { revision, .. } => *revision,
            _ => 0,
        }
    }

    /// The payload bytes, `XT_ALIGN(size)` long.
    pub fn emit(&self) -> Vec<u8> {
        match self {
            Target::Standard(v) => standard::emit_verdict(*v),
            Target::Error(name) => standard::emit_error(name),
            Target::Reject(t) => t.emit(),
            Target::Reject6(t) => t.emit(),
            Target::Log(t) => t.emit(),
            Target::Mark(t) => t.emit(),
            Target::Snat(n) | Target::Dnat(n) | Target::Masquerade(n) | Target::Redirect(n) => {
                n.emit()
            }
            Target::Other { data, .. } => data.clone(),
        }
    }
}

/// The registry as an [`ExtCheck`]: `xt_find_*`, `xt_check_match`/`xt_check_target` and the
/// modeled checkentry functions, in the kernel's order.
pub struct Registry;

fn check_obj(ctx: &ExtCtx<'_>, kind: Kind, obj: &XtObj<'_>) -> ExtVerdict {
    let info = match registry::lookup_obj(ctx.family, kind, obj) {
        Ok(info) => info,
        Err(e) => return ExtVerdict::Err(e),
    };
    if let Err(e) = registry::generic_check(info, ctx, obj.size()) {
        return ExtVerdict::Err(e);
    }
    let verdict = |r: Result<(), i32>| match r {
        Ok(()) => ExtVerdict::Ok,
        Err(e) => ExtVerdict::Err(e),
    };
    match info.checkentry {
        Checkentry::None => ExtVerdict::Ok,
        Checkentry::Unmodeled => ExtVerdict::Unmodeled,
        Checkentry::Native(f) => verdict(f(ctx, obj.data())),
        Checkentry::Partial(f) => f(ctx, obj.data()).map_or(ExtVerdict::Unmodeled, verdict),
    }
}

impl ExtCheck for Registry {
    fn check_match(&self, ctx: &ExtCtx<'_>, m: &XtObj<'_>) -> ExtVerdict {
        check_obj(ctx, Kind::Match, m)
    }

    fn check_target(&self, ctx: &ExtCtx<'_>, t: &XtObj<'_>) -> ExtVerdict {
        check_obj(ctx, Kind::Target, t)
    }
}

/// The number of payload bytes the kernel copies back for an extension (`usersize`, or the
/// unaligned struct size when it has no kernel-private tail); the rest up to the aligned size
/// reads as zeroes. `None` when the extension is unknown: the stored payload is returned whole.
pub fn usersize(family: Family, is_target: bool, name: &[u8], revision: u8) -> Option<usize> {
    let kind = if is_target { Kind::Target } else { Kind::Match };
    registry::find_for(family, kind, name, revision).map(|i| i.user_visible())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (family, name, revision) with a typed value, and its payload size.
    const TYPED: &[(Family, Kind, &str, u8, usize)] = &[
        (Family::V4, Kind::Match, "tcp", 0, 16),
        (Family::V6, Kind::Match, "udp", 0, 16),
        (Family::V4, Kind::Match, "udplite", 0, 16),
        (Family::V4, Kind::Match, "icmp", 0, 8),
        (Family::V6, Kind::Match, "icmp6", 0, 8),
        (Family::V4, Kind::Match, "multiport", 0, 32),
        (Family::V6, Kind::Match, "multiport", 1, 48),
        (Family::V4, Kind::Match, "iprange", 1, 72),
        (Family::V6, Kind::Match, "iprange", 1, 72),
        (Family::V6, Kind::Match, "addrtype", 1, 8),
        (Family::V4, Kind::Match, "conntrack", 1, 152),
        (Family::V6, Kind::Match, "conntrack", 2, 160),
        (Family::V4, Kind::Match, "conntrack", 3, 168),
        (Family::V6, Kind::Match, "conntrack", 3, 168),
        (Family::V4, Kind::Match, "state", 0, 8),
        (Family::V4, Kind::Match, "comment", 0, 256),
        (Family::V4, Kind::Match, "mark", 1, 16),
        (Family::V4, Kind::Match, "length", 0, 8),
        (Family::V4, Kind::Match, "ttl", 0, 8),
        (Family::V6, Kind::Match, "hl", 0, 8),
        (Family::V4, Kind::Match, "limit", 0, 40),
        (Family::V4, Kind::Match, "statistic", 0, 24),
        (Family::V4, Kind::Target, "", 0, 8),
        (Family::V6, Kind::Target, "ERROR", 0, 32),
        (Family::V4, Kind::Target, "REJECT", 0, 8),
        (Family::V6, Kind::Target, "REJECT", 0, 8),
        (Family::V4, Kind::Target, "LOG", 0, 32),
        (Family::V4, Kind::Target, "MARK", 2, 8),
        (Family::V4, Kind::Target, "DNAT", 0, 24),
        (Family::V4, Kind::Target, "SNAT", 1, 40),
        (Family::V6, Kind::Target, "DNAT", 2, 48),
        (Family::V4, Kind::Target, "MASQUERADE", 0, 24),
        (Family::V6, Kind::Target, "REDIRECT", 0, 40),
    ];

    /// xorshift64: reproducible bytes without a dependency.
    struct Rng(u64);
    impl Rng {
        fn byte(&mut self) -> u8 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 24) as u8
        }
    }

    fn parse(f: Family, k: Kind, name: &str, rev: u8, data: &[u8]) -> Result<Vec<u8>, ParseError> {
        match k {
            Kind::Match => Match::parse(f, name, rev, data).map(|m| {
                assert!(!matches!(m, Match::Other { .. }), "{name}.{rev}: not typed");
                m.emit()
            }),
            Kind::Target => Target::parse(f, name, rev, data).map(|t| {
                assert!(
                    !matches!(t, Target::Other { .. }),
                    "{name}.{rev}: not typed"
                );
                t.emit()
            }),
        }
    }

    /// Any bytes of any length: a typed value that emits the same bytes, or an error; no panic.
    #[test]
    fn arbitrary_payloads_parse_exactly_or_fail() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for &(f, k, name, rev, size) in TYPED {
            let mut typed = 0;
            for round in 0..2000 {
                let len = match round % 3 {
                    0 => rng.byte() as usize % (size + 16),
                    _ => size,
                };
                // Mostly zero bytes with a few set, so that some payloads are canonical.
                let density = round % 8;
                let data: Vec<u8> = (0..len)
                    .map(|_| {
                        if (rng.byte() as usize % 8) < density.min(1) + density / 4 {
                            rng.byte()
                        } else {
                            0
                        }
                    })
                    .collect();
                if let Ok(out) = parse(f, k, name, rev, &data) {
                    assert_eq!(out, data, "{f} {name}.{rev}");
                    typed += 1;
                }
            }
            assert!(typed > 0, "{f} {name}.{rev}: no payload parsed");
            assert!(
                matches!(
                    parse(f, k, name, rev, &vec![0; size + 8]),
                    Err(ParseError::Size { .. })
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn unknown_extensions_are_kept_as_other() {
        let data = vec![1, 2, 3, 4, 5, 6, 7, 8];
        let m = Match::parse(Family::V4, "u32", 0, &data).unwrap();
        assert_eq!(m.emit(), data);
        assert_eq!((m.name(), m.revision()), ("u32", 0));
        // A known name at a revision without a typed value, and one in the wrong family.
        assert!(matches!(
            Match::parse(Family::V4, "tcp", 1, &data),
            Ok(Match::Other { .. })
        ));
        assert!(matches!(
            Match::parse(Family::V6, "icmp", 0, &data),
            Ok(Match::Other { .. })
        ));
        assert!(matches!(
            Target::parse(Family::V6, "MASQUERADE", 1, &data),
            Ok(Target::Other { .. })
        ));
        // A typed extension whose payload is not a typed value.
        let bad = Match::parse_or_other(Family::V4, "tcp", 0, &[0xff; 16]);
        assert!(matches!(bad, Match::Other { .. }));
        assert_eq!(bad.emit(), vec![0xff; 16]);
    }

    #[test]
    fn usersize_is_the_visible_part() {
        assert_eq!(usersize(Family::V4, false, b"tcp", 0), Some(12));
        assert_eq!(usersize(Family::V6, false, b"limit", 0), Some(8));
        assert_eq!(usersize(Family::V4, true, b"", 0), Some(4));
        assert_eq!(usersize(Family::V4, true, b"ERROR", 0), Some(30));
        assert_eq!(usersize(Family::V6, false, b"icmp", 0), None);
        assert_eq!(usersize(Family::V4, false, b"nonesuch", 0), None);
    }

    #[test]
    fn lookup_falls_back_to_unspec_and_keeps_its_errno() {
        use registry::lookup;
        let field = |n: &str| {
            let mut f = [0u8; 29];
            f[..n.len()].copy_from_slice(n.as_bytes());
            f
        };
        // "icmp" exists for IPv4 only: another revision is ENOENT, not EPROTOTYPE.
        assert_eq!(
            lookup(Family::V4, Kind::Match, &field("icmp"), 1).map(|_| ()),
            Err(libc::ENOENT)
        );
        // "conntrack" is NFPROTO_UNSPEC: revision 0 is EPROTOTYPE.
        assert_eq!(
            lookup(Family::V6, Kind::Match, &field("conntrack"), 0).map(|_| ()),
            Err(libc::EPROTOTYPE)
        );
        assert_eq!(
            lookup(Family::V4, Kind::Match, &[b'a'; 29], 0).map(|_| ()),
            Err(libc::EINVAL)
        );
        let e = lookup(Family::V6, Kind::Target, &field("SNAT"), 2).unwrap();
        assert_eq!((e.family, e.size), (NfProto::Unspec, 44));
    }
}
