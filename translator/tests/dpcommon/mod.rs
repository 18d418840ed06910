//! Shared by the datapath tests: rulesets built directly as `ir` values, crafted packets,
//! a harness around BPF_PROG_TEST_RUN, and a reference classifier written from the kernel's
//! ipt_do_table / ip_packet_match / xt_* match functions (not from `compile`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use translator::abi::{Family, Hook};
use translator::compile::{self, Image, SlotAssignment};
use translator::dataplane::{Dataplane, Limits, Prog, SkbCtx};
use translator::ir::{self, Chain, Ext, IpHeader, Rule, RuleTarget, Ruleset, Verdict};
use translator::layout::{self, Reason};

/// Skips (returns None) when not root: BPF_PROG_TEST_RUN and map creation need it.
pub fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let ok = unsafe { libc::geteuid() } == 0;
    if !ok {
        eprintln!("skipped: needs root (BPF_PROG_TEST_RUN)");
    }
    ok
}

// ---- rules ----

pub fn a4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().unwrap())
}

pub fn ip_any() -> IpHeader {
    IpHeader {
        src: a4("0.0.0.0"),
        smsk: a4("0.0.0.0"),
        dst: a4("0.0.0.0"),
        dmsk: a4("0.0.0.0"),
        iniface: [0; 16],
        iniface_mask: [0; 16],
        outiface: [0; 16],
        outiface_mask: [0; 16],
        proto: 0,
        flags: 0,
        invflags: 0,
        tos: 0,
    }
}

/// iptables' encoding of `-i NAME` (`+` at the end: prefix).
pub fn iface(name: &str) -> ([u8; 16], [u8; 16]) {
    let mut n = [0u8; 16];
    let mut m = [0u8; 16];
    if let Some(p) = name.strip_suffix('+') {
        n[..p.len()].copy_from_slice(p.as_bytes());
        for b in m.iter_mut().take(p.len()) {
            *b = 0xff;
        }
    } else {
        n[..name.len()].copy_from_slice(name.as_bytes());
        for b in m.iter_mut().take(name.len() + 1) {
            *b = 0xff;
        }
    }
    (n, m)
}

#[derive(Clone, Debug)]
pub struct R(pub Rule);

pub fn rule() -> R {
    R(Rule {
        entry: 0,
        key: None,
        ip: ip_any(),
        matches: Vec::new().into(),
        target: RuleTarget::Jump(ir::NO_TARGET),
    })
}

impl R {
    pub fn src(mut self, a: &str, m: &str, inv: bool) -> R {
        self.0.ip.src = a4(a);
        self.0.ip.smsk = a4(m);
        if inv {
            self.0.ip.invflags |= ir::inv::SRCIP;
        }
        self
    }
    pub fn dst(mut self, a: &str, m: &str, inv: bool) -> R {
        self.0.ip.dst = a4(a);
        self.0.ip.dmsk = a4(m);
        if inv {
            self.0.ip.invflags |= ir::inv::DSTIP;
        }
        self
    }
    pub fn iif(mut self, n: &str, inv: bool) -> R {
        (self.0.ip.iniface, self.0.ip.iniface_mask) = iface(n);
        if inv {
            self.0.ip.invflags |= ir::inv::VIA_IN;
        }
        self
    }
    pub fn oif(mut self, n: &str, inv: bool) -> R {
        (self.0.ip.outiface, self.0.ip.outiface_mask) = iface(n);
        if inv {
            self.0.ip.invflags |= ir::inv::VIA_OUT;
        }
        self
    }
    pub fn proto(mut self, p: u16, inv: bool) -> R {
        self.0.ip.proto = p;
        if inv {
            self.0.ip.invflags |= ir::inv::PROTO;
        }
        self
    }
    pub fn frag(mut self, inv: bool) -> R {
        self.0.ip.flags |= ir::flag::V4_FRAG;
        if inv {
            self.0.ip.invflags |= ir::inv::FRAG;
        }
        self
    }
    pub fn m(mut self, e: Ext) -> R {
        let mut m = self.0.matches.to_vec();
        m.push(e);
        self.0.matches = m.into();
        self
    }
    pub fn t(mut self, t: RuleTarget) -> R {
        self.0.target = t;
        self
    }
    pub fn accept(self) -> R {
        self.t(RuleTarget::Verdict(Verdict::Accept))
    }
    pub fn drop(self) -> R {
        self.t(RuleTarget::Verdict(Verdict::Drop))
    }
    pub fn ret(self) -> R {
        self.t(RuleTarget::Return)
    }
    pub fn jump(self, c: usize) -> R {
        self.t(RuleTarget::Jump(c))
    }
    pub fn goto(mut self, c: usize) -> R {
        self.0.ip.flags |= ir::flag::V4_GOTO;
        self.t(RuleTarget::Goto(c))
    }
    pub fn reject(self, with: u32) -> R {
        self.t(RuleTarget::Ext(ext(
            "REJECT",
            0,
            with.to_ne_bytes().to_vec(),
        )))
    }
}

/// A payload as the kernel stores it: XT_ALIGN'd (8 bytes) with zero padding.
pub fn ext(name: &str, revision: u8, mut data: Vec<u8>) -> Ext {
    data.resize(data.len().div_ceil(8) * 8, 0);
    Ext {
        name: name.into(),
        revision,
        data,
    }
}

/// struct xt_tcp
pub fn tcp(sp: (u16, u16), dp: (u16, u16), flg: (u8, u8), inv: u8) -> Ext {
    tcp_opt(sp, dp, flg, 0, inv)
}

/// struct xt_tcp with --tcp-option (inv bit 0x08: XT_TCP_INV_OPTION)
pub fn tcp_opt(sp: (u16, u16), dp: (u16, u16), flg: (u8, u8), option: u8, inv: u8) -> Ext {
    let mut d = Vec::new();
    for v in [sp.0, sp.1, dp.0, dp.1] {
        d.extend_from_slice(&v.to_ne_bytes());
    }
    d.extend_from_slice(&[option, flg.0, flg.1, inv]);
    ext("tcp", 0, d)
}

/// struct xt_udp
pub fn udp(sp: (u16, u16), dp: (u16, u16), inv: u8) -> Ext {
    let mut d = Vec::new();
    for v in [sp.0, sp.1, dp.0, dp.1] {
        d.extend_from_slice(&v.to_ne_bytes());
    }
    d.push(inv);
    ext("udp", 0, d)
}

/// struct ipt_icmp
pub fn icmp(t: u8, c: (u8, u8), inv: bool) -> Ext {
    ext("icmp", 0, vec![t, c.0, c.1, inv as u8, 0, 0, 0, 0])
}

/// struct xt_multiport_v1; flags 0 src, 1 dst, 2 either; items (lo, hi) with lo == hi single.
pub fn multiport(flags: u8, items: &[(u16, u16)], inv: bool) -> Ext {
    let mut ports = [0u16; 15];
    let mut pflags = [0u8; 15];
    let mut n = 0;
    for (lo, hi) in items {
        if lo == hi {
            ports[n] = *lo;
            n += 1;
        } else {
            ports[n] = *lo;
            pflags[n] = 1;
            ports[n + 1] = *hi;
            n += 2;
        }
    }
    let mut d = vec![flags, n as u8];
    for p in ports {
        d.extend_from_slice(&p.to_ne_bytes());
    }
    d.extend_from_slice(&pflags);
    d.push(inv as u8);
    ext("multiport", 1, d)
}

/// struct xt_iprange_mtinfo; flags IPRANGE_SRC 1, DST 2, SRC_INV 0x10, DST_INV 0x20
pub fn iprange(src: (&str, &str), dst: (&str, &str), flags: u8) -> Ext {
    let mut d = Vec::new();
    // As iptables writes it: a range not selected by the flags stays zero.
    for (i, a) in [src.0, src.1, dst.0, dst.1].into_iter().enumerate() {
        let mut b = [0u8; 16];
        if flags & (1 << (i / 2)) != 0 {
            b[..4].copy_from_slice(&a.parse::<Ipv4Addr>().unwrap().octets());
        }
        d.extend_from_slice(&b);
    }
    d.push(flags);
    ext("iprange", 1, d)
}

/// struct xt_mark_mtinfo1
pub fn mark(mark: u32, mask: u32, inv: bool) -> Ext {
    let mut d = Vec::new();
    d.extend_from_slice(&mark.to_ne_bytes());
    d.extend_from_slice(&mask.to_ne_bytes());
    d.extend_from_slice(&[inv as u8, 0, 0, 0]);
    ext("mark", 1, d)
}

/// struct xt_length_info
pub fn length(min: u16, max: u16, inv: bool) -> Ext {
    let mut d = Vec::new();
    d.extend_from_slice(&min.to_ne_bytes());
    d.extend_from_slice(&max.to_ne_bytes());
    d.extend_from_slice(&[inv as u8, 0, 0, 0]);
    ext("length", 0, d)
}

/// struct ipt_ttl_info: mode 0 eq, 1 ne, 2 lt, 3 gt
pub fn ttl(mode: u8, v: u8) -> Ext {
    ext("ttl", 0, vec![mode, v, 0, 0, 0, 0, 0, 0])
}

pub fn comment(s: &str) -> Ext {
    let mut d = vec![0u8; 256];
    d[..s.len()].copy_from_slice(s.as_bytes());
    ext("comment", 0, d)
}

/// A filter table: INPUT, FORWARD, OUTPUT (policies given) then user chains.
pub fn table(builtins: [(Verdict, Vec<R>); 3], user: Vec<(&str, Vec<R>)>) -> Ruleset {
    let mut chains = Vec::new();
    let mut entry = 0;
    let mut mk = |name: &str, hook: Option<Hook>, policy: Option<Verdict>, rules: Vec<R>| {
        let rules: Vec<Rule> = rules
            .into_iter()
            .map(|r| {
                let mut r = r.0;
                r.entry = entry;
                entry += 1;
                r
            })
            .collect();
        let tail = entry;
        entry += 1;
        Chain {
            name: name.into(),
            hook,
            policy,
            rules,
            tail_entry: tail,
        }
    };
    let [(pi, ri), (pf, rf), (po, ro)] = builtins;
    chains.push(mk("INPUT", Some(Hook::LocalIn), Some(pi), ri));
    chains.push(mk("FORWARD", Some(Hook::Forward), Some(pf), rf));
    chains.push(mk("OUTPUT", Some(Hook::LocalOut), Some(po), ro));
    for (n, r) in user {
        chains.push(mk(n, None, None, r));
    }
    Ruleset {
        family: Family::V4,
        table: "filter".into(),
        chains,
        hooks: [None, Some(0), Some(1), Some(2), None],
    }
}

// ---- packets ----

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct P {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub icmp: (u8, u8),
    pub ttl: u8,
    pub tos: u8,
    /// frag_off field (host order): 0x2000 MF, low 13 bits offset.
    pub frag: u16,
    /// L4 bytes after the IP header (header + payload), before truncation.
    pub payload: usize,
    /// Cut the datagram to this many L4 bytes (a tinygram).
    pub l4_cut: Option<usize>,
    pub mark: u32,
    /// Input and output interface names for the hook ("" = none).
    pub iif: String,
    pub oif: String,
    /// TCP option bytes after the 20-byte header (doff counts them, rounded up).
    pub tcp_opts: Vec<u8>,
    /// A TCP data offset (in 32-bit words) to write instead of the true one.
    pub tcp_doff: Option<u8>,
    /// IP identification (fragments of one datagram share it).
    pub ip_id: u16,
}

pub fn pkt(proto: u8, src: &str, dst: &str) -> P {
    P {
        src: src.parse::<Ipv4Addr>().unwrap().octets(),
        dst: dst.parse::<Ipv4Addr>().unwrap().octets(),
        proto,
        sport: 40000,
        dport: 80,
        tcp_flags: 0x02,
        seq: 1000,
        ack: 0,
        icmp: (8, 0),
        ttl: 64,
        tos: 0,
        frag: 0,
        payload: 0,
        l4_cut: None,
        mark: 0,
        iif: "eth0".into(),
        oif: "eth1".into(),
        tcp_opts: Vec::new(),
        tcp_doff: None,
        ip_id: 0x1234,
    }
}

pub fn csum(data: &[u8], init: u32) -> u16 {
    let mut s = init as u64;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            (c[0] as u16) << 8
        };
        s += w as u64;
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

impl P {
    /// The L4 bytes (header and zero payload), with a valid checksum.
    fn l4(&self) -> Vec<u8> {
        let first = self.frag & 0x1fff == 0;
        let mut l4 = match (self.proto, first) {
            (6, true) => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&self.sport.to_be_bytes());
                h[2..4].copy_from_slice(&self.dport.to_be_bytes());
                h[4..8].copy_from_slice(&self.seq.to_be_bytes());
                h[8..12].copy_from_slice(&self.ack.to_be_bytes());
                h[13] = self.tcp_flags;
                h[14..16].copy_from_slice(&1000u16.to_be_bytes());
                h.extend_from_slice(&self.tcp_opts);
                h.resize(h.len().div_ceil(4) * 4, 0);
                h[12] = self.tcp_doff.unwrap_or((h.len() / 4) as u8) << 4;
                h
            }
            (17, true) | (136, true) => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&self.sport.to_be_bytes());
                h[2..4].copy_from_slice(&self.dport.to_be_bytes());
                h
            }
            (132, true) | (33, true) => {
                let mut h = vec![0u8; 12];
                h[0..2].copy_from_slice(&self.sport.to_be_bytes());
                h[2..4].copy_from_slice(&self.dport.to_be_bytes());
                h
            }
            (1, true) => vec![self.icmp.0, self.icmp.1, 0, 0, 0, 1, 0, 1],
            _ => vec![],
        };
        l4.resize(l4.len() + self.payload, 0xab);
        if first {
            let len = l4.len();
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&self.src);
            pseudo.extend_from_slice(&self.dst);
            pseudo.extend_from_slice(&[0, self.proto]);
            pseudo.extend_from_slice(&(len as u16).to_be_bytes());
            let ps: u32 = pseudo
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
                .sum();
            match self.proto {
                6 => {
                    let c = csum(&l4, ps);
                    l4[16..18].copy_from_slice(&c.to_be_bytes());
                }
                17 => {
                    l4[4..6].copy_from_slice(&(len as u16).to_be_bytes());
                    let c = csum(&l4, ps);
                    l4[6..8].copy_from_slice(&c.to_be_bytes());
                }
                1 => {
                    let c = csum(&l4, 0);
                    l4[2..4].copy_from_slice(&c.to_be_bytes());
                }
                _ => {}
            }
        }
        if let Some(n) = self.l4_cut {
            l4.truncate(n);
        }
        l4
    }

    /// The IP datagram.
    pub fn datagram(&self) -> Vec<u8> {
        let l4 = self.l4();
        let mut ip = vec![0u8; 20];
        ip[0] = 0x45;
        ip[1] = self.tos;
        ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
        ip[6..8].copy_from_slice(&self.frag.to_be_bytes());
        ip[8] = self.ttl;
        ip[9] = self.proto;
        ip[12..16].copy_from_slice(&self.src);
        ip[16..20].copy_from_slice(&self.dst);
        let c = csum(&ip, 0);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend_from_slice(&l4);
        ip
    }

    /// An Ethernet frame to lo's address (00:00:00:00:00:00, so PACKET_HOST).
    pub fn frame(&self) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&self.datagram());
        f
    }
}

// ---- harness ----

/// A hook of the filter table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum H {
    In,
    Fwd,
    Out,
}

impl H {
    pub const ALL: [H; 3] = [H::In, H::Fwd, H::Out];
    pub fn hook(self) -> Hook {
        match self {
            H::In => Hook::LocalIn,
            H::Fwd => Hook::Forward,
            H::Out => Hook::LocalOut,
        }
    }
    pub fn bit(self) -> u8 {
        1 << self.hook() as u8
    }
}

/// What a packet got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accept,
    Drop,
    /// REJECT (the rule's --reject-with); the reply, if one was built.
    Reject(u32),
}

pub const FAKE_IN_IFINDEX: u32 = 4242;

/// `Outcome::Reject` as the harness reports it.
pub const REJECTED: u32 = u32::MAX;

pub struct Harness {
    pub dp: Dataplane,
    pub img: Image,
    pub asg: SlotAssignment,
    pub rs: Option<Ruleset>,
    /// The device programs run on (ctx ifindex) and the one a forwarded packet came from.
    pub dev: u32,
    pub in_dev: u32,
    /// Destination MAC of frames (the device's own, so skb->pkt_type is PACKET_HOST).
    pub mac: [u8; 6],
}

impl Harness {
    pub fn new() -> Harness {
        let dp = Dataplane::load(Limits {
            slots: 1 << 14,
            list_chunks: 1 << 15,
            addr_classes: 1 << 15,
            ifnames: 64,
            local_addrs: 64,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        Harness {
            dp,
            img: Image::default(),
            asg: SlotAssignment::default(),
            rs: None,
            dev: 1,
            in_dev: FAKE_IN_IFINDEX,
            mac: [0; 6],
        }
    }

    pub fn load(&mut self, rs: &Ruleset) {
        self.try_load(rs).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_load(&mut self, rs: &Ruleset) -> Result<(), compile::CompileError> {
        let (img, asg) = compile::compile(rs, &self.asg)?;
        self.dp.commit(&self.img, &img).unwrap();
        self.img = img;
        self.asg = asg;
        self.rs = Some(rs.clone());
        Ok(())
    }

    /// Runs the packet through `hook`'s program; the verdict and the packet afterwards.
    pub fn run_raw(&self, hook: H, p: &P) -> (u32, Vec<u8>, HashMap<Reason, u64>) {
        let before = self.dp.reasons().unwrap();
        let ctx = match hook {
            H::In => {
                self.dp
                    .set_local(p.dst, 32, Some(layout::LOCAL_UNICAST))
                    .unwrap();
                self.dp.set_ifname(self.dev, Some(&p.iif)).unwrap();
                SkbCtx {
                    mark: p.mark,
                    ifindex: self.dev,
                    ingress_ifindex: 0,
                }
            }
            H::Fwd => {
                self.dp.set_ifname(self.in_dev, Some(&p.iif)).unwrap();
                self.dp.set_ifname(self.dev, Some(&p.oif)).unwrap();
                SkbCtx {
                    mark: p.mark,
                    ifindex: self.dev,
                    ingress_ifindex: self.in_dev,
                }
            }
            H::Out => {
                self.dp.set_ifname(self.dev, Some(&p.oif)).unwrap();
                SkbCtx {
                    mark: p.mark,
                    ifindex: self.dev,
                    ingress_ifindex: 0,
                }
            }
        };
        let prog = if hook == H::In {
            Prog::Ingress
        } else {
            Prog::Egress
        };
        let mut frame = p.frame();
        frame[..6].copy_from_slice(&self.mac);
        let r = self.dp.test_run(prog, &frame, &ctx).unwrap();
        if hook == H::In {
            self.dp.set_local(p.dst, 32, None).unwrap();
        }
        let after = self.dp.reasons().unwrap();
        let delta = after
            .iter()
            .filter_map(|(k, v)| {
                let d = v - before.get(k).copied().unwrap_or(0);
                (d > 0).then_some((*k, d))
            })
            .collect();
        (r.retval, r.packet, delta)
    }

    pub fn run(&self, hook: H, p: &P) -> Outcome {
        let (ret, _, reasons) = self.run_raw(hook, p);
        if reasons.contains_key(&Reason::Reject) {
            // The datapath says that it rejected, not with what (the reply tests check that).
            return Outcome::Reject(REJECTED);
        }
        match ret {
            0 => Outcome::Accept,
            2 => Outcome::Drop,
            r => panic!("unexpected TC verdict {r} (reasons {reasons:?})"),
        }
    }

    /// (packets, bytes) of every rule and tail, keyed (chain, rule index or usize::MAX).
    pub fn counters(&self) -> HashMap<(String, usize), (u64, u64)> {
        let rs = self.rs.as_ref().unwrap();
        let mut out = HashMap::new();
        for c in &rs.chains {
            for i in 0..c.rules.len() {
                let s = self.asg.rule_slot(&c.name, i).unwrap();
                let v = self.dp.counter(s).unwrap();
                out.insert((c.name.clone(), i), (v.packets, v.bytes));
            }
            let s = self.asg.tail_slot(&c.name).unwrap();
            let v = self.dp.counter(s).unwrap();
            out.insert((c.name.clone(), usize::MAX), (v.packets, v.bytes));
        }
        out
    }
}

// ---- the reference: netfilter's semantics, written from the kernel sources ----

fn ne16(d: &[u8], o: usize) -> u16 {
    u16::from_ne_bytes([d[o], d[o + 1]])
}
fn ne32(d: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes(d[o..o + 4].try_into().unwrap())
}

/// The L4 view of the packet the kernel's matches have: fragoff and the bytes after the
/// IP header.
struct View<'a> {
    p: &'a P,
    fragoff: u16,
    l4: Vec<u8>,
    tot_len: u16,
}

enum Mr {
    Yes,
    No,
    Hotdrop,
}

fn match_ext(e: &Ext, v: &View<'_>) -> Mr {
    let d = &e.data;
    let b = |x: bool| if x { Mr::Yes } else { Mr::No };
    let port = |i: usize| u16::from_be_bytes([v.l4[i], v.l4[i + 1]]);
    match e.name.as_str() {
        "comment" => Mr::Yes,
        // tcp_mt
        "tcp" => {
            if v.fragoff != 0 {
                return if v.fragoff == 1 { Mr::Hotdrop } else { Mr::No };
            }
            if v.l4.len() < 20 {
                return Mr::Hotdrop;
            }
            let inv = d[11];
            let pm = |lo: u16, hi: u16, x: u16, i: bool| (x >= lo && x <= hi) ^ i;
            if !(pm(ne16(d, 0), ne16(d, 2), port(0), inv & 1 != 0)
                && pm(ne16(d, 4), ne16(d, 6), port(2), inv & 2 != 0)
                && (((v.l4[13] & d[9]) == d[10]) ^ (inv & 4 != 0)))
            {
                return Mr::No;
            }
            let (option, oinv) = (d[8], inv & 8 != 0);
            if option == 0 {
                return Mr::Yes;
            }
            // tcp_find_option
            let doff = (v.l4[12] >> 4) as usize * 4;
            if doff < 20 {
                return Mr::Hotdrop;
            }
            let optlen = doff - 20;
            if optlen == 0 {
                return b(oinv);
            }
            if v.l4.len() < doff {
                return Mr::Hotdrop;
            }
            let op = &v.l4[20..];
            let mut i = 0;
            while i < optlen {
                if op[i] == option {
                    return b(!oinv);
                }
                i += if op[i] < 2 {
                    1
                } else {
                    // past the options: the payload's first byte, as the kernel reads it
                    match op.get(i + 1).copied().unwrap_or(0) {
                        0 => 1,
                        l => l as usize,
                    }
                };
            }
            b(oinv)
        }
        "udp" => {
            if v.fragoff != 0 {
                return Mr::No;
            }
            if v.l4.len() < 8 {
                return Mr::Hotdrop;
            }
            let inv = d[8];
            let pm = |lo: u16, hi: u16, x: u16, i: bool| (x >= lo && x <= hi) ^ i;
            b(pm(ne16(d, 0), ne16(d, 2), port(0), inv & 1 != 0)
                && pm(ne16(d, 4), ne16(d, 6), port(2), inv & 2 != 0))
        }
        "icmp" => {
            if v.fragoff != 0 {
                return Mr::No;
            }
            if v.l4.len() < 8 {
                return Mr::Hotdrop;
            }
            let (t, c) = (v.l4[0], v.l4[1]);
            b((d[0] == 0xff || (t == d[0] && c >= d[1] && c <= d[2])) ^ (d[3] & 1 != 0))
        }
        "multiport" => {
            if v.fragoff != 0 {
                return Mr::No;
            }
            if v.l4.len() < 4 {
                return Mr::Hotdrop;
            }
            let (src, dst) = (port(0), port(2));
            let (flags, count, invert) = (d[0], d[1] as usize, d[47] != 0);
            let mut i = 0;
            while i < count {
                let s = ne16(d, 2 + 2 * i);
                let e = if d[32 + i] != 0 {
                    i += 1;
                    ne16(d, 2 + 2 * i)
                } else {
                    s
                };
                let hit = |x: u16| x >= s && x <= e;
                let m = match flags {
                    0 => hit(src),
                    1 => hit(dst),
                    2 => hit(src) || hit(dst),
                    _ => false,
                };
                if m {
                    return b(!invert);
                }
                i += 1;
            }
            b(invert)
        }
        "iprange" => {
            let f = d[64];
            let s = u32::from_be_bytes(v.p.src);
            let t = u32::from_be_bytes(v.p.dst);
            let be = |o: usize| u32::from_be_bytes(d[o..o + 4].try_into().unwrap());
            if f & 1 != 0 && ((s < be(0) || s > be(16)) ^ (f & 0x10 != 0)) {
                return Mr::No;
            }
            if f & 2 != 0 && ((t < be(32) || t > be(48)) ^ (f & 0x20 != 0)) {
                return Mr::No;
            }
            Mr::Yes
        }
        "mark" => b(((v.p.mark & ne32(d, 4)) == ne32(d, 0)) ^ (d[8] != 0)),
        "length" => b((v.tot_len >= ne16(d, 0) && v.tot_len <= ne16(d, 2)) ^ (d[4] != 0)),
        "ttl" => b(match d[0] {
            0 => v.p.ttl == d[1],
            1 => v.p.ttl != d[1],
            2 => v.p.ttl < d[1],
            3 => v.p.ttl > d[1],
            _ => false,
        }),
        n => panic!("reference: no {n}"),
    }
}

fn name16(s: &str) -> [u8; 16] {
    let mut n = [0u8; 16];
    n[..s.len()].copy_from_slice(s.as_bytes());
    n
}

/// ip_packet_match
fn ip_match(ip: &IpHeader, v: &View<'_>, indev: &[u8; 16], outdev: &[u8; 16]) -> bool {
    let inv = |f: u8, c: bool| c ^ (ip.invflags & f != 0);
    let v4 = |a: &IpAddr| match a {
        IpAddr::V4(a) => u32::from_be_bytes(a.octets()),
        _ => 0,
    };
    let s = u32::from_be_bytes(v.p.src);
    let d = u32::from_be_bytes(v.p.dst);
    if inv(ir::inv::SRCIP, s & v4(&ip.smsk) != v4(&ip.src))
        || inv(ir::inv::DSTIP, d & v4(&ip.dmsk) != v4(&ip.dst))
    {
        return false;
    }
    let differs =
        |dev: &[u8; 16], n: &[u8; 16], m: &[u8; 16]| (0..16).any(|i| (dev[i] ^ n[i]) & m[i] != 0);
    if inv(
        ir::inv::VIA_IN,
        differs(indev, &ip.iniface, &ip.iniface_mask),
    ) {
        return false;
    }
    if inv(
        ir::inv::VIA_OUT,
        differs(outdev, &ip.outiface, &ip.outiface_mask),
    ) {
        return false;
    }
    if ip.proto != 0 && inv(ir::inv::PROTO, v.p.proto as u16 != ip.proto) {
        return false;
    }
    if inv(
        ir::inv::FRAG,
        ip.flags & ir::flag::V4_FRAG != 0 && v.fragoff == 0,
    ) {
        return false;
    }
    true
}

/// ipt_do_table for one packet at `hook`: the outcome, and the counters it adds, keyed
/// (chain, rule index or usize::MAX for the tail).
pub fn reference(rs: &Ruleset, hook: H, p: &P) -> (Outcome, Vec<(String, usize)>) {
    if hook == H::In && p.frag & 0x3fff != 0 {
        // ip_local_deliver reassembles before LOCAL_IN: a fragment alone is never
        // classified; it goes on to reassembly (tests/datapath.rs checks whole datagrams).
        return (Outcome::Accept, vec![]);
    }
    let dg = p.datagram();
    let v = View {
        p,
        fragoff: p.frag & 0x1fff,
        l4: dg[20..].to_vec(),
        tot_len: dg.len() as u16,
    };
    let (indev, outdev) = match hook {
        H::In => (name16(&p.iif), [0; 16]),
        H::Fwd => (name16(&p.iif), name16(&p.oif)),
        H::Out => ([0; 16], name16(&p.oif)),
    };
    let hook_chain = rs.hooks[hook.hook() as usize].unwrap();
    let mut counted = Vec::new();
    let mut stack: Vec<(usize, usize)> = Vec::new();
    let (mut c, mut i) = (hook_chain, 0usize);
    let policy = |counted: &mut Vec<(String, usize)>| {
        let hc = &rs.chains[hook_chain];
        counted.push((hc.name.clone(), usize::MAX));
        match hc.policy {
            Some(Verdict::Accept) => Outcome::Accept,
            _ => Outcome::Drop,
        }
    };
    loop {
        let chain = &rs.chains[c];
        if i >= chain.rules.len() {
            if chain.hook.is_some() {
                // The underflow entry: the policy, counted.
                return (policy(&mut counted), counted);
            }
            // A user chain's tail: an unconditional RETURN rule, counted.
            counted.push((chain.name.clone(), usize::MAX));
            match stack.pop() {
                Some((pc, pi)) => {
                    c = pc;
                    i = pi + 1;
                }
                None => return (policy(&mut counted), counted),
            }
            continue;
        }
        let r = &chain.rules[i];
        let mut hit = ip_match(&r.ip, &v, &indev, &outdev);
        if hit {
            for m in &r.matches {
                match match_ext(m, &v) {
                    Mr::Yes => {}
                    Mr::No => {
                        hit = false;
                        break;
                    }
                    Mr::Hotdrop => return (Outcome::Drop, counted),
                }
            }
        }
        if !hit {
            i += 1;
            continue;
        }
        counted.push((chain.name.clone(), i));
        match &r.target {
            RuleTarget::Verdict(Verdict::Accept) => return (Outcome::Accept, counted),
            RuleTarget::Verdict(_) => return (Outcome::Drop, counted),
            RuleTarget::Ext(e) => return (Outcome::Reject(ne32(&e.data, 0)), counted),
            RuleTarget::Return => match stack.pop() {
                Some((pc, pi)) => {
                    c = pc;
                    i = pi + 1;
                }
                None => return (policy(&mut counted), counted),
            },
            RuleTarget::Jump(t) if *t == ir::NO_TARGET => i += 1,
            RuleTarget::Jump(t) => {
                stack.push((c, i));
                c = *t;
                i = 0;
            }
            RuleTarget::Goto(t) => {
                c = *t;
                i = 0;
            }
        }
    }
}

/// Bytes the kernel counts for the packet (the IP datagram).
pub fn bytes(p: &P) -> u64 {
    p.datagram().len() as u64
}
