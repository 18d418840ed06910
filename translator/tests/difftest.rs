//! Differential test of the classifier: random rulesets (user chains, jumps, gotos, RETURN,
//! negations, ranges, multiport, flags, icmp types, interfaces, fragments) and packets
//! aimed at the edges of their conditions; the datapath's verdict and counters must equal
//! the reference's (tests/dpcommon: ipt_do_table's first-match semantics). Rulesets are
//! loaded one after the other into the same dataplane, so incremental commits are
//! exercised too.

mod dpcommon;

use std::collections::HashMap;

use dpcommon::*;
use translator::gen::Rng;
use translator::ir::{Ruleset, Verdict};

fn pick<'a, T>(rng: &mut Rng, v: &'a [T]) -> &'a T {
    &v[rng.below(v.len() as u64) as usize]
}

const SRCS: &[(&str, &str)] = &[
    ("10.0.0.0", "255.0.0.0"),
    ("10.1.0.0", "255.255.0.0"),
    ("10.1.2.0", "255.255.255.0"),
    ("10.1.2.3", "255.255.255.255"),
    ("10.0.0.1", "255.0.0.255"),
];
const DSTS: &[(&str, &str)] = &[
    ("172.16.0.0", "255.240.0.0"),
    ("172.16.5.0", "255.255.255.0"),
    ("172.16.5.5", "255.255.255.255"),
];
const RANGES: &[(u16, u16)] = &[(80, 80), (1000, 2000), (22, 22), (0, 1023), (53, 53)];

fn random_rule(rng: &mut Rng, h: H, chain: usize, nchains: usize) -> R {
    let mut r = rule();
    if rng.pct(40) {
        let (a, m) = *pick(rng, SRCS);
        r = r.src(a, m, rng.pct(20));
    }
    if rng.pct(40) {
        let (a, m) = *pick(rng, DSTS);
        r = r.dst(a, m, rng.pct(20));
    }
    if h != H::Out && rng.pct(15) {
        r = r.iif(pick::<&str>(rng, &["eth0", "eth+", "veth1"]), rng.pct(25));
    }
    if h != H::In && rng.pct(15) {
        r = r.oif(pick::<&str>(rng, &["eth1", "eth+", "br0"]), rng.pct(25));
    }
    if rng.pct(8) {
        r = r.frag(rng.pct(30));
    }
    let proto = *pick(rng, &[0u16, 6, 6, 17, 17, 1, 47]);
    let pinv = proto != 0 && rng.pct(10);
    r = r.proto(proto, pinv);
    if !pinv && (proto == 6 || proto == 17) {
        let range = |rng: &mut Rng| {
            if rng.pct(50) {
                (0, 65535)
            } else {
                *pick(rng, RANGES)
            }
        };
        if rng.pct(70) {
            let (sp, dp) = (range(rng), range(rng));
            let inv = (rng.pct(15) as u8) | ((rng.pct(15) as u8) << 1);
            if proto == 6 {
                let flg = if rng.pct(30) { (0x17, 0x02) } else { (0, 0) };
                let inv = inv | if flg.0 != 0 && rng.pct(20) { 4 } else { 0 };
                r = r.m(tcp(sp, dp, flg, inv));
            } else {
                r = r.m(udp(sp, dp, inv));
            }
        }
        if rng.pct(25) {
            let n = 1 + rng.below(3) as usize;
            let items: Vec<(u16, u16)> = (0..n).map(|_| *pick(rng, RANGES)).collect();
            r = r.m(multiport(rng.below(3) as u8, &items, rng.pct(20)));
        }
    }
    if !pinv && proto == 1 && rng.pct(70) {
        let (t, c) = *pick(
            rng,
            &[
                (8u8, (0u8, 255u8)),
                (0xff, (0, 255)),
                (3, (1, 3)),
                (0, (0, 0)),
            ],
        );
        r = r.m(icmp(t, c, rng.pct(20)));
    }
    if rng.pct(10) {
        r = r.m(mark(
            *pick(rng, &[1u32, 0x10]),
            *pick(rng, &[1u32, 0xf0, 0xffffffff]),
            rng.pct(30),
        ));
    }
    if rng.pct(8) {
        r = r.m(length(40, 100, rng.pct(30)));
    }
    if rng.pct(8) {
        r = r.m(ttl(rng.below(4) as u8, 64));
    }
    if rng.pct(8) {
        r = r.m(iprange(
            ("10.1.2.0", "10.1.2.3"),
            ("172.16.5.5", "172.16.5.9"),
            *pick(rng, &[1u8, 2, 3, 0x11, 0x23]),
        ));
    }
    if rng.pct(5) {
        r = r.m(comment("c"));
    }
    // Targets: jumps only forward (user chains 3.. in order), so the graph is acyclic.
    let first_user = 3.max(chain + 1);
    let can_jump = first_user < nchains;
    match rng.below(10) {
        0 | 1 => r.accept(),
        2 | 3 => r.drop(),
        4 => r.ret(),
        5 | 6 if can_jump => r.jump(first_user + rng.below((nchains - first_user) as u64) as usize),
        7 if can_jump => r.goto(first_user + rng.below((nchains - first_user) as u64) as usize),
        8 if proto == 6 && !pinv && rng.pct(50) => r.reject(7),
        8 => r.reject(*pick(rng, &[0u32, 1, 3, 8])),
        _ => r,
    }
}

fn random_ruleset(rng: &mut Rng, h: H) -> Ruleset {
    let nuser = rng.below(5) as usize;
    let nchains = 3 + nuser;
    let mut builtins = [
        (Verdict::Accept, vec![]),
        (Verdict::Accept, vec![]),
        (Verdict::Accept, vec![]),
    ];
    let n = rng.below(10) as usize;
    builtins[h as usize] = (
        if rng.pct(50) {
            Verdict::Accept
        } else {
            Verdict::Drop
        },
        (0..n)
            .map(|_| random_rule(rng, h, h as usize, nchains))
            .collect(),
    );
    let names = ["U0", "U1", "U2", "U3"];
    let user = (0..nuser)
        .map(|i| {
            let n = rng.below(7) as usize;
            (
                names[i],
                (0..n)
                    .map(|_| random_rule(rng, h, 3 + i, nchains))
                    .collect(),
            )
        })
        .collect();
    table(builtins, user)
}

fn random_packet(rng: &mut Rng) -> P {
    let src = *pick(
        rng,
        &[
            "10.1.2.3",
            "10.1.2.4",
            "10.1.3.1",
            "10.2.0.1",
            "10.77.0.1",
            "11.0.0.1",
            "10.1.2.0",
        ],
    );
    let dst = *pick(
        rng,
        &[
            "172.16.5.5",
            "172.16.5.9",
            "172.16.6.1",
            "172.31.0.1",
            "172.15.255.255",
        ],
    );
    let proto = *pick(rng, &[6u8, 6, 17, 17, 1, 47]);
    let mut p = pkt(proto, src, dst);
    let port = |rng: &mut Rng| {
        *pick(
            rng,
            &[
                79u16, 80, 81, 999, 1000, 2000, 2001, 22, 53, 1023, 1024, 40000,
            ],
        )
    };
    p.sport = port(rng);
    p.dport = port(rng);
    p.tcp_flags = *pick(rng, &[0x02u8, 0x12, 0x10, 0x04, 0x01]);
    p.icmp = *pick(rng, &[(8u8, 0u8), (0, 0), (3, 1), (3, 3), (3, 4), (11, 0)]);
    p.mark = *pick(rng, &[0u32, 1, 0x10, 0x11]);
    p.ttl = *pick(rng, &[63u8, 64, 65]);
    p.payload = *pick(rng, &[0usize, 12, 60, 100]);
    p.frag = *pick(rng, &[0u16, 0, 0, 0, 0x2000, 1, 5]);
    if rng.pct(5) {
        p.l4_cut = Some(*pick(rng, &[2usize, 5, 10]));
    }
    p.iif = pick(rng, &["eth0", "eth1", "veth1", "lo"]).to_string();
    p.oif = pick(rng, &["eth1", "eth0", "br0", "br00"]).to_string();
    p
}

#[test]
fn datapath_equals_reference_on_random_rulesets() {
    if !root() {
        return;
    }
    let rounds: u64 = std::env::var("BPFIPT_DIFF_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    for h in H::ALL {
        let mut rng = Rng::new(0x5eed ^ h as u64);
        let mut hn = Harness::new();
        for round in 0..rounds {
            let rs = random_ruleset(&mut rng, h);
            match hn.try_load(&rs) {
                Ok(()) => {}
                // More matches than a record holds: the kernel keeps such a table.
                Err(translator::compile::CompileError::Rule {
                    why: translator::compile::Why::TooManyMatches,
                    ..
                }) => continue,
                Err(e) => panic!("{e}"),
            }
            let base = hn.counters();
            let mut want: HashMap<(String, usize), (u64, u64)> = HashMap::new();
            for i in 0..40 {
                let mut p = random_packet(&mut rng);
                // Fragments of different packets must not make one datagram (INPUT
                // reassembles; the reference classifies packets one by one).
                p.ip_id = (round * 40 + i) as u16;
                let (r, counted) = reference(&rs, h, &p);
                let r = match r {
                    Outcome::Reject(_) => Outcome::Reject(REJECTED),
                    o => o,
                };
                let got = hn.run(h, &p);
                assert_eq!(got, r, "{h:?} round {round}: {p:?}\nruleset {rs:#?}");
                for k in counted {
                    let e = want.entry(k).or_default();
                    e.0 += 1;
                    e.1 += bytes(&p);
                }
            }
            for (k, v) in hn.counters() {
                let b = base[&k];
                let d = (v.0 - b.0, v.1 - b.1);
                assert_eq!(
                    d,
                    want.get(&k).copied().unwrap_or_default(),
                    "{h:?} round {round}: counter {k:?}\nruleset {rs:#?}"
                );
            }
        }
    }
}
