//! BENCH.md B2: classification cost per packet with BPF_PROG_TEST_RUN, measured (not
//! asserted). Run: `cargo test --release -p bpfipt-translator --test bench_b2 -- --ignored
//! --nocapture`, or compat-tests/bench/b2.sh for the table, JSON and plot of all benchmarks.
//! `BPFIPT_B2_RULES` (comma-separated counts) and `BPFIPT_B2_ROUNDS` choose what runs; every
//! round is also printed as a tab-separated `sample` line (case, rules, ns) for b2.sh.

mod dpcommon;

use std::time::Instant;

use dpcommon::*;
use translator::abi::Hook;
use translator::dataplane::{Dataplane, Limits, Prog, SkbCtx};
use translator::gen;
use translator::ir::Verdict;

/// A comma-separated list from the environment, or `default`.
fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .map(|x| x.trim().parse().expect(name))
            .collect(),
        Err(_) => default.to_vec(),
    }
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

#[test]
#[ignore]
fn b2_ns_per_packet() {
    if !root() {
        return;
    }
    let dp = Dataplane::load(Limits {
        slots: 1 << 17,
        list_chunks: 1 << 18,
        addr_classes: 1 << 18,
        ifnames: 64,
        local_addrs: 64,
    })
    .unwrap();
    dp.set_ifname(1, Some("eth0")).unwrap();
    let mut old = translator::compile::Image::default();
    let mut asg = translator::compile::SlotAssignment::default();
    let rounds = env_list("BPFIPT_B2_ROUNDS", &[5])[0];
    println!("rules  compile_ms  miss_ns(med min max)  last_ns(med min max)");
    for n in env_list("BPFIPT_B2_RULES", &[10, 1000, 10000, 50000]) {
        let mut rules = gen::classbench(n - 1, 42);
        rules.push(gen::flow_rule());
        let rs = gen::ruleset(Hook::LocalIn, &rules, Verdict::Accept);
        let t = Instant::now();
        let (img, a) = translator::compile::compile(&rs, &asg).unwrap();
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        dp.commit(&old, &img).unwrap();
        old = img;
        asg = a;
        let miss = pkt(17, "192.0.2.1", "198.51.100.2");
        let last = pkt(17, "192.0.2.1", "198.51.100.1");
        let mut miss_p = miss.clone();
        miss_p.dport = 9;
        let mut last_p = last.clone();
        last_p.dport = 9;
        // The reference agrees on what these packets hit.
        assert_eq!(reference(&rs, H::In, &miss_p).0, Outcome::Accept);
        assert_eq!(
            reference(&rs, H::In, &last_p).1,
            vec![("INPUT".to_string(), n - 1)]
        );
        let mut res = Vec::new();
        for (case, p) in [("miss", &miss_p), ("last", &last_p)] {
            dp.set_local(p.dst, 32, Some(translator::layout::LOCAL_UNICAST))
                .unwrap();
            let mut v = Vec::new();
            for _ in 0..rounds {
                let r = dp
                    .test_run_repeat(
                        Prog::Ingress,
                        &p.frame(),
                        &SkbCtx {
                            ifindex: 1,
                            ..Default::default()
                        },
                        100_000,
                    )
                    .unwrap();
                assert_eq!(r.retval, 0);
                v.push(r.duration.as_nanos() as f64);
                println!("sample\t{case}\t{n}\t{}", r.duration.as_nanos());
            }
            res.push(median(v));
        }
        let slot = asg.rule_slot("INPUT", n - 1).unwrap();
        assert!(
            dp.counter(slot).unwrap().packets >= rounds as u64 * 100_000,
            "the last rule counted"
        );
        println!(
            "{n:>6} {compile_ms:>10.1}  {:>6.0} {:>6.0} {:>6.0}    {:>6.0} {:>6.0} {:>6.0}",
            res[0].0, res[0].1, res[0].2, res[1].0, res[1].1, res[1].2
        );
    }
}

/// Where the fixed cost goes: fallback (no parsing), an empty chain (parse, local lookup,
/// device names), and one chain of 10 rules.
#[test]
#[ignore]
fn b2_breakdown() {
    if !root() {
        return;
    }
    let dp = Dataplane::load(Limits::default()).unwrap();
    dp.set_ifname(1, Some("eth0")).unwrap();
    let p = {
        let mut p = pkt(17, "192.0.2.1", "198.51.100.2");
        p.dport = 9;
        p
    };
    dp.set_local(p.dst, 32, Some(translator::layout::LOCAL_UNICAST))
        .unwrap();
    let ctx = SkbCtx {
        ifindex: 1,
        ..Default::default()
    };
    let run = |label: &str| {
        let v: Vec<f64> = (0..5)
            .map(|_| {
                dp.test_run_repeat(Prog::Ingress, &p.frame(), &ctx, 100_000)
                    .unwrap()
                    .duration
                    .as_nanos() as f64
            })
            .collect();
        let (m, lo, hi) = median(v);
        println!("{label:<28} {m:>6.0} ns ({lo:.0}..{hi:.0})");
    };
    dp.set_fallback(true).unwrap();
    run("fallback");
    dp.set_fallback(false).unwrap();
    let mut old = translator::compile::Image::default();
    let asg = translator::compile::SlotAssignment::default();
    let rs = gen::ruleset(Hook::LocalIn, &[], Verdict::Accept);
    let (img, _) = translator::compile::compile(&rs, &asg).unwrap();
    dp.commit(&old, &img).unwrap();
    old = img;
    run("empty chain (skipped)");
    let rs = gen::ruleset(Hook::LocalIn, &[], Verdict::Drop);
    let (img, _) = translator::compile::compile(&rs, &asg).unwrap();
    dp.commit(&old, &img).unwrap();
    old = img;
    dp.set_local(p.dst, 32, Some(translator::layout::LOCAL_UNICAST))
        .unwrap();
    let (ret, _) = (
        dp.test_run(Prog::Ingress, &p.frame(), &ctx).unwrap().retval,
        (),
    );
    assert_eq!(ret, 2);
    run("empty chain, policy DROP");
    let rules = gen::classbench(10, 42);
    let rs = gen::ruleset(Hook::LocalIn, &rules, Verdict::Drop);
    let (img, _) = translator::compile::compile(&rs, &asg).unwrap();
    dp.commit(&old, &img).unwrap();
    run("10 rules, policy DROP");
}

/// BENCH.md B1 at 0 rules, per program: a forwarded packet (UDP 192.0.2.1 -> 198.51.100.1:9)
/// through ingress (not local: passes) and egress (FORWARD: the flow's ACCEPT, policy DROP),
/// with fw's local routes; then with a local route shorter than /32 outside 127/8, which
/// makes ingress ask the LPM trie after the exact lookup (the cost the trie adds). Medians
/// and minimums of 15 rounds: on a shared machine the minimum is the steadier figure.
#[test]
#[ignore]
fn b1_forwarded_packet() {
    if !root() {
        return;
    }
    use translator::layout::{LOCAL_BROADCAST, LOCAL_UNICAST};
    let dp = Dataplane::load(Limits::default()).unwrap();
    for (a, l, k) in [
        ([127, 0, 0, 0], 8, LOCAL_UNICAST),
        ([127, 0, 0, 1], 32, LOCAL_UNICAST),
        ([127, 255, 255, 255], 32, LOCAL_BROADCAST),
        ([192, 0, 2, 254], 32, LOCAL_UNICAST),
        ([192, 0, 2, 255], 32, LOCAL_BROADCAST),
        ([198, 51, 100, 254], 32, LOCAL_UNICAST),
        ([198, 51, 100, 255], 32, LOCAL_BROADCAST),
    ] {
        dp.set_local(a, l, Some(k)).unwrap();
    }
    let rs = gen::ruleset(Hook::Forward, &[gen::flow_rule()], Verdict::Drop);
    let (img, _) =
        translator::compile::compile(&rs, &translator::compile::SlotAssignment::default()).unwrap();
    dp.commit(&translator::compile::Image::default(), &img)
        .unwrap();
    let mut p = pkt(17, "192.0.2.1", "198.51.100.1");
    p.dport = 9;
    let run = |prog: Prog, ingress_ifindex: u32| {
        let ctx = SkbCtx {
            ifindex: 1,
            ingress_ifindex,
            ..Default::default()
        };
        let r = dp.test_run_repeat(prog, &p.frame(), &ctx, 200_000).unwrap();
        assert_eq!(r.retval, 0, "{prog:?} passes the flow");
        r.duration.as_nanos() as f64
    };
    let measure = |label: &str| {
        let (mut i, mut e) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            i.push(run(Prog::Ingress, 0));
            e.push(run(Prog::Egress, 1));
        }
        let ((im, ilo, ihi), (em, elo, ehi)) = (median(i), median(e));
        println!(
            "{label:<34} ingress {im:>4.0} ns ({ilo:.0}..{ihi:.0})  egress {em:>4.0} ns ({elo:.0}..{ehi:.0})"
        );
    };
    measure("local routes /32 and 127/8");
    dp.set_local([10, 0, 0, 0], 8, Some(LOCAL_UNICAST)).unwrap();
    measure("and 10.0.0.0/8 local (trie asked)");
    dp.set_local([10, 0, 0, 0], 8, None).unwrap();
    measure("10.0.0.0/8 removed again");
}
