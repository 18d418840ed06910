#!/usr/bin/env python3
"""Sends whole Ethernet frames of UDP datagrams (AF_PACKET): the checksum is what the frame
says, never left to the kernel (no CHECKSUM_PARTIAL).

  rawudp.py IFACE DSTMAC SRC DST DPORT N good|bad|none
"""
import socket
import sys
import time

from rawnet import ipv4_header, udp_datagram

iface, dmac, src, dst, dport, n, kind = sys.argv[1:8]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
smac = s.getsockname()[4]
payload = b"bpfipt-rawudp-test"
for i in range(int(n)):
    udp = udp_datagram(src, dst, 40000 + i % 1000, int(dport), payload, kind)
    ip = ipv4_header(src, dst, 17, len(udp), ident=i)
    s.send(bytes.fromhex(dmac.replace(":", "")) + smac + b"\x08\x00" + ip + udp)
    time.sleep(0.002)
