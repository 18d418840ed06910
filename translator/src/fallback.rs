//! The kernel's ip_tables as the enforcer of last resort: a family whose ruleset the eBPF
//! datapath cannot run is installed, whole, into the kernel's own tables of the namespace.
//!
//! The daemon still answers every socket option (its tables are the truth for GET_ENTRIES);
//! only the counters of an installed family come from the kernel, which is then the one
//! counting packets.

use std::io;

use crate::abi::{self, Counters, Family, ReplaceHdr};
use crate::kernel::{Netns, Table};
use crate::oracle::Scratch;

/// The kernel's ip_tables of the daemon's own namespace.
pub struct KernelTables {
    k: Scratch,
}

/// A table the kernel refused, with its errno.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub table: String,
    pub errno: i32,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the kernel refused table {}: {}",
            self.table,
            io::Error::from_raw_os_error(self.errno)
        )
    }
}

fn replace_hdr(t: &Table, num_counters: u32, counters_ptr: u64) -> ReplaceHdr {
    ReplaceHdr {
        name: t.name.as_bytes().to_vec(),
        valid_hooks: t.valid_hooks,
        num_entries: t.number,
        size: t.size(),
        hook_entry: t.hook_entry,
        underflow: t.underflow,
        num_counters,
        counters_ptr,
    }
}

impl KernelTables {
    pub fn here() -> io::Result<KernelTables> {
        Ok(KernelTables {
            k: Scratch::here()?,
        })
    }

    /// Replaces the kernel's table with `t` and gives it `t`'s counters. Returns the
    /// kernel's old counters.
    pub fn install_table(
        &self,
        t: &Table,
        counters: &[Counters],
    ) -> Result<Vec<Counters>, Refused> {
        let refused = |errno| Refused {
            table: t.name.clone(),
            errno,
        };
        let info = self.k.get_info(t.family, &t.name).map_err(refused)?;
        let mut old = vec![0u8; info.num_entries as usize * abi::COUNTERS_SIZE];
        let mut buf = replace_hdr(t, info.num_entries, old.as_mut_ptr() as u64).emit();
        buf.extend_from_slice(&t.blob);
        self.k.raw_replace(t.family, &buf).map_err(refused)?;
        let old = abi::parse_counters(&old);
        if counters.iter().any(|c| *c != Counters::default()) {
            let mut add = vec![0u8; abi::COUNTERS_INFO_HDR];
            abi::put_c_str(&mut add[..abi::TABLE_MAXNAMELEN], t.name.as_bytes());
            add[32..36].copy_from_slice(&t.number.to_ne_bytes());
            add.extend_from_slice(&abi::emit_counters(counters));
            self.k
                .setsockopt(t.family, bpfipt_proto::kabi::SO_SET_ADD_COUNTERS, &add)
                .map_err(refused)?;
        }
        Ok(old)
    }

    /// Installs every instantiated table of a family, in instantiation order.
    pub fn install(&self, ns: &Netns, f: Family) -> Result<(), Refused> {
        let ft = ns.family(f);
        for name in &ft.order {
            let t = &ft.tables[name];
            self.install_table(t, &t.counters)?;
        }
        Ok(())
    }

    /// Adds counters to the kernel's table (SET_ADD_COUNTERS).
    pub fn add_counters(&self, t: &Table, add: &[Counters]) -> Result<(), Refused> {
        let mut buf = vec![0u8; abi::COUNTERS_INFO_HDR];
        abi::put_c_str(&mut buf[..abi::TABLE_MAXNAMELEN], t.name.as_bytes());
        buf[32..36].copy_from_slice(&(add.len() as u32).to_ne_bytes());
        buf.extend_from_slice(&abi::emit_counters(add));
        self.k
            .setsockopt(t.family, bpfipt_proto::kabi::SO_SET_ADD_COUNTERS, &buf)
            .map_err(|errno| Refused {
                table: t.name.clone(),
                errno,
            })
    }

    /// The kernel's counters of `t` if the kernel holds exactly `t`'s entries (a previous
    /// daemon installed them), else `None`.
    pub fn matching_counters(&self, t: &Table) -> Option<Vec<Counters>> {
        let blob = self.k.get_entries(t.family, &t.name).ok()?;
        if blob.len() != t.blob.len() {
            return None;
        }
        let mut theirs = blob.clone();
        let mut ours = t.blob.clone();
        let mut counters = Vec::new();
        for e in abi::entries(t.family, &blob) {
            counters.push(abi::entry_counters(t.family, &blob, e.offset));
            abi::set_entry_counters(t.family, &mut theirs, e.offset, Counters::default());
            abi::set_entry_counters(t.family, &mut ours, e.offset, Counters::default());
        }
        (theirs == ours && counters.len() == t.counters.len()).then_some(counters)
    }

    /// The kernel's counters of a table, per entry.
    pub fn counters(&self, f: Family, name: &str) -> Result<Vec<Counters>, i32> {
        let blob = self.k.get_entries(f, name)?;
        Ok(abi::entries(f, &blob)
            .map(|e| abi::entry_counters(f, &blob, e.offset))
            .collect())
    }

    /// Gives the kernel's tables of a family back their initial contents (ACCEPT policies, no
    /// rules), so the kernel no longer filters. The tables stay instantiated in the kernel:
    /// there is no way to remove one short of deleting the namespace.
    pub fn release(&self, ns: &Netns, f: Family) -> Result<(), Refused> {
        for name in &ns.family(f).order {
            let t = &ns.family(f).tables[name];
            let initial = Table::initial(f, name, t.valid_hooks);
            self.install_table(&initial, &[])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Table;

    #[test]
    fn install_read_counters_release() {
        crate::sys::in_new_netns(|| {
            let kt = KernelTables::here().unwrap();
            let mut ns = Netns::default();
            let mut name = [0u8; 32];
            name[..6].copy_from_slice(b"filter");
            ns.get_info(Family::V4, &name).unwrap();
            // Policy DROP on INPUT, counters 5/500 on FORWARD's policy.
            let mut t = Table::initial(Family::V4, "filter", 0b01110);
            abi::set_entry_counters(Family::V4, &mut t.blob, 0, Counters::default());
            let drop = abi::build::standard_entry(Family::V4, abi::VERDICT_DROP);
            t.blob[..drop.len()].copy_from_slice(&drop);
            abi::set_comefrom(Family::V4, &mut t.blob, 0, 0b10);
            t.counters[1] = Counters { pcnt: 5, bcnt: 500 };
            ns.install(t.clone());
            kt.install(&ns, Family::V4).unwrap();
            let entries = kt.k.get_entries(Family::V4, "filter").unwrap();
            let mut expect = t.blob.clone();
            for (i, off) in [0usize, 152, 304, 456].into_iter().enumerate() {
                abi::set_entry_counters(Family::V4, &mut expect, off, t.counters[i]);
            }
            assert_eq!(entries, expect);
            assert_eq!(
                kt.counters(Family::V4, "filter").unwrap()[1],
                Counters { pcnt: 5, bcnt: 500 }
            );
            kt.release(&ns, Family::V4).unwrap();
            let after = kt.k.get_entries(Family::V4, "filter").unwrap();
            assert_eq!(after, Table::initial(Family::V4, "filter", 0b01110).blob);
        });
    }
}
