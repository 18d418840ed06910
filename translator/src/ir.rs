//! Typed rulesets: a validated table blob seen as chains of rules, with jumps resolved to
//! chains. This is what `compile` turns into a dataplane image.
//!
//! iptables (libiptc) lays a table out as: for each chain, its rules, then its tail (the
//! policy of a built-in chain, an unconditional RETURN for a user chain); a user chain starts
//! with an ERROR-target entry carrying its name; the table ends with an ERROR entry named
//! "ERROR". Jumps are entry offsets. A blob the kernel accepts but libiptc would never make
//! (a jump into the middle of a chain, a chain without a tail) is reported as
//! [`IrError::Unstructured`]: such a table can still be enforced by the kernel, not here.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::abi::{self, Entry, Family, Hook, NUMHOOKS};
use crate::kernel::Table;
use crate::layout::FxMap;

/// Index of a chain in [`Ruleset::chains`].
pub type ChainId = usize;

/// The `ipt_ip`/`ip6t_ip6` part of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpHeader {
    pub src: IpAddr,
    pub smsk: IpAddr,
    pub dst: IpAddr,
    pub dmsk: IpAddr,
    pub iniface: [u8; 16],
    pub iniface_mask: [u8; 16],
    pub outiface: [u8; 16],
    pub outiface_mask: [u8; 16],
    pub proto: u16,
    /// `IPT_F_FRAG` (v4) / `IP6T_F_PROTO`, `IP6T_F_TOS` (v6), `IPT_F_GOTO` / `IP6T_F_GOTO`.
    pub flags: u8,
    pub invflags: u8,
    /// IPv6 only: `ip6t_ip6.tos`.
    pub tos: u8,
}

/// `IPT_INV_*` flags (same values for ip6t).
pub mod inv {
    pub const VIA_IN: u8 = 0x01;
    pub const VIA_OUT: u8 = 0x02;
    pub const TOS: u8 = 0x04;
    pub const SRCIP: u8 = 0x08;
    pub const DSTIP: u8 = 0x10;
    pub const FRAG: u8 = 0x20;
    pub const PROTO: u8 = 0x40;
}

/// `IPT_F_FRAG`, `IPT_F_GOTO` (v4); `IP6T_F_PROTO`, `IP6T_F_TOS`, `IP6T_F_GOTO` (v6).
pub mod flag {
    pub const V4_FRAG: u8 = 0x01;
    pub const V4_GOTO: u8 = 0x02;
    pub const V6_PROTO: u8 = 0x01;
    pub const V6_TOS: u8 = 0x02;
    pub const V6_GOTO: u8 = 0x04;
}

impl IpHeader {
    pub fn parse(e: &Entry<'_>) -> IpHeader {
        let b = e.ip();
        let addr = |off: usize| -> IpAddr {
            match e.family {
                Family::V4 => IpAddr::from(<[u8; 4]>::try_from(&b[off..off + 4]).unwrap()),
                Family::V6 => IpAddr::from(<[u8; 16]>::try_from(&b[off..off + 16]).unwrap()),
            }
        };
        let arr = |off: usize| -> [u8; 16] { b[off..off + 16].try_into().unwrap() };
        let (a, ifb) = match e.family {
            Family::V4 => (4, 16),
            Family::V6 => (16, 64),
        };
        IpHeader {
            src: addr(0),
            dst: addr(a),
            smsk: addr(2 * a),
            dmsk: addr(3 * a),
            iniface: arr(ifb),
            outiface: arr(ifb + 16),
            iniface_mask: arr(ifb + 32),
            outiface_mask: arr(ifb + 48),
            proto: e.proto(),
            flags: e.ip_flags(),
            invflags: e.ip_invflags(),
            tos: if e.family == Family::V6 { b[130] } else { 0 },
        }
    }

    pub fn is_goto(&self, family: Family) -> bool {
        let f = match family {
            Family::V4 => flag::V4_GOTO,
            Family::V6 => flag::V6_GOTO,
        };
        self.flags & f != 0
    }
}

/// A match or target payload as stored (typed parsing is `ext`'s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ext {
    pub name: String,
    pub revision: u8,
    pub data: Vec<u8>,
}

impl Ext {
    fn from_obj(o: &abi::XtObj<'_>) -> Ext {
        Ext {
            name: o.name_str(),
            revision: o.revision(),
            data: o.data().to_vec(),
        }
    }
}

/// A standard verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Queue,
}

/// What a rule does when it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleTarget {
    Verdict(Verdict),
    Return,
    Jump(ChainId),
    Goto(ChainId),
    /// A target extension (REJECT, LOG, MARK, DNAT, ...).
    Ext(Ext),
}

/// A rule's byte identity: a 128-bit hash of its entry without what moves when other rules
/// change (counters, `comefrom`, a jump's offset). Equal keys: equal `ip`, matches and
/// target, but for the chain a jump goes to (`Jump(c)` and a rule without `-j` included).
pub type RuleKey = u128;

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Index of the rule's entry in the table (counters are per entry).
    pub entry: usize,
    /// `None` for a rule not read from a blob (tests, `gen`).
    pub key: Option<RuleKey>,
    pub ip: IpHeader,
    /// Shared with the same rule of the previous commit (see [`RuleCache`]).
    pub matches: Matches,
    pub target: RuleTarget,
}

/// A rule's matches, in order; shared (cloning is a reference count).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matches(Arc<[Ext]>);

impl Matches {
    /// Whether both are the same allocation (a rule kept from the previous commit).
    pub fn ptr_eq(&self, o: &Matches) -> bool {
        Arc::ptr_eq(&self.0, &o.0)
    }
}

impl std::ops::Deref for Matches {
    type Target = [Ext];
    fn deref(&self) -> &[Ext] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a Matches {
    type Item = &'a Ext;
    type IntoIter = std::slice::Iter<'a, Ext>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<Vec<Ext>> for Matches {
    fn from(v: Vec<Ext>) -> Matches {
        Matches(v.into())
    }
}

impl FromIterator<Ext> for Matches {
    fn from_iter<I: IntoIterator<Item = Ext>>(i: I) -> Matches {
        Matches(i.into_iter().collect())
    }
}

/// The matches of the rules of the previous commit, by [`RuleKey`]: a one-rule change of a
/// big table parses only the new rule's matches (each is two allocations) and shares the
/// rest. A commit mostly keeps the previous rules in their order, so they are found by a
/// cursor walking the previous rules (sequential, unlike lookups in a map of 10000 keys).
#[derive(Default)]
pub struct RuleCache {
    /// The previous table's rules in entry order.
    prev: Vec<(RuleKey, Matches)>,
    /// This table's, as read so far.
    next: Vec<(RuleKey, Matches)>,
    /// Where in `prev` the next rule is looked for first.
    cursor: usize,
    /// Rules not found near the cursor; past a few, `prev` is indexed by key.
    misses: usize,
    by_key: Option<FxMap<RuleKey, usize>>,
    /// Scratch for the key's bytes.
    buf: Vec<u8>,
}

/// How far past the cursor a rule is looked for (rules deleted in between).
const LOOKAHEAD: usize = 8;
/// Misses (rules added or moved) before the previous rules are indexed by key.
const MISSES_BEFORE_INDEX: usize = 16;

impl RuleCache {
    fn start(&mut self) {
        self.next.clear();
        self.cursor = 0;
        self.misses = 0;
        self.by_key = None;
    }

    fn finish(&mut self) {
        std::mem::swap(&mut self.prev, &mut self.next);
        self.next.clear();
        self.by_key = None;
    }

    /// The key of `e`: its bytes without `comefrom` and counters, and without the verdict of
    /// a standard target that jumps (an offset: it moves when rules are inserted before).
    /// A last byte tells a jump from a verdict: a jump's offset left out as 0xffffffff made
    /// a rule without `-j` the same key as that rule with `-j DROP` (verdict -1).
    fn key(&mut self, e: &Entry<'_>, jumps: bool) -> RuleKey {
        let (cf, esz) = (e.family.offsets().2, e.family.entry_size());
        let b = &mut self.buf;
        b.clear();
        b.extend_from_slice(&e.bytes[..cf]);
        b.extend_from_slice(&e.bytes[esz..]);
        if jumps {
            let v = cf + e.target_offset() - esz + abi::XT_HDR;
            b[v..v + 4].fill(0);
        }
        b.push(jumps as u8);
        xxhash_rust::xxh3::xxh3_128(b)
    }

    fn matches(&mut self, key: RuleKey, e: &Entry<'_>) -> Matches {
        let near = self.prev[self.cursor.min(self.prev.len())..]
            .iter()
            .take(LOOKAHEAD)
            .position(|(k, _)| *k == key)
            .map(|i| self.cursor + i);
        let found = near.or_else(|| {
            self.misses += 1;
            if self.misses < MISSES_BEFORE_INDEX {
                return None;
            }
            let prev = &self.prev;
            let by_key = self.by_key.get_or_insert_with(|| {
                let mut m = FxMap::default();
                m.reserve(prev.len());
                for (i, (k, _)) in prev.iter().enumerate().rev() {
                    m.insert(*k, i);
                }
                m
            });
            by_key.get(&key).copied()
        });
        let m = match found {
            Some(i) => {
                self.cursor = i + 1;
                self.prev[i].1.clone()
            }
            None => e.matches().map(|m| Ext::from_obj(&m)).collect(),
        };
        self.next.push((key, m.clone()));
        m
    }
}

/// A chain: built-in (with a hook and a policy) or user-defined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub hook: Option<Hook>,
    /// The policy of a built-in chain.
    pub policy: Option<Verdict>,
    pub rules: Vec<Rule>,
    /// Index of the tail entry (policy or RETURN), whose counters are the chain's.
    pub tail_entry: usize,
}

/// A table as chains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruleset {
    pub family: Family,
    pub table: String,
    pub chains: Vec<Chain>,
    /// The chain each valid hook enters.
    pub hooks: [Option<ChainId>; NUMHOOKS],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IrError {
    /// The blob is valid for the kernel but not laid out as libiptc lays out chains.
    Unstructured { offset: usize, why: &'static str },
}

impl fmt::Display for IrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IrError::Unstructured { offset, why } => write!(f, "entry at offset {offset}: {why}"),
        }
    }
}

impl std::error::Error for IrError {}

fn verdict(v: i32) -> Option<Verdict> {
    match v {
        abi::VERDICT_ACCEPT => Some(Verdict::Accept),
        abi::VERDICT_DROP => Some(Verdict::Drop),
        abi::VERDICT_QUEUE => Some(Verdict::Queue),
        _ => None,
    }
}

impl Ruleset {
    /// Reads the chains of a validated table.
    pub fn from_table(t: &Table) -> Result<Ruleset, IrError> {
        Ruleset::from_table_cached(t, &mut RuleCache::default())
    }

    /// [`Ruleset::from_table`], sharing the matches of rules `cache` has seen.
    pub fn from_table_cached(t: &Table, cache: &mut RuleCache) -> Result<Ruleset, IrError> {
        cache.start();
        let rs = Ruleset::read(t, cache);
        // A table that is not read whole is not the previous one.
        if rs.is_ok() {
            cache.finish();
        }
        rs
    }

    fn read(t: &Table, cache: &mut RuleCache) -> Result<Ruleset, IrError> {
        let family = t.family;
        let entries: Vec<Entry<'_>> = abi::entries(family, &t.blob).collect();
        let unstructured = |offset: usize, why: &'static str| IrError::Unstructured { offset, why };
        // Chain starts: hook entries and the entry after each user chain head.
        let mut starts: Vec<(usize, String, Option<Hook>)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            for h in Hook::ALL {
                if t.valid_hooks & h.bit() != 0 && t.hook_entry[h as usize] as usize == e.offset {
                    starts.push((i, h.chain_name().to_string(), Some(h)));
                }
            }
            if let Some(name) = e.error_name() {
                if i + 1 < entries.len() {
                    starts.push((i + 1, String::from_utf8_lossy(name).into_owned(), None));
                }
            }
        }
        starts.sort_by_key(|s| s.0);
        // Offsets of chain starts, to resolve jumps.
        let chain_at = |offset: usize| {
            starts
                .iter()
                .position(|(i, _, _)| entries[*i].offset == offset)
        };
        let mut chains = Vec::with_capacity(starts.len());
        let mut hooks = [None; NUMHOOKS];
        for (ci, (first, name, hook)) in starts.iter().enumerate() {
            if let Some(h) = hook {
                hooks[*h as usize] = Some(ci);
            }
            // At most the entries up to the next chain (10000 rules: no regrowth of 2 MB).
            let bound = starts.get(ci + 1).map_or(entries.len(), |s| s.0);
            let mut rules = Vec::with_capacity(bound.saturating_sub(*first));
            let mut i = *first;
            let tail;
            loop {
                let Some(e) = entries.get(i) else {
                    return Err(unstructured(
                        entries.last().map_or(0, |e| e.offset),
                        "chain without a tail",
                    ));
                };
                if e.error_name().is_some() {
                    return Err(unstructured(e.offset, "chain without a tail"));
                }
                let std = e.standard_verdict();
                let is_tail = e.unconditional()
                    && e.matches().next().is_none()
                    && std.is_some_and(|v| v < 0)
                    && {
                        // A built-in chain's tail is its underflow; a user chain's is RETURN.
                        match hook {
                            Some(h) => t.underflow[*h as usize] as usize == e.offset,
                            None => std == Some(abi::VERDICT_RETURN),
                        }
                    };
                if is_tail {
                    tail = i;
                    break;
                }
                let ip = IpHeader::parse(e);
                let target = match std {
                    Some(abi::VERDICT_RETURN) => RuleTarget::Return,
                    Some(v) if v < 0 => RuleTarget::Verdict(
                        verdict(v).ok_or(unstructured(e.offset, "unknown verdict"))?,
                    ),
                    Some(v) => {
                        let next = e.offset + e.next_offset();
                        if v as usize == next && !ip.is_goto(family) {
                            // A jump to the next entry is how libiptc writes a rule without a
                            // target ("-j" omitted): it only counts.
                            RuleTarget::Jump(usize::MAX)
                        } else {
                            let c = chain_at(v as usize)
                                .ok_or(unstructured(e.offset, "jump into the middle of a chain"))?;
                            if ip.is_goto(family) {
                                RuleTarget::Goto(c)
                            } else {
                                RuleTarget::Jump(c)
                            }
                        }
                    }
                    None => RuleTarget::Ext(Ext::from_obj(&e.target().expect("validated"))),
                };
                let key = cache.key(e, std.is_some_and(|v| v >= 0));
                rules.push(Rule {
                    entry: i,
                    key: Some(key),
                    ip,
                    matches: cache.matches(key, e),
                    target,
                });
                i += 1;
            }
            let policy = hook.and_then(|_| entries[tail].standard_verdict().and_then(verdict));
            chains.push(Chain {
                name: name.clone(),
                hook: *hook,
                policy,
                rules,
                tail_entry: tail,
            });
        }
        Ok(Ruleset {
            family,
            table: t.name.clone(),
            chains,
            hooks,
        })
    }

    pub fn chain_by_name(&self, name: &str) -> Option<ChainId> {
        self.chains.iter().position(|c| c.name == name)
    }
}

/// The target "continue with the next rule" (a rule without `-j`), see `from_table`.
pub const NO_TARGET: ChainId = usize::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_table_has_three_empty_chains() {
        let t = Table::initial(Family::V4, "filter", 0b01110);
        let r = Ruleset::from_table(&t).unwrap();
        let names: Vec<_> = r
            .chains
            .iter()
            .map(|c| (c.name.as_str(), c.policy, c.rules.len()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("INPUT", Some(Verdict::Accept), 0),
                ("FORWARD", Some(Verdict::Accept), 0),
                ("OUTPUT", Some(Verdict::Accept), 0)
            ]
        );
        assert_eq!(r.hooks, [None, Some(0), Some(1), Some(2), None]);
    }
}

#[cfg(test)]
mod golden {
    use super::*;
    use crate::kernel::Netns;

    /// Loads a capture made by `bpfipt kernel-dump` (comment lines, getinfo hex, entries hex)
    /// into an emulated namespace through SET_REPLACE, as iptables would.
    pub fn load_capture(family: Family, text: &str) -> Table {
        let mut lines = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty());
        let unhex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let info = abi::GetInfo::parse(&unhex(lines.next().unwrap())).unwrap();
        let entries = unhex(lines.next().unwrap());
        let hdr = abi::ReplaceHdr {
            name: info.name.clone(),
            valid_hooks: info.valid_hooks,
            num_entries: info.num_entries,
            size: info.size,
            hook_entry: info.hook_entry,
            underflow: info.underflow,
            num_counters: 4,
            counters_ptr: 0,
        };
        let mut buf = hdr.emit();
        buf.extend_from_slice(&entries);
        let mut ns = Netns::default();
        let mut no_kernel = |_: &abi::ReplaceHdr, _: &[u8]| Ok(());
        let r = ns
            .setsockopt_replace(
                family,
                buf.len(),
                &buf,
                &crate::ext::Registry,
                &mut no_kernel,
            )
            .unwrap();
        r.table
    }

    #[test]
    fn chains_jumps_gotos_and_returns() {
        // Rules in the file's header comment.
        let t = load_capture(
            Family::V4,
            include_str!("../tests/data/filter-chains.v4.hex"),
        );
        let r = Ruleset::from_table(&t).unwrap();
        let names: Vec<&str> = r.chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["INPUT", "FORWARD", "OUTPUT", "OTHER", "USER"]);
        let input = &r.chains[0];
        assert_eq!(input.policy, Some(Verdict::Drop));
        assert_eq!(input.rules.len(), 4);
        assert_eq!(&input.rules[0].ip.iniface[..3], b"lo\0");
        assert_eq!(input.rules[0].target, RuleTarget::Verdict(Verdict::Accept));
        assert_eq!(input.rules[1].target, RuleTarget::Jump(4));
        assert_eq!(input.rules[1].matches[0].name, "tcp");
        assert_eq!(input.rules[2].target, RuleTarget::Goto(3));
        assert_eq!(input.rules[3].target, RuleTarget::Jump(NO_TARGET));
        let user = &r.chains[4];
        assert_eq!(user.rules[0].target, RuleTarget::Return);
        assert_eq!(
            user.rules[0].ip.src,
            "192.168.0.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            user.rules[0].ip.smsk,
            "255.255.0.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(user.policy, None);
        match &r.chains[3].rules[0].target {
            RuleTarget::Ext(e) => assert_eq!(e.name, "REJECT"),
            t => panic!("OTHER's rule target is {t:?}"),
        }
    }
}
