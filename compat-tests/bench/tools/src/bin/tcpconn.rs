//! TCP connections for B4 (BENCH.md): a server, a connection-rate client, and a client that
//! opens connections and keeps them (for the memory each tracked connection costs).
//!
//!   tcpconn serve --addr IP --port P [--threads 2] [--hold]
//!   tcpconn rate  --dst IP --port P --src IP [--srcs 16] [--threads 4] [--seconds 3]
//!   tcpconn hold  --dst IP --port P --src IP [--srcs 16] --count N
//!
//! A connection of `rate`: connect, read the server's one byte and its FIN, close. The
//! server closes first, so TIME_WAIT stays on its side and the client's ports free at once.
//! `rate` prints `conns N fails F seconds S`; `hold` prints `held N fails F` once all are
//! open, then sleeps until it is killed. Source addresses rotate over SRC .. SRC+srcs-1.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bpfipt_bench_tools::{die, ipv4, os_err, Args};

fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

const SIN_LEN: u32 = std::mem::size_of::<libc::sockaddr_in>() as u32;

fn setopt(fd: i32, level: i32, name: i32, val: &impl Sized) {
    // SAFETY: `val` is a live value of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            val as *const _ as *const libc::c_void,
            std::mem::size_of_val(val) as u32,
        );
    }
}

/// Enough descriptors for `n` connections, as far as the hard limit allows (raising that
/// needs CAP_SYS_RESOURCE); exits if it is too low.
fn raise_nofile(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = (n + 64).min(lim.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    if lim.rlim_cur < n + 64 {
        die(&format!(
            "{n} connections need more descriptors than the hard limit {}",
            lim.rlim_max
        ));
    }
}

fn serve(a: &Args) {
    let addr = ipv4(a.opt("addr").unwrap_or_else(|| die("--addr is required")));
    let port: u16 = a.get("port", None);
    let threads: usize = a.get("threads", Some(2));
    let hold = std::env::args().any(|x| x == "--hold");
    raise_nofile(if hold { 16384 } else { 1024 });
    // SAFETY: socket calls on a descriptor we own, with local buffers.
    let lfd = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        setopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &1i32);
        let sa = sockaddr(addr, port);
        if libc::bind(fd, &sa as *const _ as *const libc::sockaddr, SIN_LEN) < 0 {
            die(&format!("bind {addr}:{port}: {}", os_err()));
        }
        if libc::listen(fd, 65535) < 0 {
            die(&format!("listen: {}", os_err()));
        }
        fd
    };
    let held = Arc::new(Mutex::new(Vec::new()));
    let ts: Vec<_> = (0..threads)
        .map(|_| {
            let held = held.clone();
            std::thread::spawn(move || loop {
                // SAFETY: accept/write/close on descriptors we own.
                unsafe {
                    let fd = libc::accept(lfd, std::ptr::null_mut(), std::ptr::null_mut());
                    if fd < 0 {
                        continue;
                    }
                    if hold {
                        held.lock().unwrap().push(fd);
                    } else {
                        libc::write(fd, b"x".as_ptr() as *const libc::c_void, 1);
                        libc::close(fd);
                    }
                }
            })
        })
        .collect();
    for t in ts {
        let _ = t.join();
    }
}

/// One connection from `src`; true if it was opened (and, unless `keep`, completed and closed).
/// With `keep`, the open descriptor is returned through `out`.
fn connect_one(src: Ipv4Addr, dst: &libc::sockaddr_in, keep: Option<&mut Vec<i32>>) -> bool {
    // SAFETY: socket calls on a descriptor we own, with local buffers.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return false;
        }
        // The port is chosen at connect from the whole 4-tuple, not at bind.
        setopt(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, &1i32);
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        setopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv);
        setopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv);
        let sa = sockaddr(src, 0);
        let ok = libc::bind(fd, &sa as *const _ as *const libc::sockaddr, SIN_LEN) == 0
            && libc::connect(fd, dst as *const _ as *const libc::sockaddr, SIN_LEN) == 0;
        if !ok {
            libc::close(fd);
            return false;
        }
        if let Some(v) = keep {
            v.push(fd);
            return true;
        }
        let mut buf = [0u8; 16];
        let mut got = 0;
        loop {
            let r = libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len());
            if r <= 0 {
                libc::close(fd);
                return r == 0 && got == 1;
            }
            got += r;
        }
    }
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let a = Args::from_env(2);
    if mode == "serve" {
        return serve(&a);
    }
    let dst = sockaddr(
        ipv4(a.opt("dst").unwrap_or_else(|| die("--dst is required"))),
        a.get("port", None),
    );
    let src0 = u32::from(ipv4(
        a.opt("src").unwrap_or_else(|| die("--src is required")),
    ));
    let srcs: u32 = a.get("srcs", Some(16));
    let src = move |i: u64| Ipv4Addr::from(src0 + (i % u64::from(srcs.max(1))) as u32);
    match mode.as_str() {
        "rate" => {
            let threads: u64 = a.get("threads", Some(4));
            let seconds: f64 = a.get("seconds", Some(3.0));
            let ok = Arc::new(AtomicU64::new(0));
            let bad = Arc::new(AtomicU64::new(0));
            let start = Instant::now();
            let until = Duration::from_secs_f64(seconds);
            let ts: Vec<_> = (0..threads)
                .map(|t| {
                    let (ok, bad) = (ok.clone(), bad.clone());
                    std::thread::spawn(move || {
                        let mut i = t;
                        while start.elapsed() < until {
                            if connect_one(src(i), &dst, None) {
                                ok.fetch_add(1, Ordering::Relaxed);
                            } else {
                                bad.fetch_add(1, Ordering::Relaxed);
                            }
                            i += threads;
                        }
                    })
                })
                .collect();
            for t in ts {
                let _ = t.join();
            }
            println!(
                "conns {} fails {} seconds {:.3}",
                ok.load(Ordering::Relaxed),
                bad.load(Ordering::Relaxed),
                start.elapsed().as_secs_f64()
            );
        }
        "hold" => {
            let count: u64 = a.get("count", None);
            raise_nofile(count);
            let mut fds = Vec::with_capacity(count as usize);
            let mut fails = 0u64;
            let mut i = 0u64;
            while (fds.len() as u64) < count && fails < count {
                if !connect_one(src(i), &dst, Some(&mut fds)) {
                    fails += 1;
                }
                i += 1;
            }
            println!("held {} fails {fails}", fds.len());
            use std::io::Write;
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        _ => die("usage: tcpconn serve|rate|hold ... (see the source's header)"),
    }
}
