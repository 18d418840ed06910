//! Sends prebuilt small UDP frames as fast as one CPU can, for B1 (BENCH.md).
//!
//!   udpblast --dev IF --src-mac MAC --dst-mac MAC --src IP --dst IP --dport P
//!            [--sports 1024-9215] [--seconds 3 | --count N] [--payload 18] [--batch 64]
//!
//! AF_PACKET with PACKET_QDISC_BYPASS and sendmmsg of frames built once (one per source
//! port, so the flows spread over many 5-tuples); no per-packet work in user space. Prints
//! `sent N seconds S` on stdout.

use std::time::{Duration, Instant};

use bpfipt_bench_tools::{csum, die, ipv4, os_err, range, Args};

fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| die(&format!("bad MAC {s}"))))
        .collect();
    v.try_into()
        .unwrap_or_else(|_| die(&format!("bad MAC {s}")))
}

/// Ethernet + IPv4 + UDP with `payload` bytes; UDP checksum 0 (none), as IPv4 allows.
#[allow(clippy::too_many_arguments)]
fn frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: usize,
    id: u16,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(42 + payload);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + payload) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(42 + payload, 0x5a);
    f
}

fn main() {
    let a = Args::from_env(1);
    let dev: String = a.get("dev", None);
    let src_mac = mac(a
        .opt("src-mac")
        .unwrap_or_else(|| die("--src-mac is required")));
    let dst_mac = mac(a
        .opt("dst-mac")
        .unwrap_or_else(|| die("--dst-mac is required")));
    let src = ipv4(a.opt("src").unwrap_or_else(|| die("--src is required"))).octets();
    let dst = ipv4(a.opt("dst").unwrap_or_else(|| die("--dst is required"))).octets();
    let dport: u16 = a.get("dport", None);
    let (lo, hi) = range(a.opt("sports").unwrap_or("1024-9215"));
    let seconds: f64 = a.get("seconds", Some(3.0));
    let payload: usize = a.get("payload", Some(18));
    let batch: usize = a.get("batch", Some(64));
    let count: u64 = a.get("count", Some(u64::MAX));
    if lo > hi || hi > 65535 || batch == 0 {
        die("bad --sports or --batch");
    }

    let frames: Vec<Vec<u8>> = (lo..=hi)
        .map(|p| {
            frame(
                src_mac, dst_mac, src, dst, p as u16, dport, payload, p as u16,
            )
        })
        .collect();

    // SAFETY: plain socket calls on a descriptor we own; every pointer handed to the kernel
    // points into live local buffers for the duration of the call.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        );
        if fd < 0 {
            die(&format!("socket: {}", os_err()));
        }
        let one: libc::c_int = 1;
        // Skip the qdisc: the frames go straight to the driver (veth_xmit).
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &one as *const _ as *const libc::c_void,
            4,
        );
        let cname = std::ffi::CString::new(dev.clone()).unwrap();
        let ifindex = libc::if_nametoindex(cname.as_ptr());
        if ifindex == 0 {
            die(&format!("no interface {dev}"));
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        if libc::bind(
            fd,
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) < 0
        {
            die(&format!("bind {dev}: {}", os_err()));
        }

        let mut iovs: Vec<libc::iovec> = frames
            .iter()
            .map(|f| libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            })
            .collect();
        // Each message is one frame; a window of `batch` messages slides over the frames.
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                let mut m: libc::mmsghdr = std::mem::zeroed();
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let n = msgs.len();
        let start = Instant::now();
        let until = Duration::from_secs_f64(seconds);
        let mut sent: u64 = 0;
        let mut pos = 0usize;
        let mut errors: u64 = 0;
        while start.elapsed() < until && sent < count {
            let k = (batch.min(n - pos) as u64).min(count - sent) as usize;
            let r = libc::sendmmsg(fd, msgs.as_mut_ptr().add(pos), k as u32, 0);
            if r > 0 {
                sent += r as u64;
                pos = (pos + r as usize) % n;
            } else {
                // ENOBUFS when the device queue is full: retry, the receiver is the bottleneck.
                errors += 1;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!("sent {sent} seconds {secs:.3} errors {errors}");
    }
}
