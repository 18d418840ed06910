//! Just enough BTF: the size and member byte offsets of named structs, from a `.BTF` section
//! or from the kernel's own (/sys/kernel/btf/vmlinux). Used by the layout check of the C
//! structs (tests) and by `nfhook` (where `struct sk_buff` keeps `len` in this kernel).

use std::collections::HashMap;

/// A struct's size and its members' byte offsets by name (anonymous members are "").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Struct {
    pub size: u32,
    pub members: HashMap<String, u32>,
}

/// The structs of `btf` whose name `want` accepts. Errors name what is malformed.
pub fn structs(btf: &[u8], want: impl Fn(&str) -> bool) -> Result<HashMap<String, Struct>, String> {
    let u32_at = |o: usize| -> Result<u32, String> {
        btf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .ok_or_else(|| format!("BTF truncated at byte {o}"))
    };
    if btf.get(..2) != Some(&[0x9f, 0xeb][..]) {
        return Err("not BTF (magic)".into());
    }
    let hdr = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
    let strs = btf
        .get(hdr + str_off..hdr + str_off + str_len)
        .ok_or("BTF string section out of bounds")?;
    let name = |off: u32| -> String {
        let s = strs.get(off as usize..).unwrap_or_default();
        let n = s.iter().position(|b| *b == 0).unwrap_or(s.len());
        String::from_utf8_lossy(&s[..n]).into_owned()
    };
    let mut out = HashMap::new();
    let mut p = hdr + type_off;
    let end = p + type_len;
    while p < end {
        let (name_off, info, size) = (u32_at(p)?, u32_at(p + 4)?, u32_at(p + 8)?);
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kflag = info >> 31 != 0;
        p += 12;
        match kind {
            // STRUCT, UNION: members (name_off, type, offset in bits; with kind_flag the
            // low 24 bits are the offset)
            4 | 5 => {
                let n = name(name_off);
                if kind == 4 && want(&n) {
                    let mut members = HashMap::new();
                    for i in 0..vlen {
                        let q = p + 12 * i;
                        let off = u32_at(q + 8)?;
                        let bits = if kflag { off & 0xff_ffff } else { off };
                        members.insert(name(u32_at(q)?), bits / 8);
                    }
                    out.insert(n, Struct { size, members });
                }
                p += 12 * vlen;
            }
            // INT, VAR, DECL_TAG: one word
            1 | 14 | 17 => p += 4,
            // ARRAY
            3 => p += 12,
            // ENUM, FUNC_PROTO
            6 | 13 => p += 8 * vlen,
            // DATASEC, ENUM64
            15 | 19 => p += 12 * vlen,
            // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG: nothing
            2 | 7..=12 | 16 | 18 => {}
            k => return Err(format!("BTF kind {k} unknown")),
        }
    }
    Ok(out)
}

/// The byte offset of `member` in the running kernel's `struct name`.
pub fn kernel_member_offset(name: &str, member: &str) -> Result<u32, String> {
    let path = "/sys/kernel/btf/vmlinux";
    let btf = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let s = structs(&btf, |n| n == name)?;
    s.get(name)
        .and_then(|s| s.members.get(member).copied())
        .ok_or_else(|| format!("{path}: no struct {name} with a member {member}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sk_buff_len_in_the_kernel() {
        // sk_buff.len follows the sk and the dev/time unions; whatever the build, it is
        // past the first cache line's pointers and 4-byte aligned.
        let off = kernel_member_offset("sk_buff", "len").unwrap();
        assert!(off >= 16 && off.is_multiple_of(4), "{off}");
        assert!(kernel_member_offset("sk_buff", "no_such_member").is_err());
    }
}
