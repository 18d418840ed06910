"""IPv4 packets of the differential tests: building them from a description, and recognising
them (or a reply that quotes them) when they come back from the wire or a raw socket."""

import ipaddress
import struct

PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_GRE = 1, 6, 17, 47
# Headers after the IP header, by protocol: the smallest packet of each kind.
L4_MIN = {PROTO_TCP: 20, PROTO_UDP: 8, PROTO_ICMP: 8}
TCP_FLAGS = "FSRPAUEC"  # bit 0 = FIN ... bit 7 = CWR, as in the TCP header
MAGIC = b"Dtp"  # payload start: 0x44 reads as IPv4 with IHL 4, so it never parses as a quote
ICMP_ERRORS = (3, 4, 5, 11, 12)
IP_MF, IP_DF = 0x2000, 0x4000


def ip2int(a):
    return int(ipaddress.IPv4Address(a))


def int2ip(n):
    return str(ipaddress.IPv4Address(n & 0xFFFFFFFF))


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def flags_str(f):
    return "".join(c for i, c in enumerate(TCP_FLAGS) if f >> i & 1) or "-"


def tcp_options(kinds):
    """Encodes TCP option kinds with plausible lengths; padded with NOPs to 4 bytes."""
    out = b""
    for k in kinds:
        if k in (0, 1):
            out += bytes([k])
        elif k == 2:
            out += struct.pack("!BBH", 2, 4, 1460)
        elif k == 3:
            out += bytes([3, 3, 7])
        elif k == 4:
            out += bytes([4, 2])
        elif k == 8:
            out += struct.pack("!BBII", 8, 10, 1, 0)
        else:
            out += bytes([k, 4, 0xAB, 0xCD])
    while len(out) % 4:
        out += b"\x01"
    return out


def build(p, tag):
    """The IPv4 packet for description p (a dict, see gen.Packet), tagged with `tag`.

    The IP ID is the tag's low 16 bits (never 0: a raw IP_HDRINCL socket would replace 0);
    TCP seq/ack carry the tag too, so a TCP RST answering the packet can be matched.
    """
    proto = p["proto"]
    frag = p.get("frag", "none")
    ipid = tag % 65535 + 1
    l4 = b""
    if frag in ("none", "first", "short", "pair"):
        if proto == PROTO_TCP:
            opts = tcp_options(p.get("tcpopts", []))
            doff = (20 + len(opts)) // 4
            l4 = struct.pack("!HHIIBBHHH", p["sport"], p["dport"], seq_of(tag), ack_of(tag),
                             doff << 4, p["flags"], 512, 0, 0) + opts
        elif proto == PROTO_UDP:
            l4 = struct.pack("!HHHH", p["sport"], p["dport"], 0, 0)
        elif proto == PROTO_ICMP:
            l4 = struct.pack("!BBHHH", p["icmp_type"], p["icmp_code"], 0, tag & 0xFFFF,
                             tag >> 16 & 0xFFFF)
    payload = MAGIC + struct.pack("!I", tag)
    want = p.get("length")
    if want is None:
        want = 20 + len(l4) + len(payload) + 8
    if frag == "short":
        # A first fragment too short for its transport header: matches reading it hotdrop.
        l4 = l4[:8]
        want = 20 + len(l4)
    body_len = max(want - 20, len(l4)) - len(l4)
    payload = (payload + bytes(range(256)) * 6)[:body_len]
    seg = bytearray(l4 + payload)
    if frag in ("none", "pair"):
        pseudo = struct.pack("!4s4sBBH", ipaddress.IPv4Address(p["src"]).packed,
                             ipaddress.IPv4Address(p["dst"]).packed, 0, proto, len(seg))
        if proto == PROTO_TCP:
            struct.pack_into("!H", seg, 16, csum(pseudo + bytes(seg)))
        elif proto == PROTO_UDP:
            struct.pack_into("!H", seg, 4, len(seg))
            c = csum(pseudo + bytes(seg))
            struct.pack_into("!H", seg, 6, c or 0xFFFF)
        elif proto == PROTO_ICMP:
            struct.pack_into("!H", seg, 2, csum(bytes(seg)))
    elif proto == PROTO_UDP and len(seg) >= 8:
        struct.pack_into("!H", seg, 4, len(seg))
    fo = {"none": 0, "pair": 0, "first": IP_MF, "short": IP_MF, "off1": 1 | IP_MF,
          "offN": 185}[frag]
    if p.get("df"):
        fo |= IP_DF
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, p.get("tos", 0), 20 + len(seg), ipid,
                                fo, p["ttl"], proto, 0,
                                ipaddress.IPv4Address(p["src"]).packed,
                                ipaddress.IPv4Address(p["dst"]).packed))
    struct.pack_into("!H", hdr, 10, csum(bytes(hdr)))
    return bytes(hdr + seg)


def total_length(p):
    """The IP total length build() gives packet p, without building it."""
    frag = p.get("frag", "none")
    if frag == "short":
        return 28
    l4 = 0
    if frag in ("none", "first", "pair"):
        l4 = {PROTO_TCP: 20 + len(tcp_options(p.get("tcpopts", []))), PROTO_UDP: 8,
              PROTO_ICMP: 8}.get(p["proto"], 0)
    want = p.get("length")
    if want is None:
        want = 20 + l4 + len(MAGIC) + 4 + 8
    return 20 + max(want - 20, l4)


def pair_split(proto, tcpopts):
    """Where a "pair" datagram is cut in two fragments: after the transport header, at a
    multiple of 8 (the first fragment holds the whole header, as a real sender's would)."""
    l4 = {PROTO_TCP: 20 + len(tcp_options(tcpopts)), PROTO_UDP: 8, PROTO_ICMP: 8}.get(proto, 0)
    return max(8, (l4 + 7) // 8 * 8)


def frames(p, ip):
    """What goes on the wire for packet p built as ip: one frame, or for frag "pair" the two
    fragments of the datagram (same ID; fw reassembles them before its INPUT hook)."""
    if p.get("frag") != "pair":
        return [ip]
    split = pair_split(p["proto"], p.get("tcpopts", []))
    body = ip[20:]
    out = []
    for off, part, more in ((0, body[:split], IP_MF), (split, body[split:], 0)):
        h = bytearray(ip[:20])
        struct.pack_into("!HHH", h, 2, 20 + len(part), struct.unpack_from("!H", ip, 4)[0],
                         more | off // 8)
        struct.pack_into("!H", h, 10, 0)
        struct.pack_into("!H", h, 10, csum(bytes(h)))
        out.append(bytes(h) + part)
    return out


def seq_of(tag):
    return (tag << 8 | 0x11) & 0xFFFFFFFF


def ack_of(tag):
    return (tag << 8 | 0x77) & 0xFFFFFFFF


def key(ip):
    """What identifies a packet we sent, from its IP header (or a quote of it): fields a router
    or the REJECT target do not change, and the first 8 bytes after the header."""
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[0] & 15 < 5:
        return None
    ihl = (ip[0] & 15) * 4
    return ip[4:8] + ip[9:10] + ip[12:20] + ip[ihl:ihl + 8]


def reverse_tcp_key(ip):
    """For a TCP segment we sent: (addresses and ports as a reply carries them)."""
    ihl = (ip[0] & 15) * 4
    return ip[16:20] + ip[12:16] + ip[ihl + 2:ihl + 4] + ip[ihl:ihl + 2]


def describe(p):
    """A compact one-line description of packet description p."""
    proto = p["proto"]
    s = "%s %s" % (p["entry"], {6: "tcp", 17: "udp", 1: "icmp"}.get(proto, "proto%d" % proto))
    frag = p.get("frag", "none")
    if proto in (6, 17) and frag in ("none", "first", "short", "pair"):
        s += " %s:%d>%s:%d" % (p["src"], p["sport"], p["dst"], p["dport"])
    else:
        s += " %s>%s" % (p["src"], p["dst"])
    if proto == 6 and frag in ("none", "first", "short", "pair"):
        s += " [%s]" % flags_str(p["flags"])
        if p.get("tcpopts"):
            s += " opt=%s" % ",".join(map(str, p["tcpopts"]))
    if proto == 1 and frag in ("none", "first", "short", "pair"):
        s += " type=%d/%d" % (p["icmp_type"], p["icmp_code"])
    s += " ttl=%d" % p["ttl"]
    if p.get("length") is not None:
        s += " len=%d" % p["length"]
    if frag != "none":
        s += " frag=%s" % frag
    if p.get("mark"):
        s += " mark=%#x" % p["mark"]
    if p.get("l2") and p["l2"] != "unicast":
        s += " l2=%s" % p["l2"]
    return s
