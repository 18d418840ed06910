//! Builders for `SET_REPLACE` tables with chosen matches and targets, for tests and tools
//! that put extensions in front of the kernel (`oracle`) and the emulation side by side.

use crate::abi::{self, build, xt_align, Family, Hook, ReplaceHdr, NUMHOOKS, XT_HDR};

/// A match or target: `struct xt_entry_match`/`xt_entry_target` with `payload` padded to
/// `XT_ALIGN`.
pub fn xt_obj(name: &str, revision: u8, payload: &[u8]) -> Vec<u8> {
    let size = XT_HDR + xt_align(payload.len());
    let mut b = vec![0u8; size];
    b[..2].copy_from_slice(&(size as u16).to_ne_bytes());
    abi::put_c_str(&mut b[2..2 + abi::EXTENSION_MAXNAMELEN], name.as_bytes());
    b[XT_HDR - 1] = revision;
    b[XT_HDR..XT_HDR + payload.len()].copy_from_slice(payload);
    b
}

/// The `ipt_ip`/`ip6t_ip6` fields extension checks read.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ip {
    pub proto: u16,
    /// `IPT_F_*`/`IP6T_F_*`; ip6tables sets `IP6T_F_PROTO` (1) with `-p`.
    pub flags: u8,
    /// `IPT_INV_*`; `XT_INV_PROTO` (0x40) is `! -p`.
    pub invflags: u8,
}

impl Ip {
    /// `-p proto` as iptables writes it for the family.
    pub fn proto(family: Family, proto: u16) -> Ip {
        Ip {
            proto,
            flags: if family == Family::V6 { 1 } else { 0 },
            invflags: 0,
        }
    }
}

/// What a rule does.
#[derive(Clone, Debug)]
pub enum Action {
    /// A standard verdict (`abi::VERDICT_*`).
    Verdict(i32),
    /// A jump to a user chain of the table.
    Jump(String),
    /// A target header and payload ([`xt_obj`]).
    Target(Vec<u8>),
    /// No `-j`: libiptc writes a jump to the next entry (the rule only counts).
    Next,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub ip: Ip,
    /// Match headers and payloads ([`xt_obj`]).
    pub matches: Vec<Vec<u8>>,
    pub action: Action,
}

/// A table: rules of built-in chains (by hook; the table's other hooks get empty chains) and
/// user chains; every policy is ACCEPT.
#[derive(Clone, Debug)]
pub struct Table {
    pub family: Family,
    pub name: String,
    pub builtin: Vec<(Hook, Vec<Rule>)>,
    pub user: Vec<(String, Vec<Rule>)>,
}

/// The built-in chains of the standard tables.
pub fn valid_hooks(table: &str) -> u32 {
    use Hook::*;
    let hooks: &[Hook] = match table {
        "filter" | "security" => &[LocalIn, Forward, LocalOut],
        "nat" => &[PreRouting, LocalIn, LocalOut, PostRouting],
        "raw" => &[PreRouting, LocalOut],
        _ => &[PreRouting, LocalIn, Forward, LocalOut, PostRouting],
    };
    hooks.iter().fold(0, |m, h| m | h.bit())
}

fn entry(family: Family, ip: &Ip, matches: &[Vec<u8>], target: &[u8]) -> Vec<u8> {
    let esz = family.entry_size();
    let mut b = build::standard_entry(family, 0);
    b.truncate(esz);
    let (proto, flags, inv, to, no) = match family {
        Family::V4 => (80, 82, 83, 88, 90),
        Family::V6 => (128, 131, 132, 140, 142),
    };
    b[proto..proto + 2].copy_from_slice(&ip.proto.to_ne_bytes());
    b[flags] = ip.flags;
    b[inv] = ip.invflags;
    for m in matches {
        b.extend_from_slice(m);
    }
    let target_offset = b.len();
    b.extend_from_slice(target);
    let next = b.len();
    b[to..to + 2].copy_from_slice(&(target_offset as u16).to_ne_bytes());
    b[no..no + 2].copy_from_slice(&(next as u16).to_ne_bytes());
    b
}

fn standard(v: i32) -> Vec<u8> {
    xt_obj("", 0, &v.to_ne_bytes())
}

impl Table {
    pub fn new(family: Family, name: &str) -> Table {
        Table {
            family,
            name: name.to_string(),
            builtin: Vec::new(),
            user: Vec::new(),
        }
    }

    /// Adds a rule to a built-in chain.
    pub fn rule(mut self, hook: Hook, rule: Rule) -> Table {
        match self.builtin.iter_mut().find(|(h, _)| *h == hook) {
            Some((_, rules)) => rules.push(rule),
            None => self.builtin.push((hook, vec![rule])),
        }
        self
    }

    /// Adds a rule to a user chain, creating it.
    pub fn user_rule(mut self, chain: &str, rule: Rule) -> Table {
        match self.user.iter_mut().find(|(c, _)| c == chain) {
            Some((_, rules)) => rules.push(rule),
            None => self.user.push((chain.to_string(), vec![rule])),
        }
        self
    }

    /// The replace header (`num_counters` 0, no counters pointer) and the entries.
    pub fn build(&self) -> (ReplaceHdr, Vec<u8>) {
        let f = self.family;
        let valid = valid_hooks(&self.name);
        let no_rules = Vec::new();
        // Pass 1: every entry with a placeholder for jumps, to learn the offsets.
        // `at`: the entry's offset in the blob.
        let render = |rule: &Rule, chain_at: &dyn Fn(&str) -> i32, at: usize| {
            let target = match &rule.action {
                Action::Verdict(v) => standard(*v),
                Action::Jump(c) => standard(chain_at(c)),
                Action::Target(t) => t.clone(),
                Action::Next => standard(0),
            };
            let mut e = entry(f, &rule.ip, &rule.matches, &target);
            if let Action::Next = rule.action {
                let (v, next) = (e.len() - target.len() + XT_HDR, (at + e.len()) as i32);
                e[v..v + 4].copy_from_slice(&next.to_ne_bytes());
            }
            e
        };
        let layout = |chain_at: &dyn Fn(&str) -> i32| {
            let mut blob = Vec::new();
            let mut hook_entry = [0u32; NUMHOOKS];
            let mut underflow = [0u32; NUMHOOKS];
            let mut user_at = Vec::new();
            let mut n = 0u32;
            for h in Hook::ALL.into_iter().filter(|h| valid & h.bit() != 0) {
                hook_entry[h as usize] = blob.len() as u32;
                let rules = self
                    .builtin
                    .iter()
                    .find(|(bh, _)| *bh == h)
                    .map_or(&no_rules, |(_, r)| r);
                for r in rules {
                    blob.extend(render(r, chain_at, blob.len()));
                    n += 1;
                }
                underflow[h as usize] = blob.len() as u32;
                blob.extend(build::standard_entry(f, abi::VERDICT_ACCEPT));
                n += 1;
            }
            for (name, rules) in &self.user {
                blob.extend(build::error_entry(f, name.as_bytes()));
                user_at.push((name.clone(), blob.len() as i32));
                for r in rules {
                    blob.extend(render(r, chain_at, blob.len()));
                }
                blob.extend(build::standard_entry(f, abi::VERDICT_RETURN));
                n += rules.len() as u32 + 2;
            }
            blob.extend(build::error_entry(f, b"ERROR"));
            n += 1;
            (blob, hook_entry, underflow, user_at, n)
        };
        let (_, _, _, user_at, _) = layout(&|_| 0);
        let chain_at = |c: &str| {
            user_at
                .iter()
                .find(|(n, _)| n == c)
                .map_or(abi::VERDICT_DROP, |(_, o)| *o)
        };
        let (blob, hook_entry, underflow, _, n) = layout(&chain_at);
        let hdr = ReplaceHdr {
            name: self.name.as_bytes().to_vec(),
            valid_hooks: valid,
            num_entries: n,
            size: blob.len() as u32,
            hook_entry,
            underflow,
            num_counters: 0,
            counters_ptr: 0,
        };
        (hdr, blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{translate, BuiltinOnly};

    #[test]
    fn built_tables_translate_with_reachability() {
        let jump = |c: &str| Rule {
            ip: Ip::default(),
            matches: vec![],
            action: Action::Jump(c.to_string()),
        };
        let t = Table::new(Family::V4, "filter")
            .rule(Hook::LocalIn, jump("web"))
            .rule(Hook::Forward, jump("web"))
            .user_rule(
                "web",
                Rule {
                    ip: Ip::proto(Family::V4, 6),
                    matches: vec![],
                    action: Action::Verdict(abi::VERDICT_DROP),
                },
            )
            .user_rule(
                "unused",
                Rule {
                    ip: Ip::default(),
                    matches: vec![],
                    action: Action::Verdict(abi::VERDICT_DROP),
                },
            );
        let (hdr, blob) = t.build();
        let tr = translate(Family::V4, &hdr, &blob, &BuiltinOnly).unwrap();
        let cf: Vec<u32> = abi::entries(Family::V4, &tr.blob)
            .map(|e| e.comefrom())
            .collect();
        let both = Hook::LocalIn.bit() | Hook::Forward.bit();
        // INPUT jump, policy; FORWARD jump, policy; OUTPUT policy; web head, rule, RETURN;
        // unused head, rule, RETURN; ERROR.
        assert_eq!(cf[5], 0, "chain head");
        assert_eq!(cf[6], both);
        assert_eq!(cf[9], 0, "unreachable rule");
        assert_eq!(cf.len(), 12);
    }
}
