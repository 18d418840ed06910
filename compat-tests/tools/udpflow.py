#!/usr/bin/env python3
"""Small UDP traffic tools for the end-to-end tests.

  udpflow.py send HOST PORT[,PORT...] SECONDS [PPS]   round-robin datagrams to the ports
  udpflow.py recv PORT[,PORT...] SECONDS              count datagrams per port, print "port n"

"""
import socket
import sys
import time
import select
import signal


def send(host, ports, seconds, pps):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    end = time.monotonic() + seconds
    gap = 1.0 / pps
    i = 0
    while time.monotonic() < end:
        try:
            s.sendto(b"bpfipt-flow", (host, ports[i % len(ports)]))
        except OSError:
            pass  # EPERM from a local DROP, ICMP errors reported on the socket
        i += 1
        time.sleep(gap)


def recv(ports, seconds):
    socks = {}
    for p in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", p))
        socks[s] = p
    counts = {p: 0 for p in ports}
    end = time.monotonic() + seconds

    def report(*_):
        for p in ports:
            print(p, counts[p])
        sys.stdout.flush()
        sys.exit(0)

    signal.signal(signal.SIGTERM, report)
    while True:
        left = end - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select(list(socks), [], [], left)
        for s in r:
            s.recv(2048)
            counts[socks[s]] += 1
    for p in ports:
        print(p, counts[p])
    sys.stdout.flush()


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "send":
        send(sys.argv[2], [int(x) for x in sys.argv[3].split(",")], float(sys.argv[4]),
             float(sys.argv[5]) if len(sys.argv) > 5 else 500)
    elif cmd == "recv":
        recv([int(x) for x in sys.argv[2].split(",")], float(sys.argv[3]))
    else:
        sys.exit("usage: udpflow.py send|recv ...")
