//! Matches on packet metadata and rates, and the MARK target: `comment`, `mark`/`MARK`
//! (xt_mark.c), `length`, `ttl`/`hl` (xt_hl.c), `limit`, `statistic`.

use std::ops::RangeInclusive;

use super::wire::{canonical, expect_size, known_bits, Rd, Wr};
use super::ParseError;
use crate::check::{Errno, ExtCtx};

/// `XT_MAX_COMMENT_LEN`.
const COMMENT_LEN: usize = 256;

/// `-m comment --comment`: matches every packet. Mirrors `struct xt_comment_info`
/// (include/uapi/linux/netfilter/xt_comment.h).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comment {
    /// The bytes before the first NUL (all 256 if there is none; the kernel does not check).
    pub text: Vec<u8>,
}

impl Comment {
    pub fn parse(data: &[u8]) -> Result<Comment, ParseError> {
        expect_size("comment", data, COMMENT_LEN)?;
        let c = Comment {
            text: Rd(data).c_str(0, COMMENT_LEN),
        };
        canonical("comment", c, Comment::emit, data)
    }

    pub fn emit(&self) -> Vec<u8> {
        Wr::new(COMMENT_LEN)
            .c_str(0, COMMENT_LEN, &self.text)
            .done()
    }
}

/// `-m mark --mark value/mask`: `(skb->mark & mask) == mark`, negated by `invert`.
/// Mirrors `struct xt_mark_mtinfo1` (include/uapi/linux/netfilter/xt_mark.h), revision 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub mark: u32,
    pub mask: u32,
    pub invert: bool,
}

impl Mark {
    pub fn parse(data: &[u8]) -> Result<Mark, ParseError> {
        expect_size("mark", data, 12)?;
        let r = Rd(data);
        let m = Mark {
            mark: r.u32(0),
            mask: r.u32(4),
            invert: r.u8(8) != 0,
        };
        canonical("mark", m, Mark::emit, data)
    }

    pub fn emit(&self) -> Vec<u8> {
        Wr::new(12)
            .u32(0, self.mark)
            .u32(4, self.mask)
            .u8(8, u8::from(self.invert))
            .done()
    }
}

/// `-j MARK`: `skb->mark = (skb->mark & ~mask) ^ mark`. Mirrors `struct xt_mark_tginfo2`
/// (include/uapi/linux/netfilter/xt_mark.h), revision 2, the only one the kernel has and the
/// one iptables 1.8.9 uses for --set-xmark, --set-mark, --and-mark, --or-mark, --xor-mark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkTarget {
    pub mark: u32,
    pub mask: u32,
}

impl MarkTarget {
    pub fn parse(data: &[u8]) -> Result<MarkTarget, ParseError> {
        expect_size("MARK", data, 8)?;
        let r = Rd(data);
        Ok(MarkTarget {
            mark: r.u32(0),
            mask: r.u32(4),
        })
    }

    pub fn emit(&self) -> Vec<u8> {
        Wr::new(8).u32(0, self.mark).u32(4, self.mask).done()
    }
}

/// `-m length --length min:max`: the layer 3 packet length (IPv4 total length, IPv6 payload
/// length plus the header). Mirrors `struct xt_length_info`
/// (include/uapi/linux/netfilter/xt_length.h).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Length {
    pub length: RangeInclusive<u16>,
    pub invert: bool,
}

impl Length {
    pub fn parse(data: &[u8]) -> Result<Length, ParseError> {
        expect_size("length", data, 6)?;
        let r = Rd(data);
        let l = Length {
            length: r.u16_range(0, 2),
            invert: r.u8(4) != 0,
        };
        canonical("length", l, Length::emit, data)
    }

    pub fn emit(&self) -> Vec<u8> {
        Wr::new(6)
            .u16(0, *self.length.start())
            .u16(2, *self.length.end())
            .u8(4, u8::from(self.invert))
            .done()
    }
}

/// How `ttl`/`hl` compare (`IPT_TTL_EQ`.. / `IP6T_HL_EQ`..).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TtlMode {
    Eq,
    Ne,
    Lt,
    Gt,
}

/// `-m ttl` (IPv4 TTL) and `-m hl` (IPv6 hop limit). Mirrors `struct ipt_ttl_info`
/// (netfilter_ipv4/ipt_ttl.h) and `struct ip6t_hl_info` (netfilter_ipv6/ip6t_hl.h).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ttl {
    pub mode: TtlMode,
    pub value: u8,
}

impl Ttl {
    pub fn parse(data: &[u8]) -> Result<Ttl, ParseError> {
        expect_size("ttl", data, 2)?;
        let r = Rd(data);
        let mode = match r.u8(0) {
            0 => TtlMode::Eq,
            1 => TtlMode::Ne,
            2 => TtlMode::Lt,
            3 => TtlMode::Gt,
            v => {
                return Err(ParseError::Value {
                    ext: "ttl",
                    field: "mode",
                    value: v.into(),
                })
            }
        };
        let t = Ttl {
            mode,
            value: r.u8(1),
        };
        canonical("ttl", t, Ttl::emit, data)
    }

    pub fn emit(&self) -> Vec<u8> {
        Wr::new(2).u8(0, self.mode as u8).u8(1, self.value).done()
    }
}

/// `XT_LIMIT_SCALE`: `avg` is in 1/10000 s.
pub const LIMIT_SCALE: u32 = 10000;

/// `-m limit --limit --limit-burst`: a token bucket. Mirrors `struct xt_rateinfo`
/// (include/uapi/linux/netfilter/xt_limit.h); only `avg` and `burst` are the user's
/// (`usersize`), the rest is the kernel's state as the user left it, kept for emit. The kernel
/// uses a nonzero `cost` and its `credit_cap` as given instead of computing them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Average interval between packets, in 1/[`LIMIT_SCALE`] seconds.
    pub avg: u32,
    pub burst: u32,
    pub prev: u64,
    pub credit: u32,
    pub credit_cap: u32,
    pub cost: u32,
    pub master: u64,
}

impl Limit {
    pub fn parse(data: &[u8]) -> Result<Limit, ParseError> {
        expect_size("limit", data, 40)?;
        let r = Rd(data);
        let l = Limit {
            avg: r.u32(0),
            burst: r.u32(4),
            prev: r.u64(8),
            credit: r.u32(16),
            credit_cap: r.u32(20),
            cost: r.u32(24),
            master: r.u64(32),
        };
        canonical("limit", l, Limit::emit, data)
    }

    pub fn emit(&self) -> Vec<u8> {
        Wr::new(40)
            .u32(0, self.avg)
            .u32(4, self.burst)
            .u64(8, self.prev)
            .u32(16, self.credit)
            .u32(20, self.credit_cap)
            .u32(24, self.cost)
            .u64(32, self.master)
            .done()
    }
}

/// `user2credits` of xt_limit.c for a kernel with `HZ` ticks per second; it depends on HZ only
/// through `HZ * CREDITS_PER_JIFFY`.
fn user2credits(user: u32, hz: u32) -> u32 {
    // CREDITS_PER_JIFFY: the power of two at or below 0xFFFFFFFF / (HZ * 86400).
    let max_cpj = 0xFFFF_FFFFu32 / (hz * 60 * 60 * 24);
    let cpj = 1u32 << (31 - max_cpj.leading_zeros());
    let factor = hz * cpj;
    if user > 0xFFFF_FFFF / factor {
        (user / LIMIT_SCALE).wrapping_mul(factor)
    } else {
        user * factor / LIMIT_SCALE
    }
}

/// The configurable HZ values (kernel/Kconfig.hz).
const HZ_CHOICES: [u32; 4] = [100, 250, 300, 1000];

/// `limit_mt_check`: ERANGE for a zero burst or when `avg * burst` overflows the credits.
/// The overflow point depends on the kernel's HZ, which user space cannot read reliably:
/// when the HZ choices disagree the kernel is asked (None).
pub fn check_limit(_ctx: &ExtCtx<'_>, data: &[u8]) -> Option<Result<(), Errno>> {
    let r = Rd(data);
    limit_verdict(r.u32(0), r.u32(4))
}

fn limit_verdict(avg: u32, burst: u32) -> Option<Result<(), Errno>> {
    let overflows =
        |hz| burst == 0 || user2credits(avg.wrapping_mul(burst), hz) < user2credits(avg, hz);
    let first = overflows(HZ_CHOICES[0]);
    if HZ_CHOICES.iter().any(|&hz| overflows(hz) != first) {
        return None;
    }
    Some(if first { Err(libc::ERANGE) } else { Ok(()) })
}

/// What `-m statistic` counts (`enum xt_statistic_mode`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatisticMode {
    /// Matches with probability `probability / 2^31`.
    Random { probability: u32 },
    /// Matches every `every + 1`-th packet (`every` is n-1), `packet` the initial count.
    Nth { every: u32, packet: u32 },
}

const XT_STATISTIC_INVERT: u16 = 0x1;

/// `-m statistic`. Mirrors `struct xt_statistic_info`
/// (include/uapi/linux/netfilter/xt_statistic.h); `master` is the kernel's pointer to its
/// state, outside `usersize`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statistic {
    pub mode: StatisticMode,
    pub invert: bool,
    /// `u.nth.count`, the kernel's starting counter for nth. iptables writes `every - packet`
    /// in both modes, so in random mode it holds the probability (the union's first word).
    pub count: u32,
    pub master: u64,
}

impl Statistic {
    pub fn parse(data: &[u8]) -> Result<Statistic, ParseError> {
        expect_size("statistic", data, 24)?;
        let r = Rd(data);
        known_bits(
            "statistic",
            "flags",
            r.u16(2).into(),
            XT_STATISTIC_INVERT.into(),
        )?;
        let mode = match r.u16(0) {
            0 => StatisticMode::Random {
                probability: r.u32(4),
            },
            1 => StatisticMode::Nth {
                every: r.u32(4),
                packet: r.u32(8),
            },
            v => {
                return Err(ParseError::Value {
                    ext: "statistic",
                    field: "mode",
                    value: v.into(),
                })
            }
        };
        let s = Statistic {
            mode,
            invert: r.u16(2) & XT_STATISTIC_INVERT != 0,
            count: r.u32(12),
            master: r.u64(16),
        };
        canonical("statistic", s, Statistic::emit, data)
    }

    pub fn emit(&self) -> Vec<u8> {
        let mut w = Wr::new(24);
        match self.mode {
            StatisticMode::Random { probability } => {
                w.u16(0, 0).u32(4, probability);
            }
            StatisticMode::Nth { every, packet } => {
                w.u16(0, 1).u32(4, every).u32(8, packet);
            }
        }
        let flags = if self.invert { XT_STATISTIC_INVERT } else { 0 };
        w.u16(2, flags)
            .u32(12, self.count)
            .u64(16, self.master)
            .done()
    }
}

/// `statistic_mt_check`: a known mode and flags (its allocation failure, ENOMEM, is not
/// modeled).
pub fn check_statistic(_ctx: &ExtCtx<'_>, data: &[u8]) -> Result<(), Errno> {
    let r = Rd(data);
    if r.u16(0) > 1 || r.u16(2) & !XT_STATISTIC_INVERT != 0 {
        return Err(libc::EINVAL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_per_jiffy_matches_the_kernel_formula() {
        // HZ=250: MAX_CPJ = 198, CREDITS_PER_JIFFY = 128, so 1/s (avg 10000) is 32000 credits.
        assert_eq!(user2credits(10000, 250), 32000);
        assert_eq!(user2credits(10000, 1000), 32000);
        assert_eq!(user2credits(10000, 100), 25600);
        // Past 0xFFFFFFFF / 32000 the kernel divides first.
        assert_eq!(user2credits(200_000, 250), 20 * 32000);
    }

    #[test]
    fn limit_overflow_is_erange() {
        // 3/hour (avg 12000000), burst 5: fine on every HZ.
        assert_eq!(limit_verdict(12_000_000, 5), Some(Ok(())));
        assert_eq!(limit_verdict(1, 0), Some(Err(libc::ERANGE)));
        // avg * burst wraps to a small number: fewer credits than one packet costs.
        assert_eq!(limit_verdict(0x8000_0000, 2), Some(Err(libc::ERANGE)));
    }

    #[test]
    fn limit_near_the_overflow_point_depends_on_hz() {
        // 0xFFFFFFFF / 32000 = 134217 (HZ 250 and 1000), / 25600 = 167772 (HZ 100): between
        // them HZ 100 multiplies first and HZ 250 divides first.
        let hz100 = user2credits(150_000, 100);
        let hz250 = user2credits(150_000, 250);
        assert_eq!(hz100, 150_000 * 25600 / 10000);
        assert_eq!(hz250, 15 * 32000);
        assert!((0..=u32::MAX)
            .step_by(65_537)
            .any(|avg| limit_verdict(avg, 3).is_none()));
    }

    #[test]
    fn statistic_modes() {
        let s = Statistic {
            mode: StatisticMode::Nth {
                every: 2,
                packet: 1,
            },
            invert: true,
            count: 1,
            master: 0,
        };
        assert_eq!(Statistic::parse(&s.emit()), Ok(s));
        let mut b = vec![0u8; 24];
        b[0] = 2;
        assert!(matches!(
            Statistic::parse(&b),
            Err(ParseError::Value { field: "mode", .. })
        ));
    }
}
