//! Kernel ABI facts shared by the shim and the daemon: socket option numbers and the layout
//! sizes of `include/uapi/linux/netfilter_ipv{4,6}/ip{,6}_tables.h` and `x_tables.h`.

/// `IPT_BASE_CTL`: first ip_tables socket option (same value for ip6_tables).
pub const SO_BASE_CTL: i32 = 64;
/// `IPT_SO_SET_REPLACE` / `IP6T_SO_SET_REPLACE`.
pub const SO_SET_REPLACE: i32 = 64;
/// `IPT_SO_SET_ADD_COUNTERS` / `IP6T_SO_SET_ADD_COUNTERS`.
pub const SO_SET_ADD_COUNTERS: i32 = 65;
/// `IPT_SO_GET_INFO` / `IP6T_SO_GET_INFO`.
pub const SO_GET_INFO: i32 = 64;
/// `IPT_SO_GET_ENTRIES` / `IP6T_SO_GET_ENTRIES`.
pub const SO_GET_ENTRIES: i32 = 65;
/// `IPT_SO_GET_REVISION_MATCH` (IPv4).
pub const IPT_SO_GET_REVISION_MATCH: i32 = 66;
/// `IPT_SO_GET_REVISION_TARGET` (IPv4).
pub const IPT_SO_GET_REVISION_TARGET: i32 = 67;
/// `IP6T_SO_GET_REVISION_MATCH` (IPv6: 66 and 67 are unused there).
pub const IP6T_SO_GET_REVISION_MATCH: i32 = 68;
/// `IP6T_SO_GET_REVISION_TARGET`.
pub const IP6T_SO_GET_REVISION_TARGET: i32 = 69;

/// The range of socket options `nf_sockopt` hands to ip_tables: `[min, max)` for set and get.
/// Inside the range, an option the table code does not know is `EINVAL` (the `default:` of
/// `do_ipt_set_ctl`/`do_ipt_get_ctl`); outside it belongs to the IP layer.
pub fn set_range(family: i32) -> std::ops::Range<i32> {
    let _ = family;
    SO_BASE_CTL..SO_SET_ADD_COUNTERS + 1
}

/// See [`set_range`].
pub fn get_range(family: i32) -> std::ops::Range<i32> {
    if family == libc::AF_INET6 {
        SO_BASE_CTL..IP6T_SO_GET_REVISION_TARGET + 1
    } else {
        SO_BASE_CTL..IPT_SO_GET_REVISION_TARGET + 1
    }
}

/// The socket level of the family's table options: `SOL_IP` or `SOL_IPV6`.
pub fn sol(family: i32) -> i32 {
    if family == libc::AF_INET6 {
        libc::SOL_IPV6
    } else {
        libc::SOL_IP
    }
}

pub fn is_revision_opt(family: i32, opt: i32) -> bool {
    if family == libc::AF_INET6 {
        opt == IP6T_SO_GET_REVISION_MATCH || opt == IP6T_SO_GET_REVISION_TARGET
    } else {
        opt == IPT_SO_GET_REVISION_MATCH || opt == IPT_SO_GET_REVISION_TARGET
    }
}

/// `XT_TABLE_MAXNAMELEN`.
pub const TABLE_MAXNAMELEN: usize = 32;
/// `XT_EXTENSION_MAXNAMELEN`: the name field of match and target headers.
pub const EXTENSION_MAXNAMELEN: usize = 29;
/// `sizeof(struct ipt_getinfo)` (same for ip6t).
pub const GETINFO_SIZE: usize = 84;
/// `sizeof(struct ipt_get_entries)`: the header before the entry table.
pub const GET_ENTRIES_HDR: usize = 40;
/// `sizeof(struct ipt_replace)`.
pub const REPLACE_HDR: usize = 96;
/// `offsetof(struct ipt_replace, counters)`: the user pointer for the old counters.
pub const REPLACE_COUNTERS_PTR: usize = 88;
/// `offsetof(struct ipt_replace, num_counters)`.
pub const REPLACE_NUM_COUNTERS: usize = 84;
/// `sizeof(struct xt_counters_info)` header.
pub const COUNTERS_INFO_HDR: usize = 40;
/// `sizeof(struct xt_counters)`.
pub const COUNTERS_SIZE: usize = 16;
/// `sizeof(struct xt_entry_match)` and `sizeof(struct xt_entry_target)`.
pub const XT_HDR: usize = 32;

/// `sizeof(struct ipt_entry)` or `sizeof(struct ip6t_entry)`.
pub fn entry_size(family: i32) -> usize {
    if family == libc::AF_INET6 {
        168
    } else {
        112
    }
}

/// Offsets of `target_offset`, `next_offset` and `counters` inside the entry.
pub fn entry_offsets(family: i32) -> (usize, usize, usize) {
    if family == libc::AF_INET6 {
        (140, 142, 152)
    } else {
        (88, 90, 96)
    }
}

fn u16_at(b: &[u8], off: usize) -> Option<usize> {
    b.get(off..off + 2)
        .map(|s| u16::from_ne_bytes([s[0], s[1]]) as usize)
}

/// The one range covering a whole blob.
fn whole(n: usize) -> Vec<std::ops::Range<usize>> {
    std::iter::once(0..n).collect()
}

/// The byte ranges of an entry table that the kernel writes in `copy_entries_to_user`: every
/// entry's header and counters, and in each match and target header the size, the name up to
/// and including its NUL, the revision, and the data. The bytes of a name after its NUL are
/// not written by the kernel (the caller's buffer keeps what it had), so the shim copies only
/// these ranges to be exact. A blob that does not walk cleanly is copied whole.
pub fn kernel_written_ranges(family: i32, blob: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    let (to_off, no_off, _) = entry_offsets(family);
    let esz = entry_size(family);
    let push = |r: std::ops::Range<usize>, out: &mut Vec<std::ops::Range<usize>>| {
        if r.is_empty() {
            return;
        }
        if let Some(last) = out.last_mut() {
            if last.end == r.start {
                last.end = r.end;
                return;
            }
        }
        out.push(r);
    };
    let mut pos = 0;
    while pos < blob.len() {
        let (Some(t), Some(n)) = (u16_at(blob, pos + to_off), u16_at(blob, pos + no_off)) else {
            return whole(blob.len());
        };
        if n < esz || t < esz || t > n || pos + n > blob.len() {
            return whole(blob.len());
        }
        // Entry header and counters.
        let mut cur = pos;
        // Matches, then the target.
        let mut off = esz;
        let mut objs = Vec::new();
        while off < t {
            let Some(sz) = u16_at(blob, pos + off) else {
                return whole(blob.len());
            };
            if sz < XT_HDR || off + sz > t {
                return whole(blob.len());
            }
            objs.push((pos + off, sz));
            off += sz;
        }
        match u16_at(blob, pos + t) {
            Some(sz) if sz >= XT_HDR && t + sz <= n => objs.push((pos + t, sz)),
            _ => return whole(blob.len()),
        }
        let mut end = pos;
        for (start, sz) in objs {
            let name = &blob[start + 2..start + 2 + EXTENSION_MAXNAMELEN];
            let nul = name
                .iter()
                .position(|&c| c == 0)
                .unwrap_or(EXTENSION_MAXNAMELEN - 1);
            push(cur..start + 2 + nul + 1, &mut out);
            // Revision byte and data.
            cur = start + 2 + EXTENSION_MAXNAMELEN;
            end = start + sz;
        }
        // Bytes between the target's end and the next entry are not written either.
        push(cur..end, &mut out);
        pos += n;
    }
    out
}

/// `XT_MAX_TABLE_SIZE`: the kernel allocates no table, counter array or offset array of
/// this many bytes or more.
pub const XT_MAX_TABLE_SIZE: u64 = 512 * 1024 * 1024;
/// `sizeof(struct xt_table_info)`, which `xt_alloc_table_info` adds to the blob size.
pub const XT_TABLE_INFO_SIZE: u64 = 64;

/// How much of a `SET_REPLACE` buffer the kernel reads after the header, or its errno, in the
/// order of `do_replace` (net/ipv4/netfilter/ip_tables.c): `len` below the header is EINVAL
/// (the caller checks it before reading the header), an absurd `num_counters` is ENOMEM, zero
/// is EINVAL, a `size` beyond `len` is EINVAL, and a blob `xt_alloc_table_info` refuses is
/// ENOMEM before a byte of it is copied.
pub fn replace_body_len(hdr: &[u8], len: usize) -> Result<usize, i32> {
    if len < REPLACE_HDR || hdr.len() < REPLACE_HDR {
        return Err(libc::EINVAL);
    }
    let num_counters = u32::from_ne_bytes(hdr[84..88].try_into().unwrap());
    let size = u32::from_ne_bytes(hdr[40..44].try_into().unwrap()) as usize;
    if num_counters as u64 >= (i32::MAX as u64) / COUNTERS_SIZE as u64 {
        return Err(libc::ENOMEM);
    }
    if num_counters == 0 {
        return Err(libc::EINVAL);
    }
    if (len as u64) < size as u64 + REPLACE_HDR as u64 {
        return Err(libc::EINVAL);
    }
    if XT_TABLE_INFO_SIZE + size as u64 >= XT_MAX_TABLE_SIZE {
        return Err(libc::ENOMEM);
    }
    Ok(size)
}

/// How much of an `ADD_COUNTERS` buffer follows the header, or its errno (`xt_copy_counters`):
/// `len` must exceed the header (checked by the caller before reading it, again here) and be
/// the header plus exactly `num_counters` counters.
pub fn add_counters_body_len(hdr: &[u8], len: usize) -> Result<usize, i32> {
    if len <= COUNTERS_INFO_HDR || hdr.len() < COUNTERS_INFO_HDR {
        return Err(libc::EINVAL);
    }
    let num = u32::from_ne_bytes(hdr[32..36].try_into().unwrap()) as u64;
    let body = (len - COUNTERS_INFO_HDR) as u64;
    if num * COUNTERS_SIZE as u64 != body {
        return Err(libc::EINVAL);
    }
    Ok(body as usize)
}

/// How many bytes of a `GET_INFO` buffer the kernel reads (the table name), or EINVAL for any
/// length but `sizeof(struct ipt_getinfo)` (`get_info`).
pub fn get_info_read_len(len: usize) -> Result<usize, i32> {
    if len != GETINFO_SIZE {
        return Err(libc::EINVAL);
    }
    Ok(TABLE_MAXNAMELEN)
}

/// How many bytes of a `GET_ENTRIES` buffer the kernel reads (`struct ipt_get_entries`), or
/// EINVAL when the buffer cannot even hold that (`get_entries`; the length is checked against
/// the header's `size` once it is read).
pub fn get_entries_read_len(len: usize) -> Result<usize, i32> {
    if len < GET_ENTRIES_HDR {
        return Err(libc::EINVAL);
    }
    Ok(GET_ENTRIES_HDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_skip_name_tails() {
        // One IPv4 entry: header (112), a standard target (40).
        let mut e = vec![0u8; 152];
        e[88..90].copy_from_slice(&112u16.to_ne_bytes());
        e[90..92].copy_from_slice(&152u16.to_ne_bytes());
        e[112..114].copy_from_slice(&40u16.to_ne_bytes());
        // name "" -> only the NUL at 114 is written; 115..143 are skipped.
        let r = kernel_written_ranges(libc::AF_INET, &e);
        assert_eq!(r, vec![0..115, 143..152]);
    }

    fn replace_hdr(size: u32, num_counters: u32) -> Vec<u8> {
        let mut h = vec![0u8; REPLACE_HDR];
        h[40..44].copy_from_slice(&size.to_ne_bytes());
        h[84..88].copy_from_slice(&num_counters.to_ne_bytes());
        h
    }

    // The errnos below are the 6.18 kernel's for the same buffers (translator/tests/kernel_diff.rs).
    #[test]
    fn replace_lengths_in_do_replace_order() {
        let big = (512 << 20) - 64;
        assert_eq!(replace_body_len(&replace_hdr(8, 4), 104), Ok(8));
        assert_eq!(replace_body_len(&replace_hdr(8, 4), 103), Err(libc::EINVAL));
        assert_eq!(replace_body_len(&replace_hdr(8, 0), 104), Err(libc::EINVAL));
        assert_eq!(
            replace_body_len(&replace_hdr(8, (i32::MAX as u32) / 16), 104),
            Err(libc::ENOMEM)
        );
        // Too big for xt_alloc_table_info, but only once the length covers it.
        assert_eq!(
            replace_body_len(&replace_hdr(big, 4), 100),
            Err(libc::EINVAL)
        );
        assert_eq!(
            replace_body_len(&replace_hdr(big, 4), REPLACE_HDR + big as usize),
            Err(libc::ENOMEM)
        );
    }

    #[test]
    fn get_lengths() {
        assert_eq!(get_info_read_len(GETINFO_SIZE), Ok(TABLE_MAXNAMELEN));
        assert_eq!(get_info_read_len(GETINFO_SIZE + 1), Err(libc::EINVAL));
        assert_eq!(get_entries_read_len(39), Err(libc::EINVAL));
        assert_eq!(get_entries_read_len(40), Ok(GET_ENTRIES_HDR));
        let mut h = vec![0u8; COUNTERS_INFO_HDR];
        h[32..36].copy_from_slice(&2u32.to_ne_bytes());
        assert_eq!(add_counters_body_len(&h, 72), Ok(32));
        assert_eq!(add_counters_body_len(&h, 71), Err(libc::EINVAL));
        assert_eq!(add_counters_body_len(&h, 40), Err(libc::EINVAL));
    }

    #[test]
    fn gap_after_the_target_is_not_written() {
        // header (112), an "ERROR"-named 64-byte target, 8 spare bytes before the next entry.
        let mut e = vec![0u8; 184];
        e[88..90].copy_from_slice(&112u16.to_ne_bytes());
        e[90..92].copy_from_slice(&184u16.to_ne_bytes());
        e[112..114].copy_from_slice(&64u16.to_ne_bytes());
        e[114..119].copy_from_slice(b"ERROR");
        let r = kernel_written_ranges(libc::AF_INET, &e);
        assert_eq!(r, vec![0..120, 143..176]);
    }

    #[test]
    fn malformed_blob_is_copied_whole() {
        let e = vec![0u8; 100];
        assert_eq!(kernel_written_ranges(libc::AF_INET, &e), vec![0..100]);
    }
}
