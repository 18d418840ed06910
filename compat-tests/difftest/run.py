#!/usr/bin/python3
"""Differential packet tests of bpfipt against the kernel (see compat-tests/difftest.sh and
compat-tests/counters.sh for what they check).

    run.py diff --prefix P [--seed N] [--cases N] [--only I] [--self-check] [--mutate] ...
    run.py counters --prefix P [--self-check] [--mutate]
    run.py cleanup --prefix P

Two copies of the network of topo.py: side "kernel" loads the rules with the real
iptables-legacy-restore; side "shim" loads them through LD_PRELOAD=libbpfipt.so (or, with
--self-check, also with the real tool: then the two sides must agree on everything, which is
what shows the harness itself is deterministic). The same packets go through both.

What a packet's fate is made of (everything seen of it, or of a reply quoting it):
  in:IF          fw's local stack got it (a raw IP socket in fw, so after INPUT); IF is the
                 kernel's IP_PKTINFO interface (for fw's own packets, the address's device)
  wire:IF ttl=T  it left fw on IF (a packet socket on the other end of IF); fragN for the
                 fragments of a datagram sent in two; MODIFIED if any other byte changed
  icmpT/C ...    an ICMP error quoting it: source, destination, TTL, TOS, quoted length and
                 quoted TTL, and where it was seen ("about(...)" when it quotes fw's reply)
  rst ...        a TCP RST answering it: addresses, ports, seq, ack, flags, window, TTL, TOS
  reply ...      an ICMP query answer (echo reply, timestamp reply) to it
  dropped        nothing at all
Not compared: IP IDs and checksums of fw's replies, and the error sendto() gets for a packet
OUTPUT drops (EPERM from netfilter; a TC datapath cannot give it) unless --send-errors.
fw's own answers (RSTs from its TCP stack, port unreachables, echo replies) are part of the
fate: they cross OUTPUT too.
"""

import argparse
import ctypes
import errno
import hashlib
import ipaddress
import os
import re
import select
import signal
import socket
import struct
import shutil
import subprocess
import tempfile
import sys
import time

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen  # noqa: E402
import pkt  # noqa: E402
import topo  # noqa: E402

CLONE_NEWNET = 0x40000000
ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33
SO_MARK = 36
IP_PKTINFO = 8
RAW_PROTOS = (pkt.PROTO_ICMP, pkt.PROTO_TCP, pkt.PROTO_UDP, pkt.PROTO_GRE)

libc = ctypes.CDLL(None, use_errno=True)


class NetNS:
    """Runs a block inside a named network namespace (sockets made there stay there)."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.back = os.open("/proc/self/ns/net", os.O_RDONLY)
        fd = os.open("/run/netns/" + self.name, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns " + self.name)
        finally:
            os.close(fd)

    def __exit__(self, *exc):
        libc.setns(self.back, CLONE_NEWNET)
        os.close(self.back)


def rcvbuf(s):
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    s.setblocking(False)


class Side:
    def __init__(self, label, ns, shim_env):
        self.label, self.ns, self.shim_env = label, ns, shim_env
        self.readers = []  # (socket, point name; None for fw's raw sockets)
        with NetNS(ns["fw"]):
            for proto in RAW_PROTOS:
                s = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
                s.setsockopt(socket.SOL_IP, IP_PKTINFO, 1)
                rcvbuf(s)
                self.readers.append((s, None))
            self.tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self.ifname = {socket.if_nametoindex(n): n for n in gen.ALL_IFACES}
        self.inject = {}
        for fwif, peer, pif, _ in topo.LINKS:
            with NetNS(ns[peer]):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                s.bind((pif, ETH_P_ALL))
                rcvbuf(s)
            self.readers.append((s, "wire:" + fwif))
            self.inject[fwif] = s
        self.obs = []
        self.send_errors = {}

    def iptables(self, *args, stdin=None):
        cmd = ["ip", "netns", "exec", self.ns["fw"]]
        if self.shim_env:
            cmd += ["env"] + ["%s=%s" % kv for kv in self.shim_env.items()]
        return subprocess.run(cmd + list(args), input=stdin, capture_output=True, text=True)

    def load(self, text):
        return self.iptables("iptables-legacy-restore", "-w", "30", stdin=text)

    def send(self, tag, p, ip):
        if p["entry"] == "fw":
            try:
                self.tx.setsockopt(socket.SOL_SOCKET, SO_MARK, struct.pack("I", p.get("mark", 0)))
                self.tx.sendto(ip, (p["dst"], 0))
            except OSError as e:
                self.send_errors[tag] = errno.errorcode.get(e.errno, str(e.errno))
            return
        i = gen.FW_IFACES.index(p["entry"])
        dst = p["dst"]
        if dst.startswith("224."):
            mac = bytes([1, 0, 0x5E]) + ipaddress.IPv4Address(dst).packed[1:]
            mac = mac[:3] + bytes([mac[3] & 0x7F]) + mac[4:]
        elif p.get("l2") == "broadcast":
            mac = b"\xff" * 6
        else:
            mac = bytes.fromhex(topo.fw_mac(i).replace(":", ""))
        src = bytes.fromhex(topo.peer_mac(i).replace(":", ""))
        frame = mac + src + struct.pack("!H", ETH_P_IP) + ip
        # ENOBUFS: the injecting side's queue dropped the frame before it left (a busy
        # machine); it never reached fw, so sending it again is the same experiment.
        for attempt in range(5):
            try:
                self.inject[p["entry"]].send(frame)
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS or attempt == 4:
                    raise
                time.sleep(0.02 * (attempt + 1))

    def drain(self):
        for s, point in self.readers:
            while True:
                try:
                    data, anc, _, addr = s.recvmsg(65536, 256)
                except BlockingIOError:
                    break
                if point is None:
                    ifx = 0
                    for lvl, typ, d in anc:
                        if lvl == socket.SOL_IP and typ == IP_PKTINFO:
                            ifx = struct.unpack_from("i", d)[0]
                    where = "fw:" + self.ifname.get(ifx, "if%d" % ifx)
                    ip = data
                else:
                    if addr[2] == PACKET_OUTGOING or addr[1] != ETH_P_IP:
                        continue
                    where, ip = point, data[14:]
                if len(ip) >= 20:
                    ip = ip[:struct.unpack_from("!H", ip, 2)[0]]
                self.obs.append((where, ip))

    def take(self):
        o, self.obs = self.obs, []
        e, self.send_errors = self.send_errors, {}
        return o, e


def a2s(b):
    return socket.inet_ntoa(b)


class Matcher:
    """Recognises the packets of a batch, and replies to them, among what was seen."""

    def __init__(self, batch):
        self.batch = batch
        self.keymap, self.tcprev, self.icmprev = {}, {}, {}
        for i, (tag, p, ip) in enumerate(batch):
            self.keymap[pkt.key(ip)] = (i, "")
            fr = pkt.frames(p, ip)
            if len(fr) > 1:
                for j, f in enumerate(fr):
                    self.keymap[pkt.key(f)] = (i, " frag%d" % (j + 1))
            ihl = (ip[0] & 15) * 4
            if p.get("frag", "none") in ("none", "first", "pair"):
                if p["proto"] == pkt.PROTO_TCP:
                    self.tcprev.setdefault(pkt.reverse_tcp_key(ip), []).append(i)
                elif p["proto"] == pkt.PROTO_ICMP:
                    self.icmprev[ip[16:20] + ip[12:16] + ip[ihl + 4:ihl + 8]] = i

    def identify(self, ip, where, quoted=False):
        """(index of the packet ip is or answers, description), or None."""
        hit = self.keymap.get(pkt.key(ip))
        if hit is not None:
            i, part = hit
            if quoted:
                return i, part.strip()
            if where.startswith("fw:"):
                return i, "in:" + where[3:] + part
            sent = pkt.frames(self.batch[i][1], self.batch[i][2])
            same = any(ip[:8] == s[:8] and ip[9:10] == s[9:10] and ip[12:] == s[12:]
                       for s in sent)
            return i, "%s ttl=%d%s%s" % (where, ip[8], part, "" if same else " MODIFIED")
        if len(ip) < 28 or ip[0] >> 4 != 4:
            return None
        ihl = (ip[0] & 15) * 4
        proto = ip[9]
        hdr = "%s>%s ttl=%d tos=%#x" % (a2s(ip[12:16]), a2s(ip[16:20]), ip[8], ip[1])
        at = "" if quoted else " @" + where
        if proto == pkt.PROTO_ICMP and ip[ihl] in pkt.ICMP_ERRORS and not quoted:
            inner = ip[ihl + 8:]
            r = self.identify(inner, where, quoted=True)
            if r is not None and len(inner) >= 20:
                # An error about a reply (e.g. OUTPUT rejecting fw's own RST) names the reply.
                about = " about(%s)" % r[1] if r[1] else ""
                return r[0], "icmp%d/%d %s q=%d qttl=%d%s%s" % (
                    ip[ihl], ip[ihl + 1], hdr, len(inner), inner[8], about, at)
        elif proto == pkt.PROTO_ICMP and ip[ihl] not in pkt.ICMP_ERRORS:
            i = self.icmprev.get(ip[12:16] + ip[16:20] + ip[ihl + 4:ihl + 8])
            if i is not None:
                return i, "reply icmp%d/%d %s%s" % (ip[ihl], ip[ihl + 1], hdr, at)
        elif proto == pkt.PROTO_TCP and len(ip) >= ihl + 14 and ip[ihl + 13] & 4:
            rkey = ip[12:16] + ip[16:20] + ip[ihl:ihl + 4]
            seq, ack = struct.unpack_from("!II", ip, ihl + 4)
            for i in self.tcprev.get(rkey, []):
                t = self.batch[i][0]
                if seq in (pkt.ack_of(t), 0) and \
                        (ack == 0 or (ack - pkt.seq_of(t)) % (1 << 32) < 2000):
                    tail = ""
                    if len(ip) >= ihl + 16:
                        tail = " win=%d" % struct.unpack_from("!H", ip, ihl + 14)[0]
                    sp, dp = struct.unpack_from("!HH", ip, ihl)
                    return i, "rst %s:%d>%s:%d seq=%#x ack=%#x flags=%s%s ttl=%d tos=%#x%s" % (
                        a2s(ip[12:16]), sp, a2s(ip[16:20]), dp, seq, ack,
                        pkt.flags_str(ip[ihl + 13]), tail, ip[8], ip[1], at)
        return None


def classify(obs, batch):
    """Fates (lists of observations) of the batch's packets, and what matched nothing."""
    m = Matcher(batch)
    fates = [[] for _ in batch]
    unmatched = []
    for where, ip in obs:
        r = m.identify(ip, where)
        if r is None:
            unmatched.append((where, ip))
        else:
            fates[r[0]].append(r[1])
    return fates, unmatched


def local_reply_iface(fate, from_lo):
    """The fate with the device of a REJECT reply (ICMP error, RST) delivered to fw itself
    blanked out. The one documented exclusion (README, Known differences): the kernel
    delivers a reply to one of fw's addresses with that address's device as its incoming
    interface (IP_PKTINFO); bpfipt's reply loops through lo and arrives from lo (from_lo:
    blank only that)."""
    dev = r"lo" if from_lo else r"\S+"
    return " + ".join(re.sub(r"^((icmp\d+/\d+|rst) .*) @fw:%s$" % dev, r"\1 @fw:(local)", part)
                      for part in fate.split(" + "))


def fate_str(obs, send_error, with_send_errors):
    parts = sorted(obs)
    if send_error and with_send_errors:
        parts.append("send:" + send_error)
    return " + ".join(parts) if parts else "dropped"


def fate_kind(obs):
    """Coarse category for the summary of what the kernel did."""
    if not obs:
        return "dropped"
    kinds = []
    for o in obs:
        if o.startswith("in:"):
            kinds.append("input")
        elif o.startswith("wire:"):
            kinds.append("forwarded/sent")
        elif o.startswith("icmp"):
            kinds.append("icmp error")
        elif o.startswith("rst"):
            kinds.append("tcp reset")
        else:
            kinds.append("icmp reply")
    return kinds[0] if len(set(kinds)) == 1 else "+".join(sorted(set(kinds)))


def settle(sides, secs):
    end = time.monotonic() + secs
    socks = [s for side in sides for s, _ in side.readers]
    while True:
        left = end - time.monotonic()
        if left <= 0:
            break
        select.select(socks, [], [], left)
        for side in sides:
            side.drain()


def save_c(side):
    r = side.iptables("iptables-legacy-save", "-c")
    return "".join(l + "\n" for l in r.stdout.splitlines() if not l.startswith("# "))


def mutate(text):
    """A deliberately different ruleset, to show the harness catches a difference: the first
    ACCEPT/DROP rule gets the other verdict (or INPUT's policy flips)."""
    lines = text.splitlines()
    for i, l in enumerate(lines):
        if l.startswith("-A") and (l.endswith("-j ACCEPT") or l.endswith("-j DROP")):
            lines[i] = l[:l.rindex("-j ")] + ("-j DROP" if l.endswith("ACCEPT") else "-j ACCEPT")
            return "\n".join(lines) + "\n"
    for i, l in enumerate(lines):
        if l.startswith(":INPUT"):
            lines[i] = ":INPUT DROP [0:0]" if " ACCEPT " in l else ":INPUT ACCEPT [0:0]"
    return "\n".join(lines) + "\n"


def make_sides(args):
    shim_env = None
    if not args.self_check:
        shim_env = {"LD_PRELOAD": os.path.join(args.bin, "libbpfipt.so"),
                    "BPFIPT_DAEMON": os.path.join(args.bin, "bpfiptd")}
        for f in shim_env.values():
            if not os.path.exists(f):
                sys.exit("difftest: %s is missing (cargo build --release)" % f)
    k = Side("kernel", topo.setup(args.prefix, "k"), None)
    s = Side("shim", topo.setup(args.prefix, "s"), shim_env)
    if args.xdp == "native":
        xdp_peers(s.ns)
    return k, s


def xdp_peers(ns):
    """An XDP program that passes everything on the far end of each of fw's links: a veth
    takes native XDP redirects only then (else bpfipt leaves forwarding to the stack)."""
    d = tempfile.mkdtemp()
    src, obj = os.path.join(d, "pass.c"), os.path.join(d, "pass.o")
    with open(src, "w") as f:
        f.write('#include <linux/bpf.h>\n'
                '__attribute__((section("xdp"), used)) int p(struct xdp_md *c) { return XDP_PASS; }\n'
                'char _license[] __attribute__((section("license"), used)) = "GPL";\n')
    subprocess.run(["clang-19", "-O2", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu",
                    "-c", src, "-o", obj], check=True)
    for _, peer, pif, _ in topo.LINKS:
        subprocess.run(["ip", "-n", ns[peer], "link", "set", "dev", pif, "xdpdrv", "obj", obj,
                        "sec", "xdp"], check=True)
    shutil.rmtree(d)


def cmd_diff(args):
    per = args.per_ruleset
    k, s = make_sides(args)
    shim_label = "kernel (self-check)" if args.self_check else "shim"
    other = "kernel2" if args.self_check else "shim"
    t0 = time.monotonic()
    agree = total = rulesets = unmatched = 0
    shown = 0
    kinds = {}
    counter_fail = 0
    disagreeing_rulesets = 0
    tag = 0
    report = open(args.report, "w") if args.report else None
    digest = hashlib.sha256()
    coverage = {}  # what a rule exercises -> [rules with it, rules the kernel counted a hit on]
    native = 0  # rulesets the eBPF datapath enforced
    excluded = 0  # agreements that needed the documented exclusion (local_reply_iface)
    fallbacks = {}  # reason -> rulesets the kernel enforced instead
    index = args.only if args.only is not None else 0
    while True:
        if args.only is not None and index != args.only:
            break
        if args.only is None and total >= args.cases:
            break
        ruleset, packets = gen.generate(args.seed, index, per)
        text = ruleset.render()
        digest.update(text.encode())
        stext = mutate(text) if args.mutate else text
        rk, rs = k.load(text), s.load(stext)
        if args.xdp and not args.self_check and rs.returncode == 0:
            # The setting is the namespace's; applied (again) after each load.
            x = subprocess.run(["ip", "netns", "exec", s.ns["fw"],
                                os.path.join(args.bin, "bpfipt"), "xdp", args.xdp],
                               capture_output=True, text=True)
            if x.returncode != 0 or "attached to: " not in x.stdout:
                print("difftest: HARNESS ERROR: bpfipt xdp %s: %s%s" % (args.xdp, x.stdout,
                                                                         x.stderr))
                return 2
        if not args.self_check and rs.returncode == 0:
            st = subprocess.run(["ip", "netns", "exec", s.ns["fw"], os.path.join(args.bin, "bpfipt"),
                                 "status"], capture_output=True, text=True).stdout
            why = [l.split("(fallback): ", 1)[-1] for l in st.splitlines()
                   if l.startswith("ipv4: enforced by the kernel")]
            if why:
                fallbacks[why[0]] = fallbacks.get(why[0], 0) + 1
            else:
                native += 1
        if rk.returncode != 0:
            print("difftest: HARNESS ERROR: the kernel rejected ruleset %d of seed %d:\n%s%s" % (
                index, args.seed, rk.stderr, text))
            return 2
        settle((k, s), 0.01)
        k.take(), s.take()
        batch = []
        for label, p in packets:
            tag += 1
            ip = pkt.build(p, tag)
            batch.append((tag, p, ip))
            digest.update(p["entry"].encode() + struct.pack("!I", p.get("mark", 0)) + ip)
            for f in pkt.frames(p, ip):
                k.send(tag, p, f)
                if rs.returncode == 0:
                    s.send(tag, p, f)
            time.sleep(args.gap)
            k.drain()
            s.drain()
        settle((k, s), args.settle)
        (ko, ke), (so, se) = k.take(), s.take()
        kf, ku = classify(ko, batch)
        sf, su = classify(so, batch)
        if args.trace:
            print(text, end="")
            for i, (t, p, ip) in enumerate(batch):
                print("  #%d %s: %s\n      kernel: %s\n      other:  %s" % (
                    i + 1, packets[i][0], pkt.describe(p), fate_str(kf[i], ke.get(t), True),
                    fate_str(sf[i], se.get(t), True)))
            for side, u in (("kernel", ku), ("other", su)):
                for where, ip in u:
                    print("  unmatched on %s side at %s: %s" % (side, where, ip.hex()))
        unmatched += len(ku) + len(su)
        bad = []
        for i, (t, p, ip) in enumerate(batch):
            a = fate_str(kf[i], ke.get(t), args.send_errors)
            b = fate_str(sf[i], se.get(t), args.send_errors) if rs.returncode == 0 else \
                "ruleset load failed: " + rs.stderr.strip().replace("\n", " | ")
            kind = fate_kind(kf[i])
            kinds[kind] = kinds.get(kind, 0) + 1
            total += 1
            if a == b:
                agree += 1
            elif not args.strict and local_reply_iface(a, False) == local_reply_iface(b, True):
                agree += 1
                excluded += 1
            else:
                bad.append((i, a, b))
        ck = save_c(k)
        hits = [int(l[1:l.index(":")]) for l in ck.splitlines() if l.startswith("[")]
        if len(hits) == len(ruleset.rules):
            for r, h in zip(ruleset.rules, hits):
                for kd in r.kinds() + ["_rules"]:
                    c = coverage.setdefault(kd, [0, 0])
                    c[0] += 1
                    c[1] += h > 0
        ctext = ""
        if args.counters and rs.returncode == 0:
            cs = save_c(s)
            if ck != cs:
                counter_fail += 1
                ctext = "  counters differ (iptables-legacy-save -c):\n" + "".join(
                    "    %-8s %s\n    %-8s %s\n" % ("kernel:", x, other + ":", y)
                    for x, y in zip(ck.splitlines(), cs.splitlines()) if x != y)
        if bad or ctext:
            disagreeing_rulesets += 1
            out = ["ruleset %d: %d of %d packets differ (rerun: difftest.sh --seed %d --only %d)"
                   % (index, len(bad), len(batch), args.seed, index)]
            out += ["  | " + l for l in text.splitlines()]
            if stext != text:
                out += ["  | (%s side: %s)" % (other, l) for l in stext.splitlines()
                        if l not in text.splitlines()]
            for i, a, b in bad:
                label = packets[i][0]
                out.append("  #%d %s: %s" % (i + 1, label, pkt.describe(batch[i][1])))
                out.append("      %-8s %s" % ("kernel:", a))
                out.append("      %-8s %s" % (other + ":", b))
            if ctext:
                out.append(ctext.rstrip("\n"))
            if report:
                report.write("\n".join(out) + "\n")
            if shown < args.show:
                shown += 1
                lim = out[:len(text.splitlines()) + 1 + 3 * args.show_packets + 1]
                print("\n".join(lim))
                if len(lim) < len(out):
                    print("  ... (%d more lines%s)" % (len(out) - len(lim),
                                                        ", see --report" if not report else ""))
        rulesets += 1
        index += 1
        if args.verbose:
            print("ruleset %d: %d packets, %d differ, %.1fs" % (index - 1, len(batch), len(bad),
                                                                time.monotonic() - t0))
    dt = time.monotonic() - t0
    print("difftest: %d rulesets, seed %d (cases digest %s), kernel vs %s, %.1fs" % (
        rulesets, args.seed, digest.hexdigest()[:12], shim_label, dt))
    print("difftest: kernel fates: " + ", ".join("%s %d" % kv for kv in sorted(kinds.items())))
    nrules = coverage.get("_rules", [0, 0])
    print("difftest: rules matched by at least one packet (kernel counters): %d of %d" % (
        nrules[1], nrules[0]))
    if args.coverage:
        print("difftest: rules with each condition/target, and how many of them matched a "
              "packet (kernel counters):")
        for kd in sorted((x for x in coverage if x != "_rules"),
                         key=lambda x: (x.lstrip("! "), x)):
            print("  %-28s %5d rules, %5d hit" % (kd, coverage[kd][0], coverage[kd][1]))
    if unmatched:
        print("difftest: %d packets seen that match nothing sent (ignored)" % unmatched)
    if disagreeing_rulesets > shown:
        print("difftest: %d more rulesets with disagreements not shown" %
              (disagreeing_rulesets - shown))
    if args.counters:
        print("difftest: counters agree after %d of %d rulesets" %
              (rulesets - counter_fail, rulesets))
    if not args.self_check:
        print("difftest: enforced by the eBPF datapath: %d of %d rulesets%s" % (
            native, rulesets, "".join("\n  kernel fallback (%d): %s" % (n, w)
                                      for w, n in sorted(fallbacks.items()))))
        if args.xdp:
            # What XDP decided itself (the datapath's verdict reasons, whole run).
            st = subprocess.run(["ip", "netns", "exec", s.ns["fw"],
                                 os.path.join(args.bin, "bpfipt"), "status"],
                                capture_output=True, text=True).stdout
            xr = {}
            for w in st.split():
                name, _, n = w.partition("=")
                if name.startswith("Xdp") and n.isdigit():
                    xr[name] = int(n)
            print("difftest: XDP (%s): redirected %d, INPUT accepted %d, passed to TC %d" % (
                args.xdp, xr.get("XdpForwarded", 0), xr.get("XdpInputDone", 0),
                xr.get("XdpPass", 0)))
        # After a fallback the kernel's tables are given back (no rules, ACCEPT policies):
        # anything else left in them means the kernel filtered beside the datapath.
        leaked = subprocess.run(["ip", "netns", "exec", s.ns["fw"], "iptables-legacy-save"],
                                capture_output=True, text=True).stdout
        live = [l for l in leaked.splitlines() if l.startswith("-A") or
                (l.startswith(":") and " ACCEPT " not in l and " - " not in l)]
        if live and not fallbacks:
            print("difftest: FAIL: the shim side's kernel ip_tables holds rules: %s" % live[:3])
            agree = -1
    if excluded:
        print("difftest: %d of them agree only with the documented exclusion (the device a "
              "reply to fw's own address arrives from; --strict to count them)" % excluded)
    print("difftest: %d agree of %d" % (max(agree, 0), total))
    return 0 if agree == total and counter_fail == 0 else 1


# ---------------------------------------------------------------------------------------------
# counters: known traffic through a fixed ruleset, then the listings compared.

COUNTERS_RULES = """*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:in_eth10 - [0:0]
:web - [0:0]
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -i eth10 -j in_eth10
-A INPUT -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable
-A INPUT -p icmp -m icmp --icmp-type echo-request -j ACCEPT
-A INPUT -m length --length 1000:65535
-A in_eth10 -s 96.0.0.0/8 -j RETURN
-A in_eth10 -p tcp -j DROP
-A in_eth10 -p udp -j ACCEPT
-A FORWARD -d 64.0.0.0/8 -j DROP
-A FORWARD -p tcp -m multiport --dports 80,443 -j web
-A FORWARD -p tcp -m tcp --dport 25 -j REJECT --reject-with tcp-reset
-A FORWARD -m length --length 0:100 -j REJECT --reject-with icmp-admin-prohibited
-A FORWARD -o veth0
-A web -s 10.1.0.2/32 -j RETURN
-A web -p tcp -m tcp --tcp-flags SYN,ACK SYN -j ACCEPT
-A web -j DROP
-A OUTPUT -p icmp -j ACCEPT
-A OUTPUT -d 10.3.0.2/32 -j DROP
-A OUTPUT -m mark --mark 0x7 -j REJECT --reject-with icmp-net-prohibited
COMMIT
"""


def counters_traffic():
    """(count, packet) pairs: each rule and each policy gets hits, of several sizes."""
    T, U, I, G = pkt.PROTO_TCP, pkt.PROTO_UDP, pkt.PROTO_ICMP, pkt.PROTO_GRE

    def P(entry, src, dst, proto=T, dport=80, flags=0x02, length=None, mark=0, ttl=64,
          icmp_type=8):
        return {"entry": entry, "src": src, "dst": dst, "proto": proto, "sport": 40000,
                "dport": dport, "flags": flags, "icmp_type": icmp_type, "icmp_code": 0,
                "frag": "none", "length": length, "mark": mark, "tcpopts": [], "ttl": ttl,
                "l2": "unicast"}
    return [
        # INPUT
        (3, P("eth0", "10.1.0.2", "10.200.0.1", dport=22, length=60)),
        (2, P("eth10", "96.1.2.3", "10.3.0.1", dport=22, length=1200)),     # ACCEPT before uc
        (4, P("eth10", "96.1.2.3", "10.200.0.7", proto=U, dport=53)),       # RETURN, REJECT
        (2, P("eth10", "97.1.2.3", "10.200.0.7", dport=80)),                # uc DROP
        (5, P("eth10", "97.1.2.3", "10.200.0.7", proto=U, dport=9, length=300)),  # uc ACCEPT
        (2, P("eth10", "97.1.2.3", "10.200.0.7", proto=I, icmp_type=13, length=64)),  # falls
        # off the end of in_eth10, back in INPUT to the policy
        (3, P("veth0", "1.2.3.4", "10.2.0.1", proto=I, length=84)),         # echo ACCEPT
        (2, P("veth0", "1.2.3.4", "10.200.1.1", proto=G, length=1400)),     # count + policy
        (4, P("uplink-ext-0123", "150.0.0.1", "10.200.1.1", dport=8080)),  # policy DROP
        # FORWARD
        (2, P("eth10", "96.9.9.9", "64.1.1.1", length=500)),                # DROP
        (3, P("eth0", "10.1.0.2", "5.5.5.5", dport=443)),                   # web RETURN, count
        (2, P("eth0", "64.0.0.5", "5.5.5.5", dport=80, length=120)),        # web ACCEPT
        (3, P("eth0", "64.0.0.5", "5.5.5.5", dport=80, flags=0x12)),        # web DROP
        (2, P("eth10", "96.0.0.5", "150.1.1.1", dport=25, length=200)),     # tcp-reset
        (4, P("eth10", "96.0.0.5", "150.1.1.1", proto=U, dport=7, length=60)),  # admin-prohib
        (3, P("uplink-ext-0123", "150.0.0.1", "20.0.0.1", proto=U, dport=7, length=700)),
        (2, P("veth0", "20.0.0.1", "96.7.7.7", proto=I, length=1000)),      # policy ACCEPT
        # OUTPUT
        (3, P("fw", "10.2.0.1", "20.0.0.9", proto=I, length=100)),
        (2, P("fw", "10.3.0.1", "10.3.0.2", proto=U, dport=5)),             # DROP
        (3, P("fw", "10.2.0.1", "20.0.0.9", proto=U, dport=5, mark=7)),     # REJECT
        (4, P("fw", "10.2.0.1", "150.0.0.9", proto=U, dport=5, length=222)),  # policy
    ]


def cmd_counters(args):
    k, s = make_sides(args)
    for side in (k, s):
        text = mutate(COUNTERS_RULES) if args.mutate and side is s else COUNTERS_RULES
        r = side.load(text)
        if r.returncode != 0:
            print("counters: loading the ruleset failed on the %s side: %s" % (
                side.label, r.stderr.strip()))
            if side is k:
                return 2
    state = {"tag": 0}

    def traffic():
        for count, p in counters_traffic():
            for _ in range(count):
                state["tag"] += 1
                ip = pkt.build(p, state["tag"])
                for side in (k, s):
                    side.send(state["tag"], p, ip)
                time.sleep(0.002)
        settle((k, s), 0.3)

    ok = total = 0

    def compare(stage):
        nonlocal ok, total
        outs = {}
        for side in (k, s):
            outs[side.label] = {
                "iptables-legacy -L -v -x -n": side.iptables("iptables-legacy", "-w", "30", "-L",
                                                              "-v", "-x", "-n").stdout,
                "iptables-legacy-save -c": save_c(side),
            }
        for what in outs["kernel"]:
            total += 1
            a, b = outs["kernel"][what], outs["shim"][what]
            if a == b:
                ok += 1
                print("ok   %s: %s" % (stage, what))
            else:
                other = "kernel2" if args.self_check else "shim"
                print("FAIL %s: %s differs (kernel vs %s):" % (stage, what, other))
                al, bl = a.splitlines(), b.splitlines()
                for i in range(max(len(al), len(bl))):
                    x = al[i] if i < len(al) else ""
                    y = bl[i] if i < len(bl) else ""
                    if x != y:
                        print("  %-8s %s\n  %-8s %s" % ("kernel:", x, other + ":", y))
        if args.verbose:
            print(outs["kernel"]["iptables-legacy-save -c"])
        return outs

    traffic()
    outs = compare("after traffic")
    # The kernel side must show the traffic, or this test proves nothing.
    zero = [l for l in outs["kernel"]["iptables-legacy-save -c"].splitlines()
            if l.startswith("[0:0] -A")]
    if zero:
        print("counters: HARNESS ERROR: rules the traffic never hit on the kernel side:")
        print("\n".join("  " + l for l in zero))
        return 2
    # Commits keep the counters of the rules they do not change; -Z zeroes.
    for cmd in (["-I", "INPUT", "1", "-p", "tcp", "--dport", "9999", "-j", "ACCEPT"],
                ["-D", "FORWARD", "-d", "64.0.0.0/8", "-j", "DROP"],
                ["-A", "OUTPUT", "-p", "udp", "--dport", "6", "-j", "DROP"]):
        for side in (k, s):
            side.iptables("iptables-legacy", "-w", "30", *cmd)
    compare("after three commits")
    traffic()
    compare("after commits and more traffic")
    for side in (k, s):
        side.iptables("iptables-legacy", "-w", "30", "-Z", "FORWARD")
        side.iptables("iptables-legacy", "-w", "30", "-Z", "INPUT", "2")
    compare("after -Z FORWARD and -Z INPUT 2")
    # An empty INPUT with policy ACCEPT: bpfipt counts that policy at the LOCAL_IN hook and
    # takes its ingress program off; one rule in INPUT brings the program back.
    for cmd in (["-F", "INPUT"], ["-P", "INPUT", "ACCEPT"], ["-Z", "INPUT"]):
        for side in (k, s):
            side.iptables("iptables-legacy", "-w", "30", *cmd)
    traffic()
    outs = compare("after -F INPUT, -P INPUT ACCEPT and traffic")
    if ":INPUT ACCEPT [0:0]" in outs["kernel"]["iptables-legacy-save -c"]:
        print("counters: HARNESS ERROR: the empty INPUT's policy counted nothing on the kernel "
              "side")
        return 2
    for side in (k, s):
        side.iptables("iptables-legacy", "-w", "30", "-A", "INPUT", "-p", "udp", "-j", "ACCEPT")
    traffic()
    compare("after -A INPUT -p udp -j ACCEPT and traffic")
    print("counters: %d agree of %d" % (ok, total))
    return 0 if ok == total else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["diff", "counters", "cleanup"])
    ap.add_argument("--prefix", required=True, help="name prefix of the namespaces made")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cases", type=int, default=4000, help="packets to compare (at least)")
    ap.add_argument("--per-ruleset", type=int, default=50, help="packets per ruleset")
    ap.add_argument("--only", type=int, help="run only ruleset number I of the seed")
    ap.add_argument("--self-check", action="store_true",
                    help="both sides use the kernel: must agree 100%%")
    ap.add_argument("--mutate", action="store_true",
                    help="change one rule on the second side (shows the test can fail)")
    ap.add_argument("--counters", action="store_true",
                    help="also compare iptables-save -c after each ruleset")
    ap.add_argument("--strict", action="store_true",
                    help="no exclusion: the device a reply to fw's own address arrives from "
                    "counts too (README, Known differences)")
    ap.add_argument("--send-errors", action="store_true",
                    help="count sendto() errors of OUTPUT packets as part of the fate")
    ap.add_argument("--xdp", choices=["generic", "native"],
                    help="the shim side runs with the XDP option (bpfipt xdp MODE)")
    ap.add_argument("--gap", type=float, default=0.0003, help="seconds between packets")
    ap.add_argument("--settle", type=float, default=0.15, help="seconds to wait after a batch")
    ap.add_argument("--show", type=int, default=10, help="rulesets with disagreements to print")
    ap.add_argument("--show-packets", type=int, default=8, help="packets per printed ruleset")
    ap.add_argument("--report", help="write every disagreement to this file")
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(root, "target"), "release"),
                    help="where libbpfipt.so, bpfiptd and bpfipt are")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--trace", action="store_true", help="print every packet and both fates")
    ap.add_argument("--coverage", action="store_true",
                    help="print which conditions and targets the rules had, and were hit")
    args = ap.parse_args()
    bpfipt = os.path.join(args.bin, "bpfipt")
    if args.mode == "cleanup":
        topo.teardown(args.prefix, bpfipt)
        return 0

    def terminated(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, terminated)
    try:
        return cmd_diff(args) if args.mode == "diff" else cmd_counters(args)
    finally:
        topo.teardown(args.prefix, bpfipt)


if __name__ == "__main__":
    sys.exit(main())
