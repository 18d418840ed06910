//! The daemon's work for a one-rule commit on a 10000-rule FORWARD chain, without a kernel:
//! validation (`Netns::setsockopt_replace`), `ir`, `compile`. Rule identity by bytes is
//! asserted; the timings (BENCH.md B3) are printed by the ignored test.

use std::time::Duration;

use translator::abi::{self, Family, Hook, ReplaceHdr};
use translator::compile::{self, SlotAssignment};
use translator::ext::build;
use translator::ext::Registry;
use translator::gen::{self, Tuple};
use translator::ir::{self, RuleCache, RuleTarget, Ruleset};
use translator::kernel::{Netns, Table};

fn rule(t: &Tuple) -> build::Rule {
    let mut d = Vec::new();
    for v in [t.sport.0, t.sport.1, t.dport.0, t.dport.1] {
        d.extend_from_slice(&v.to_ne_bytes());
    }
    d.resize(12, 0);
    build::Rule {
        ip: build::Ip::proto(Family::V4, t.proto as u16),
        matches: vec![build::xt_obj(
            if t.proto == 6 { "tcp" } else { "udp" },
            0,
            &d,
        )],
        action: build::Action::Verdict(if t.accept {
            abi::VERDICT_ACCEPT
        } else {
            abi::VERDICT_DROP
        }),
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

/// The filter table with `tuples` in FORWARD, about a third of them jumping to a user chain
/// `web` instead (so jump offsets move when a rule is inserted), as SET_REPLACE's buffer.
fn replace_buf(tuples: &[Tuple], num_counters: u32) -> Vec<u8> {
    let mut t = build::Table::new(Family::V4, "filter");
    for tp in tuples {
        let mut r = rule(tp);
        if tp.src.0 % 3 == 1 {
            r.action = build::Action::Jump("web".into());
        }
        t = t.rule(Hook::Forward, r);
    }
    t = t.user_rule("web", rule(&gen::flow_rule()));
    let (mut hdr, mut blob) = t.build();
    // Addresses: ipt_ip's src, dst, smsk, dmsk in network order.
    let offsets: Vec<usize> = abi::entries(Family::V4, &blob).map(|e| e.offset).collect();
    // INPUT's policy, FORWARD's rules, its policy, OUTPUT's, web's head, web's rule, ...
    let web = gen::flow_rule();
    let at = tuples
        .iter()
        .zip(&offsets[1..])
        .chain([(&web, &offsets[offsets.len() - 3])]);
    for (tp, off) in at {
        for (i, v) in [tp.src.0, tp.dst.0, mask(tp.src.1), mask(tp.dst.1)]
            .into_iter()
            .enumerate()
        {
            blob[off + 4 * i..off + 4 * i + 4].copy_from_slice(&v.to_be_bytes());
        }
    }
    hdr.num_counters = num_counters;
    let mut buf = hdr.emit();
    buf.extend_from_slice(&blob);
    buf
}

/// SET_REPLACE as the daemon does it: validate, then install.
fn replace<'a>(ns: &'a mut Netns, buf: &[u8]) -> &'a Table {
    let mut no_kernel = |_: &ReplaceHdr, _: &[u8]| Ok(());
    let r = ns
        .setsockopt_replace(Family::V4, buf.len(), buf, &Registry, &mut no_kernel)
        .unwrap();
    ns.install(r.table);
    &ns.family(Family::V4).tables["filter"]
}

fn number(ns: &mut Netns) -> u32 {
    ns.find_table(Family::V4, b"filter").unwrap().0.number
}

#[test]
fn unchanged_rules_share_their_matches_across_commits() {
    let mut tuples = gen::classbench(300, 1);
    let mut ns = Netns::default();
    let n = number(&mut ns);
    let t = replace(&mut ns, &replace_buf(&tuples, n));
    let mut cache = RuleCache::default();
    let a = Ruleset::from_table_cached(t, &mut cache).unwrap();
    // -I FORWARD 1: every entry and every jump offset moves.
    tuples.insert(0, gen::flow_rule());
    let n = number(&mut ns);
    let t2 = replace(&mut ns, &replace_buf(&tuples, n));
    let b = Ruleset::from_table_cached(t2, &mut cache).unwrap();
    // The same rules read without the cache: the same ruleset.
    assert_eq!(b, Ruleset::from_table(t2).unwrap());
    let (fa, fb) = (&a.chains[1].rules, &b.chains[1].rules);
    assert_eq!(fb.len(), fa.len() + 1);
    for (x, y) in fa.iter().zip(&fb[1..]) {
        assert_eq!(x.key, y.key, "rule {} moved down by one", x.entry);
        assert!(x.matches.ptr_eq(&y.matches));
    }
    assert!(fa.iter().any(|r| r.target == RuleTarget::Jump(3)));
    assert_ne!(fb[0].key, fb[1].key);
    // Equal bytes, equal key: the flow rule is also `web`'s rule.
    assert_eq!(fb[0].key, b.chains[3].rules[0].key);
    assert!(fb.iter().all(|r| r.key.is_some()));
    // Compiling with byte identities keeps every unchanged rule's slot.
    let (_, asg) = compile::compile(&a, &SlotAssignment::default()).unwrap();
    let (_, asg2) = compile::compile(&b, &asg).unwrap();
    for i in 0..fa.len() {
        assert_eq!(
            asg.rule_slot("FORWARD", i),
            asg2.rule_slot("FORWARD", i + 1)
        );
    }
}

/// `-A OUTPUT` plus what a rule does: `-j DROP`, no `-j`, `-g uc`, ...
fn any(action: build::Action) -> build::Rule {
    let goto = matches!(&action, build::Action::Jump(c) if c.starts_with("goto:"));
    let action = match action {
        build::Action::Jump(c) => build::Action::Jump(c.trim_start_matches("goto:").into()),
        a => a,
    };
    build::Rule {
        ip: build::Ip {
            flags: if goto { ir::flag::V4_GOTO } else { 0 },
            ..Default::default()
        },
        matches: Vec::new(),
        action,
    }
}

/// The filter table with `output` in OUTPUT and a user chain `uc` (one DROP rule).
fn output_buf(output: Vec<build::Rule>, num_counters: u32) -> Vec<u8> {
    let mut t = build::Table::new(Family::V4, "filter");
    for r in output {
        t = t.rule(Hook::LocalOut, r);
    }
    t = t.user_rule("uc", any(build::Action::Verdict(abi::VERDICT_DROP)));
    let (mut hdr, blob) = t.build();
    hdr.num_counters = num_counters;
    let mut buf = hdr.emit();
    buf.extend_from_slice(&blob);
    buf
}

/// The actions of rules that differ only in their standard target.
fn actions() -> Vec<(&'static str, build::Action)> {
    use build::Action::*;
    vec![
        ("-j DROP", Verdict(abi::VERDICT_DROP)),
        ("no -j", Next),
        ("-j ACCEPT", Verdict(abi::VERDICT_ACCEPT)),
        ("-j RETURN", Verdict(abi::VERDICT_RETURN)),
        ("-j uc", Jump("uc".into())),
        ("-g uc", Jump("goto:uc".into())),
    ]
}

/// A rule key leaves a jump's offset out, but not the verdict of ACCEPT, DROP or RETURN:
/// with the offset's bytes set to 0xff, a rule without `-j` had the key of the same rule
/// with `-j DROP` (whose verdict, -NF_DROP - 1, is all ones).
#[test]
fn rule_keys_tell_verdicts_from_jumps() {
    let mut ns = Netns::default();
    let mut keys = Vec::new();
    for (what, a) in actions() {
        let n = number(&mut ns);
        let t = replace(&mut ns, &output_buf(vec![any(a)], n));
        let rs = Ruleset::from_table(t).unwrap();
        let out = rs.chain_by_name("OUTPUT").unwrap();
        keys.push((what, rs.chains[out].rules[0].key.unwrap()));
    }
    for (i, (w1, k1)) in keys.iter().enumerate() {
        for (w2, k2) in &keys[i + 1..] {
            // A jump and a rule without -j are both jumps; compile adds the target chain.
            let both_jumps = [w1, w2].iter().all(|w| ["no -j", "-j uc"].contains(w));
            assert_eq!(k1 == k2, both_jumps, "keys of `{w1}` and `{w2}`");
        }
    }
}

/// Each chain's rule records as compiled, a jump's chain id replaced by the chain's name.
fn records(rs: &Ruleset, img: &compile::Image, asg: &SlotAssignment) -> Vec<(String, Vec<String>)> {
    let name = |id: u32| {
        rs.chains
            .iter()
            .find(|c| asg.chain_id(&c.name) == Some(id))
            .map_or(String::new(), |c| c.name.clone())
    };
    rs.chains
        .iter()
        .map(|c| {
            let ci = &img.chains[&asg.chain_id(&c.name).unwrap()];
            let recs = ci
                .rules()
                .map(|(_, r)| {
                    use std::hash::{Hash, Hasher};
                    let mut r = *r;
                    // Ids 0-2 are the built-in chains, which nothing jumps to.
                    let to = std::mem::take(&mut r.chain);
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    r.hash(&mut h);
                    let to = if to < 3 { "-".into() } else { name(to) };
                    format!("target {} to {to} (record {:016x})", r.target, h.finish())
                })
                .collect();
            (c.name.clone(), recs)
        })
        .collect()
}

/// A commit compiled on the previous one (rules kept by identity) gives the records a
/// compile from scratch gives, through every change of a rule's standard target: the
/// identity must see `-j DROP` become no `-j` (difftest seed 1, ruleset 53 after 52).
#[test]
fn incremental_compile_follows_target_changes() {
    let acts = actions();
    let mut ns = Netns::default();
    let mut cache = RuleCache::default();
    let mut asg = SlotAssignment::default();
    // Every ordered pair of actions, on a rule alone and on one before a kept rule.
    for (i, (w1, a1)) in acts.iter().enumerate() {
        for (w2, a2) in acts.iter().skip(i + 1).chain(acts.iter().take(i)) {
            for (what, a) in [(w1, a1), (w2, a2)] {
                let kept = any(build::Action::Verdict(abi::VERDICT_ACCEPT));
                let n = number(&mut ns);
                let t = replace(&mut ns, &output_buf(vec![any(a.clone()), kept], n));
                let rs = Ruleset::from_table_cached(t, &mut cache).unwrap();
                let (img, a) = compile::compile(&rs, &asg).unwrap();
                asg = a;
                let fresh = Ruleset::from_table(t).unwrap();
                let (img0, asg0) = compile::compile(&fresh, &SlotAssignment::default()).unwrap();
                assert_eq!(
                    records(&rs, &img, &asg),
                    records(&fresh, &img0, &asg0),
                    "`{what}` after `{w1}`/`{w2}`"
                );
            }
        }
    }
}

/// CPU time of this thread: the machine is shared, wall time would count other processes.
fn cpu_now() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `cargo test --release -p bpfipt-translator --test commit_path -- --ignored --nocapture`
#[test]
#[ignore]
fn one_rule_commit_phases_on_10000_rules() {
    let mut tuples = gen::classbench(10000, 1);
    let mut ns = Netns::default();
    let n = number(&mut ns);
    let t = replace(&mut ns, &replace_buf(&tuples, n));
    let mut cache = RuleCache::default();
    let rs = Ruleset::from_table_cached(t, &mut cache).unwrap();
    let (_, mut asg) = compile::compile(&rs, &SlotAssignment::default()).unwrap();
    let (mut val, mut ir, mut comp) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..20 {
        // Alternately -I FORWARD 1 and -D FORWARD 1.
        if round % 2 == 0 {
            let mut x = gen::flow_rule();
            x.dport = (7, 7 + round as u16);
            tuples.insert(0, x);
        } else {
            tuples.remove(0);
        }
        let n = number(&mut ns);
        let buf = replace_buf(&tuples, n);
        let t0 = cpu_now();
        let t = replace(&mut ns, &buf);
        let t1 = cpu_now();
        let rs = Ruleset::from_table_cached(t, &mut cache).unwrap();
        let t2 = cpu_now();
        let (_, a) = compile::compile(&rs, &asg).unwrap();
        let t3 = cpu_now();
        asg = a;
        val.push(t1 - t0);
        ir.push(t2 - t1);
        comp.push(t3 - t2);
    }
    eprintln!(
        "one-rule commit on 10000 rules (CPU time, median of 20): validate+install {:?}, ir {:?}, compile {:?}",
        median(val),
        median(ir),
        median(comp)
    );
}
