"""Seeded random rulesets for the filter table and packets aimed at each rule's edges.

Everything here is a pure function of (seed, ruleset index): no clock, no set iteration, no
hash ordering, so a seed reproduces the same rulesets and packets on any machine.

A rule is a list of matches plus a target. Every match knows how to render itself for
iptables-restore, how to make a packet satisfy it (`satisfy`), and which values sit on its
edges (`edges`: first/last value inside and the first outside, for each condition). A packet
aimed at a rule satisfies the jumps that lead to the rule's chain and the rule itself, then
moves one field to an edge.
"""

import ipaddress
import random

from pkt import (PROTO_GRE, PROTO_ICMP, PROTO_TCP, PROTO_UDP, int2ip, ip2int, pair_split,
                 tcp_options, total_length)
from topo import FW_IFACES, LINKS, LOCAL_RANGE, ROUTES

HOOKS = ("INPUT", "FORWARD", "OUTPUT")
ALL_IFACES = FW_IFACES + ["lo"]
LOCAL_NET = ipaddress.IPv4Network(LOCAL_RANGE)
IF_ADDRS = [str(ipaddress.IPv4Network(l[3])[1]) for l in LINKS]
PEER_ADDRS = [str(ipaddress.IPv4Network(l[3])[2]) for l in LINKS]
LINK_NETS = [ipaddress.IPv4Network(l[3]) for l in LINKS]
ROUTE_NETS = [(ipaddress.IPv4Network(n), d) for n, d in ROUTES]

ICMP_NAMES = [  # name, type, code_min, code_max (iptables' icmp type names)
    ("any", 255, 0, 255), ("echo-reply", 0, 0, 255), ("pong", 0, 0, 255),
    ("destination-unreachable", 3, 0, 255), ("network-unreachable", 3, 0, 0),
    ("host-unreachable", 3, 1, 1), ("protocol-unreachable", 3, 2, 2),
    ("port-unreachable", 3, 3, 3), ("fragmentation-needed", 3, 4, 4),
    ("source-route-failed", 3, 5, 5), ("network-unknown", 3, 6, 6),
    ("host-unknown", 3, 7, 7), ("network-prohibited", 3, 9, 9),
    ("host-prohibited", 3, 10, 10), ("TOS-network-unreachable", 3, 11, 11),
    ("TOS-host-unreachable", 3, 12, 12), ("communication-prohibited", 3, 13, 13),
    ("host-precedence-violation", 3, 14, 14), ("precedence-cutoff", 3, 15, 15),
    ("source-quench", 4, 0, 255), ("redirect", 5, 0, 255), ("network-redirect", 5, 0, 0),
    ("host-redirect", 5, 1, 1), ("TOS-network-redirect", 5, 2, 2),
    ("TOS-host-redirect", 5, 3, 3), ("echo-request", 8, 0, 255), ("ping", 8, 0, 255),
    ("router-advertisement", 9, 0, 255), ("router-solicitation", 10, 0, 255),
    ("time-exceeded", 11, 0, 255), ("ttl-exceeded", 11, 0, 255),
    ("ttl-zero-during-transit", 11, 0, 0), ("ttl-zero-during-reassembly", 11, 1, 1),
    ("parameter-problem", 12, 0, 255), ("ip-header-bad", 12, 0, 0),
    ("required-option-missing", 12, 1, 1), ("timestamp-request", 13, 0, 255),
    ("timestamp-reply", 14, 0, 255), ("address-mask-request", 17, 0, 255),
    ("address-mask-reply", 18, 0, 255),
]
REJECT_WITH = [  # every IPv4 --reject-with type, with its alias
    ("icmp-net-unreachable", "net-unreach"), ("icmp-host-unreachable", "host-unreach"),
    ("icmp-proto-unreachable", "proto-unreach"), ("icmp-port-unreachable", "port-unreach"),
    ("icmp-net-prohibited", "net-prohib"), ("icmp-host-prohibited", "host-prohib"),
    ("icmp-admin-prohibited", "admin-prohib"), ("tcp-reset", "tcp-rst"),
]
TCP_FLAG_NAMES = [("FIN", 1), ("SYN", 2), ("RST", 4), ("PSH", 8), ("ACK", 16), ("URG", 32)]
PORTS = [0, 1, 2, 22, 53, 79, 80, 81, 443, 1023, 1024, 1025, 8080, 32767, 32768, 65534, 65535]
PREFIX_LENS = [0, 1, 2, 3, 7, 8, 9, 12, 15, 16, 17, 20, 22, 23, 24, 25, 26, 28, 29, 30, 31, 32]


def addr_class(a):
    """How fw sees address a (int): local, remote (routable, reachable), or unusable."""
    ip = ipaddress.IPv4Address(a)
    if ip in LOCAL_NET or str(ip) in IF_ADDRS:
        return "local"
    if a >> 24 in (0, 127) or a >> 28 >= 14:
        return "martian"
    for n in LINK_NETS:
        if ip in n:
            # Any other address on a link would need ARP that nobody answers.
            return "remote" if str(ip) in PEER_ADDRS else "onlink"
    return "remote"


def route_dev(a):
    """The interface fw routes address a out of (lo for its own addresses)."""
    if addr_class(a) == "local":
        return "lo"
    ip = ipaddress.IPv4Address(a)
    for n, l in zip(LINK_NETS, FW_IFACES):
        if ip in n:
            return l
    best = max((n for n, _ in ROUTE_NETS if ip in n), key=lambda n: n.prefixlen)
    return dict((str(n), d) for n, d in ROUTE_NETS)[str(best)]


def random_remote(rng, dev=None):
    """A routable non-local address, routed out `dev` if given."""
    for _ in range(100):
        if dev is not None and rng.random() < 0.15:
            return ip2int(PEER_ADDRS[FW_IFACES.index(dev)])
        a = rng.randrange(1 << 24, 224 << 24)
        if addr_class(a) == "remote" and (dev is None or route_dev(a) == dev):
            return a
    return ip2int(PEER_ADDRS[FW_IFACES.index(dev or "veth0")])


def random_local(rng):
    if rng.random() < 0.3:
        return ip2int(rng.choice(IF_ADDRS))
    return int(LOCAL_NET.network_address) + rng.randrange(1, LOCAL_NET.num_addresses - 1)


def clip(v, lo, hi):
    return max(lo, min(hi, v))


def hook_of(p):
    """The built-in chain packet p is first classified in (fw's own packets: OUTPUT; those to
    a local address then also pass INPUT with -i lo)."""
    if p["entry"] == "fw":
        return "OUTPUT"
    if p.get("l2") == "broadcast" or addr_class(ip2int(p["dst"])) == "local":
        return "INPUT"
    return "FORWARD"


def reaches(p, hook):
    """Whether packet p is classified in built-in chain `hook` at all."""
    h = hook_of(p)
    return h == hook or (hook == "INPUT" and h == "OUTPUT" and
                         addr_class(ip2int(p["dst"])) == "local")


def devs(p, hook):
    """(in, out) interface names as netfilter gives them to rules of `hook`."""
    if hook == "INPUT":
        return ("lo" if p["entry"] == "fw" else p["entry"]), ""
    if hook == "OUTPUT":
        return "", route_dev(ip2int(p["dst"]))
    return p["entry"], route_dev(ip2int(p["dst"]))


def l4_readable(p, hook):
    """Whether the transport header is there for tcp/udp/icmp/multiport to read (they never
    match a non-first fragment, and drop a truncated one)."""
    return p.get("frag", "none") in ("none", "first", "pair")


# ---------------------------------------------------------------------------------------------
# Matches. Each has: render() -> str; satisfy(rng, p, want) makes packet p (a dict) give the
# match's result `want` (negation included); holds(p, hook) says whether it matches at `hook`;
# edges(rng, p) -> list of (label, {field: value}).

class Addr:
    """-s/-d with a prefix or a non-contiguous mask."""

    def __init__(self, rng, field, inv, near_local):
        self.field, self.inv = field, inv
        base = random_local(rng) if near_local else random_remote(rng)
        if rng.random() < 0.12:
            self.mask = rng.choice([0xFF00FF00, 0x00FF00FF, 0xFFFF00FF, 0xFF0000FF,
                                    0xFFF0000F, 0x0000FFFF, rng.getrandbits(32) | 0x80000000])
            self.plen = None
        else:
            self.plen = rng.choice(PREFIX_LENS)
            self.mask = (0xFFFFFFFF << (32 - self.plen)) & 0xFFFFFFFF
        self.addr = base & self.mask

    def kind(self):
        return "-%s %s" % (self.field[0], "/len" if self.plen is not None else "/mask")

    def render(self):
        m = str(self.plen) if self.plen is not None else int2ip(self.mask)
        return "%s-%s %s/%s" % ("! " if self.inv else "", self.field[0], int2ip(self.addr), m)

    def inside(self, v):
        return v & self.mask == self.addr

    def holds(self, p, hook):
        return self.inside(ip2int(p[self.field])) != self.inv

    def satisfy(self, rng, p, want):
        hit = want != self.inv
        cur = ip2int(p[self.field])
        if self.inside(cur) == hit:
            return
        for i in range(60):
            if hit:
                v = self.addr | (rng.getrandbits(32) & ~self.mask & 0xFFFFFFFF)
            elif i < 30:  # preferably an address of the same kind (local stays local)
                v = random_local(rng) if addr_class(cur) == "local" else random_remote(rng)
            else:
                v = rng.getrandbits(32)
            if self.inside(v) == hit and addr_class(v) in ("local", "remote"):
                p[self.field] = int2ip(v)
                return

    def edges(self, rng, p):
        f = self.field
        if self.plen is not None:
            first, last = self.addr, self.addr | (~self.mask & 0xFFFFFFFF)
            out = [("%s=first" % f, first), ("%s=last" % f, last)]
            if self.plen > 0:
                out += [("%s=first-1" % f, first - 1), ("%s=last+1" % f, last + 1)]
        else:
            low = self.mask & -self.mask
            high = 1 << (self.mask.bit_length() - 1)
            inside = self.addr | (rng.getrandbits(32) & ~self.mask & 0xFFFFFFFF)
            out = [("%s=in-mask" % f, inside), ("%s=maskbit-low" % f, inside ^ low),
                   ("%s=maskbit-high" % f, inside ^ high)]
        return [(l, {f: int2ip(v & 0xFFFFFFFF)}) for l, v in out if 0 <= v <= 0xFFFFFFFF]


def iface_matches(pattern, name):
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return name == pattern


class Iface:
    """-i/-o, exact or with a + wildcard, possibly negated."""

    def __init__(self, rng, field, inv):
        self.field, self.inv = field, inv
        name = rng.choice(ALL_IFACES if rng.random() < 0.85 else ["eth1", "eth100", "wlan0"])
        r = rng.random()
        if r < 0.45:
            self.pattern = name
        elif r < 0.9:
            # iptables takes at most IFNAMSIZ-1 characters, the + included
            self.pattern = name[:rng.randrange(0, min(len(name), 14) + 1)] + "+"
        else:
            self.pattern = rng.choice(["+", "e+", "eth+", "eth1+", "veth+", "uplink-ext-012+",
                                       "uplink-ext-0124", "l+"])

    def kind(self):
        return "-%s %s" % (self.field[0], "wildcard" if self.pattern.endswith("+") else "exact")

    def render(self):
        return "%s-%s %s" % ("! " if self.inv else "", self.field[0], self.pattern)

    def candidates(self, p):
        if self.field == "in":
            if addr_class(ip2int(p["dst"])) == "local":
                return FW_IFACES + ["lo"]  # lo: sent by fw itself to its own address
            if p["entry"] == "fw":
                return []  # OUTPUT: in = ""
            return list(FW_IFACES)
        return list(ALL_IFACES)

    def holds(self, p, hook):
        name = devs(p, hook)[0 if self.field == "in" else 1]
        return iface_matches(self.pattern, name) != self.inv

    def satisfy(self, rng, p, want):
        hit = want != self.inv
        c = [n for n in self.candidates(p) if iface_matches(self.pattern, n) == hit]
        if c:
            set_iface(rng, p, self.field, rng.choice(c))

    def edges(self, rng, p):
        out = []
        for n in self.candidates(p):
            q = dict(p)
            set_iface(rng, q, self.field, n)
            out.append(("%s=%s" % (self.field, n), {k: q[k] for k in ("entry", "src", "dst")}))
        return out


def set_iface(rng, p, field, name):
    if field == "in" and name == "lo":
        p["entry"] = "fw"
        p["src"] = int2ip(random_local(rng))
    elif field == "in":
        p["entry"] = name
        if addr_class(ip2int(p["src"])) != "remote":
            p["src"] = int2ip(random_remote(rng))
    elif name == "lo":
        p["dst"] = int2ip(random_local(rng))
    elif addr_class(ip2int(p["dst"])) == "local" and p["entry"] != "fw":
        pass  # an INPUT packet has no out interface; keep it local
    else:
        p["dst"] = int2ip(random_remote(rng, name))


class Proto:
    def __init__(self, proto, inv):
        self.proto, self.inv = proto, inv

    def kind(self):
        return "-p " + self.render().split()[-1]

    def holds(self, p, hook):
        return self.proto == 0 or (p["proto"] == self.proto) != self.inv

    def render(self):
        name = {PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_ICMP: "icmp", 0: "all"}.get(
            self.proto, str(self.proto))
        return "%s-p %s" % ("! " if self.inv else "", name)

    def satisfy(self, rng, p, want):
        if self.proto == 0:
            return
        if want != self.inv:
            p["proto"] = self.proto
        elif p["proto"] == self.proto:
            p["proto"] = rng.choice([x for x in (PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_GRE)
                                     if x != self.proto])

    def edges(self, rng, p):
        if self.proto == 0:
            return []
        return [("proto=%d" % x, {"proto": x}) for x in (PROTO_TCP, PROTO_UDP, PROTO_ICMP,
                                                        PROTO_GRE) if x != p["proto"]]


class Frag:
    """-f: the packet is a non-first fragment."""

    def __init__(self, inv):
        self.inv = inv

    def kind(self):
        return "-f"

    def holds(self, p, hook):
        return (p.get("frag", "none") in ("off1", "offN")) != self.inv

    def render(self):
        return "%s-f" % ("! " if self.inv else "")

    def satisfy(self, rng, p, want):
        if want != self.inv:
            p["frag"] = rng.choice(["off1", "offN"])
        elif p.get("frag", "none") in ("off1", "offN"):
            p["frag"] = "none"

    def edges(self, rng, p):
        return [("frag=" + f, {"frag": f})
                for f in ("none", "first", "off1", "offN", "short", "pair")]


def port_str(rng, lo, hi):
    """A port or range as --sport/--dport take it, sometimes with an open end."""
    if lo == hi:
        return str(lo)
    if lo == 0 and hi != 65535 and rng.random() < 0.3:
        return ":%d" % hi
    if hi == 65535 and lo != 0 and rng.random() < 0.3:
        return "%d:" % lo
    return "%d:%d" % (lo, hi)


def random_port_range(rng):
    a = rng.choice(PORTS) if rng.random() < 0.6 else rng.randrange(65536)
    if rng.random() < 0.5:
        return a, a
    b = rng.choice(PORTS) if rng.random() < 0.4 else clip(a + rng.choice([1, 2, 10, 1000]),
                                                            0, 65535)
    return min(a, b), max(a, b)


def port_edges(field, lo, hi):
    vals = [("lo-1", lo - 1), ("lo", lo), ("hi", hi), ("hi+1", hi + 1)]
    return [("%s=%s" % (field, l), {field: v}) for l, v in vals if 0 <= v <= 65535]


class Port:
    """--sport/--dport of -m tcp or -m udp."""

    def __init__(self, rng, field, inv):
        self.field, self.inv = field, inv
        self.lo, self.hi = random_port_range(rng)
        self.text = port_str(rng, self.lo, self.hi)

    def render(self):
        return "%s--%s %s" % ("! " if self.inv else "", self.field, self.text)

    def kind(self):
        return "--%s %s" % (self.field, "port" if self.lo == self.hi else "range")

    def holds(self, p, hook):
        return l4_readable(p, hook) and (self.lo <= p[self.field] <= self.hi) != self.inv

    def satisfy(self, rng, p, want):
        if want != self.inv:
            p[self.field] = rng.randint(self.lo, self.hi)
        else:
            out = [v for v in (self.lo - 1, self.hi + 1, rng.randrange(65536))
                   if 0 <= v <= 65535 and not self.lo <= v <= self.hi]
            if out:
                p[self.field] = rng.choice(out)

    def edges(self, rng, p):
        return port_edges(self.field, self.lo, self.hi)


class Multiport:
    """-m multiport --sports/--dports/--ports with singles and ranges (revision 1)."""

    def __init__(self, rng, inv):
        self.inv = inv
        self.kind_ = rng.choice(["sports", "dports", "ports"])
        self.items, slots = [], 0
        for _ in range(rng.randint(1, 8)):
            lo, hi = random_port_range(rng)
            need = 1 if lo == hi else 2
            if slots + need > 15:
                break
            self.items.append((lo, hi))
            slots += need

    def render(self):
        return "-m multiport %s--%s %s" % ("! " if self.inv else "", self.kind_,
                                           ",".join(str(l) if l == h else "%d:%d" % (l, h)
                                                    for l, h in self.items))

    def kind(self):
        return "multiport --" + self.kind_

    def fields(self):
        return {"sports": ["sport"], "dports": ["dport"], "ports": ["sport", "dport"]}[self.kind_]

    def hit(self, v):
        return any(l <= v <= h for l, h in self.items)

    def holds(self, p, hook):
        return l4_readable(p, hook) and \
            any(self.hit(p[f]) for f in self.fields()) != self.inv

    def satisfy(self, rng, p, want):
        if want != self.inv:
            lo, hi = rng.choice(self.items)
            p[rng.choice(self.fields())] = rng.randint(lo, hi)
        else:
            for f in self.fields():
                for _ in range(50):
                    v = rng.choice([rng.randrange(65536)] + [x for l, h in self.items
                                                             for x in (l - 1, h + 1)])
                    if 0 <= v <= 65535 and not self.hit(v):
                        p[f] = v
                        break

    def edges(self, rng, p):
        out = []
        for lo, hi in self.items:
            for f in self.fields():
                out += port_edges(f, lo, hi)
        return out


class TcpFlags:
    def __init__(self, rng, inv):
        self.inv = inv
        self.syn = rng.random() < 0.3
        if self.syn:
            self.mask, self.comp = 0x17, 0x02
        else:
            self.mask = rng.choice([0x3F, 0] + [rng.getrandbits(6) for _ in range(4)])
            self.comp = self.mask & rng.getrandbits(6)

    def kind(self):
        return "--syn" if self.syn else "--tcp-flags"

    @staticmethod
    def names(v):
        if v == 0x3F:
            return "ALL"
        return ",".join(n for n, b in TCP_FLAG_NAMES if v & b) or "NONE"

    def holds(self, p, hook):
        return l4_readable(p, hook) and ((p["flags"] & self.mask) == self.comp) != self.inv

    def render(self):
        if self.syn:
            return "%s--syn" % ("! " if self.inv else "")
        return "%s--tcp-flags %s %s" % ("! " if self.inv else "", self.names(self.mask),
                                        self.names(self.comp))

    def satisfy(self, rng, p, want):
        f = (p["flags"] & ~self.mask) | self.comp
        if want == self.inv:
            if self.mask == 0:
                return
            f ^= rng.choice([b for _, b in TCP_FLAG_NAMES if self.mask & b])
        p["flags"] = f

    def edges(self, rng, p):
        out = [("flags=exact", {"flags": self.comp}),
               ("flags=+other", {"flags": self.comp | (~self.mask & rng.getrandbits(8))})]
        for n, b in TCP_FLAG_NAMES:
            if self.mask & b:
                out.append(("flags^%s" % n, {"flags": self.comp ^ b}))
        return out


class TcpOption:
    def __init__(self, rng, inv):
        self.inv = inv
        self.opt = rng.choice([1, 2, 3, 4, 8, 5, 30, 254, 255])

    def kind(self):
        return "--tcp-option"

    def holds(self, p, hook):
        # The kernel's scan: EOL and NOP are one byte, anything else says its length.
        op = tcp_options(p.get("tcpopts", []))
        i, found = 0, False
        while i < len(op):
            if op[i] == self.opt:
                found = True
                break
            i += 1 if op[i] < 2 else (op[i + 1] if i + 1 < len(op) and op[i + 1] else 1)
        return l4_readable(p, hook) and found != self.inv

    def render(self):
        return "%s--tcp-option %d" % ("! " if self.inv else "", self.opt)

    def satisfy(self, rng, p, want):
        if want != self.inv:
            p["tcpopts"] = [2, 1, self.opt] if self.opt > 1 else [self.opt, 2]
        else:
            p["tcpopts"] = [o for o in (2, 4, 8) if o != self.opt] if self.opt > 1 else []

    def edges(self, rng, p):
        o = self.opt
        return [("opt=none", {"tcpopts": []}),
                ("opt=%d" % o, {"tcpopts": [o] if o > 1 else [o, 2]}),
                ("opt=after-nops", {"tcpopts": [1, 1, 3, o]}),
                ("opt=%d+1" % o, {"tcpopts": [(o + 1) % 256 or 2]}),
                ("opt=%d-1" % o, {"tcpopts": [o - 1 if o > 2 else 2]})]


class Icmp:
    def __init__(self, rng, inv):
        self.inv = inv
        r = rng.random()
        name, self.type, self.cmin, self.cmax = rng.choice(ICMP_NAMES)
        if r < 0.6:
            self.text = name
        elif r < 0.8 or self.type == 255:
            self.text = str(self.type) if self.type != 255 else "any"
            if self.type != 255:
                self.cmin, self.cmax = 0, 255
        else:
            self.type = rng.choice([0, 3, 5, 8, 11, 12, 13, 40, 254])
            c = rng.choice([0, 1, 3, 13, 15, 255])
            self.cmin = self.cmax = c
            self.text = "%d/%d" % (self.type, c)

    def kind(self):
        if self.type == 255:
            return "--icmp-type any"
        return "--icmp-type " + ("type/code" if "/" in self.text else
                                 "type" if self.text.isdigit() else "name")

    def render(self):
        return "%s--icmp-type %s" % ("! " if self.inv else "", self.text)

    def holds(self, p, hook):
        hit = self.type == 255 or (p["icmp_type"] == self.type and
                                   self.cmin <= p["icmp_code"] <= self.cmax)
        return l4_readable(p, hook) and hit != self.inv

    def satisfy(self, rng, p, want):
        if want != self.inv:
            if self.type != 255:
                p["icmp_type"], p["icmp_code"] = self.type, rng.randint(self.cmin, self.cmax)
        elif self.type != 255:
            if self.cmin > 0 and rng.random() < 0.5:
                p["icmp_type"], p["icmp_code"] = self.type, self.cmin - 1
            else:
                p["icmp_type"], p["icmp_code"] = (self.type + 1) % 256, 0

    def edges(self, rng, p):
        if self.type == 255:
            return [("icmp=%d/%d" % tc, {"icmp_type": tc[0], "icmp_code": tc[1]})
                    for tc in ((0, 0), (8, 0), (3, 3), (11, 0), (255, 255))]
        t = self.type
        vals = [(t, self.cmin), (t, self.cmax), (t, self.cmin - 1), (t, self.cmax + 1),
                (t - 1, self.cmin), (t + 1, self.cmin)]
        return [("icmp=%d/%d" % tc, {"icmp_type": tc[0], "icmp_code": tc[1]})
                for tc in vals if 0 <= tc[0] <= 255 and 0 <= tc[1] <= 255]


class IpRange:
    def __init__(self, rng, field, inv, near_local):
        self.field, self.inv = field, inv
        a = random_local(rng) if near_local else random_remote(rng)
        b = a + rng.choice([0, 1, 5, 255, 256, 70000, 1 << 24])
        self.lo, self.hi = a, min(b, 0xFFFFFFFF)

    def kind(self):
        return "iprange --%s-range" % self.field

    def holds(self, p, hook):
        return (self.lo <= ip2int(p[self.field]) <= self.hi) != self.inv

    def render(self):
        return "-m iprange %s--%s-range %s-%s" % ("! " if self.inv else "", self.field,
                                                  int2ip(self.lo), int2ip(self.hi))

    def satisfy(self, rng, p, want):
        hit = want != self.inv
        if (self.lo <= ip2int(p[self.field]) <= self.hi) == hit:
            return
        if hit:
            p[self.field] = int2ip(rng.randint(self.lo, self.hi))
        else:
            v = rng.choice([self.lo - 1, self.hi + 1])
            if 0 <= v <= 0xFFFFFFFF:
                p[self.field] = int2ip(v)

    def edges(self, rng, p):
        vals = [("lo-1", self.lo - 1), ("lo", self.lo), ("hi", self.hi), ("hi+1", self.hi + 1)]
        return [("%s=range-%s" % (self.field, l), {self.field: int2ip(v)}) for l, v in vals
                if 0 <= v <= 0xFFFFFFFF]


class Length:
    def __init__(self, rng, inv):
        self.inv = inv
        a = rng.choice([0, 20, 28, 40, 41, 60, 64, 100, 576, 1000, 1499, 1500, 9000, 65535])
        if rng.random() < 0.4:
            self.lo = self.hi = a
        else:
            b = a + rng.choice([0, 1, 8, 40, 500])
            self.lo, self.hi = a, min(b, 65535)

    def kind(self):
        return "length"

    def holds(self, p, hook):
        return (self.lo <= total_length(p) <= self.hi) != self.inv

    def render(self):
        v = str(self.lo) if self.lo == self.hi else "%d:%d" % (self.lo, self.hi)
        return "-m length %s--length %s" % ("! " if self.inv else "", v)

    def satisfy(self, rng, p, want):
        if want != self.inv:
            p["length"] = rng.randint(self.lo, min(self.hi, 1500)) if self.lo <= 1500 else None
        else:
            p["length"] = rng.choice([self.lo - 1, self.hi + 1])
        if p["length"] is not None and not 0 <= p["length"] <= 1500:
            p["length"] = None

    def edges(self, rng, p):
        vals = [("lo-1", self.lo - 1), ("lo", self.lo), ("hi", self.hi), ("hi+1", self.hi + 1)]
        return [("len=" + l, {"length": v}) for l, v in vals if 0 <= v <= 1500]


class Ttl:
    def __init__(self, rng, inv):
        self.op = rng.choice(["eq", "lt", "gt"])
        self.inv = inv and self.op == "eq"
        self.val = rng.choice([0, 1, 2, 3, 63, 64, 65, 128, 254, 255])

    def kind(self):
        return "ttl --ttl-" + self.op

    def holds(self, p, hook):
        return self.hit(p.get("hook_ttl", 64))

    def render(self):
        return "-m ttl %s--ttl-%s %d" % ("! " if self.inv else "", self.op, self.val)

    def hit(self, t):
        return {"eq": t == self.val, "lt": t < self.val, "gt": t > self.val}[self.op] != self.inv

    def satisfy(self, rng, p, want):
        c = [t for t in (self.val - 1, self.val, self.val + 1, rng.randrange(256))
             if 0 <= t <= 255 and self.hit(t) == want]
        if c:
            p["hook_ttl"] = rng.choice(c)

    def edges(self, rng, p):
        return [("ttl=%d" % t, {"hook_ttl": t}) for t in (self.val - 1, self.val, self.val + 1)
                if 0 <= t <= 255]


class Mark:
    def __init__(self, rng, inv):
        self.inv = inv
        self.val = rng.choice([0, 1, 5, 0xFF, 0x10000, 0xFFFFFFFF, rng.getrandbits(32)])
        self.mask = rng.choice([None, 0xFF, 0xF0, 0xFFFF0000, 0x1, rng.getrandbits(32)])
        if self.mask is not None:
            self.val &= self.mask

    def kind(self):
        return "mark" + ("" if self.mask is None else "/mask")

    def render(self):
        v = "%#x" % self.val if self.mask is None else "%#x/%#x" % (self.val, self.mask)
        return "-m mark %s--mark %s" % ("! " if self.inv else "", v)

    def m(self):
        return 0xFFFFFFFF if self.mask is None else self.mask

    def holds(self, p, hook):
        return ((p.get("mark", 0) & self.m()) == self.val) != self.inv

    def satisfy(self, rng, p, want):
        if p["entry"] != "fw":
            return  # only locally generated packets can carry a mark (SO_MARK)
        m = self.m()
        if want != self.inv:
            p["mark"] = self.val | (rng.getrandbits(32) & ~m & 0xFFFFFFFF)
        else:
            p["mark"] = self.val ^ (m & -m) if m else p.get("mark", 0)

    def edges(self, rng, p):
        if p["entry"] != "fw":
            return []
        m = self.m()
        vals = [self.val, self.val | (~m & 0xFFFFFFFF), 0, 0xFFFFFFFF]
        if m:
            vals += [self.val ^ (m & -m), self.val ^ (1 << (m.bit_length() - 1))]
        return [("mark=%#x" % v, {"mark": v}) for v in vals]


class Comment:
    def __init__(self, rng):
        self.text = rng.choice(["allow web", "x", "dt %d" % rng.randrange(1000), "a\tb"])

    def render(self):
        return '-m comment --comment "%s"' % self.text

    def holds(self, p, hook):
        return True

    def satisfy(self, rng, p, want):
        pass

    def edges(self, rng, p):
        return []


# ---------------------------------------------------------------------------------------------

class Rule:
    def __init__(self, chain, matches, target, index):
        self.chain, self.matches, self.target, self.index = chain, matches, target, index

    def render(self):
        return " ".join(["-A", self.chain] + [m.render() for m in self.matches] +
                        ([self.target] if self.target else []))

    def kinds(self):
        """What the rule exercises, for the coverage summary: its conditions and its target."""
        out = []
        for m in self.matches:
            for x in (m.parts if isinstance(m, Group) else [m]):
                k = x.kind() if hasattr(x, "kind") else type(x).__name__.lower()
                out.append(("! " if getattr(x, "inv", False) else "") + k)
        t = self.target.split()
        if not t:
            out.append("no target")
        elif t[0] == "-g":
            out.append("-g CHAIN")
        elif self.jumps_to():
            out.append("-j CHAIN")
        elif t[-1] == "REJECT" or "--reject-with" in t:
            out.append("REJECT " + (t[-1] if t[-1] != "REJECT" else "(default)"))
        else:
            out.append(t[-1])
        return out

    def jumps_to(self):
        parts = self.target.split()
        if len(parts) == 2 and parts[0] in ("-j", "-g") and parts[1].startswith("uc"):
            return parts[1]
        return None


class Ruleset:
    def __init__(self, policies, chains, rules):
        self.policies, self.chains, self.rules = policies, chains, rules

    def render(self):
        lines = ["*filter"]
        lines += [":%s %s [0:0]" % (c, self.policies[c]) for c in HOOKS]
        lines += [":%s - [0:0]" % c for c in self.chains]
        lines += [r.render() for r in self.rules]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


def gen_rule(rng, chain, hooks, later_chains, index, caller_protos=()):
    """One rule of `chain`, which packets reach from the built-in chains `hooks` (through
    jumps that require the protocols `caller_protos`, if any)."""
    ms = []
    builtin = chain in HOOKS
    local_dst = hooks == ["INPUT"] or (hooks and rng.random() < 0.4 and "INPUT" in hooks)
    proto = None
    r = rng.random()
    if caller_protos and rng.random() < 0.5:
        # Mostly rules a packet that got here can match: the protocol the jump required.
        proto = rng.choice(caller_protos)
    elif r < 0.3:
        proto = PROTO_TCP
    elif r < 0.5:
        proto = PROTO_UDP
    elif r < 0.65:
        proto = PROTO_ICMP
    elif r < 0.7:
        proto = PROTO_GRE
    proto_inv = proto is not None and rng.random() < 0.1
    if rng.random() < 0.35:
        ms.append(Addr(rng, "src", rng.random() < 0.2, "OUTPUT" in hooks and rng.random() < 0.5))
    if rng.random() < 0.35:
        ms.append(Addr(rng, "dst", rng.random() < 0.2, local_dst))
    if rng.random() < 0.2 and not (builtin and chain == "OUTPUT"):
        ms.append(Iface(rng, "in", rng.random() < 0.25))
    if rng.random() < 0.2 and not (builtin and chain == "INPUT"):
        ms.append(Iface(rng, "out", rng.random() < 0.25))
    if proto is not None:
        ms.append(Proto(proto, proto_inv))
    elif rng.random() < 0.1:
        ms.append(Proto(0, False))  # -p all: matches everything
    if rng.random() < 0.08:
        ms.append(Frag(rng.random() < 0.4))
    if proto in (PROTO_TCP, PROTO_UDP) and not proto_inv:
        name = "tcp" if proto == PROTO_TCP else "udp"
        sub = []
        if rng.random() < 0.3:
            sub.append(Port(rng, "sport", rng.random() < 0.2))
        if rng.random() < 0.5:
            sub.append(Port(rng, "dport", rng.random() < 0.2))
        if proto == PROTO_TCP and rng.random() < 0.3:
            sub.append(TcpFlags(rng, rng.random() < 0.2))
        if proto == PROTO_TCP and rng.random() < 0.1:
            sub.append(TcpOption(rng, rng.random() < 0.3))
        if sub:
            ms.append(Group("-m " + name, sub))
        if rng.random() < 0.2:
            ms.append(Multiport(rng, rng.random() < 0.2))
    if proto == PROTO_ICMP and not proto_inv and rng.random() < 0.75:
        ms.append(Group("-m icmp", [Icmp(rng, rng.random() < 0.15)]))
    if rng.random() < 0.1:
        ms.append(IpRange(rng, rng.choice(["src", "dst"]), rng.random() < 0.2, local_dst))
    if rng.random() < 0.12:
        ms.append(Length(rng, rng.random() < 0.2))
    if rng.random() < 0.12:
        ms.append(Ttl(rng, rng.random() < 0.3))
    # Only fw's own packets can carry a mark (SO_MARK); elsewhere the mark is always 0.
    if rng.random() < (0.15 if "OUTPUT" in hooks else 0.04):
        ms.append(Mark(rng, rng.random() < 0.2))
    if rng.random() < 0.06:
        ms.append(Comment(rng))

    r = rng.random()
    tcp_plain = proto == PROTO_TCP and not proto_inv
    if r < 0.22:
        target = "-j ACCEPT"
    elif r < 0.42:
        target = "-j DROP"
    elif r < 0.67:
        names = [w for w in REJECT_WITH if w[0] != "tcp-reset" or tcp_plain]
        if tcp_plain and rng.random() < 0.55:
            names = [REJECT_WITH[-1]]
        w = rng.choice(rng.choice(names))
        target = "-j REJECT" if w == "icmp-port-unreachable" and rng.random() < 0.3 else \
            "-j REJECT --reject-with " + w
    elif r < 0.73:
        target = "-j RETURN"
    elif r < 0.9 and later_chains:
        target = "%s %s" % ("-g" if rng.random() < 0.3 else "-j", rng.choice(later_chains))
    else:
        target = ""
    return Rule(chain, ms, target, index)


class Group:
    """A module's options under one -m (e.g. -m tcp --sport .. --dport ..)."""

    def __init__(self, head, parts):
        self.head, self.parts = head, parts

    def render(self):
        return " ".join([self.head] + [p.render() for p in self.parts])

    def holds(self, p, hook):
        return all(x.holds(p, hook) for x in self.parts)

    def satisfy(self, rng, p, want):
        if want:
            for x in self.parts:
                x.satisfy(rng, p, True)
        else:
            rng.choice(self.parts).satisfy(rng, p, False)

    def edges(self, rng, p):
        return [e for x in self.parts for e in x.edges(rng, p)]


def gen_ruleset(rng):
    n_user = rng.choice([0, 1, 1, 2, 2, 3, 4])
    chains = ["uc%d" % i for i in range(n_user)]
    # OUTPUT also filters REJECT's replies and fw's own answers: a DROP there hides them.
    policies = {h: ("DROP" if rng.random() < (0.2 if h == "OUTPUT" else 0.35) else "ACCEPT")
                for h in HOOKS}
    reach = {c: [] for c in chains}  # user chain -> built-in chains that jump into it
    protos = {c: [] for c in chains}  # user chain -> protocols its callers require
    rules = []

    def note_jump(r):
        for m in r.matches:
            if isinstance(m, Proto) and not m.inv and m.proto:
                protos[r.jumps_to()].append(m.proto)
    for h in HOOKS:
        for _ in range(rng.choice([0, 1, 2, 3, 4, 5, 6, 8])):
            r = gen_rule(rng, h, [h], chains, len(rules))
            rules.append(r)
            if r.jumps_to():
                reach[r.jumps_to()] = sorted(set(reach[r.jumps_to()]) | {h})
                note_jump(r)
    for i, c in enumerate(chains):
        for _ in range(rng.choice([1, 2, 3, 4, 5])):
            r = gen_rule(rng, c, reach[c] or list(HOOKS), chains[i + 1:], len(rules),
                         protos[c])
            rules.append(r)
            if r.jumps_to():
                reach[r.jumps_to()] = sorted(set(reach[r.jumps_to()]) | set(reach[c]))
                note_jump(r)
    # iptables-restore wants a chain's rules together, in order; keep the generation order.
    order = {c: i for i, c in enumerate(list(HOOKS) + chains)}
    rules.sort(key=lambda r: (order[r.chain], r.index))
    return Ruleset(policies, chains, rules), reach


# ---------------------------------------------------------------------------------------------
# Packets.

def base_packet(rng, hook):
    p = {"proto": rng.choice([PROTO_TCP, PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_GRE]),
         "sport": rng.choice([rng.randrange(1024, 65536), rng.choice(PORTS)]),
         "dport": rng.choice([rng.randrange(65536), rng.choice(PORTS)]),
         "flags": rng.choice([0x02, 0x10, 0x12, 0x18, 0x11, 0x04, 0x01, 0x00, 0x3F]),
         "icmp_type": rng.choice([8, 0, 3, 11]), "icmp_code": 0, "frag": "none",
         "length": None, "mark": 0, "tcpopts": [], "hook_ttl": 64, "l2": "unicast"}
    if hook == "OUTPUT":
        p["entry"] = "fw"
        p["src"] = int2ip(random_local(rng) if rng.random() < 0.8 else random_remote(rng))
        p["dst"] = int2ip(random_local(rng) if rng.random() < 0.15 else random_remote(rng))
    else:
        p["entry"] = rng.choice(FW_IFACES)
        p["src"] = int2ip(random_remote(rng))
        if hook == "INPUT":
            if rng.random() < 0.1:
                p["entry"] = "fw"  # OUTPUT to a local address: INPUT -i lo
                p["src"] = int2ip(random_local(rng))
            p["dst"] = int2ip(random_local(rng))
        else:
            p["dst"] = int2ip(random_remote(rng))
    return p


def finish(p):
    """Turns the hook-relative TTL into the TTL to send, and checks the packet is usable:
    addresses fw can route without ARP, a length the protocol fits in. None if unusable."""
    p = dict(p)
    src, dst = ip2int(p["src"]), ip2int(p["dst"])
    dclass = addr_class(dst)
    if p["entry"] == "fw":
        if addr_class(src) not in ("local", "remote") or dclass not in ("local", "remote"):
            return None
        p["mark"] = p.get("mark", 0)
        p["l2"] = "unicast"
    else:
        p["mark"] = 0
        if addr_class(src) != "remote":
            return None
        if p.get("l2") == "broadcast":
            pass
        elif dclass not in ("local", "remote"):
            return None
    ttl = p.pop("hook_ttl", 64)
    if p["entry"] != "fw" and dclass != "local" and p.get("l2", "unicast") == "unicast":
        ttl += 1  # forwarded: FORWARD sees the TTL already decremented
    if ttl > 255:
        return None
    p["ttl"] = ttl
    if p["proto"] not in (PROTO_TCP, PROTO_UDP, PROTO_ICMP):
        p["frag"] = "none" if p["frag"] == "short" else p["frag"]
    if p["length"] is not None:
        l4 = {PROTO_TCP: 20 + len(tcp_options(p["tcpopts"])), PROTO_UDP: 8,
              PROTO_ICMP: 8}.get(p["proto"], 0)
        if p["frag"] in ("off1", "offN"):
            l4 = 0
        if p["frag"] == "pair":  # both fragments need data
            l4 = pair_split(p["proto"], p["tcpopts"]) + 1
        if p["length"] < 20 + l4 or p["length"] > 1500:
            return None
    return p


def path_to(rng, ruleset, chain, hook, depth=0):
    """Rules (jumps/gotos) that lead from built-in chain `hook` to `chain`: a random path."""
    if chain == hook or depth > 8:
        return []
    callers = [r for r in ruleset.rules if r.jumps_to() == chain]
    rng.shuffle(callers)
    for r in callers:
        if r.chain == hook:
            return [r]
        if r.chain not in HOOKS:
            sub = path_to(rng, ruleset, r.chain, hook, depth + 1)
            if sub or r.chain == hook:
                return sub + [r]
    return []


TERMINAL = ("-j ACCEPT", "-j DROP", "-j REJECT", "-j RETURN", "-g ", "-j uc")


def rule_holds(r, p, hook):
    return all(m.holds(p, hook) for m in r.matches)


def solve(rng, ruleset, path, hook, attempts=30):
    """A packet that reaches the last rule of `path` (jumps from built-in chain `hook` down to
    the rule) and matches it: every rule on the way matches, the hook is right, and no earlier
    rule of those chains with a verdict or jump catches it first. Randomised search; the best
    attempt if none is perfect."""
    conds = [m for r in path for m in r.matches]
    shadows = []
    for r in path:
        for x in ruleset.rules:
            if x.chain == r.chain and x.index < r.index and x.target.startswith(TERMINAL):
                shadows.append(x)
    perfect = (True, len(conds), len(shadows))
    best, best_score = None, None
    for _ in range(attempts):
        p = base_packet(rng, hook)
        for _ in range(4):
            order = conds[:]
            rng.shuffle(order)
            order.sort(key=lambda m: not isinstance(m, Proto))  # protocol first
            for m in order:
                if not m.holds(p, hook):
                    m.satisfy(rng, p, True)
            if all(m.holds(p, hook) for m in conds):
                break
        for x in shadows:
            if rule_holds(x, p, hook) and x.matches:
                m = rng.choice(x.matches)
                q = dict(p)
                m.satisfy(rng, q, False)
                if all(c.holds(q, hook) for c in conds):
                    p = q
        score = (reaches(p, hook), sum(m.holds(p, hook) for m in conds),
                 sum(not rule_holds(x, p, hook) for x in shadows))
        if best_score is None or score > best_score:
            best, best_score = p, score
        if score == perfect:
            break
    best["solved"] = best_score == perfect
    return best


def packets_for_rule(rng, ruleset, reach, rule):
    hooks = [rule.chain] if rule.chain in HOOKS else reach.get(rule.chain, [])
    if not hooks:
        return []
    hook = rng.choice(hooks)
    path = path_to(rng, ruleset, rule.chain, hook) if rule.chain not in HOOKS else []
    if rule.chain not in HOOKS and not path:
        return []
    out = []
    base = solve(rng, ruleset, path + [rule], hook)
    if rng.random() < 0.04:
        base["frag"] = "pair"
    same_chain = [x for x in ruleset.rules if x.chain == rule.chain]
    label = "%s#%d" % (rule.chain, same_chain.index(rule) + 1)
    solved = base.pop("solved")
    out.append((label + (" base" if solved else " base(partial)"), base))
    for m in rule.matches:
        for l, upd in m.edges(rng, base):
            q = dict(base)
            q.update(upd)
            out.append(("%s %s" % (label, l), q))
    # Broadcast and multicast destinations: the kernel delivers them locally (INPUT).
    if hook == "INPUT" and base["entry"] != "fw" and rng.random() < 0.15:
        q = dict(base)
        i = FW_IFACES.index(q["entry"])
        q["dst"] = rng.choice([str(ipaddress.IPv4Network(LINKS[i][3]).broadcast_address),
                               "255.255.255.255", "224.0.0.1"])
        q["l2"] = "broadcast"
        out.append((label + " dst=" + q["dst"], q))
    return out


def generate(seed, index, count):
    """Ruleset number `index` of `seed` and `count` packets aimed at its rules' edges."""
    rng = random.Random("bpfipt-difftest:%d:%d" % (seed, index))
    ruleset, reach = gen_ruleset(rng)
    cands = []
    for rule in ruleset.rules:
        cands.append(packets_for_rule(rng, ruleset, reach, rule))
    for hook in HOOKS:  # policies and unmatched traffic
        cands.append([("%s random" % hook, base_packet(rng, hook)) for _ in range(3)])
    packets = []
    # Round-robin over the rules so every rule gets packets, edges in random order.
    for c in cands:
        # Popped from the end: the rule's base packet first, then its edges in random order.
        head, rest = c[:1], c[1:]
        rng.shuffle(rest)
        c[:] = rest + head
    while len(packets) < count and any(cands):
        for c in cands:
            while c:
                label, p = c.pop()
                f = finish(p)
                if f is not None:
                    packets.append((label, f))
                    break
            if len(packets) >= count:
                break
    return ruleset, packets
