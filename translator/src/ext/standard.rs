//! The two targets of ip_tables itself (`ipt_builtin_tg`): the standard target (a verdict or a
//! jump) and ERROR (a user chain's head, or the table's end).

use super::wire::{canonical, expect_size, Rd, Wr};
use super::ParseError;
use crate::abi::FUNCTION_MAXNAMELEN;

/// The standard target's payload: `struct xt_standard_target.verdict`, an `int`. Negative:
/// `-NF_x - 1` (ACCEPT -2, DROP -1, QUEUE -4, RETURN -5); otherwise the blob offset of the
/// jump's destination.
pub fn parse_verdict(data: &[u8]) -> Result<i32, ParseError> {
    expect_size("standard", data, 4)?;
    canonical(
        "standard",
        Rd(data).u32(0) as i32,
        |v| emit_verdict(*v),
        data,
    )
}

pub fn emit_verdict(v: i32) -> Vec<u8> {
    Wr::new(4).u32(0, v as u32).done()
}

/// The ERROR target's payload: `struct xt_error_target.errorname`, a chain name of up to 29
/// bytes and a NUL.
pub fn parse_error(data: &[u8]) -> Result<String, ParseError> {
    expect_size("ERROR", data, FUNCTION_MAXNAMELEN)?;
    let raw = Rd(data).c_str(0, FUNCTION_MAXNAMELEN);
    let name = String::from_utf8(raw).map_err(|e| ParseError::Value {
        ext: "ERROR",
        field: "errorname",
        value: e.utf8_error().valid_up_to() as u64,
    })?;
    canonical("ERROR", name, |n| emit_error(n), data)
}

pub fn emit_error(name: &str) -> Vec<u8> {
    Wr::new(FUNCTION_MAXNAMELEN)
        .c_str(0, FUNCTION_MAXNAMELEN, name.as_bytes())
        .done()
}
