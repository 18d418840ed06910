//! Shared bits of the benchmark traffic tools: argument parsing and IPv4 helpers.

use std::net::Ipv4Addr;

/// `--name value` pairs after the program name (and an optional subcommand).
pub struct Args(Vec<String>);

impl Args {
    pub fn from_env(skip: usize) -> Args {
        Args(std::env::args().skip(skip).collect())
    }

    /// The value after `--name`, if given.
    pub fn opt(&self, name: &str) -> Option<&str> {
        let flag = format!("--{name}");
        self.0
            .iter()
            .position(|a| *a == flag)
            .and_then(|i| self.0.get(i + 1))
            .map(String::as_str)
    }

    /// The value after `--name` parsed, or `default`; exits with a message on a bad value.
    pub fn get<T: std::str::FromStr>(&self, name: &str, default: Option<T>) -> T {
        match (self.opt(name), default) {
            (Some(v), _) => v
                .parse()
                .unwrap_or_else(|_| die(&format!("bad --{name} {v}"))),
            (None, Some(d)) => d,
            (None, None) => die(&format!("--{name} is required")),
        }
    }
}

pub fn die(msg: &str) -> ! {
    eprintln!("{}: {msg}", std::env::args().next().unwrap_or_default());
    std::process::exit(2)
}

/// `LO-HI` or `N` as an inclusive range.
pub fn range(s: &str) -> (u32, u32) {
    let parse = |v: &str| {
        v.parse::<u32>()
            .unwrap_or_else(|_| die(&format!("bad range {s}")))
    };
    match s.split_once('-') {
        Some((a, b)) => (parse(a), parse(b)),
        None => (parse(s), parse(s)),
    }
}

/// The Internet checksum of `data` (RFC 1071).
pub fn csum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn ipv4(s: &str) -> Ipv4Addr {
    s.parse()
        .unwrap_or_else(|_| die(&format!("bad IPv4 address {s}")))
}

/// The last OS error, for messages.
pub fn os_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_header() {
        // RFC 1071 style example: an IPv4 header whose checksum field holds 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(csum(&h), 0xb861);
        let mut h2 = h;
        h2[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(csum(&h2), 0);
    }

    #[test]
    fn ranges() {
        assert_eq!(range("1024-2047"), (1024, 2047));
        assert_eq!(range("9"), (9, 9));
    }
}
