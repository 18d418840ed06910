#!/usr/bin/env python3
"""Sends whole Ethernet frames of UDP datagrams (AF_PACKET): the checksum is what the frame
says, never left to the kernel (no CHECKSUM_PARTIAL).

  rawudp.py IFACE DSTMAC SRC DST DPORT N good|bad|none
"""
import socket
import struct
import sys
import time


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


iface, dmac, src, dst, dport, n, kind = sys.argv[1:8]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
smac = s.getsockname()[4]
sa, da = socket.inet_aton(src), socket.inet_aton(dst)
payload = b"bpfipt-rawudp-test"
for i in range(int(n)):
    udp = struct.pack("!HHHH", 40000 + i % 1000, int(dport), 8 + len(payload), 0) + payload
    c = 0
    if kind != "none":
        c = csum(sa + da + struct.pack("!BBH", 0, 17, len(udp)) + udp) or 0xFFFF
        if kind == "bad":
            c ^= 0x5A5A
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0, sa, da)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    s.send(bytes.fromhex(dmac.replace(":", "")) + smac + b"\x08\x00" + ip + udp)
    time.sleep(0.002)
