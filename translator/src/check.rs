//! Kernel-equivalent validation of a `SET_REPLACE` blob: `translate_table` of
//! net/ipv4/netfilter/ip_tables.c (and ip6_tables.c), with the kernel's errno for each fault.
//!
//! The order of the checks is the kernel's, because the first failing check decides the errno:
//! 1. per entry, in blob order: alignment and bounds, minimum size, `ip_checkentry` flags,
//!    `xt_check_entry_offsets` (target inside the entry, standard/error target shapes, match
//!    sizes adding up), hook entry points and underflows (underflows must be unconditional
//!    ACCEPT/DROP policies); all EINVAL;
//! 2. the entry count (EINVAL), `xt_check_table_hooks` (EINVAL);
//! 3. `mark_source_chains`: jumps must land on entries, fall-throughs stay inside, no loops
//!    (ELOOP); it records in `comefrom` the hooks each entry is reachable from;
//! 4. per entry, in order, each match then the target: lookup by name and revision (ENOENT or
//!    EPROTOTYPE), the generic `xt_check_match`/`xt_check_target` (size, table, hooks,
//!    protocol: EINVAL) and the extension's own checkentry.
//!
//! Step 4 for an extension is delegated to an [`ExtCheck`]; an extension it does not model is
//! reported as [`ExtVerdict::Unmodeled`] and the whole step is then left to the kernel (see
//! `oracle`), which gives the exact errno of the first failing entry.

use bpfipt_proto::kabi::{XT_MAX_TABLE_SIZE, XT_TABLE_INFO_SIZE};

use crate::abi::{self, Entry, Family, ReplaceHdr, NUMHOOKS};

/// An errno value (positive).
pub type Errno = i32;

/// The result of a successful translation: what the kernel keeps in `xt_table_info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translated {
    /// The entries as the kernel stores them: counters zeroed, `comefrom` = reachable hooks.
    pub blob: Vec<u8>,
    pub hook_entry: [u32; NUMHOOKS],
    pub underflow: [u32; NUMHOOKS],
    pub number: u32,
    pub size: u32,
    /// Number of user chains (ERROR targets), the kernel's jump stack size.
    pub stacksize: u32,
    /// Whether some extension was not checked here and the kernel must check the table.
    pub needs_kernel_check: bool,
}

/// The context of one extension check, as the kernel's `xt_mtchk_param`/`xt_tgchk_param`.
#[derive(Clone, Copy, Debug)]
pub struct ExtCtx<'a> {
    pub family: Family,
    pub table: &'a [u8],
    /// Hooks the rule is reachable from (`comefrom`).
    pub hook_mask: u32,
    pub entry: &'a Entry<'a>,
}

/// What an extension checker says about one match or target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtVerdict {
    Ok,
    Err(Errno),
    /// Not modeled here: the kernel must decide.
    Unmodeled,
}

/// Checks matches and targets as `find_check_match`/`find_check_entry` do.
pub trait ExtCheck {
    fn check_match(&self, ctx: &ExtCtx<'_>, m: &abi::XtObj<'_>) -> ExtVerdict;
    fn check_target(&self, ctx: &ExtCtx<'_>, t: &abi::XtObj<'_>) -> ExtVerdict;
}

fn rd_u16(b: &[u8], off: usize) -> usize {
    u16::from_ne_bytes([b[off], b[off + 1]]) as usize
}

/// `xt_check_entry_offsets` for the entry at `e` (bytes `blob[e..e + next]`).
fn check_entry_offsets(
    family: Family,
    blob: &[u8],
    e: usize,
    target_offset: usize,
    next_offset: usize,
) -> Result<(), Errno> {
    let esz = family.entry_size();
    if target_offset < esz {
        return Err(libc::EINVAL);
    }
    if target_offset + abi::XT_HDR > next_offset {
        return Err(libc::EINVAL);
    }
    let t = e + target_offset;
    let tsize = rd_u16(blob, t);
    if tsize < abi::XT_HDR {
        return Err(libc::EINVAL);
    }
    if target_offset + tsize > next_offset {
        return Err(libc::EINVAL);
    }
    let name = abi::c_str(&blob[t + 2..t + 2 + abi::EXTENSION_MAXNAMELEN]);
    if name == abi::STANDARD_TARGET.as_bytes() {
        if abi::xt_align(target_offset + abi::STANDARD_TARGET_SIZE) != next_offset {
            return Err(libc::EINVAL);
        }
        let v = i32::from_ne_bytes(
            blob[t + abi::XT_HDR..t + abi::XT_HDR + 4]
                .try_into()
                .unwrap(),
        );
        if !verdict_ok(v) {
            return Err(libc::EINVAL);
        }
    } else if name == abi::ERROR_TARGET.as_bytes() {
        if target_offset + abi::ERROR_TARGET_SIZE > next_offset {
            return Err(libc::EINVAL);
        }
        let msg = &blob[t + abi::XT_HDR..t + abi::XT_HDR + abi::FUNCTION_MAXNAMELEN];
        if tsize != abi::ERROR_TARGET_SIZE || !msg.contains(&0) {
            return Err(libc::EINVAL);
        }
    }
    // xt_check_entry_match: matches tile [esz, target_offset) exactly, each aligned.
    let mut pos = esz;
    let mut length = target_offset as i64 - esz as i64;
    while length > 0 {
        if !pos.is_multiple_of(8) {
            return Err(libc::EINVAL);
        }
        if length < abi::XT_HDR as i64 {
            return Err(libc::EINVAL);
        }
        let ms = rd_u16(blob, e + pos);
        if ms < abi::XT_HDR || ms as i64 > length {
            return Err(libc::EINVAL);
        }
        length -= ms as i64;
        pos += ms;
    }
    Ok(())
}

/// `verdict_ok` of x_tables.c: a jump offset, or ACCEPT, DROP, QUEUE, RETURN.
fn verdict_ok(v: i32) -> bool {
    v > 0
        || matches!(
            v,
            abi::VERDICT_ACCEPT | abi::VERDICT_DROP | abi::VERDICT_QUEUE | abi::VERDICT_RETURN
        )
}

/// The standard target's verdict as the kernel reads it: at its fixed place after the target
/// header, whatever the target's `target_size` says (a standard target too short for it still
/// passes `xt_check_entry_offsets`, and fails only in step 4).
fn std_verdict(e: &Entry<'_>) -> i32 {
    let at = e.target_offset() + abi::XT_HDR;
    e.bytes
        .get(at..at + 4)
        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
        .unwrap_or(0)
}

fn is_standard(e: &Entry<'_>) -> bool {
    e.target()
        .is_some_and(|t| t.name() == abi::STANDARD_TARGET.as_bytes())
}

/// `check_underflow`: an unconditional standard ACCEPT or DROP.
fn check_underflow(e: &Entry<'_>) -> bool {
    e.unconditional()
        && is_standard(e)
        && matches!(std_verdict(e), abi::VERDICT_ACCEPT | abi::VERDICT_DROP)
}

/// `xt_check_table_hooks`.
fn check_table_hooks(
    hook_entry: &[u32; NUMHOOKS],
    underflow: &[u32; NUMHOOKS],
    valid_hooks: u32,
) -> Result<(), Errno> {
    let mut max_entry = 0;
    let mut max_uflow = 0;
    let mut check = false;
    for i in 0..NUMHOOKS {
        if valid_hooks & (1 << i) == 0 {
            continue;
        }
        if hook_entry[i] == u32::MAX || underflow[i] == u32::MAX {
            return Err(libc::EINVAL);
        }
        if check && (max_uflow >= underflow[i] || max_entry >= hook_entry[i]) {
            return Err(libc::EINVAL);
        }
        max_entry = hook_entry[i];
        max_uflow = underflow[i];
        check = true;
    }
    Ok(())
}

/// `mark_source_chains`, on side arrays instead of the entries' counters: returns the hook
/// mask of every entry (indexed like `offsets`), or None for a loop or a bad jump.
fn mark_source_chains(
    family: Family,
    blob: &[u8],
    offsets: &[usize],
    hook_entry: &[u32; NUMHOOKS],
    valid_hooks: u32,
) -> Option<Vec<u32>> {
    const BACK: u32 = 1 << NUMHOOKS;
    let size = blob.len();
    let next_of = |pos: usize| rd_u16(blob, pos + family_next_off(family));
    let index = |pos: usize| offsets.binary_search(&pos).ok();
    // Mostly the walk moves to the next entry: try that before searching.
    let index_after = |i: usize, pos: usize| match offsets.get(i + 1) {
        Some(&o) if o == pos => Some(i + 1),
        _ => index(pos),
    };
    let mut comefrom = vec![0u32; offsets.len()];
    // The kernel keeps the back pointer in `counters.pcnt` of each entry.
    let mut back = vec![0usize; offsets.len()];
    'hooks: for (hook, &start) in hook_entry.iter().enumerate() {
        if valid_hooks & (1 << hook) == 0 {
            continue;
        }
        let mut pos = start as usize;
        let mut i = index(pos)?;
        back[i] = pos;
        loop {
            let e = Entry {
                family,
                offset: pos,
                bytes: &blob[pos..pos + next_of(pos)],
            };
            let visited = comefrom[i] & (1 << hook) != 0;
            if comefrom[i] & BACK != 0 {
                return None;
            }
            comefrom[i] |= (1 << hook) | BACK;
            let is_std = is_standard(&e);
            let verdict = std_verdict(&e);
            if (e.unconditional() && is_std && verdict < 0) || visited {
                // Return: backtrack through the last big jump.
                loop {
                    comefrom[i] ^= BACK;
                    let oldpos = pos;
                    pos = back[i];
                    back[i] = 0;
                    if pos == oldpos {
                        continue 'hooks;
                    }
                    i = index(pos)?;
                    if oldpos != pos + next_of(pos) {
                        break;
                    }
                }
                // Move along one.
                let np = pos + next_of(pos);
                if np >= size {
                    return None;
                }
                let ni = index_after(i, np)?;
                back[ni] = pos;
                pos = np;
                i = ni;
            } else {
                let newpos = if is_std && verdict >= 0 {
                    verdict as usize
                } else {
                    let np = pos + e.next_offset();
                    if np >= size {
                        return None;
                    }
                    np
                };
                // A jump must land on the start of an entry (`xt_find_jump_offset`).
                let ni = index_after(i, newpos)?;
                back[ni] = pos;
                pos = newpos;
                i = ni;
            }
        }
    }
    Some(comefrom.into_iter().map(|c| c & !BACK).collect())
}

fn family_next_off(family: Family) -> usize {
    match family {
        Family::V4 => 90,
        Family::V6 => 142,
    }
}

/// Runs `translate_table` on `blob` (the `size` bytes after the replace header).
pub fn translate(
    family: Family,
    hdr: &ReplaceHdr,
    blob: &[u8],
    ext: &dyn ExtCheck,
) -> Result<Translated, Errno> {
    if XT_TABLE_INFO_SIZE + hdr.size as u64 >= XT_MAX_TABLE_SIZE {
        return Err(libc::ENOMEM);
    }
    let size = hdr.size as usize;
    if blob.len() < size {
        return Err(libc::EFAULT);
    }
    // xt_alloc_entry_offsets, before any entry is looked at.
    if hdr.num_entries as u64 > XT_MAX_TABLE_SIZE / 4 {
        return Err(libc::ENOMEM);
    }
    let mut blob = blob[..size].to_vec();
    let esz = family.entry_size();
    let (fmask, imask) = family.flag_masks();
    let mut hook_entry = [u32::MAX; NUMHOOKS];
    let mut underflow = [u32::MAX; NUMHOOKS];
    let mut offsets = Vec::with_capacity(hdr.num_entries.min(1 << 20) as usize);
    let mut stacksize = 0u32;
    let mut pos = 0usize;
    let mut count = 0u64;
    // Step 1: entries, sizes, hooks and underflows.
    while pos < size {
        if !pos.is_multiple_of(8) || pos + esz >= size {
            return Err(libc::EINVAL);
        }
        let next = rd_u16(&blob, pos + family_next_off(family));
        if pos + next > size || next < esz + abi::XT_HDR {
            return Err(libc::EINVAL);
        }
        let e = Entry {
            family,
            offset: pos,
            bytes: &blob[pos..pos + next],
        };
        if e.ip_flags() & !fmask != 0 || e.ip_invflags() & !imask != 0 {
            return Err(libc::EINVAL);
        }
        check_entry_offsets(family, &blob, pos, e.target_offset(), next)?;
        for h in 0..NUMHOOKS {
            if hdr.valid_hooks & (1 << h) == 0 {
                continue;
            }
            if pos as u32 == hdr.hook_entry[h] {
                hook_entry[h] = hdr.hook_entry[h];
            }
            if pos as u32 == hdr.underflow[h] {
                if !check_underflow(&e) {
                    return Err(libc::EINVAL);
                }
                underflow[h] = hdr.underflow[h];
            }
        }
        if e.target()
            .is_some_and(|t| t.name() == abi::ERROR_TARGET.as_bytes())
        {
            stacksize += 1;
        }
        abi::set_entry_counters(family, &mut blob, pos, abi::Counters::default());
        abi::set_comefrom(family, &mut blob, pos, 0);
        if count < hdr.num_entries as u64 {
            offsets.push(pos);
        }
        count += 1;
        pos += next;
    }
    // Step 2.
    if count != hdr.num_entries as u64 {
        return Err(libc::EINVAL);
    }
    check_table_hooks(&hook_entry, &underflow, hdr.valid_hooks)?;
    // Step 3.
    let comefrom = mark_source_chains(family, &blob, &offsets, &hook_entry, hdr.valid_hooks)
        .ok_or(libc::ELOOP)?;
    for (i, &off) in offsets.iter().enumerate() {
        abi::set_comefrom(family, &mut blob, off, comefrom[i]);
    }
    // Step 4: extensions, in order; the first failure decides.
    let mut needs_kernel_check = false;
    for e in abi::entries(family, &blob) {
        let ctx = ExtCtx {
            family,
            table: &hdr.name,
            hook_mask: e.comefrom(),
            entry: &e,
        };
        // Lazily, in the kernel's order: the matches, then the target.
        let verdicts = e
            .matches()
            .map(|m| named(&m).unwrap_or_else(|| ext.check_match(&ctx, &m)))
            .chain(
                e.target()
                    .map(|t| named(&t).unwrap_or_else(|| ext.check_target(&ctx, &t))),
            );
        for v in verdicts {
            match v {
                ExtVerdict::Ok => {}
                ExtVerdict::Unmodeled => needs_kernel_check = true,
                // An unmodeled extension earlier in the table might fail first in the kernel.
                ExtVerdict::Err(err) if !needs_kernel_check => return Err(err),
                ExtVerdict::Err(_) => break,
            }
        }
    }
    Ok(Translated {
        blob,
        hook_entry,
        underflow,
        number: count as u32,
        size: size as u32,
        stacksize,
        needs_kernel_check,
    })
}

/// `xt_request_find_match`/`xt_request_find_target` refuse a name that fills its field without
/// a NUL (EINVAL) before looking for the extension.
fn named(obj: &abi::XtObj<'_>) -> Option<ExtVerdict> {
    if obj.bytes[2..2 + abi::EXTENSION_MAXNAMELEN].contains(&0) {
        None
    } else {
        Some(ExtVerdict::Err(libc::EINVAL))
    }
}

/// The ip_tables core extensions only: the standard and ERROR targets (`ipt_builtin_tg`) and
/// `icmp`/`icmp6` are left to the registry; everything else is unmodeled.
pub struct BuiltinOnly;

impl ExtCheck for BuiltinOnly {
    fn check_match(&self, _ctx: &ExtCtx<'_>, _m: &abi::XtObj<'_>) -> ExtVerdict {
        ExtVerdict::Unmodeled
    }
    fn check_target(&self, _ctx: &ExtCtx<'_>, t: &abi::XtObj<'_>) -> ExtVerdict {
        builtin_target(t).unwrap_or(ExtVerdict::Unmodeled)
    }
}

/// The standard and ERROR targets, which every table uses.
pub fn builtin_target(t: &abi::XtObj<'_>) -> Option<ExtVerdict> {
    let name = t.name();
    let (size, is_builtin) = if name == abi::STANDARD_TARGET.as_bytes() {
        (4, true)
    } else if name == abi::ERROR_TARGET.as_bytes() {
        (abi::FUNCTION_MAXNAMELEN, true)
    } else {
        (0, false)
    };
    if !is_builtin {
        return None;
    }
    // Both are registered for the family only: `xt_find_target` notes EPROTOTYPE for the
    // family's list, then answers with its search of the NFPROTO_UNSPEC list, ENOENT.
    if t.revision() != 0 {
        return Some(ExtVerdict::Err(libc::ENOENT));
    }
    if abi::xt_align(size) != t.size() - abi::XT_HDR {
        return Some(ExtVerdict::Err(libc::EINVAL));
    }
    Some(ExtVerdict::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::build;

    fn hdr(valid: u32, entries: &[(usize, usize)], num: u32, size: usize) -> ReplaceHdr {
        let mut he = [0u32; NUMHOOKS];
        let mut uf = [0u32; NUMHOOKS];
        for (h, &(e, u)) in (0..NUMHOOKS).filter(|h| valid & (1 << h) != 0).zip(entries) {
            he[h] = e as u32;
            uf[h] = u as u32;
        }
        ReplaceHdr {
            name: b"filter".to_vec(),
            valid_hooks: valid,
            num_entries: num,
            size: size as u32,
            hook_entry: he,
            underflow: uf,
            num_counters: 4,
            counters_ptr: 0,
        }
    }

    fn initial_filter() -> (ReplaceHdr, Vec<u8>) {
        let mut b = Vec::new();
        for _ in 0..3 {
            b.extend(build::standard_entry(Family::V4, abi::VERDICT_ACCEPT));
        }
        b.extend(build::error_entry(Family::V4, b"ERROR"));
        let h = hdr(0b01110, &[(0, 0), (152, 152), (304, 304)], 4, b.len());
        (h, b)
    }

    #[test]
    fn initial_table_translates_with_comefrom() {
        let (h, b) = initial_filter();
        let t = translate(Family::V4, &h, &b, &BuiltinOnly).unwrap();
        let cf: Vec<u32> = abi::entries(Family::V4, &t.blob)
            .map(|e| e.comefrom())
            .collect();
        assert_eq!(cf, vec![0b00010, 0b00100, 0b01000, 0]);
        assert!(!t.needs_kernel_check);
        assert_eq!(t.stacksize, 1);
    }

    #[test]
    fn entry_count_mismatch_is_einval() {
        let (mut h, b) = initial_filter();
        h.num_entries = 5;
        assert_eq!(
            translate(Family::V4, &h, &b, &BuiltinOnly),
            Err(libc::EINVAL)
        );
    }

    #[test]
    fn conditional_underflow_is_einval() {
        let (h, mut b) = initial_filter();
        b[80] = 6; // proto tcp on the INPUT policy
        assert_eq!(
            translate(Family::V4, &h, &b, &BuiltinOnly),
            Err(libc::EINVAL)
        );
    }

    #[test]
    fn jump_to_self_is_eloop() {
        // INPUT: jump to a user chain that jumps to itself.
        let mut b = Vec::new();
        b.extend(build::standard_entry(Family::V4, 0)); // placeholder, patched below
        let input_pol = b.len();
        b.extend(build::standard_entry(Family::V4, abi::VERDICT_ACCEPT));
        let fwd = b.len();
        b.extend(build::standard_entry(Family::V4, abi::VERDICT_ACCEPT));
        let out = b.len();
        b.extend(build::standard_entry(Family::V4, abi::VERDICT_ACCEPT));
        let head = b.len();
        b.extend(build::error_entry(Family::V4, b"LOOP"));
        let body = b.len();
        let mut j = build::standard_entry(Family::V4, body as i32);
        j[80] = 6; // conditional, so it is a jump and not an end
        b.extend(j);
        b.extend(build::standard_entry(Family::V4, abi::VERDICT_RETURN));
        b.extend(build::error_entry(Family::V4, b"ERROR"));
        let _ = head;
        // First rule of INPUT jumps to the chain body.
        let mut first = build::standard_entry(Family::V4, body as i32);
        first[80] = 6;
        b[..152].copy_from_slice(&first);
        let h = hdr(
            0b01110,
            &[(0, input_pol), (fwd, fwd), (out, out)],
            8,
            b.len(),
        );
        assert_eq!(
            translate(Family::V4, &h, &b, &BuiltinOnly),
            Err(libc::ELOOP)
        );
    }

    #[test]
    fn truncated_blob_never_panics() {
        let (h, b) = initial_filter();
        for cut in 0..b.len() {
            let mut h2 = h.clone();
            h2.size = cut as u32;
            let _ = translate(Family::V4, &h2, &b[..cut], &BuiltinOnly);
        }
    }

    /// A filter table with `n` rules in INPUT, every tenth jumping to one of `chains` user
    /// chains (which jump on to the next one), the others conditional ACCEPTs.
    pub(crate) fn big_filter(n: usize, chains: usize) -> (ReplaceHdr, Vec<u8>) {
        let rule = |verdict: i32| {
            let mut e = build::standard_entry(Family::V4, verdict);
            e[80] = 6; // -p tcp
            e
        };
        let esz = rule(0).len();
        let head = build::error_entry(Family::V4, b"c").len();
        // Layout: n rules, 3 policies, then per chain: head, 2 rules, RETURN; then ERROR.
        let chain_start = |c: usize| (n + 3) * esz + c * (head + 3 * esz) + head;
        let mut b = Vec::with_capacity((n + 4 * chains + 4) * 176);
        for i in 0..n {
            if i % 10 == 0 && chains > 0 {
                b.extend(rule(chain_start(i / 10 % chains) as i32));
            } else {
                b.extend(rule(abi::VERDICT_ACCEPT));
            }
        }
        let pol = b.len();
        for _ in 0..3 {
            b.extend(build::standard_entry(Family::V4, abi::VERDICT_ACCEPT));
        }
        for c in 0..chains {
            b.extend(build::error_entry(Family::V4, format!("c{c}").as_bytes()));
            let next = if c + 1 < chains {
                chain_start(c + 1) as i32
            } else {
                abi::VERDICT_DROP
            };
            b.extend(rule(next));
            b.extend(rule(abi::VERDICT_DROP));
            b.extend(build::standard_entry(Family::V4, abi::VERDICT_RETURN));
        }
        b.extend(build::error_entry(Family::V4, b"ERROR"));
        let num = (n + 3 + 4 * chains + 1) as u32;
        let h = hdr(
            0b01110,
            &[
                (0, pol),
                (pol + esz, pol + esz),
                (pol + 2 * esz, pol + 2 * esz),
            ],
            num,
            b.len(),
        );
        (h, b)
    }

    /// 50000 rules and 1000 chaining user chains go through in one pass each (no quadratic
    /// step); how long it takes is measured elsewhere, not asserted.
    #[test]
    fn fifty_thousand_rules_translate() {
        let (h, b) = big_filter(50_000, 1000);
        let t = translate(Family::V4, &h, &b, &BuiltinOnly).unwrap();
        assert_eq!(t.number, 50_000 + 3 + 4000 + 1);
        assert_eq!(t.stacksize, 1001);
        // Every rule of INPUT and every chain is reached from INPUT only.
        let cf: Vec<u32> = abi::entries(Family::V4, &t.blob)
            .map(|e| e.comefrom())
            .collect();
        assert!(cf[..50_001].iter().all(|&c| c == 1 << 1));
        assert_eq!(cf[50_001], 1 << 2);
        assert!(cf[50_003..50_003 + 4000]
            .chunks(4)
            .all(|c| c == [0, 2, 2, 2]));
    }
}
