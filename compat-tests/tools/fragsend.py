#!/usr/bin/python3
"""Sends UDP datagrams in two fragments from this namespace to DST and prints the ICMP
errors that come back within WAIT seconds, one per line, sorted (compat-tests/datapath.sh):

    fragsend.py SRC DST WAIT

Datagrams (IP id: what it tests): 100 to port 53, 101 to port 54, 102 to port 55, each in
two fragments; 103, a lone first fragment to port 53 (never completed).
"""
import socket
import struct
import sys
import time


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ipv4(src, dst, payload, ident, frag):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, 64, 17, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload


def main():
    src, dst, wait = sys.argv[1], sys.argv[2], float(sys.argv[3])
    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    rx.setblocking(False)
    for ident, dport in ((100, 53), (101, 54), (102, 55)):
        udp = struct.pack("!HHHH", 4000, dport, 8 + 40, 0) + b"y" * 40
        tx.sendto(ipv4(src, dst, udp[:24], ident, 0x2000), (dst, 0))
        tx.sendto(ipv4(src, dst, udp[24:], ident, 3), (dst, 0))
    lone = struct.pack("!HHHH", 4000, 53, 8 + 40, 0) + b"y" * 16
    tx.sendto(ipv4(src, dst, lone, 103, 0x2000), (dst, 0))
    time.sleep(wait)
    out = []
    while True:
        try:
            d = rx.recv(2000)
        except BlockingIOError:
            break
        ihl = (d[0] & 15) * 4
        inner = d[ihl + 8:]
        if len(inner) >= 6:
            out.append("icmp%d/%d about id %d" % (d[ihl], d[ihl + 1],
                                                   struct.unpack("!H", inner[4:6])[0]))
    print("\n".join(sorted(out)))


if __name__ == "__main__":
    main()
