//! REJECT replies built by the datapath, checked byte by byte against what icmp_send and
//! nf_send_reset build (net/ipv4/icmp.c, net/ipv4/netfilter/nf_reject_ipv4.c), in a private
//! network namespace so route lookups see only what the test sets up.

mod dpcommon;

use dpcommon::*;
use translator::dataplane::TC_ACT_REDIRECT;
use translator::ir::Verdict::Accept as A;
use translator::layout::Reason;

/// Runs `f` in a thread inside a new network namespace with lo up and dummy0 =
/// 192.0.2.1/24 (nothing to clean up: the namespace dies with the thread).
fn in_netns(f: impl FnOnce() + Send + 'static) {
    in_netns_with(&["sysctl -qw net.ipv4.ip_forward=1"], f)
}

/// `in_netns` with `extra` commands run after the set-up.
fn in_netns_with(extra: &'static [&'static str], f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        for cmd in [
            "ip link set lo up",
            "ip link add dummy0 address 02:00:00:00:00:01 type veth peer name dummy1",
            "ip link set dummy1 up",
            "ip addr add 192.0.2.1/24 dev dummy0",
            "ip link set dummy0 up",
        ]
        .iter()
        .chain(extra.iter())
        {
            let args: Vec<&str> = cmd.split(' ').collect();
            let st = std::process::Command::new(args[0])
                .args(&args[1..])
                .status()
                .unwrap();
            assert!(st.success(), "{cmd}");
        }
        f()
    })
    .join()
    .unwrap();
}

/// A harness whose packets arrive on dummy0 (the reverse path of replies).
fn harness() -> Harness {
    let mut hn = Harness::new();
    // SAFETY: if_nametoindex reads a NUL-terminated name.
    let idx = unsafe { libc::if_nametoindex(c"dummy0".as_ptr()) };
    assert!(idx > 0);
    hn.dev = idx;
    hn.in_dev = idx;
    hn.mac = [2, 0, 0, 0, 0, 1];
    hn
}

fn rs_reject(h: H, with: u32) -> translator::ir::Ruleset {
    let mut b = [(A, vec![]), (A, vec![]), (A, vec![])];
    b[h as usize].1 = vec![rule().reject(with)];
    table(b, vec![])
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}

/// Checks an IPv4 header at `ip` and returns its length.
fn check_ip(ip: &[u8], proto: u8, src: [u8; 4], dst: [u8; 4]) -> usize {
    assert_eq!(ip[0], 0x45);
    assert_eq!(ip[9], proto);
    assert_eq!(ip[8], 64, "ttl: ip_default_ttl");
    assert_eq!(&ip[12..16], &src, "source");
    assert_eq!(&ip[16..20], &dst, "destination");
    assert_eq!(csum(&ip[..20], 0), 0, "ip checksum");
    be16(ip, 2) as usize
}

#[test]
fn icmp_unreachable_replies() {
    if !root() {
        return;
    }
    in_netns(|| {
        // (--reject-with as enum ipt_reject_with, ICMP code)
        let kinds = [
            (0u32, 0u8),
            (1, 1),
            (2, 2),
            (3, 3),
            (5, 9),
            (6, 10),
            (8, 13),
        ];
        for h in H::ALL {
            for (with, code) in kinds {
                let mut hn = harness();
                hn.load(&rs_reject(h, with));
                for payload in [0usize, 100, 1000] {
                    // From a neighbour on dummy0 to us (INPUT) or through us (FORWARD, OUTPUT
                    // is a local source sending out: the reply goes to a local address).
                    let (src, dst) = match h {
                        H::In => ("192.0.2.77", "192.0.2.1"),
                        H::Fwd => ("192.0.2.77", "198.51.100.9"),
                        H::Out => ("192.0.2.1", "198.51.100.9"),
                    };
                    let mut p = with_payload(pkt(17, src, dst), payload);
                    p.tos = 0xff;
                    if h == H::Out {
                        hn.dp
                            .set_local([192, 0, 2, 1], 32, Some(translator::layout::LOCAL_UNICAST))
                            .unwrap();
                    }
                    let (ret, out, reasons) = hn.run_raw(h, &p);
                    assert!(
                        reasons.contains_key(&Reason::RejectSent),
                        "{h:?} {with} {reasons:?}"
                    );
                    assert_eq!(ret, TC_ACT_REDIRECT, "{h:?} {with}");
                    let orig = p.datagram();
                    let ip = &out[14..];
                    // Source: the original destination when it was ours, else the address
                    // routing picks toward the original source (dummy0's).
                    let want_src = match h {
                        H::In => p.dst,
                        _ => [192, 0, 2, 1],
                    };
                    let len = check_ip(ip, 1, want_src, p.src);
                    let quoted = orig.len().min(576 - 28);
                    assert_eq!(len, 28 + quoted, "576-byte limit");
                    assert_eq!(out.len(), 14 + len);
                    // Kernel 6.18, `iptables-legacy -A INPUT -p udp -j REJECT` in a namespace,
                    // a UDP datagram with tos 0xff from a peer: the reply's header was
                    // 45de0042 91da0000 4001.... (tos 0xde = RT_TOS(0xff) | 0xc0, no DF,
                    // ttl 64); its ICMP header 0303....00000000.
                    assert_eq!(ip[6] & 0x40, 0, "ICMP errors are sent without DF");
                    assert_eq!(ip[1], 0xde, "tos: RT_TOS(tos) | IPTOS_PREC_INTERNETCONTROL");
                    let icmp = &ip[20..len];
                    assert_eq!((icmp[0], icmp[1]), (3, code), "{with}");
                    assert_eq!(&icmp[4..8], &[0, 0, 0, 0]);
                    assert_eq!(csum(icmp, 0), 0, "icmp checksum");
                    assert_eq!(&icmp[8..], &orig[..quoted], "quoted datagram");
                    if h == H::Out {
                        hn.dp.set_local([192, 0, 2, 1], 32, None).unwrap();
                    }
                }
            }
        }
    });
}

fn with_payload(mut p: P, n: usize) -> P {
    p.payload = n;
    p
}

#[test]
fn tcp_reset_replies() {
    if !root() {
        return;
    }
    in_netns(|| {
        for h in H::ALL {
            let mut hn = harness();
            let mut b = [(A, vec![]), (A, vec![]), (A, vec![])];
            b[h as usize].1 = vec![rule().proto(6, false).reject(7)];
            hn.load(&table(b, vec![]));
            let (src, dst) = match h {
                H::In => ("192.0.2.77", "192.0.2.1"),
                H::Fwd => ("192.0.2.77", "198.51.100.9"),
                H::Out => ("192.0.2.1", "198.51.100.9"),
            };
            if h == H::Out {
                hn.dp
                    .set_local([192, 0, 2, 1], 32, Some(translator::layout::LOCAL_UNICAST))
                    .unwrap();
            }
            // (flags, seq, ack, payload) -> (reply seq, reply ack, reply flags)
            let cases = [
                (0x02u8, 1000u32, 0u32, 0usize, 0u32, 1001u32, 0x14u8), // SYN
                (0x03, 1000, 0, 10, 0, 1012, 0x14),                     // SYN FIN + 10 bytes
                (0x18, 1000, 5000, 10, 5000, 0, 0x04),                  // PSH ACK: seq = ack
                (0x00, 7, 0, 3, 0, 10, 0x14),                           // no flags
            ];
            for (fl, seq, ack, payload, rseq, rack, rfl) in cases {
                let mut p = pkt(6, src, dst);
                p.tcp_flags = fl;
                p.seq = seq;
                p.ack = ack;
                p.payload = payload;
                let (ret, out, reasons) = hn.run_raw(h, &p);
                assert!(
                    reasons.contains_key(&Reason::RejectSent),
                    "{h:?} {reasons:?} ret {ret}"
                );
                assert_eq!(ret, TC_ACT_REDIRECT, "{reasons:?}");
                let ip = &out[14..];
                let len = check_ip(ip, 6, p.dst, p.src);
                assert_eq!(len, 40);
                assert_eq!(out.len(), 54);
                // Kernel 6.18, `-p tcp -j REJECT --reject-with tcp-reset`, a SYN from a peer:
                // 45000028 00004000 4006.... (tos 0, id 0, DF, ttl 64), TCP flags 0x14,
                // window 0.
                assert_eq!(be16(ip, 6), 0x4000, "DF, nf_reject_iphdr_put");
                assert_eq!(be16(ip, 4), 0, "id 0");
                assert_eq!(ip[1], 0, "tos 0");
                let t = &ip[20..40];
                assert_eq!(be16(t, 0), p.dport);
                assert_eq!(be16(t, 2), p.sport);
                assert_eq!(u32::from_be_bytes(t[4..8].try_into().unwrap()), rseq);
                assert_eq!(u32::from_be_bytes(t[8..12].try_into().unwrap()), rack);
                assert_eq!(t[12], 5 << 4);
                assert_eq!(t[13], rfl);
                assert_eq!(be16(t, 14), 0, "window 0");
                let mut ps: u32 = 0;
                for c in [&p.dst[..], &p.src[..]] {
                    ps += be16(c, 0) as u32 + be16(c, 2) as u32;
                }
                ps += 6 + 20;
                assert_eq!(csum(t, ps), 0, "tcp checksum");
            }
        }
    });
}

#[test]
fn no_reply_cases() {
    if !root() {
        return;
    }
    in_netns(|| {
        let mut hn = harness();
        let mut b = [(A, vec![]), (A, vec![]), (A, vec![])];
        b[0].1 = vec![rule().proto(6, false).reject(7), rule().reject(3)];
        hn.load(&table(b, vec![]));
        let no = |p: &P| {
            let (ret, _, reasons) = hn.run_raw(H::In, p);
            assert_eq!(ret, 2, "{p:?}");
            assert!(
                reasons.contains_key(&Reason::RejectNoReply),
                "{p:?}: {reasons:?}"
            );
        };
        // No RST for a RST.
        no(&with_flags(pkt(6, "192.0.2.77", "192.0.2.1"), 0x04));
        // Only the first fragment is answered (FORWARD: INPUT sees reassembled datagrams).
        {
            let mut hf = harness();
            let mut b = [(A, vec![]), (A, vec![]), (A, vec![])];
            b[1].1 = vec![rule().reject(3)];
            hf.load(&table(b, vec![]));
            for frag in [0x0010u16, 0x2010] {
                let p = with_frag(pkt(17, "192.0.2.77", "198.51.100.9"), frag);
                let (ret, _, reasons) = hf.run_raw(H::Fwd, &p);
                assert_eq!(ret, 2, "{p:?}");
                assert!(reasons.contains_key(&Reason::RejectNoReply), "{reasons:?}");
            }
        }
        // No ICMP error about an ICMP error; the unassigned types 1, 2, 6, 7, 9, 10 and those
        // above 18 count as errors (kernel 6.18: `-p icmp -j REJECT` in INPUT answered types
        // 0, 8 and 13..=18 of 0..=19, 40, 255, and nothing else).
        for t in [1u8, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 19, 40, 255] {
            let mut e = pkt(1, "192.0.2.77", "192.0.2.1");
            e.icmp = (t, 1);
            no(&e);
        }
        for t in [0u8, 13, 14, 15, 16, 17, 18] {
            let mut e = pkt(1, "192.0.2.77", "192.0.2.1");
            e.icmp = (t, 0);
            let (ret, _, _) = hn.run_raw(H::In, &e);
            assert_eq!(ret, TC_ACT_REDIRECT, "icmp type {t}");
        }
        // Not to broadcast or multicast destinations.
        no(&pkt(17, "192.0.2.77", "255.255.255.255"));
        no(&pkt(17, "192.0.2.77", "224.0.0.5"));
        // An echo request is answered.
        let (ret, _, _) = hn.run_raw(H::In, &pkt(1, "192.0.2.77", "192.0.2.1"));
        assert_eq!(ret, TC_ACT_REDIRECT);
    });
}

fn with_flags(mut p: P, f: u8) -> P {
    p.tcp_flags = f;
    p
}
fn with_frag(mut p: P, f: u16) -> P {
    p.frag = f;
    p
}

/// Replies are routed as the kernel's output route lookup routes them: none toward an
/// unreachable or blackhole route (icmp_route_lookup and ip_route_me_harder fail there), and
/// with forwarding off (where bpf_fib_lookup refuses) an INPUT reply still goes back out
/// the arrival device.
#[test]
fn replies_follow_routes() {
    if !root() {
        return;
    }
    fn input_rejects(hn: &mut Harness) {
        let mut b = [(A, vec![]), (A, vec![]), (A, vec![])];
        b[0].1 = vec![rule().proto(6, false).reject(7), rule().reject(3)];
        hn.load(&table(b, vec![]));
    }
    in_netns_with(
        &[
            "sysctl -qw net.ipv4.ip_forward=1",
            "ip route add unreachable 203.0.113.0/24",
            "ip route add blackhole 198.18.0.0/15",
        ],
        || {
            let mut hn = harness();
            input_rejects(&mut hn);
            for src in ["203.0.113.5", "198.18.0.5"] {
                for proto in [17u8, 6] {
                    let p = pkt(proto, src, "192.0.2.1");
                    let (ret, _, reasons) = hn.run_raw(H::In, &p);
                    assert_eq!(ret, 2, "{p:?}");
                    assert!(reasons.contains_key(&Reason::RejectNoReply), "{reasons:?}");
                }
            }
            let (ret, _, _) = hn.run_raw(H::In, &pkt(17, "192.0.2.77", "192.0.2.1"));
            assert_eq!(ret, TC_ACT_REDIRECT);
        },
    );
    in_netns_with(&["sysctl -qw net.ipv4.ip_forward=0"], || {
        let mut hn = harness();
        input_rejects(&mut hn);
        for proto in [17u8, 6] {
            let p = pkt(proto, "192.0.2.77", "192.0.2.1");
            let (ret, out, reasons) = hn.run_raw(H::In, &p);
            assert_eq!(ret, TC_ACT_REDIRECT, "{p:?} {reasons:?}");
            check_ip(&out[14..], if proto == 6 { 6 } else { 1 }, p.dst, p.src);
        }
    });
}
