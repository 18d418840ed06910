//! BPF_PROG_TEST_RUN tests of connection tracking (ebpf/lib/conntrack.h) and of the
//! `conntrack` and `state` matches on each hook. Every expected state is the one
//! nf_conntrack gives (compat-tests/stateful.sh checks the same situations against the
//! running kernel with real traffic): NEW for an opening packet, ESTABLISHED once the other
//! side answered, RELATED for an ICMP error quoting a known flow, INVALID for what the
//! trackers refuse, and an entry only for an accepted opening packet.

mod dpcommon;

use std::net::IpAddr;

use dpcommon::*;
use translator::abi::Family;
use translator::conntrack::{CtConfig, Filter, Table};
use translator::dataplane::{Prog, SkbCtx};
use translator::ext::{AddrMask, Cond, Conntrack, CtDirection, CtStates, State};
use translator::ir::Verdict::{Accept as A, Drop as D};

use Outcome::{Accept, Drop};

#[derive(Default)]
struct St {
    new: bool,
    est: bool,
    rel: bool,
    inv: bool,
}

fn states(s: St) -> CtStates {
    CtStates {
        invalid: s.inv,
        established: s.est,
        related: s.rel,
        new: s.new,
        ..Default::default()
    }
}

fn ct_empty() -> Conntrack {
    Conntrack {
        revision: 3,
        family: Family::V4,
        state: None,
        proto: None,
        origsrc: None,
        origdst: None,
        replsrc: None,
        repldst: None,
        origsrc_port: None,
        origdst_port: None,
        replsrc_port: None,
        repldst_port: None,
        status: None,
        expires: None,
        direction: None,
        state_alias: false,
    }
}

fn ctm(c: Conntrack) -> translator::ir::Ext {
    ext("conntrack", c.revision, c.emit())
}

fn ctstate(s: St, inv: bool) -> translator::ir::Ext {
    let mut c = ct_empty();
    c.state = Some(Cond {
        value: states(s),
        inv,
    });
    ctm(c)
}

fn state(s: St) -> translator::ir::Ext {
    ext("state", 0, State { states: states(s) }.emit())
}

fn am(a: &str, m: &str) -> AddrMask {
    AddrMask {
        addr: a.parse::<IpAddr>().unwrap(),
        mask: m.parse::<IpAddr>().unwrap(),
        v4_unused: [0; 24],
    }
}

/// The chain of `h` with `rules` and `policy`; the other two chains accept.
fn in_hook(h: H, policy: translator::ir::Verdict, rules: Vec<R>) -> translator::ir::Ruleset {
    let mut b = [(A, vec![]), (A, vec![]), (A, vec![])];
    b[h as usize] = (policy, rules);
    table(b, vec![])
}

/// A harness with the tracker on (as apply turns it on for such a ruleset).
fn harness(cfg: impl FnOnce(&mut CtConfig)) -> (Harness, Table) {
    let hn = Harness::new();
    translator::conntrack::start(&hn.dp, true).unwrap();
    let t = Table {
        ct: hn.dp.map("ct").unwrap(),
        config: hn.dp.map("ct_config").unwrap(),
        count: hn.dp.map("ct_count").unwrap(),
    };
    let mut c = t.config().unwrap();
    cfg(&mut c);
    t.set_config(&c).unwrap();
    (hn, t)
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SYNACK: u8 = 0x12;
const FINACK: u8 = 0x11;
const RST: u8 = 0x04;

fn seg(src: &str, sp: u16, dst: &str, dpt: u16, flags: u8) -> P {
    let mut p = pkt(6, src, dst);
    p.sport = sp;
    p.dport = dpt;
    p.tcp_flags = flags;
    p
}

fn dgram(src: &str, sp: u16, dst: &str, dpt: u16) -> P {
    let mut p = pkt(17, src, dst);
    p.sport = sp;
    p.dport = dpt;
    p
}

/// The other hook a reply of a flow classified at `h` would take (any hook works for the
/// tracker, which is per namespace).
fn back(h: H) -> H {
    match h {
        H::In => H::Out,
        H::Out => H::In,
        H::Fwd => H::Fwd,
    }
}

/// The typical stateful ruleset: ESTABLISHED,RELATED accepted, NEW allowed to tcp/22 and
/// udp/53, INVALID dropped, policy DROP; replies flow through an ACCEPT hook, except on
/// FORWARD where both directions share the chain.
fn typical(h: H, m: fn(St) -> translator::ir::Ext) -> translator::ir::Ruleset {
    in_hook(
        h,
        D,
        vec![
            rule()
                .m(m(St {
                    est: true,
                    rel: true,
                    ..Default::default()
                }))
                .accept(),
            rule()
                .m(m(St {
                    inv: true,
                    ..Default::default()
                }))
                .drop(),
            rule()
                .proto(6, false)
                .m(tcp((0, 0xffff), (22, 22), (0, 0), 0))
                .m(m(St {
                    new: true,
                    ..Default::default()
                }))
                .accept(),
            rule()
                .proto(17, false)
                .m(udp((0, 0xffff), (53, 53), 0))
                .m(m(St {
                    new: true,
                    ..Default::default()
                }))
                .accept(),
        ],
    )
}

fn conntrack_state(m: fn(St) -> translator::ir::Ext) {
    for h in H::ALL {
        let (mut hn, t) = harness(|_| {});
        hn.load(&typical(h, m));
        let r = back(h);
        // A TCP connection to 22: handshake, data, FIN teardown.
        assert_eq!(
            hn.run(h, &seg("10.0.0.1", 1000, "10.0.0.2", 22, SYN)),
            Accept
        );
        assert_eq!(t.count().unwrap(), 1, "{h:?}: the SYN was confirmed");
        assert_eq!(
            hn.run(r, &seg("10.0.0.2", 22, "10.0.0.1", 1000, SYNACK)),
            Accept
        );
        assert_eq!(
            hn.run(h, &seg("10.0.0.1", 1000, "10.0.0.2", 22, ACK)),
            Accept
        );
        assert_eq!(
            hn.run(h, &seg("10.0.0.1", 1000, "10.0.0.2", 22, FINACK)),
            Accept
        );
        assert_eq!(
            hn.run(r, &seg("10.0.0.2", 22, "10.0.0.1", 1000, FINACK)),
            Accept
        );
        assert_eq!(
            hn.run(h, &seg("10.0.0.1", 1000, "10.0.0.2", 22, ACK)),
            Accept
        );
        let f = t.list(&Filter::default()).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].tcp_state, 7, "{h:?}: TIME_WAIT");
        // A closed port: the SYN is NEW and dropped, so no entry; its retry is NEW again.
        let syn23 = seg("10.0.0.1", 1001, "10.0.0.2", 23, SYN);
        assert_eq!(hn.run(h, &syn23), Drop);
        assert_eq!(
            t.count().unwrap(),
            1,
            "{h:?}: a dropped NEW creates nothing"
        );
        // Mid-stream ACK to 22 (loose pickup): NEW, accepted, tracked.
        assert_eq!(
            hn.run(h, &seg("10.0.0.1", 1002, "10.0.0.2", 22, ACK)),
            Accept
        );
        assert_eq!(t.count().unwrap(), 2);
        // SYN/ACK without a SYN, bad flags (SYN+FIN), a bare RST: INVALID, dropped.
        assert_eq!(
            hn.run(h, &seg("10.0.0.1", 1003, "10.0.0.2", 22, SYNACK)),
            Drop
        );
        assert_eq!(
            hn.run(h, &seg("10.0.0.1", 1004, "10.0.0.2", 22, SYN | 0x01)),
            Drop
        );
        assert_eq!(hn.run(h, &seg("10.0.0.1", 1005, "10.0.0.2", 22, RST)), Drop);
        assert_eq!(t.count().unwrap(), 2);
        // UDP: the request is NEW, the reply ESTABLISHED; a request to 54 is dropped, and
        // an answer from 54 then belongs to nothing.
        assert_eq!(hn.run(h, &dgram("10.0.0.1", 5000, "10.0.0.2", 53)), Accept);
        assert_eq!(hn.run(r, &dgram("10.0.0.2", 53, "10.0.0.1", 5000)), Accept);
        if h == H::Fwd {
            assert_eq!(hn.run(h, &dgram("10.0.0.2", 53, "10.0.0.1", 5000)), Accept);
            assert_eq!(hn.run(h, &dgram("10.0.0.2", 54, "10.0.0.1", 5001)), Drop);
        }
        assert_eq!(hn.run(h, &dgram("10.0.0.1", 5001, "10.0.0.2", 54)), Drop);
        // ping: request from the other side is NEW (not allowed); an echo reply that
        // answers nothing is INVALID.
        let mut ping = pkt(1, "10.0.0.1", "10.0.0.2");
        ping.icmp = (8, 0);
        assert_eq!(hn.run(h, &ping), Drop);
        let mut pong = pkt(1, "10.0.0.2", "10.0.0.1");
        pong.icmp = (0, 0);
        assert_eq!(hn.run(h, &pong), Drop);
        // The echo request accepted elsewhere makes the reply ESTABLISHED.
        if h != H::Fwd {
            assert_eq!(hn.run(back(h), &ping), Accept);
            assert_eq!(hn.run(h, &pong), Accept);
        }
    }
}

#[test]
fn conntrack_ctstate_on_each_hook() {
    if !root() {
        return;
    }
    conntrack_state(|s| ctstate(s, false));
}

#[test]
fn state_match_on_each_hook() {
    if !root() {
        return;
    }
    conntrack_state(state);
}

/// An ICMP error built by hand: `outer_src` -> `outer_dst`, type/code, quoting `inner`.
fn icmp_error(outer_src: &str, outer_dst: &str, ty: u8, code: u8, inner: &P) -> Vec<u8> {
    let q = inner.datagram();
    let q = &q[..(20 + 8).min(q.len())];
    let mut l4 = vec![ty, code, 0, 0, 0, 0, 0, 0];
    l4.extend_from_slice(q);
    let c = csum(&l4, 0);
    l4[2..4].copy_from_slice(&c.to_be_bytes());
    let mut p = pkt(1, outer_src, outer_dst);
    p.icmp = (ty, code);
    let mut ip = p.datagram()[..20].to_vec();
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = csum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&l4);
    f
}

#[test]
fn icmp_errors_related_or_invalid() {
    if !root() {
        return;
    }
    let (mut hn, _t) = harness(|_| {});
    // INPUT drops all but RELATED; the flow is opened by OUTPUT (policy ACCEPT).
    hn.load(&in_hook(
        H::In,
        D,
        vec![rule()
            .m(ctstate(
                St {
                    rel: true,
                    ..Default::default()
                },
                false,
            ))
            .accept()],
    ));
    let out = dgram("10.0.0.1", 5000, "10.0.0.2", 9999);
    assert_eq!(hn.run(H::Out, &out), Accept);
    hn.dp
        .set_local([10, 0, 0, 1], 32, Some(translator::layout::LOCAL_UNICAST))
        .unwrap();
    let ctx = SkbCtx {
        mark: 0,
        ifindex: hn.dev,
        ingress_ifindex: 0,
    };
    let run = |f: &[u8]| hn.dp.test_run(Prog::Ingress, f, &ctx).unwrap().retval;
    // Port unreachable from the destination, to the flow's source: RELATED.
    assert_eq!(run(&icmp_error("10.0.0.2", "10.0.0.1", 3, 3, &out)), 0);
    // From a router on the way: RELATED too.
    assert_eq!(run(&icmp_error("10.9.9.9", "10.0.0.1", 11, 0, &out)), 0);
    // Quoting a flow never seen: INVALID.
    let other = dgram("10.0.0.1", 5001, "10.0.0.2", 9999);
    assert_eq!(run(&icmp_error("10.0.0.2", "10.0.0.1", 3, 3, &other)), 2);
    // Addressed elsewhere than the quoted packet's source: INVALID.
    hn.dp
        .set_local([10, 0, 0, 7], 32, Some(translator::layout::LOCAL_UNICAST))
        .unwrap();
    assert_eq!(run(&icmp_error("10.0.0.2", "10.0.0.7", 3, 3, &out)), 2);
}

#[test]
fn udp_flow_expires_to_new() {
    if !root() {
        return;
    }
    let (mut hn, t) = harness(|c| c.set("udp_timeout", 1).unwrap());
    let new_drop = in_hook(
        H::In,
        A,
        vec![rule()
            .m(ctstate(
                St {
                    new: true,
                    ..Default::default()
                },
                false,
            ))
            .drop()],
    );
    hn.load(&new_drop);
    let req = dgram("10.0.0.2", 53, "10.0.0.1", 5000);
    // Opened from OUTPUT; the answer is ESTABLISHED while the flow lives.
    assert_eq!(
        hn.run(H::Out, &dgram("10.0.0.1", 5000, "10.0.0.2", 53)),
        Accept
    );
    assert_eq!(
        hn.run(H::Out, &dgram("10.0.0.1", 5001, "10.0.0.2", 53)),
        Accept
    );
    assert_eq!(hn.run(H::In, &req), Accept);
    assert_eq!(t.count().unwrap(), 2);
    std::thread::sleep(std::time::Duration::from_millis(1300));
    // Idle past udp_timeout: the same packet opens a new flow (dropped here).
    assert_eq!(hn.run(H::In, &req), Drop);
    assert_eq!(t.count().unwrap(), 1);
    assert!(t.list(&Filter::default()).unwrap().is_empty());
    // The garbage collection removes the other expired entry.
    assert_eq!(t.gc().unwrap(), 1);
    assert_eq!(t.count().unwrap(), 0);
}

#[test]
fn table_full_drops_new_flows() {
    if !root() {
        return;
    }
    let (mut hn, t) = harness(|c| c.max = 2);
    hn.load(&in_hook(
        H::In,
        A,
        vec![rule()
            .m(ctstate(
                St {
                    inv: true,
                    ..Default::default()
                },
                false,
            ))
            .drop()],
    ));
    for sp in [1u16, 2] {
        assert_eq!(
            hn.run(H::In, &dgram("10.0.0.1", sp, "10.0.0.2", 53)),
            Accept
        );
    }
    assert_eq!(hn.run(H::In, &dgram("10.0.0.1", 3, "10.0.0.2", 53)), Drop);
    // Known flows still pass.
    assert_eq!(hn.run(H::In, &dgram("10.0.0.1", 1, "10.0.0.2", 53)), Accept);
    assert_eq!(t.delete(&Filter::default()).unwrap(), 2);
    assert_eq!(hn.run(H::In, &dgram("10.0.0.1", 3, "10.0.0.2", 53)), Accept);
}

/// The gc worker's early drop (gc_worker in nf_conntrack_core.c): while the table holds at
/// least `max / 100 * 95` entries, those not assured go, in the walk's order, until fewer
/// remain; assured connections stay. Below a `max` of 100 that threshold is 0: no early drop.
#[test]
fn gc_drops_unassured_entries_above_95_percent() {
    if !root() {
        return;
    }
    for (max, tcp, udp, left) in [(200u32, 5u16, 190u16, 189u64), (50, 0, 50, 50)] {
        let (mut hn, t) = harness(|c| c.max = max);
        hn.load(&in_hook(H::In, A, vec![]));
        for sp in 0..tcp {
            // A handshake: the final ACK makes the connection ASSURED.
            let p = 2000 + sp;
            assert_eq!(
                hn.run(H::In, &seg("10.0.0.1", p, "10.0.0.2", 22, SYN)),
                Accept
            );
            assert_eq!(
                hn.run(H::Out, &seg("10.0.0.2", 22, "10.0.0.1", p, SYNACK)),
                Accept
            );
            assert_eq!(
                hn.run(H::In, &seg("10.0.0.1", p, "10.0.0.2", 22, ACK)),
                Accept
            );
        }
        for sp in 0..udp {
            assert_eq!(
                hn.run(H::In, &dgram("10.0.0.1", 3000 + sp, "10.0.0.2", 53)),
                Accept
            );
        }
        let total = u64::from(tcp + udp);
        assert_eq!(t.count().unwrap(), total);
        assert_eq!(t.gc().unwrap() as u64, total - left, "max {max}");
        assert_eq!(t.count().unwrap(), left);
        let flows = t.list(&Filter::default()).unwrap();
        assert_eq!(flows.len() as u64, left);
        let assured = flows.iter().filter(|f| !f.can_early_drop()).count();
        assert_eq!(
            assured,
            usize::from(tcp),
            "max {max}: every assured connection stays"
        );
        // Below the threshold now: nothing more goes.
        assert_eq!(t.gc().unwrap(), 0);
    }
}

/// --ctproto, --ctorigsrc/dst, --ctreplsrc/dst, the four ports, --ctstatus, --ctexpire,
/// --ctdir, each with and without `!`, on each hook.
#[test]
fn conntrack_tuple_status_expire_dir() {
    if !root() {
        return;
    }
    type Mk = fn(&mut Conntrack, bool);
    let cases: &[(&str, Mk, bool)] = &[
        (
            "ctproto udp",
            |c, i| {
                c.proto = Some(Cond { value: 17, inv: i });
            },
            true,
        ),
        (
            "ctorigsrc 10.0.0.0/24",
            |c, i| {
                c.origsrc = Some(Cond {
                    value: am("10.0.0.0", "255.255.255.0"),
                    inv: i,
                })
            },
            true,
        ),
        (
            "ctorigdst 10.0.0.1",
            |c, i| {
                c.origdst = Some(Cond {
                    value: am("10.0.0.1", "255.255.255.255"),
                    inv: i,
                })
            },
            false,
        ),
        (
            "ctreplsrc 10.0.0.2",
            |c, i| {
                c.replsrc = Some(Cond {
                    value: am("10.0.0.2", "255.255.255.255"),
                    inv: i,
                })
            },
            true,
        ),
        (
            "ctrepldst 10.0.0.1",
            |c, i| {
                c.repldst = Some(Cond {
                    value: am("10.0.0.1", "255.255.255.255"),
                    inv: i,
                })
            },
            true,
        ),
        (
            "ctorigsrcport 5000:5010",
            |c, i| {
                c.origsrc_port = Some(Cond {
                    value: 5000..=5010,
                    inv: i,
                })
            },
            true,
        ),
        (
            "ctorigdstport 53",
            |c, i| {
                c.origdst_port = Some(Cond {
                    value: 53..=53,
                    inv: i,
                })
            },
            true,
        ),
        (
            "ctreplsrcport 53",
            |c, i| {
                c.replsrc_port = Some(Cond {
                    value: 53..=53,
                    inv: i,
                })
            },
            true,
        ),
        (
            "ctrepldstport 5001",
            |c, i| {
                c.repldst_port = Some(Cond {
                    value: 5001..=5001,
                    inv: i,
                })
            },
            false,
        ),
        (
            "ctstatus SEEN_REPLY",
            |c, i| c.status = Some(Cond { value: 2, inv: i }),
            true,
        ),
        (
            "ctstatus CONFIRMED",
            |c, i| c.status = Some(Cond { value: 8, inv: i }),
            true,
        ),
        (
            "ctexpire 25:30",
            |c, i| {
                c.expires = Some(Cond {
                    value: 25..=30,
                    inv: i,
                })
            },
            true,
        ),
        (
            "ctexpire 0:20",
            |c, i| {
                c.expires = Some(Cond {
                    value: 0..=20,
                    inv: i,
                })
            },
            false,
        ),
        (
            "ctdir REPLY",
            |c, _| c.direction = Some(CtDirection::Reply),
            true,
        ),
        (
            "ctdir ORIGINAL",
            |c, _| c.direction = Some(CtDirection::Original),
            false,
        ),
    ];
    for h in H::ALL {
        let (mut hn, t) = harness(|_| {});
        for (name, mk, want) in cases {
            for inv in [false, true] {
                if name.starts_with("ctdir") && inv {
                    continue;
                }
                t.delete(&Filter::default()).unwrap();
                let mut c = ct_empty();
                mk(&mut c, inv);
                // Matching drops, so the outcome shows the match.
                hn.load(&in_hook(h, A, vec![rule().m(ctm(c)).drop()]));
                // The flow 10.0.0.1:5000 -> 10.0.0.2:53 opened on the other side (an ACCEPT
                // hook); the reply 10.0.0.2:53 -> 10.0.0.1:5000 is the packet tested.
                let other = if h == H::Out { H::In } else { H::Out };
                assert_eq!(
                    hn.run(other, &dgram("10.0.0.1", 5000, "10.0.0.2", 53)),
                    Accept
                );
                let got = hn.run(h, &dgram("10.0.0.2", 53, "10.0.0.1", 5000));
                let want = if *want ^ inv { Drop } else { Accept };
                assert_eq!(got, want, "{h:?}: {name} inv={inv}");
            }
        }
    }
}

/// For a packet without a connection (INVALID), conntrack_mt answers "match" only through
/// its state part: every other condition fails, negated or not.
#[test]
fn invalid_packet_matches_only_by_state() {
    if !root() {
        return;
    }
    for h in H::ALL {
        let (mut hn, _t) = harness(|_| {});
        let mut c = ct_empty();
        c.proto = Some(Cond {
            value: 6,
            inv: true,
        });
        let mut d = ct_empty();
        d.origsrc = Some(Cond {
            value: am("10.0.0.0", "255.0.0.0"),
            inv: true,
        });
        d.state = Some(Cond {
            value: states(St {
                inv: true,
                ..Default::default()
            }),
            inv: false,
        });
        hn.load(&in_hook(
            h,
            A,
            vec![
                rule().m(ctm(c)).drop(),
                rule().m(ctm(d)).m(mark(7, 0xff, false)).drop(),
            ],
        ));
        let bad = seg("10.0.0.1", 1, "10.0.0.2", 2, SYNACK);
        assert_eq!(hn.run(h, &bad), Accept, "{h:?}");
        let mut marked = bad.clone();
        marked.mark = 7;
        assert_eq!(hn.run(h, &marked), Drop, "{h:?}");
    }
}

/// Packets the tracker counted as taking the accept-established shortcut (ct_stats).
fn shortcuts(hn: &Harness) -> u64 {
    let fd = hn.dp.map("ct_stats").unwrap();
    let cpus = libc_cpus();
    let mut v = vec![0u8; 8 * cpus];
    let key = 6u32.to_ne_bytes(); // BPFIPT_CTS_SHORTCUT
    assert!(translator::sys::map_lookup_percpu(&fd, &key, &mut v).unwrap());
    v.chunks(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .sum()
}

fn libc_cpus() -> usize {
    // Possible CPUs, as the kernel sizes per-CPU values (/sys/devices/system/cpu/possible).
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    s.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// The accept-established shortcut (an unconditional `--ctstate ESTABLISHED,RELATED -j
/// ACCEPT` first in the chain: established packets skip classification) counts on that rule
/// exactly what ipt_do_table counts: every packet whose state it accepts, with its datagram
/// bytes. With a rule before it (a DROP for one source) there is no shortcut, and the
/// counters are the same. The expected counts follow from the packets sent.
#[test]
fn accept_shortcut_counts_on_its_rule() {
    if !root() {
        return;
    }
    let est_rel = || {
        ctstate(
            St {
                est: true,
                rel: true,
                ..Default::default()
            },
            false,
        )
    };
    let new22 = || {
        rule()
            .proto(6, false)
            .m(tcp((0, 0xffff), (22, 22), (0, 0), 0))
            .m(ctstate(
                St {
                    new: true,
                    ..Default::default()
                },
                false,
            ))
            .accept()
    };
    for (first_drop, want_shortcut) in [(false, true), (true, false)] {
        let mut rules = vec![rule().m(est_rel()).accept(), new22()];
        if first_drop {
            rules.insert(0, rule().src("192.0.2.7", "255.255.255.255", false).drop());
        }
        let at = first_drop as usize;
        let (mut hn, _t) = harness(|_| {});
        hn.load(&in_hook(H::Fwd, D, rules));
        let before = shortcuts(&hn);
        let syn = seg("10.0.0.1", 1000, "10.0.0.2", 22, SYN);
        let mut synack = seg("10.0.0.2", 22, "10.0.0.1", 1000, SYNACK);
        synack.payload = 20;
        let mut data = seg("10.0.0.1", 1000, "10.0.0.2", 22, ACK);
        data.payload = 20 + 300;
        let fin = seg("10.0.0.1", 1000, "10.0.0.2", 22, FINACK);
        for p in [&syn, &synack, &data, &fin] {
            assert_eq!(hn.run(H::Fwd, p), Accept);
        }
        let c = hn.counters();
        let est: u64 = [&synack, &data, &fin].iter().map(|p| bytes(p)).sum();
        assert_eq!(
            c[&("FORWARD".into(), at)],
            (3, est),
            "drop first: {first_drop}"
        );
        assert_eq!(c[&("FORWARD".into(), at + 1)], (1, bytes(&syn)));
        assert_eq!(c[&("FORWARD".into(), usize::MAX)], (0, 0));
        let taken = shortcuts(&hn) - before;
        if want_shortcut {
            assert_eq!(taken, 3, "the established packets took the shortcut");
        } else {
            assert_eq!(taken, 0, "a rule before it: no shortcut");
        }
    }
}

/// BENCH.md B4's per-packet side, measured (not asserted): ns per packet of FORWARD (TC
/// egress, BPF_PROG_TEST_RUN, repeat 100000) for an ACK of an established connection with
/// the B4 ruleset (the shortcut), with a rule before the ESTABLISHED one (classified), and
/// for the SYN (a new connection, never confirmed: TEST_RUN drops nothing but the entry
/// exists after the first run, so the repeats are established too); and with a filter-only
/// ruleset (no tracking). Run: `cargo test --release --test conntrack -- --ignored
/// --nocapture ct_cost`.
#[test]
#[ignore]
fn ct_cost_per_packet() {
    if !root() {
        return;
    }
    let est = || {
        rule()
            .m(ctstate(
                St {
                    est: true,
                    rel: true,
                    ..Default::default()
                },
                false,
            ))
            .accept()
    };
    let syn80 = || {
        rule()
            .proto(6, false)
            .m(tcp((0, 0xffff), (80, 80), (0x17, 0x02), 0))
            .accept()
    };
    let cases: [(&str, Vec<R>); 3] = [
        ("shortcut", vec![est(), syn80()]),
        (
            "classified",
            vec![
                rule().src("192.0.2.7", "255.255.255.255", false).drop(),
                est(),
                syn80(),
            ],
        ),
        (
            "no tracking",
            vec![syn80(), rule().proto(6, false).accept()],
        ),
    ];
    for (name, rules) in cases {
        let (mut hn, _t) = harness(|_| {});
        hn.load(&in_hook(H::Fwd, D, rules));
        let syn = seg("10.0.0.1", 1000, "10.0.0.2", 80, SYN);
        let synack = seg("10.0.0.2", 80, "10.0.0.1", 1000, SYNACK);
        let ack = seg("10.0.0.1", 1000, "10.0.0.2", 80, ACK);
        for p in [&syn, &synack, &ack] {
            assert_eq!(hn.run(H::Fwd, p), Accept, "{name}");
        }
        // The same ACK with timestamps (NOP, NOP, TS), as a Linux peer sends it.
        let mut ack_ts = ack.clone();
        ack_ts.tcp_opts = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
        for (what, p) in [("ACK", &ack), ("ACK with timestamps", &ack_ts)] {
            let mut v = Vec::new();
            for _ in 0..5 {
                let mut frame = p.frame();
                frame[..6].copy_from_slice(&hn.mac);
                let r = hn
                    .dp
                    .test_run_repeat(
                        Prog::Egress,
                        &frame,
                        &SkbCtx {
                            mark: 0,
                            ifindex: hn.dev,
                            ingress_ifindex: hn.in_dev,
                        },
                        100_000,
                    )
                    .unwrap();
                assert_eq!(r.retval, 0);
                v.push(r.duration.as_nanos());
            }
            v.sort();
            println!(
                "{name:>12}: established {what} {} ns (min {} max {})",
                v[2], v[0], v[4]
            );
        }
    }
}
