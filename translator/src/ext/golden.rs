//! Golden-byte tests: tables captured from the kernel after real iptables commands
//! (testdata/captures.txt, made by examples/capture.rs from testdata/commands.txt). Every match
//! and target parses into its typed value and emits the same bytes; the typed values say what
//! the commands said; the emulation accepts each table natively, as the kernel did.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::abi::{self, Entry, Family, ReplaceHdr, NUMHOOKS};
use crate::check;

pub(crate) struct Capture {
    pub family: Family,
    pub commands: Vec<String>,
    pub hdr: ReplaceHdr,
    pub entries: Vec<u8>,
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hooks(v: &str) -> [u32; NUMHOOKS] {
    let n: Vec<u32> = v.split(',').map(|x| x.parse().unwrap()).collect();
    n.try_into().unwrap()
}

pub(crate) fn captures() -> Vec<Capture> {
    let text = include_str!("testdata/captures.txt");
    let mut out: Vec<Capture> = Vec::new();
    for line in text.lines() {
        if let Some(head) = line.strip_prefix("@ ") {
            let (fam, table) = head.split_once(' ').unwrap();
            out.push(Capture {
                family: if fam == "ipv4" {
                    Family::V4
                } else {
                    Family::V6
                },
                commands: Vec::new(),
                hdr: ReplaceHdr {
                    name: table.as_bytes().to_vec(),
                    valid_hooks: 0,
                    num_entries: 0,
                    size: 0,
                    hook_entry: [0; NUMHOOKS],
                    underflow: [0; NUMHOOKS],
                    num_counters: 0,
                    counters_ptr: 0,
                },
                entries: Vec::new(),
            });
        } else if let Some(c) = line.strip_prefix("$ ") {
            out.last_mut().unwrap().commands.push(c.to_string());
        } else if let Some(info) = line.strip_prefix("info ") {
            let h = &mut out.last_mut().unwrap().hdr;
            for kv in info.split(' ') {
                let (k, v) = kv.split_once('=').unwrap();
                match k {
                    "valid_hooks" => h.valid_hooks = v.parse().unwrap(),
                    "hook_entry" => h.hook_entry = hooks(v),
                    "underflow" => h.underflow = hooks(v),
                    "num_entries" => h.num_entries = v.parse().unwrap(),
                    _ => panic!("unknown info field {k}"),
                }
            }
        } else if let Some(e) = line.strip_prefix("entries ") {
            let c = out.last_mut().unwrap();
            c.entries = hex(e);
            c.hdr.size = c.entries.len() as u32;
        }
    }
    out
}

/// The extensions with typed values: none of them may come out as `Other`.
const TYPED_MATCHES: &[&str] = &[
    "tcp",
    "udp",
    "icmp",
    "icmp6",
    "multiport",
    "iprange",
    "addrtype",
    "conntrack",
    "state",
    "comment",
    "mark",
    "length",
    "ttl",
    "hl",
    "limit",
    "statistic",
];
const TYPED_TARGETS: &[&str] = &[
    "",
    "ERROR",
    "REJECT",
    "LOG",
    "MARK",
    "SNAT",
    "DNAT",
    "MASQUERADE",
    "REDIRECT",
];

#[test]
fn every_captured_payload_round_trips() {
    let caps = captures();
    assert!(caps.len() >= 18, "captures.txt holds {} tables", caps.len());
    let (mut matches, mut targets) = (0, 0);
    for c in &caps {
        let entries: Vec<Entry<'_>> = abi::entries(c.family, &c.entries).collect();
        assert_eq!(entries.len() as u32, c.hdr.num_entries, "{:?}", c.commands);
        for e in &entries {
            for m in e.matches() {
                let v = Match::from_obj(c.family, &m)
                    .unwrap_or_else(|err| panic!("{:?} {m:?}: {err}", c.commands));
                assert_eq!(v.emit(), m.data(), "{:?}: {v:?}", c.commands);
                assert_eq!((v.name(), v.revision()), (&*m.name_str(), m.revision()));
                if TYPED_MATCHES.contains(&v.name()) {
                    assert!(!matches!(v, Match::Other { .. }), "{v:?}");
                }
                matches += 1;
            }
            let t = e.target().unwrap();
            let v = Target::from_obj(c.family, &t)
                .unwrap_or_else(|err| panic!("{:?} {t:?}: {err}", c.commands));
            assert_eq!(v.emit(), t.data(), "{:?}: {v:?}", c.commands);
            assert_eq!((v.name(), v.revision()), (&*t.name_str(), t.revision()));
            assert!(TYPED_TARGETS.contains(&v.name()), "{v:?}");
            assert!(!matches!(v, Target::Other { .. }), "{v:?}");
            targets += 1;
        }
    }
    assert!(
        matches >= 70 && targets >= 200,
        "{matches} matches, {targets} targets"
    );
}

#[test]
fn captured_tables_pass_the_native_checks() {
    for c in captures() {
        let t = check::translate(c.family, &c.hdr, &c.entries, &Registry)
            .unwrap_or_else(|e| panic!("{:?}: errno {e}", c.commands));
        assert!(!t.needs_kernel_check, "{:?}", c.commands);
        // The kernel's own blob, counters zeroed, is what translation keeps.
        assert_eq!(t.blob.len(), c.entries.len());
    }
}

/// The typed values of every match and the target of the entry at `index` (in blob order) of
/// the capture that holds `command`.
fn entry_values(command: &str, index: usize) -> (Vec<Match>, Target) {
    let caps = captures();
    let c = caps
        .iter()
        .find(|c| c.commands.iter().any(|x| x == command))
        .unwrap_or_else(|| panic!("no capture ran {command}"));
    let e = abi::entries(c.family, &c.entries).nth(index).unwrap();
    let ms = e
        .matches()
        .map(|m| Match::from_obj(c.family, &m).unwrap())
        .collect();
    (
        ms,
        Target::from_obj(c.family, &e.target().unwrap()).unwrap(),
    )
}

/// The rule added by `command`, in a capture whose commands each append one rule to a built-in
/// chain: the entries are the built-in chains in hook order, each its rules then its policy.
fn rule_of(command: &str) -> (Vec<Match>, Target) {
    let caps = captures();
    let c = caps
        .iter()
        .find(|c| c.commands.iter().any(|x| x == command))
        .unwrap_or_else(|| panic!("no capture ran {command}"));
    let chain_of = |cmd: &str| {
        let mut w = cmd.split_whitespace().skip_while(|w| *w != "-A");
        w.nth(1).unwrap().to_string()
    };
    let chain = chain_of(command);
    let mut index = 0;
    for h in abi::Hook::ALL {
        if c.hdr.valid_hooks & h.bit() == 0 {
            continue;
        }
        let same: Vec<&String> = c
            .commands
            .iter()
            .filter(|x| chain_of(x) == h.chain_name())
            .collect();
        if h.chain_name() == chain {
            index += same.iter().position(|x| *x == command).unwrap();
            return entry_values(command, index);
        }
        index += same.len() + 1;
    }
    panic!("{command}: no built-in chain {chain}")
}

fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

#[test]
fn tcp_udp_icmp_values() {
    let (m, t) =
        rule_of("iptables-legacy -A INPUT -p tcp ! --sport 1024:65535 --dport 80:90 -j DROP");
    assert_eq!(
        m,
        vec![Match::Tcp(Tcp {
            sport: 1024..=65535,
            sport_inv: true,
            dport: 80..=90,
            dport_inv: false,
            flags_mask: 0,
            flags_cmp: 0,
            flags_inv: false,
            option: 0,
            option_inv: false,
        })]
    );
    assert_eq!(t, Target::Standard(abi::VERDICT_DROP));
    let (m, _) = rule_of("iptables-legacy -A INPUT -p tcp ! --syn -j ACCEPT");
    let Match::Tcp(tcp) = &m[0] else {
        panic!("{m:?}")
    };
    // --syn is --tcp-flags SYN,RST,ACK,FIN SYN.
    assert_eq!(
        (tcp.flags_mask, tcp.flags_cmp, tcp.flags_inv),
        (0x17, 0x02, true)
    );
    assert_eq!(tcp.sport, 0..=65535);
    let (m, _) =
        rule_of("iptables-legacy -A INPUT -p udp ! --dport 1000:2000 ! --sport 67 -j ACCEPT");
    assert_eq!(
        m,
        vec![Match::Udp(Udp {
            sport: 67..=67,
            sport_inv: true,
            dport: 1000..=2000,
            dport_inv: true,
        })]
    );
    let (m, _) = rule_of("iptables-legacy -A INPUT -p icmp ! --icmp-type 3/4 -j ACCEPT");
    assert_eq!(
        m,
        vec![Match::Icmp(Icmp {
            icmp_type: 3,
            code: 4..=4,
            inv: true
        })]
    );
    let (m, _) =
        rule_of("ip6tables-legacy -A INPUT -p icmpv6 --icmpv6-type echo-request -j ACCEPT");
    assert_eq!(
        m,
        vec![Match::Icmp6(Icmp {
            icmp_type: 128,
            code: 0..=255,
            inv: false
        })]
    );
}

#[test]
fn multiport_and_address_values() {
    let (m, _) =
        rule_of("iptables-legacy -A INPUT -p tcp -m multiport --dports 22,80,1000:2000 -j ACCEPT");
    // `-p tcp` alone adds no tcp match.
    assert_eq!(
        m[0],
        Match::Multiport(Multiport {
            direction: MultiportDirection::Destination,
            ports: vec![
                PortSpec::Port(22),
                PortSpec::Port(80),
                PortSpec::Range(1000..=2000)
            ],
            invert: false,
        })
    );
    let (m, _) = rule_of(
        "iptables-legacy -A INPUT -m iprange ! --dst-range 192.168.0.0-192.168.255.255 -j ACCEPT",
    );
    assert_eq!(
        m,
        vec![Match::IpRange(IpRange {
            family: Family::V4,
            src: None,
            dst: Some(AddrRange {
                range: v4([192, 168, 0, 0])..=v4([192, 168, 255, 255]),
                inv: true
            }),
        })]
    );
    let (m, _) = rule_of(
        "ip6tables-legacy -A INPUT -m iprange --src-range 2001:db8::1-2001:db8::ff -j ACCEPT",
    );
    let a = |last| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last));
    let Match::IpRange(r) = &m[0] else {
        panic!("{m:?}")
    };
    assert_eq!(r.src.as_ref().unwrap().range, a(1)..=a(0xff));
    let (m, _) = rule_of("iptables-legacy -A OUTPUT -m addrtype --src-type LOCAL ! --dst-type UNICAST --limit-iface-out -j ACCEPT");
    assert_eq!(
        m,
        vec![Match::AddrType(AddrType {
            source: AddrTypes(AddrTypes::LOCAL),
            source_inv: false,
            dest: AddrTypes(AddrTypes::UNICAST),
            dest_inv: true,
            limit_iface_in: false,
            limit_iface_out: true,
        })]
    );
}

#[test]
fn conntrack_values() {
    let (m, _) = rule_of("iptables-legacy -A INPUT -m conntrack --ctproto tcp --ctorigsrc 10.0.0.0/8 --ctorigdstport 80 --ctdir REPLY -j ACCEPT");
    let Match::Conntrack(c) = &m[0] else {
        panic!("{m:?}")
    };
    assert_eq!(
        c.proto,
        Some(Cond {
            value: 6,
            inv: false
        })
    );
    assert_eq!(
        c.origsrc,
        Some(Cond {
            value: AddrMask {
                addr: v4([10, 0, 0, 0]),
                mask: v4([255, 0, 0, 0]),
                v4_unused: [0; 24],
            },
            inv: false
        })
    );
    assert_eq!(
        c.origdst_port,
        Some(Cond {
            value: 80..=80,
            inv: false
        })
    );
    assert_eq!(c.direction, Some(CtDirection::Reply));
    assert_eq!(c.state, None);
    let (m, _) = rule_of("iptables-legacy -A INPUT -m conntrack ! --ctstate INVALID,UNTRACKED,SNAT,DNAT,NEW -j ACCEPT");
    let Match::Conntrack(c) = &m[0] else {
        panic!("{m:?}")
    };
    assert_eq!(
        c.state,
        Some(Cond {
            value: CtStates {
                invalid: true,
                established: false,
                related: false,
                new: true,
                untracked: true,
                snat: true,
                dnat: true
            },
            inv: true
        })
    );
    let (m, _) = rule_of("iptables-legacy -A INPUT -m state --state NEW,ESTABLISHED -j ACCEPT");
    let states = match &m[0] {
        Match::State(s) => s.states,
        Match::Conntrack(c) => {
            assert!(c.state_alias);
            c.state.as_ref().unwrap().value
        }
        other => panic!("{other:?}"),
    };
    assert!(states.new && states.established && !states.related);
}

#[test]
fn meta_values() {
    let (m, _) = rule_of("iptables-legacy -A INPUT -m comment --comment \"allow ssh\" -j ACCEPT");
    assert_eq!(
        m,
        vec![Match::Comment(Comment {
            text: b"allow ssh".to_vec()
        })]
    );
    let (m, _) = rule_of("iptables-legacy -A INPUT -m mark ! --mark 5 -j ACCEPT");
    assert_eq!(
        m,
        vec![Match::Mark(Mark {
            mark: 5,
            mask: u32::MAX,
            invert: true
        })]
    );
    let (m, _) = rule_of("iptables-legacy -A INPUT -m ttl ! --ttl-eq 1 -j ACCEPT");
    assert_eq!(
        m,
        vec![Match::Ttl(Ttl {
            mode: TtlMode::Ne,
            value: 1
        })]
    );
    let (m, _) =
        rule_of("iptables-legacy -A INPUT -m limit --limit 10/second --limit-burst 20 -j ACCEPT");
    let Match::Limit(l) = &m[0] else {
        panic!("{m:?}")
    };
    // 10/s is one packet every 1/10 s: avg = LIMIT_SCALE / 10; the kernel's part reads as 0.
    assert_eq!(
        (l.avg, l.burst, l.cost, l.master),
        (LIMIT_SCALE / 10, 20, 0, 0)
    );
    let (m, _) = rule_of(
        "iptables-legacy -A INPUT -m statistic --mode nth ! --every 3 --packet 1 -j ACCEPT",
    );
    assert_eq!(
        m,
        vec![Match::Statistic(Statistic {
            mode: StatisticMode::Nth {
                every: 2,
                packet: 1
            },
            invert: true,
            // iptables seeds the kernel's counter with every - packet.
            count: 1,
            master: 0
        })]
    );
}

#[test]
fn target_values() {
    let (_, t) = rule_of("iptables-legacy -t mangle -A PREROUTING -j MARK --set-mark 5");
    assert_eq!(
        t,
        Target::Mark(MarkTarget {
            mark: 5,
            mask: u32::MAX
        })
    );
    let (_, t) = rule_of("iptables-legacy -A INPUT -p tcp -j REJECT --reject-with tcp-reset");
    assert_eq!(t, Target::Reject(RejectV4::TcpReset));
    let (_, t) = rule_of("ip6tables-legacy -A INPUT -j REJECT");
    assert_eq!(t, Target::Reject6(RejectV6::PortUnreach));
    let (_, t) = rule_of("iptables-legacy -A INPUT -j LOG --log-level 4 --log-prefix \"DROP: \"");
    assert_eq!(
        t,
        Target::Log(Log {
            level: 4,
            flags: LogFlags(0),
            prefix: b"DROP: ".to_vec()
        })
    );
    let (_, t) = rule_of("iptables-legacy -t nat -A PREROUTING -p tcp --dport 80 -j DNAT --to-destination 10.0.0.1:8080");
    let Target::Dnat(n) = t else { panic!("{t:?}") };
    assert_eq!(n.addr, v4([10, 0, 0, 1])..=v4([10, 0, 0, 1]));
    assert_eq!(n.port, 8080..=8080);
    assert!(n.flags.contains(NatFlags::MAP_IPS) && n.flags.contains(NatFlags::PROTO_SPECIFIED));
    let (_, t) = rule_of("iptables-legacy -t nat -A POSTROUTING -o eth0 -j MASQUERADE");
    assert_eq!(
        t,
        Target::Masquerade(Nat {
            layout: NatLayout::Compat,
            rangesize: 1,
            flags: NatFlags(0),
            addr: v4([0; 4])..=v4([0; 4]),
            port: 0..=0,
            base_port: 0,
        })
    );
}

#[test]
fn chains_are_standard_and_error_targets() {
    let cmd = "iptables-legacy -N web";
    // INPUT: jump to web, policy; FORWARD: goto logdrop, policy; OUTPUT: policy; then the user
    // chains sorted by name: logdrop (head, LOG, DROP, RETURN), web (head, ...).
    let (_, head) = entry_values(cmd, 5);
    assert_eq!(head, Target::Error("logdrop".into()));
    let (_, head) = entry_values(cmd, 9);
    assert_eq!(head, Target::Error("web".into()));
    let caps = captures();
    let c = caps
        .iter()
        .find(|c| c.commands.iter().any(|x| x == cmd))
        .unwrap();
    let web_body = abi::entries(c.family, &c.entries).nth(10).unwrap().offset;
    let (_, jump) = entry_values(cmd, 0);
    assert_eq!(
        jump,
        Target::Standard(web_body as i32),
        "a jump is the body's offset"
    );
    let (_, policy) = entry_values(cmd, 3);
    assert_eq!(policy, Target::Standard(abi::VERDICT_DROP));
    let (_, end) = entry_values("ip6tables-legacy -N chain-name-of-28-characters-", 4);
    assert_eq!(end, Target::Error("chain-name-of-28-characters-".into()));
}
