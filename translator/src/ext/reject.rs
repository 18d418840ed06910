//! `-j REJECT` for IPv4 (net/ipv4/netfilter/ipt_REJECT.c) and IPv6
//! (net/ipv6/netfilter/ip6t_REJECT.c): drop and answer with an ICMP error or a TCP RST.

use super::registry::XT_INV_PROTO;
use super::wire::{canonical, expect_size, Rd, Wr};
use super::ParseError;
use crate::check::{Errno, ExtCtx};

/// `--reject-with` for IPv4. Mirrors `enum ipt_reject_with` in `struct ipt_reject_info`
/// (include/uapi/linux/netfilter_ipv4/ipt_REJECT.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectV4 {
    NetUnreachable = 0,
    HostUnreachable = 1,
    ProtUnreachable = 2,
    PortUnreachable = 3,
    /// Refused by the kernel.
    EchoReply = 4,
    NetProhibited = 5,
    HostProhibited = 6,
    TcpReset = 7,
    AdminProhibited = 8,
}

/// `--reject-with` for IPv6. Mirrors `enum ip6t_reject_with` in `struct ip6t_reject_info`
/// (include/uapi/linux/netfilter_ipv6/ip6t_REJECT.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectV6 {
    NoRoute = 0,
    AdmProhibited = 1,
    NotNeighbour = 2,
    AddrUnreach = 3,
    PortUnreach = 4,
    /// Refused by the kernel.
    EchoReply = 5,
    TcpReset = 6,
    PolicyFail = 7,
    RejectRoute = 8,
}

const V4_ALL: [RejectV4; 9] = [
    RejectV4::NetUnreachable,
    RejectV4::HostUnreachable,
    RejectV4::ProtUnreachable,
    RejectV4::PortUnreachable,
    RejectV4::EchoReply,
    RejectV4::NetProhibited,
    RejectV4::HostProhibited,
    RejectV4::TcpReset,
    RejectV4::AdminProhibited,
];
const V6_ALL: [RejectV6; 9] = [
    RejectV6::NoRoute,
    RejectV6::AdmProhibited,
    RejectV6::NotNeighbour,
    RejectV6::AddrUnreach,
    RejectV6::PortUnreach,
    RejectV6::EchoReply,
    RejectV6::TcpReset,
    RejectV6::PolicyFail,
    RejectV6::RejectRoute,
];

fn with(data: &[u8]) -> Result<u32, ParseError> {
    expect_size("REJECT", data, 4)?;
    Ok(Rd(data).u32(0))
}

fn unknown(v: u32) -> ParseError {
    ParseError::Value {
        ext: "REJECT",
        field: "with",
        value: v.into(),
    }
}

impl RejectV4 {
    pub fn parse(data: &[u8]) -> Result<RejectV4, ParseError> {
        let v = with(data)?;
        let w = V4_ALL.get(v as usize).copied().ok_or(unknown(v))?;
        canonical("REJECT", w, RejectV4::emit, data)
    }
    pub fn emit(&self) -> Vec<u8> {
        Wr::new(4).u32(0, *self as u32).done()
    }
}

impl RejectV6 {
    pub fn parse(data: &[u8]) -> Result<RejectV6, ParseError> {
        let v = with(data)?;
        let w = V6_ALL.get(v as usize).copied().ok_or(unknown(v))?;
        canonical("REJECT", w, RejectV6::emit, data)
    }
    pub fn emit(&self) -> Vec<u8> {
        Wr::new(4).u32(0, *self as u32).done()
    }
}

/// `reject_tg_check`: ECHOREPLY is refused, a TCP RST needs `-p tcp` without `!`. Other
/// values, even unknown ones, are accepted.
pub fn check_v4(ctx: &ExtCtx<'_>, data: &[u8]) -> Result<(), Errno> {
    let with = Rd(data).u32(0);
    if with == RejectV4::EchoReply as u32 {
        return Err(libc::EINVAL);
    }
    if with == RejectV4::TcpReset as u32
        && (ctx.entry.proto() != 6 || ctx.entry.ip_invflags() & XT_INV_PROTO != 0)
    {
        return Err(libc::EINVAL);
    }
    Ok(())
}

/// `IP6T_F_PROTO`: ip6tables sets it with `-p`.
const IP6T_F_PROTO: u8 = 0x01;

/// `reject_tg6_check`: as IPv4, and a TCP RST also needs `IP6T_F_PROTO` in the entry.
pub fn check_v6(ctx: &ExtCtx<'_>, data: &[u8]) -> Result<(), Errno> {
    let with = Rd(data).u32(0);
    if with == RejectV6::EchoReply as u32 {
        return Err(libc::EINVAL);
    }
    if with == RejectV6::TcpReset as u32
        && (ctx.entry.ip_flags() & IP6T_F_PROTO == 0
            || ctx.entry.proto() != 6
            || ctx.entry.ip_invflags() & XT_INV_PROTO != 0)
    {
        return Err(libc::EINVAL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_the_kernel_enums() {
        for (i, w) in V4_ALL.iter().enumerate() {
            assert_eq!(*w as usize, i);
            assert_eq!(RejectV4::parse(&w.emit()), Ok(*w));
        }
        for (i, w) in V6_ALL.iter().enumerate() {
            assert_eq!(*w as usize, i);
            assert_eq!(RejectV6::parse(&w.emit()), Ok(*w));
        }
        let mut b = RejectV4::TcpReset.emit();
        b[0] = 9;
        assert!(matches!(
            RejectV4::parse(&b),
            Err(ParseError::Value { value: 9, .. })
        ));
        b[0] = 7;
        b[5] = 1;
        assert!(RejectV4::parse(&b).is_err());
    }
}
