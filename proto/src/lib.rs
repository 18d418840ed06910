//! The wire protocol between `libbpfipt.so` (the shim inside the iptables process) and
//! `bpfiptd` (the resident daemon of a network namespace), and the kernel ABI constants both
//! sides need.
//!
//! The daemon listens on an *abstract* unix socket. Abstract socket names belong to the network
//! namespace of the socket, so every namespace has its own `@bpfipt` endpoint without any file
//! system path: this is what makes `ip netns exec` (which remounts /sys) and `unshare -n` work
//! without set-up.
//!
//! A connection carries frames: `u32 length` (little endian, of what follows), then the body.
//! Requests are `Request::encode`, replies are `Reply::encode`. The socket options themselves
//! are forwarded as opaque byte buffers: the daemon emulates `ip_tables.c`, the shim only moves
//! bytes between the caller's memory and the socket.

use std::io::{self, Read, Write};

pub mod kabi;
pub mod locate;

/// Version of this protocol. The first frame of a connection is `Op::Hello` carrying it; a
/// daemon of another version refuses, and the shim tells the user to restart it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Abstract unix socket name of the daemon (without the leading NUL).
pub const DAEMON_SOCKET: &[u8] = b"bpfiptd.v1";

/// Upper bound of a frame: the kernel accepts tables up to XT_MAX_TABLE_SIZE (512 MiB), plus
/// the replace header.
pub const MAX_FRAME: u32 = (512 << 20) + 4096;

/// Operations. 1..=15 mirror socket options; 32.. are control requests of the `bpfipt` tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Hello = 0,
    GetInfo = 1,
    GetEntries = 2,
    SetReplace = 3,
    AddCounters = 4,
    /// Contents of `/proc/net/ip_tables_names` (or ip6) for this namespace.
    TableNames = 5,
    /// Control: a text command for the daemon (status, stop, ...), answered with text.
    Control = 32,
}

impl Op {
    pub fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            0 => Op::Hello,
            1 => Op::GetInfo,
            2 => Op::GetEntries,
            3 => Op::SetReplace,
            4 => Op::AddCounters,
            5 => Op::TableNames,
            32 => Op::Control,
            _ => return None,
        })
    }
}

/// A request. `optlen` is the caller's socket option length (the kernel validates it against
/// the buffer's own size fields); `data` is the part of the caller's buffer the kernel reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    /// `libc::AF_INET` or `libc::AF_INET6`.
    pub family: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    pub optlen: u32,
    pub data: Vec<u8>,
}

/// The caller runs with `BPFIPT_STRICT=1`: a commit the eBPF datapath cannot enforce fails
/// (EOPNOTSUPP, with the reason in the reply) instead of falling back to the kernel.
pub const FLAG_STRICT: u8 = 1;

/// A reply: `errno == 0` is success, `data` is what the kernel would write back (getinfo
/// struct, entries blob, old counters of a replace, control text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub errno: i32,
    pub data: Vec<u8>,
}

impl Reply {
    pub fn ok(data: Vec<u8>) -> Reply {
        Reply { errno: 0, data }
    }
    pub fn err(errno: i32) -> Reply {
        Reply {
            errno,
            data: Vec::new(),
        }
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Writes one frame (length prefix and body) with a single `write_all` per part.
pub fn write_frame(w: &mut impl Write, body: &[u8]) -> io::Result<()> {
    write_parts(w, &[], body)
}

/// Writes one frame whose body is `head` then `data`, in one `writev` where the stream takes
/// it: a table (1.4 MB at 10000 rules) is not copied behind its header first, and the reader
/// is not woken by a header alone.
fn write_parts(w: &mut impl Write, head: &[u8], data: &[u8]) -> io::Result<()> {
    let len = u32::try_from(head.len() + data.len()).map_err(|_| bad("frame too large"))?;
    if len > MAX_FRAME {
        return Err(bad("frame too large"));
    }
    let mut first = [0u8; 16];
    first[..4].copy_from_slice(&len.to_le_bytes());
    first[4..4 + head.len()].copy_from_slice(head);
    let mut bufs = [
        io::IoSlice::new(&first[..4 + head.len()]),
        io::IoSlice::new(data),
    ];
    let mut bufs = &mut bufs[..];
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    w.flush()
}

/// Reads a frame's length. `Ok(None)` on a clean end of stream before it.
fn read_len(r: &mut impl Read) -> io::Result<Option<usize>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(bad("frame too large"));
    }
    Ok(Some(len as usize))
}

/// Reads exactly `n` bytes into a new vector, without zeroing it first.
fn read_vec(r: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut v = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut v)?;
    if v.len() != n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(v)
}

/// Reads one frame. `Ok(None)` on a clean end of stream before the length.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    match read_len(r)? {
        Some(len) => read_vec(r, len).map(Some),
        None => Ok(None),
    }
}

impl Request {
    fn head(&self) -> [u8; 8] {
        let l = self.optlen.to_le_bytes();
        [
            self.op as u8,
            self.family,
            self.flags,
            0,
            l[0],
            l[1],
            l[2],
            l[3],
        ]
    }

    /// Writes the request as one frame, the data without a copy (see [`Request::encode`]).
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        write_parts(w, &self.head(), &self.data)
    }

    /// Reads one request frame, the data straight into its own vector. `Ok(None)` on a clean
    /// end of stream.
    pub fn read(r: &mut impl Read) -> io::Result<Option<Request>> {
        let Some(len) = read_len(r)? else {
            return Ok(None);
        };
        if len < 8 {
            return Err(bad("short request"));
        }
        let mut h = [0u8; 8];
        r.read_exact(&mut h)?;
        let data = read_vec(r, len - 8)?;
        let op = Op::from_u8(h[0]).ok_or_else(|| bad("unknown op"))?;
        Ok(Some(Request {
            op,
            family: h[1],
            flags: h[2],
            optlen: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
            data,
        }))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 + self.data.len());
        b.push(self.op as u8);
        b.push(self.family);
        b.push(self.flags);
        b.push(0);
        b.extend_from_slice(&self.optlen.to_le_bytes());
        b.extend_from_slice(&self.data);
        b
    }

    pub fn decode(b: &[u8]) -> io::Result<Request> {
        if b.len() < 8 {
            return Err(bad("short request"));
        }
        let op = Op::from_u8(b[0]).ok_or_else(|| bad("unknown op"))?;
        Ok(Request {
            op,
            family: b[1],
            flags: b[2],
            optlen: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            data: b[8..].to_vec(),
        })
    }
}

impl Reply {
    /// Writes the reply as one frame, the data without a copy (see [`Reply::encode`]).
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        write_parts(w, &self.errno.to_le_bytes(), &self.data)
    }

    /// Reads one reply frame, the data straight into its own vector.
    pub fn read(r: &mut impl Read) -> io::Result<Reply> {
        let len = read_len(r)?.ok_or(io::ErrorKind::UnexpectedEof)?;
        if len < 4 {
            return Err(bad("short reply"));
        }
        let mut e = [0u8; 4];
        r.read_exact(&mut e)?;
        Ok(Reply {
            errno: i32::from_le_bytes(e),
            data: read_vec(r, len - 4)?,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(4 + self.data.len());
        b.extend_from_slice(&self.errno.to_le_bytes());
        b.extend_from_slice(&self.data);
        b
    }

    pub fn decode(b: &[u8]) -> io::Result<Reply> {
        if b.len() < 4 {
            return Err(bad("short reply"));
        }
        Ok(Reply {
            errno: i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            data: b[4..].to_vec(),
        })
    }
}

/// Sends a request and waits for its reply on a connected stream.
pub fn call<S: Read + Write>(s: &mut S, req: &Request) -> io::Result<Reply> {
    req.write(s)?;
    Reply::read(s)
}

/// The hello frame's payload: protocol version, then the daemon's build id (a string).
pub fn hello_payload() -> Vec<u8> {
    PROTOCOL_VERSION.to_le_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let r = Request {
            op: Op::SetReplace,
            family: libc::AF_INET6 as u8,
            flags: FLAG_STRICT,
            optlen: 1234,
            data: vec![1, 2, 3],
        };
        assert_eq!(Request::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn frames_round_trip_and_reject_truncation() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").unwrap();
        let mut cur = io::Cursor::new(buf.clone());
        assert_eq!(read_frame(&mut cur).unwrap().unwrap(), b"hello");
        assert!(read_frame(&mut cur).unwrap().is_none());
        let mut short = io::Cursor::new(buf[..6].to_vec());
        assert!(read_frame(&mut short).is_err());
    }

    /// The streamed forms are the frames of `encode`, and read back what was written.
    #[test]
    fn streamed_requests_and_replies_are_the_encoded_frames() {
        let r = Request {
            op: Op::GetEntries,
            family: libc::AF_INET as u8,
            flags: 0,
            optlen: 77,
            data: (0..=255u8).cycle().take(70000).collect(),
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        r.write(&mut a).unwrap();
        write_frame(&mut b, &r.encode()).unwrap();
        assert_eq!(a, b);
        assert_eq!(Request::read(&mut io::Cursor::new(&a)).unwrap(), Some(r));
        assert_eq!(Request::read(&mut io::Cursor::new(&[])).unwrap(), None);
        assert!(Request::read(&mut io::Cursor::new(&a[..a.len() - 1])).is_err());
        let p = Reply {
            errno: libc::EAGAIN,
            data: vec![7; 5000],
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        p.write(&mut a).unwrap();
        write_frame(&mut b, &p.encode()).unwrap();
        assert_eq!(a, b);
        assert_eq!(Reply::read(&mut io::Cursor::new(&a)).unwrap(), p);
        assert!(Reply::read(&mut io::Cursor::new(&a[..3])).is_err());
    }

    #[test]
    fn reply_errno_survives() {
        let r = Reply::err(libc::ELOOP);
        assert_eq!(Reply::decode(&r.encode()).unwrap().errno, libc::ELOOP);
    }
}
