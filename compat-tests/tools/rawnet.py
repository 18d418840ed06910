"""Raw packets for the test tools (ctprobe.py, rawudp.py): the Internet checksum, TCP and UDP
headers whose checksum is what the caller asks for, and the raw socket that sends TCP
segments outside any connection and sees a copy of every TCP segment the host receives."""
import socket
import struct


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def pseudo(src, dst, proto, length):
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, length)


FLAG_BITS = {"F": 1, "S": 2, "R": 4, "P": 8, "A": 16, "U": 32}


def flags_of(letters):
    return sum(FLAG_BITS[c] for c in letters)


def tcp_segment(src, dst, sport, dport, seq, ack, flags, win=1000, payload=b"", bad_csum=False):
    """A TCP header (no options) and payload; the checksum inverted in part if bad_csum."""
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4,
                      flags, win, 0, 0)
    seg = hdr + payload
    c = csum(pseudo(src, dst, 6, len(seg)) + seg)
    if bad_csum:
        c ^= 0x5A5A
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def udp_datagram(src, dst, sport, dport, payload, kind="good"):
    """A UDP header and payload with a good, bad or no (0) checksum."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = 0
    if kind != "none":
        c = csum(pseudo(src, dst, 17, len(udp)) + udp) or 0xFFFF
        if kind == "bad":
            c ^= 0x5A5A
    return udp[:6] + struct.pack("!H", c) + udp[8:]


def ipv4_header(src, dst, proto, length, ident=0, ttl=64):
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, ident & 0xFFFF, 0, ttl, proto, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]


def tcp_raw_socket():
    """Sends TCP segments (the kernel adds the IP header) and receives a copy of every TCP
    segment for this host."""
    return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)


def source_for(host, port):
    """The local address the routing table picks toward host."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((host, port))
    me = s.getsockname()[0]
    s.close()
    return me


def parse_tcp(d):
    """(src, sport, dport, seq, ack, flags, payload length) of an IPv4 datagram holding TCP."""
    ihl = (d[0] & 0xF) * 4
    sp, dp, seq, ack, off, fl = struct.unpack("!HHIIBB", d[ihl : ihl + 14])
    tot = struct.unpack("!H", d[2:4])[0]
    return socket.inet_ntoa(d[12:16]), sp, dp, seq, ack, fl, tot - ihl - (off >> 4) * 4
