//! `-j LOG` (net/netfilter/xt_LOG.c): a kernel log line per packet.

use super::wire::{canonical, expect_size, Rd, Wr};
use super::ParseError;
use crate::check::{Errno, ExtCtx};

const PREFIX_LEN: usize = 30;

/// `--log-tcp-sequence`, `--log-tcp-options`, `--log-ip-options`, `--log-uid`,
/// `--log-macdecode` (`XT_LOG_*`); kept as the raw byte because the kernel accepts any bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LogFlags(pub u8);

impl LogFlags {
    pub const TCPSEQ: u8 = 0x01;
    pub const TCPOPT: u8 = 0x02;
    pub const IPOPT: u8 = 0x04;
    pub const UID: u8 = 0x08;
    pub const MACDECODE: u8 = 0x20;
}

/// Mirrors `struct xt_log_info` (include/uapi/linux/netfilter/xt_LOG.h).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    /// Syslog level, 0 (emerg) to 7 (debug); the kernel refuses more.
    pub level: u8,
    pub flags: LogFlags,
    /// `--log-prefix`: the bytes before the first NUL of the 30-byte field.
    pub prefix: Vec<u8>,
}

impl Log {
    pub fn parse(data: &[u8]) -> Result<Log, ParseError> {
        expect_size("LOG", data, 32)?;
        let r = Rd(data);
        let l = Log {
            level: r.u8(0),
            flags: LogFlags(r.u8(1)),
            prefix: r.c_str(2, PREFIX_LEN),
        };
        canonical("LOG", l, Log::emit, data)
    }

    pub fn emit(&self) -> Vec<u8> {
        Wr::new(32)
            .u8(0, self.level)
            .u8(1, self.flags.0)
            .c_str(2, PREFIX_LEN, &self.prefix)
            .done()
    }
}

/// `log_tg_check`: level below 8 and a NUL in the last prefix byte, both EINVAL; the syslog
/// logger it then looks up is built into the reference kernel (CONFIG_NF_LOG_SYSLOG=y).
pub fn check(_ctx: &ExtCtx<'_>, data: &[u8]) -> Result<(), Errno> {
    let r = Rd(data);
    if r.u8(0) >= 8 || r.u8(2 + PREFIX_LEN - 1) != 0 {
        return Err(libc::EINVAL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_round_trips_and_garbage_after_nul_is_not_canonical() {
        let l = Log {
            level: 4,
            flags: LogFlags(LogFlags::UID | LogFlags::IPOPT),
            prefix: b"DROP: ".to_vec(),
        };
        let mut b = l.emit();
        assert_eq!(Log::parse(&b), Ok(l));
        b[20] = b'x';
        assert_eq!(
            Log::parse(&b),
            Err(ParseError::NotCanonical {
                ext: "LOG",
                offset: 20
            })
        );
    }

    #[test]
    fn a_full_prefix_has_no_nul() {
        let l = Log {
            level: 7,
            flags: LogFlags::default(),
            prefix: vec![b'a'; 30],
        };
        assert_eq!(Log::parse(&l.emit()), Ok(l));
    }
}
