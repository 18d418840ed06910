#!/usr/bin/env python3
r"""jitprof.py: where a BPF program's time goes, by source line, from `perf record` samples.

Debian's perf and bpftool are built without libbfd, so neither can annotate a JIT image. This
reads what the kernel keeps about a loaded program instead (BPF_OBJ_GET_INFO_BY_FD: the JIT
address of every function, and of every BTF line-info record) and sums perf's sampled
instruction pointers per function and per source line.

  jitprof.py snap PROG_ID|PINNED_PATH OUT.json   while the program is loaded
  jitprof.py report PERF_DATA SNAP.json...       afterwards

The snapshot must be of the programs the samples ran in: a program loaded later may get the
same JIT addresses, and its lines would be reported for the older program's samples.

For example, during a B1 round of bpfipt (as root):
  perf record -o b1.data -a -C 1 -e cpu-clock -F 4999 -- compat-tests/bench/b1.sh \
      --backends bpfipt --rules 0 --rounds 3 --seconds 5 &
  sleep 12; for id in $(bpftool prog show | awk -F: '/bpfipt_(in|e)gress/ {print $1}'); do
      compat-tests/bench/jitprof.py snap "$id" "prog-$id.json"; done
  wait; compat-tests/bench/jitprof.py report b1.data prog-*.json
"""
import bisect
import collections
import ctypes
import json
import os
import struct
import subprocess
import sys

from bpfsys import bpf

BPF_OBJ_GET, BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD, BPF_BTF_GET_FD_BY_ID = 7, 13, 15, 19
PROG_INFO_SIZE = 232


def obj_info(fd, size, fields=()):
    """BPF_OBJ_GET_INFO_BY_FD with (offset, format, value) fields set in the info first."""
    info = ctypes.create_string_buffer(size)
    for off, fmt, val in fields:
        struct.pack_into(fmt, info, off, val)
    attr = struct.pack("<IIQ", fd, size, ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr, "BPF_OBJ_GET_INFO_BY_FD")
    return info


def btf_strings(btf_id):
    fd = bpf(BPF_BTF_GET_FD_BY_ID, struct.pack("<I", btf_id), "BPF_BTF_GET_FD_BY_ID")
    size = struct.unpack_from("<I", obj_info(fd, 64), 8)[0]
    raw = ctypes.create_string_buffer(size)
    obj_info(fd, 64, [(0, "<Q", ctypes.addressof(raw)), (8, "<I", size)])
    raw = raw.raw
    hdr_len = struct.unpack_from("<I", raw, 4)[0]
    off, length = struct.unpack_from("<II", raw, 16)
    return raw[hdr_len + off:hdr_len + off + length]


def snap(prog, out):
    if prog.isdigit():
        fd = bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("<I", int(prog)), f"program id {prog}")
    else:
        path = ctypes.create_string_buffer(prog.encode())
        fd = bpf(BPF_OBJ_GET, struct.pack("<QII", ctypes.addressof(path), 0, 0), prog)
    # struct bpf_prog_info offsets (include/uapi/linux/bpf.h)
    first = obj_info(fd, PROG_INFO_SIZE)
    name = first.raw[64:80].split(b"\0")[0].decode()
    nksyms, nfunc_lens = struct.unpack_from("<II", first, 104)
    btf_id = struct.unpack_from("<I", first, 128)[0]
    nline = struct.unpack_from("<I", first, 148)[0]
    njline, line_size, jline_size = struct.unpack_from("<III", first, 168)
    ksyms = ctypes.create_string_buffer(8 * nksyms)
    lens = ctypes.create_string_buffer(4 * nfunc_lens)
    lines = ctypes.create_string_buffer(line_size * nline)
    jlines = ctypes.create_string_buffer(jline_size * njline)
    obj_info(fd, PROG_INFO_SIZE, [
        (104, "<I", nksyms), (108, "<I", nfunc_lens),
        (112, "<Q", ctypes.addressof(ksyms)), (120, "<Q", ctypes.addressof(lens)),
        (148, "<I", nline), (152, "<Q", ctypes.addressof(lines)),
        (160, "<Q", ctypes.addressof(jlines)), (168, "<I", njline),
        (172, "<I", line_size), (176, "<I", jline_size)])
    strs = btf_strings(btf_id)

    def string(off):
        return strs[off:strs.index(b"\0", off)].decode()

    funcs = [(struct.unpack_from("<Q", ksyms, 8 * i)[0], struct.unpack_from("<I", lens, 4 * i)[0])
             for i in range(min(nksyms, nfunc_lens))]
    recs = []
    for i in range(min(nline, njline)):
        _insn, file_off, _line_off, line_col = struct.unpack_from("<IIII", lines, i * line_size)
        addr = struct.unpack_from("<Q", jlines, i * jline_size)[0]
        recs.append((addr, f"{os.path.basename(string(file_off))}:{line_col >> 10}"))
    json.dump({"name": name, "funcs": funcs, "recs": sorted(recs)}, open(out, "w"))


def report(data, snaps):
    funcs, recs = [], []
    for path in snaps:
        s = json.load(open(path))
        for i, (addr, length) in enumerate(s["funcs"]):
            funcs.append((addr, addr + length, f"{s['name']} function {i}"))
        recs += s["recs"]
    recs.sort()
    starts = [r[0] for r in recs]
    ips = subprocess.run(["perf", "script", "-i", data, "-F", "ip"], capture_output=True,
                         text=True, check=True).stdout.split()
    per_func, per_line = collections.Counter(), collections.Counter()
    for x in ips:
        ip = int(x, 16)
        for lo, hi, name in funcs:
            if lo <= ip < hi:
                per_func[name] += 1
                i = bisect.bisect_right(starts, ip) - 1
                per_line[recs[i][1] if i >= 0 else "?"] += 1
                break
    n = sum(per_func.values())
    print(f"{len(ips)} samples, {n} in the programs")
    for table in (per_func, per_line):
        for k, v in table.most_common(40):
            print(f"{v:7d} {100 * v / max(n, 1):5.1f}%  {k}")
        print()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "snap":
        snap(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 4 and sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
