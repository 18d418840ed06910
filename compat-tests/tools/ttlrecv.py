#!/usr/bin/env python3
"""Counts UDP datagrams to a port and the TTLs they arrived with (IP_RECVTTL).

  ttlrecv.py PORT SECONDS    prints "N ttl1,ttl2,..." (the distinct TTLs, sorted)
"""
import select
import socket
import sys
import time

# <linux/in.h>; the socket module lacks IP_RECVTTL
IP_TTL, IP_RECVTTL = 2, 12
port, seconds = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
s.bind(("0.0.0.0", port))
n, ttls = 0, set()
end = time.monotonic() + seconds
while True:
    left = end - time.monotonic()
    if left <= 0:
        break
    r, _, _ = select.select([s], [], [], left)
    if not r:
        continue
    _, anc, _, _ = s.recvmsg(2048, 64)
    n += 1
    for level, kind, data in anc:
        if level == socket.IPPROTO_IP and kind == IP_TTL:
            ttls.add(int.from_bytes(data[:4], sys.byteorder))
print(n, ",".join(str(t) for t in sorted(ttls)) or "-")
