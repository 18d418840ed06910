//! ClassBench-like random rules for benchmarks (BENCH.md B1, B2): source and destination
//! prefixes of /16, /24, /32 or wildcard, TCP or UDP, single ports and ranges, with a
//! realistic share of wildcards. Deterministic for a seed. Rules come out as `ir` rules
//! (for the datapath) and as iptables-restore lines (for the kernel backends).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use crate::ir::{self, Ext, IpHeader, Rule, RuleTarget, Verdict};

/// A small deterministic generator (splitmix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability pct/100.
    pub fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

/// One generated 5-tuple rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    /// (address, prefix length); length 0 is a wildcard.
    pub src: (u32, u8),
    pub dst: (u32, u8),
    /// 6 or 17.
    pub proto: u8,
    pub sport: (u16, u16),
    pub dport: (u16, u16),
    pub accept: bool,
}

fn prefix(rng: &mut Rng, base: u32, base_len: u8, wildcard_pct: u64) -> (u32, u8) {
    if rng.pct(wildcard_pct) {
        return (0, 0);
    }
    let len = [16u8, 24, 24, 32, 32][rng.below(5) as usize];
    let host_bits = 32 - base_len as u32;
    let a = base | (rng.next_u64() as u32 & ((1u32 << host_bits) - 1));
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    };
    (a & mask, len)
}

fn ports(rng: &mut Rng, wildcard: u64, single: u64) -> (u16, u16) {
    let r = rng.below(100);
    if r < wildcard {
        (0, 65535)
    } else if r < wildcard + single {
        let well_known = [
            22u16, 25, 53, 80, 110, 123, 143, 443, 993, 3306, 5432, 6379, 8080,
        ];
        if rng.pct(60) {
            let p = well_known[rng.below(well_known.len() as u64) as usize];
            (p, p)
        } else {
            let p = 1024 + rng.below(60000) as u16;
            (p, p)
        }
    } else {
        let lo = rng.below(65000) as u16;
        let w = [1u16, 10, 100, 1000, 10000][rng.below(5) as usize];
        (lo, lo.saturating_add(w))
    }
}

/// `n` rules that never match traffic from 192.0.2.0/24 to 198.51.100.0/24: sources in
/// 10.0.0.0/8 (40 % wildcard), destinations in 172.16.0.0/12 (never a wildcard together with
/// the source), TCP 60 % / UDP 40 %, source ports mostly wildcards, destination ports single
/// (50 %), ranges (30 %) or wildcards (20 %); all DROP.
pub fn classbench(n: usize, seed: u64) -> Vec<Tuple> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let src = prefix(&mut rng, 0x0a00_0000, 8, 40);
            let mut dst = prefix(&mut rng, 0xac10_0000, 12, 10);
            if src.1 == 0 && dst.1 == 0 {
                dst = (0xac10_0000 | (rng.next_u64() as u32 & 0x000f_ff00), 24);
            }
            Tuple {
                src,
                dst,
                proto: if rng.pct(60) { 6 } else { 17 },
                sport: ports(&mut rng, 80, 10),
                dport: ports(&mut rng, 20, 50),
                accept: false,
            }
        })
        .collect()
}

/// The rule that accepts the measured flow (UDP 192.0.2.1 -> 198.51.100.1 port 9).
pub fn flow_rule() -> Tuple {
    Tuple {
        src: (0xc000_0201, 32),
        dst: (0xc633_6401, 32),
        proto: 17,
        sport: (0, 65535),
        dport: (9, 9),
        accept: true,
    }
}

fn a4(a: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

impl Tuple {
    /// As an `ir` rule: `-s -d -p` plus a tcp/udp match (`struct xt_tcp` / `xt_udp`).
    pub fn to_rule(&self) -> Rule {
        let mut d = Vec::new();
        for v in [self.sport.0, self.sport.1, self.dport.0, self.dport.1] {
            d.extend_from_slice(&v.to_ne_bytes());
        }
        // struct xt_tcp / xt_udp, XT_ALIGN'd to 16 bytes.
        d.resize(16, 0);
        let name = if self.proto == 6 { "tcp" } else { "udp" };
        Rule {
            entry: 0,
            key: None,
            ip: IpHeader {
                src: a4(self.src.0),
                smsk: a4(mask(self.src.1)),
                dst: a4(self.dst.0),
                dmsk: a4(mask(self.dst.1)),
                iniface: [0; 16],
                iniface_mask: [0; 16],
                outiface: [0; 16],
                outiface_mask: [0; 16],
                proto: self.proto as u16,
                flags: 0,
                invflags: 0,
                tos: 0,
            },
            matches: vec![Ext {
                name: name.into(),
                revision: 0,
                data: d,
            }]
            .into(),
            target: RuleTarget::Verdict(if self.accept {
                Verdict::Accept
            } else {
                Verdict::Drop
            }),
        }
    }

    /// As an iptables-restore rule line for `chain`.
    pub fn to_restore_line(&self, chain: &str) -> String {
        let mut s = format!("-A {chain}");
        if self.src.1 > 0 {
            let _ = write!(s, " -s {}/{}", Ipv4Addr::from(self.src.0), self.src.1);
        }
        if self.dst.1 > 0 {
            let _ = write!(s, " -d {}/{}", Ipv4Addr::from(self.dst.0), self.dst.1);
        }
        let p = if self.proto == 6 { "tcp" } else { "udp" };
        let _ = write!(s, " -p {p} -m {p}");
        for (opt, r) in [("--sport", self.sport), ("--dport", self.dport)] {
            if r != (0, 65535) {
                if r.0 == r.1 {
                    let _ = write!(s, " {opt} {}", r.0);
                } else {
                    let _ = write!(s, " {opt} {}:{}", r.0, r.1);
                }
            }
        }
        s += if self.accept {
            " -j ACCEPT"
        } else {
            " -j DROP"
        };
        s
    }
}

/// A filter table whose `hook` chain holds `rules` (policy ACCEPT elsewhere).
pub fn ruleset(hook: crate::abi::Hook, rules: &[Tuple], policy: Verdict) -> ir::Ruleset {
    use crate::abi::{Family, Hook};
    let mut entry = 0;
    let mut chains = Vec::new();
    #[allow(clippy::explicit_counter_loop)]
    for h in [Hook::LocalIn, Hook::Forward, Hook::LocalOut] {
        let rs: Vec<Rule> = if h == hook {
            rules
                .iter()
                .map(|t| {
                    let mut r = t.to_rule();
                    r.entry = entry;
                    entry += 1;
                    r
                })
                .collect()
        } else {
            vec![]
        };
        chains.push(ir::Chain {
            name: h.chain_name().into(),
            hook: Some(h),
            policy: Some(if h == hook { policy } else { Verdict::Accept }),
            rules: rs,
            tail_entry: entry,
        });
        entry += 1;
    }
    ir::Ruleset {
        family: Family::V4,
        table: "filter".into(),
        chains,
        hooks: [None, Some(0), Some(1), Some(2), None],
    }
}

/// An iptables-restore file of the filter table with `rules` in `chain`.
pub fn restore_file(chain: &str, rules: &[Tuple], policy: &str) -> String {
    let mut s = String::from("*filter\n");
    for c in ["INPUT", "FORWARD", "OUTPUT"] {
        let p = if c == chain { policy } else { "ACCEPT" };
        let _ = writeln!(s, ":{c} {p} [0:0]");
    }
    for r in rules {
        s += &r.to_restore_line(chain);
        s.push('\n');
    }
    s += "COMMIT\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_shaped() {
        let a = classbench(1000, 7);
        assert_eq!(a, classbench(1000, 7));
        let src_wild = a.iter().filter(|t| t.src.1 == 0).count();
        assert!((300..500).contains(&src_wild), "{src_wild}");
        assert!(a.iter().all(|t| t.src.1 != 0 || t.dst.1 != 0));
        assert!(a.iter().all(|t| t.dst.1 == 0 || t.dst.0 >> 20 == 0xac1));
        assert_eq!(
            flow_rule().to_restore_line("FORWARD"),
            "-A FORWARD -s 192.0.2.1/32 -d 198.51.100.1/32 -p udp -m udp --dport 9 -j ACCEPT"
        );
    }
}
