//! The emulated ip_tables/ip6_tables of one network namespace: the tables, their counters, and
//! the answers to the socket options as `net/ipv4/netfilter/ip_tables.c` gives them.
//!
//! Tables come into being lazily, as in the kernel since 5.x: the first socket option naming
//! one of the five known tables instantiates it with the kernel's initial contents (one ACCEPT
//! policy per hook and the closing ERROR entry). `/proc/net/ip_tables_names` lists
//! instantiated tables newest first, as the kernel's list does.
//!
//! This module holds no file descriptor; persistence and enforcement are the caller's
//! (`daemon` commits a new [`Table`] to the `store` before it answers).

use std::collections::BTreeMap;

use bpfipt_proto::kabi;

use crate::abi::{self, Counters, CountersInfo, Family, GetInfo, ReplaceHdr, NUMHOOKS};
use crate::check::{self, Errno, ExtCheck};

/// The tables the kernel provides for both families, with their hooks (`valid_hooks`).
pub const KNOWN_TABLES: [(&str, u32); 5] = [
    // iptable_filter / ip6table_filter: LOCAL_IN, FORWARD, LOCAL_OUT.
    ("filter", 0b01110),
    // iptable_nat: PRE_ROUTING, LOCAL_IN, LOCAL_OUT, POST_ROUTING.
    ("nat", 0b11011),
    // iptable_mangle: all five.
    ("mangle", 0b11111),
    // iptable_raw: PRE_ROUTING, LOCAL_OUT.
    ("raw", 0b01001),
    // iptable_security: LOCAL_IN, FORWARD, LOCAL_OUT.
    ("security", 0b01110),
];

/// The user-visible payload size of an extension: (family, is_target, name, revision).
pub type UsersizeFn<'a> = &'a dyn Fn(Family, bool, &[u8], u8) -> Option<usize>;

/// Decides the extensions `check` does not model, as the kernel would for this replace header
/// and entry table (the daemon asks the kernel in a scratch namespace): the kernel's errno, or
/// Ok when the kernel would go on to look the table up.
pub type KernelCheck<'a> = &'a mut dyn FnMut(&ReplaceHdr, &[u8]) -> Result<(), Errno>;

/// One table as the kernel keeps it (`xt_table` + `xt_table_info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    pub valid_hooks: u32,
    pub hook_entry: [u32; NUMHOOKS],
    pub underflow: [u32; NUMHOOKS],
    pub number: u32,
    pub initial_entries: u32,
    /// Entries as translated: counters zero, `comefrom` the reachable hooks.
    pub blob: Vec<u8>,
    /// Per-entry counters, in entry order.
    pub counters: Vec<Counters>,
}

impl Table {
    /// The kernel's initial table (`xt_alloc_initial_table` then `translate_table`).
    pub fn initial(family: Family, name: &str, valid_hooks: u32) -> Table {
        let mut blob = Vec::new();
        // Hooks the table does not have keep translate_table's "impossible value".
        let mut hook_entry = [u32::MAX; NUMHOOKS];
        let mut underflow = [u32::MAX; NUMHOOKS];
        let mut comefrom = Vec::new();
        for h in 0..NUMHOOKS {
            if valid_hooks & (1 << h) == 0 {
                continue;
            }
            hook_entry[h] = blob.len() as u32;
            underflow[h] = blob.len() as u32;
            comefrom.push((blob.len(), 1u32 << h));
            blob.extend(abi::build::standard_entry(family, abi::VERDICT_ACCEPT));
        }
        blob.extend(abi::build::error_entry(family, b"ERROR"));
        for (off, cf) in comefrom {
            abi::set_comefrom(family, &mut blob, off, cf);
        }
        let number = valid_hooks.count_ones() + 1;
        Table {
            family,
            name: name.to_string(),
            valid_hooks,
            hook_entry,
            underflow,
            number,
            initial_entries: number,
            blob,
            counters: vec![Counters::default(); number as usize],
        }
    }

    pub fn size(&self) -> u32 {
        self.blob.len() as u32
    }

    pub fn info(&self) -> GetInfo {
        GetInfo {
            name: self.name.as_bytes().to_vec(),
            valid_hooks: self.valid_hooks,
            hook_entry: self.hook_entry,
            underflow: self.underflow,
            num_entries: self.number,
            size: self.size(),
        }
    }

    /// The entry table as `copy_entries_to_user` writes it: counters filled in, match and
    /// target payloads past each extension's user-visible size zeroed (`usersize`).
    pub fn entries_for_user(&self, usersize: UsersizeFn) -> Vec<u8> {
        let mut out = self.blob.clone();
        let offs: Vec<(usize, Vec<(usize, bool)>)> = abi::entries(self.family, &self.blob)
            .map(|e| {
                let mut objs: Vec<(usize, bool)> = Vec::new();
                let mut off = self.family.entry_size();
                for m in e.matches() {
                    objs.push((e.offset + off, false));
                    off += m.size();
                }
                objs.push((e.offset + e.target_offset(), true));
                (e.offset, objs)
            })
            .collect();
        for (i, (eoff, objs)) in offs.into_iter().enumerate() {
            let c = self.counters.get(i).copied().unwrap_or_default();
            abi::set_entry_counters(self.family, &mut out, eoff, c);
            for (ooff, is_target) in objs {
                let size = u16::from_ne_bytes([out[ooff], out[ooff + 1]]) as usize;
                let obj = abi::XtObj {
                    bytes: &self.blob[ooff..ooff + size],
                };
                if let Some(us) = usersize(self.family, is_target, obj.name(), obj.revision()) {
                    let data = ooff + abi::XT_HDR;
                    let end = ooff + size;
                    if data + us < end {
                        out[data + us..end].fill(0);
                    }
                }
            }
        }
        out
    }
}

/// The tables of one family in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FamilyTables {
    pub tables: BTreeMap<String, Table>,
    /// Instantiation order, oldest first.
    pub order: Vec<String>,
}

/// What a successful replace produced: the new table and the old counters for the caller.
pub struct Replaced {
    pub table: Table,
    pub old_counters: Vec<Counters>,
    /// The old table, for diffing.
    pub old: Table,
    /// Some extension was not modeled here and the kernel check decided it (see `oracle`).
    pub needs_kernel_check: bool,
}

/// The emulated state of a namespace: both families.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Netns {
    pub v4: FamilyTables,
    pub v6: FamilyTables,
}

fn table_name(raw: &[u8]) -> Vec<u8> {
    let mut n = raw[..raw.len().min(abi::TABLE_MAXNAMELEN)].to_vec();
    if n.len() == abi::TABLE_MAXNAMELEN {
        n[abi::TABLE_MAXNAMELEN - 1] = 0;
    }
    abi::c_str(&n).to_vec()
}

impl Netns {
    pub fn family(&self, f: Family) -> &FamilyTables {
        match f {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    pub fn family_mut(&mut self, f: Family) -> &mut FamilyTables {
        match f {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }

    /// `xt_find_table_lock`: the table, instantiating a known one on first use. Returns
    /// whether it was instantiated now (the caller persists that).
    pub fn find_table(&mut self, f: Family, name: &[u8]) -> Result<(&mut Table, bool), Errno> {
        let name = std::str::from_utf8(name).map_err(|_| libc::ENOENT)?;
        let ft = self.family_mut(f);
        let mut created = false;
        if !ft.tables.contains_key(name) {
            let (n, hooks) = KNOWN_TABLES
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or(libc::ENOENT)?;
            ft.tables
                .insert(n.to_string(), Table::initial(f, n, *hooks));
            ft.order.push(n.to_string());
            created = true;
        }
        Ok((ft.tables.get_mut(name).unwrap(), created))
    }

    /// `/proc/net/ip_tables_names`: newest first, one per line.
    pub fn table_names(&self, f: Family) -> String {
        let mut s = String::new();
        for n in self.family(f).order.iter().rev() {
            s.push_str(n);
            s.push('\n');
        }
        s
    }

    /// IPT_SO_GET_INFO: `data` is the table name field. Returns the getinfo struct.
    pub fn get_info(&mut self, f: Family, data: &[u8]) -> Result<(Vec<u8>, bool), Errno> {
        let name = table_name(data);
        let (t, created) = self.find_table(f, &name)?;
        Ok((t.info().emit(), created))
    }

    /// IPT_SO_GET_ENTRIES: `data` is the `ipt_get_entries` header, `optlen` the caller's length.
    pub fn get_entries(
        &mut self,
        f: Family,
        data: &[u8],
        optlen: usize,
        usersize: UsersizeFn,
    ) -> Result<(Vec<u8>, bool), Errno> {
        if optlen < abi::GET_ENTRIES_HDR || data.len() < abi::GET_ENTRIES_HDR {
            return Err(libc::EINVAL);
        }
        let size = u32::from_ne_bytes(data[32..36].try_into().unwrap());
        if optlen as u64 != abi::GET_ENTRIES_HDR as u64 + size as u64 {
            return Err(libc::EINVAL);
        }
        let name = table_name(&data[..abi::TABLE_MAXNAMELEN]);
        let (t, created) = self.find_table(f, &name)?;
        if size != t.size() {
            return Err(libc::EAGAIN);
        }
        Ok((t.entries_for_user(usersize), created))
    }

    /// IPT_SO_GET_INFO as `getsockopt` sees it: `optlen` is the caller's length, `buf` holds at
    /// least the bytes the kernel reads (the table name).
    pub fn getsockopt_info(
        &mut self,
        f: Family,
        optlen: usize,
        buf: &[u8],
    ) -> Result<(Vec<u8>, bool), Errno> {
        let n = kabi::get_info_read_len(optlen)?;
        self.get_info(f, buf.get(..n).ok_or(libc::EFAULT)?)
    }

    /// IPT_SO_GET_ENTRIES as `getsockopt` sees it (see [`Netns::getsockopt_info`]).
    pub fn getsockopt_entries(
        &mut self,
        f: Family,
        optlen: usize,
        buf: &[u8],
        usersize: UsersizeFn,
    ) -> Result<(Vec<u8>, bool), Errno> {
        let n = kabi::get_entries_read_len(optlen)?;
        self.get_entries(f, buf.get(..n).ok_or(libc::EFAULT)?, optlen, usersize)
    }

    /// IPT_SO_SET_REPLACE in the order of `do_replace`, up to the point of no return: `optlen`
    /// is the caller's length, `buf` holds at least the header and the `size` bytes the kernel
    /// copies. Extensions `ext` does not model are handed to `kernel_check` where the kernel
    /// checks them, before the table lookup, so that their errno wins over the lookup's. The
    /// table is not replaced; the caller commits with [`Netns::install`].
    pub fn setsockopt_replace(
        &mut self,
        f: Family,
        optlen: usize,
        buf: &[u8],
        ext: &dyn ExtCheck,
        kernel_check: KernelCheck,
    ) -> Result<Replaced, Errno> {
        if optlen < abi::REPLACE_HDR {
            return Err(libc::EINVAL);
        }
        let raw = buf.get(..abi::REPLACE_HDR).ok_or(libc::EFAULT)?;
        let size = kabi::replace_body_len(raw, optlen)?;
        let data = buf.get(..abi::REPLACE_HDR + size).ok_or(libc::EFAULT)?;
        let hdr = ReplaceHdr::parse(data).ok_or(libc::EINVAL)?;
        let body = &data[abi::REPLACE_HDR..];
        let tr = check::translate(f, &hdr, body, ext)?;
        if tr.needs_kernel_check {
            kernel_check(&hdr, body)?;
        }
        // __do_replace: the old counters' array (xt_counters_alloc refuses more than
        // XT_MAX_TABLE_SIZE bytes), the table, "You lied!", the counter-count race check.
        if hdr.num_counters as u64 * abi::COUNTERS_SIZE as u64 > kabi::XT_MAX_TABLE_SIZE {
            return Err(libc::ENOMEM);
        }
        let (old, _) = self.find_table(f, &hdr.name)?;
        if hdr.valid_hooks != old.valid_hooks {
            return Err(libc::EINVAL);
        }
        if hdr.num_counters != old.number {
            return Err(libc::EAGAIN);
        }
        let table = Table {
            family: f,
            name: old.name.clone(),
            valid_hooks: old.valid_hooks,
            hook_entry: tr.hook_entry,
            underflow: tr.underflow,
            number: tr.number,
            initial_entries: old.initial_entries,
            blob: tr.blob,
            counters: vec![Counters::default(); tr.number as usize],
        };
        Ok(Replaced {
            old_counters: old.counters.clone(),
            old: old.clone(),
            table,
            needs_kernel_check: tr.needs_kernel_check,
        })
    }

    /// Puts a prepared table in place.
    pub fn install(&mut self, table: Table) {
        let ft = self.family_mut(table.family);
        if !ft.order.contains(&table.name) {
            ft.order.push(table.name.clone());
        }
        ft.tables.insert(table.name.clone(), table);
    }

    /// IPT_SO_SET_ADD_COUNTERS in the order of `do_add_counters` (`optlen` and `buf` as in
    /// [`Netns::setsockopt_replace`]): validates and returns the table with the counters
    /// added, without changing `self`.
    pub fn setsockopt_add_counters(
        &mut self,
        f: Family,
        optlen: usize,
        buf: &[u8],
    ) -> Result<Table, Errno> {
        if optlen <= abi::COUNTERS_INFO_HDR {
            return Err(libc::EINVAL);
        }
        let raw = buf.get(..abi::COUNTERS_INFO_HDR).ok_or(libc::EFAULT)?;
        let n = kabi::add_counters_body_len(raw, optlen)?;
        let data = buf.get(..abi::COUNTERS_INFO_HDR + n).ok_or(libc::EFAULT)?;
        let info = CountersInfo::parse(data).ok_or(libc::EINVAL)?;
        let add = abi::parse_counters(&data[abi::COUNTERS_INFO_HDR..]);
        if add.len() as u64 != info.num_counters as u64 {
            return Err(libc::EINVAL);
        }
        let (t, _) = self.find_table(f, &info.name)?;
        if t.number != info.num_counters {
            return Err(libc::EINVAL);
        }
        let mut t = t.clone();
        for (c, a) in t.counters.iter_mut().zip(add) {
            c.add(a);
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_usersize(_: Family, _: bool, _: &[u8], _: u8) -> Option<usize> {
        None
    }

    #[test]
    fn unknown_table_is_enoent_and_known_ones_appear_in_order() {
        let mut ns = Netns::default();
        let mut name = [0u8; 32];
        name[..3].copy_from_slice(b"foo");
        assert_eq!(ns.get_info(Family::V4, &name).unwrap_err(), libc::ENOENT);
        for n in ["filter", "nat", "raw"] {
            let mut name = [0u8; 32];
            name[..n.len()].copy_from_slice(n.as_bytes());
            assert!(ns.get_info(Family::V4, &name).unwrap().1);
        }
        assert_eq!(ns.table_names(Family::V4), "raw\nnat\nfilter\n");
        assert_eq!(ns.table_names(Family::V6), "");
    }

    #[test]
    fn initial_filter_info_matches_kernel_layout() {
        let t = Table::initial(Family::V4, "filter", 0b01110);
        let i = t.info();
        // GET_INFO of a fresh namespace's filter table.
        assert_eq!(i.hook_entry, [u32::MAX, 0, 152, 304, u32::MAX]);
        assert_eq!(i.underflow, [u32::MAX, 0, 152, 304, u32::MAX]);
        assert_eq!(i.num_entries, 4);
        assert_eq!(i.size, 3 * 152 + 176);
    }

    #[test]
    fn get_entries_checks_sizes() {
        let mut ns = Netns::default();
        let mut hdr = [0u8; 40];
        hdr[..6].copy_from_slice(b"filter");
        let size = 3 * 152 + 176u32;
        hdr[32..36].copy_from_slice(&size.to_ne_bytes());
        assert_eq!(
            ns.get_entries(Family::V4, &hdr, 40, &no_usersize)
                .unwrap_err(),
            libc::EINVAL
        );
        let (blob, _) = ns
            .get_entries(Family::V4, &hdr, 40 + size as usize, &no_usersize)
            .unwrap();
        assert_eq!(blob.len(), size as usize);
        hdr[32..36].copy_from_slice(&(size - 8).to_ne_bytes());
        assert_eq!(
            ns.get_entries(Family::V4, &hdr, 40 + size as usize - 8, &no_usersize)
                .unwrap_err(),
            libc::EAGAIN
        );
    }
}
