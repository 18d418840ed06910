//! Where the tables of a namespace live between processes: in two BPF maps that belong to the
//! namespace itself.
//!
//! The maps are bound (`BPF_PROG_BIND_MAP`) to a program attached at TCX ingress of the
//! namespace's loopback device without a link, so the kernel keeps them as long as `lo` exists,
//! which is exactly as long as the namespace does. No file, no bpffs mount (`ip netns exec`
//! remounts /sys), nothing stale after the namespace is gone, and a daemon that dies loses
//! nothing: the next one finds the maps again through `lo` (`BPF_PROG_QUERY`, map ids).
//!
//! Atomicity: every record (a table's entries, a table's counters) has two halves in
//! `bpfipt_store`. A commit writes the inactive half completely, then flips the half in the
//! header with one update of the single-entry `bpfipt_hdr` array, which the kernel performs as
//! one copy. A process killed at any point leaves the old header or the new one; a half that
//! was being written is never pointed to.

use std::io;
use std::os::fd::OwnedFd;

use crate::abi::{self, Counters, Family, NUMHOOKS};
use crate::kernel::{FamilyTables, Netns, Table, KNOWN_TABLES};
use crate::sys;

pub const HDR_MAP: &str = "bpfipt_hdr";
pub const STORE_MAP: &str = "bpfipt_store";
pub const ANCHOR_PROG: &str = "bpfipt_anchor";

const MAGIC: &[u8; 8] = b"BPFIPT01";
const HDR_SIZE: usize = 1024;
const CHUNK: usize = 64 * 1024;
/// Chunks the store can hold (8192 x 64 KiB): the hash map allocates elements on use.
const MAX_CHUNKS: u32 = 8192;
const SLOTS: usize = 2 * KNOWN_TABLES.len();
const REC_SIZE: usize = 32;
const REC_BASE: usize = 32;

/// Per-table bookkeeping in the header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Rec {
    present: bool,
    /// Which half holds the entries, and which the counters.
    table_half: u8,
    counters_half: u8,
    /// Instantiation sequence number (orders /proc/net/ip_tables_names).
    order: u32,
    /// Serialized lengths; 0 means "initial contents".
    table_len: u32,
    counters_len: u32,
    table_sum: u64,
    counters_sum: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    generation: u64,
    next_order: u32,
    recs: [Rec; SLOTS],
}

impl Header {
    fn empty() -> Header {
        Header {
            generation: 0,
            next_order: 1,
            recs: [Rec::default(); SLOTS],
        }
    }

    fn emit(&self) -> Vec<u8> {
        let mut b = vec![0u8; HDR_SIZE];
        b[..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.generation.to_ne_bytes());
        b[16..20].copy_from_slice(&self.next_order.to_ne_bytes());
        for (i, r) in self.recs.iter().enumerate() {
            let o = REC_BASE + i * REC_SIZE;
            b[o] = r.present as u8;
            b[o + 1] = r.table_half;
            b[o + 2] = r.counters_half;
            b[o + 4..o + 8].copy_from_slice(&r.order.to_ne_bytes());
            b[o + 8..o + 12].copy_from_slice(&r.table_len.to_ne_bytes());
            b[o + 12..o + 16].copy_from_slice(&r.counters_len.to_ne_bytes());
            b[o + 16..o + 24].copy_from_slice(&r.table_sum.to_ne_bytes());
            b[o + 24..o + 32].copy_from_slice(&r.counters_sum.to_ne_bytes());
        }
        b
    }

    fn parse(b: &[u8]) -> Option<Header> {
        if b.len() < HDR_SIZE || &b[..8] != MAGIC {
            return None;
        }
        let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap());
        let mut recs = [Rec::default(); SLOTS];
        for (i, r) in recs.iter_mut().enumerate() {
            let o = REC_BASE + i * REC_SIZE;
            *r = Rec {
                present: b[o] != 0,
                table_half: b[o + 1] & 1,
                counters_half: b[o + 2] & 1,
                order: u32_at(o + 4),
                table_len: u32_at(o + 8),
                counters_len: u32_at(o + 12),
                table_sum: u64_at(o + 16),
                counters_sum: u64_at(o + 24),
            };
        }
        Some(Header {
            generation: u64_at(8),
            next_order: u32_at(16),
            recs,
        })
    }
}

fn slot(family: Family, name: &str) -> Option<usize> {
    let t = KNOWN_TABLES.iter().position(|(n, _)| *n == name)?;
    Some(match family {
        Family::V4 => t,
        Family::V6 => KNOWN_TABLES.len() + t,
    })
}

fn slot_table(s: usize) -> (Family, &'static str, u32) {
    let fam = if s < KNOWN_TABLES.len() {
        Family::V4
    } else {
        Family::V6
    };
    let (n, h) = KNOWN_TABLES[s % KNOWN_TABLES.len()];
    (fam, n, h)
}

/// FNV-1a, to detect a record that does not match its header entry.
fn checksum(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Serialized form of a table's entries record.
pub fn encode_table(t: &Table) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + t.blob.len());
    b.extend_from_slice(&t.valid_hooks.to_ne_bytes());
    for i in 0..NUMHOOKS {
        b.extend_from_slice(&t.hook_entry[i].to_ne_bytes());
    }
    for i in 0..NUMHOOKS {
        b.extend_from_slice(&t.underflow[i].to_ne_bytes());
    }
    b.extend_from_slice(&t.number.to_ne_bytes());
    b.extend_from_slice(&t.initial_entries.to_ne_bytes());
    b.extend_from_slice(&(t.blob.len() as u32).to_ne_bytes());
    b.extend_from_slice(&t.blob);
    b
}

pub fn decode_table(family: Family, name: &str, b: &[u8]) -> Option<Table> {
    let u32_at =
        |o: usize| -> Option<u32> { Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?)) };
    let valid_hooks = u32_at(0)?;
    let mut hook_entry = [0; NUMHOOKS];
    let mut underflow = [0; NUMHOOKS];
    for i in 0..NUMHOOKS {
        hook_entry[i] = u32_at(4 + 4 * i)?;
        underflow[i] = u32_at(24 + 4 * i)?;
    }
    let number = u32_at(44)?;
    let initial_entries = u32_at(48)?;
    let len = u32_at(52)? as usize;
    let blob = b.get(56..56 + len)?.to_vec();
    Some(Table {
        family,
        name: name.to_string(),
        valid_hooks,
        hook_entry,
        underflow,
        number,
        initial_entries,
        blob,
        counters: vec![Counters::default(); number as usize],
    })
}

/// The namespace's store, opened or created.
pub struct Store {
    hdr_map: OwnedFd,
    data_map: OwnedFd,
    header: Header,
    /// Kept so that the anchor can be replaced by the datapath's ingress program later.
    pub anchor: Option<OwnedFd>,
}

fn key(slot: usize, kind: u8, half: u8, chunk: u32) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[0] = slot as u8;
    k[1] = kind;
    k[2] = half;
    k[4..8].copy_from_slice(&chunk.to_ne_bytes());
    k
}

const KIND_TABLE: u8 = 0;
const KIND_COUNTERS: u8 = 1;

/// The anchor program: `r0 = TCX_NEXT; exit`. It only holds the store maps.
fn anchor_insns() -> [u64; 2] {
    let mov_r0_next = 0xb7u64 | ((-1i32 as u32 as u64) << 32);
    let exit = 0x95u64;
    [mov_r0_next, exit]
}

impl Store {
    /// Finds the store of the current namespace through the programs at `lo` ingress.
    pub fn find() -> io::Result<Option<Store>> {
        let lo = sys::loopback_ifindex();
        for id in sys::tcx_query(lo, sys::BPF_TCX_INGRESS)? {
            let Ok(prog) = sys::prog_fd_by_id(id) else {
                continue;
            };
            let (name, maps) = sys::prog_info(&prog)?;
            if !name.starts_with("bpfipt") {
                continue;
            }
            let mut hdr_map = None;
            let mut data_map = None;
            for mid in maps {
                let Ok(m) = sys::map_fd_by_id(mid) else {
                    continue;
                };
                match sys::map_name(&m)?.as_str() {
                    HDR_MAP => hdr_map = Some(m),
                    STORE_MAP => data_map = Some(m),
                    _ => {}
                }
            }
            if let (Some(hdr_map), Some(data_map)) = (hdr_map, data_map) {
                let mut buf = vec![0u8; HDR_SIZE];
                sys::map_lookup(&hdr_map, &0u32.to_ne_bytes(), &mut buf)?;
                let header = Header::parse(&buf).unwrap_or_else(Header::empty);
                return Ok(Some(Store {
                    hdr_map,
                    data_map,
                    header,
                    anchor: Some(prog),
                }));
            }
        }
        Ok(None)
    }

    /// Creates the maps and the anchor and attaches it to `lo`.
    pub fn create() -> io::Result<Store> {
        let hdr_map = sys::map_create(sys::BPF_MAP_TYPE_ARRAY, 4, HDR_SIZE as u32, 1, 0, HDR_MAP)?;
        let data_map = sys::map_create(
            sys::BPF_MAP_TYPE_HASH,
            8,
            CHUNK as u32,
            MAX_CHUNKS,
            sys::BPF_F_NO_PREALLOC,
            STORE_MAP,
        )?;
        let header = Header::empty();
        sys::map_update(&hdr_map, &0u32.to_ne_bytes(), &header.emit(), sys::BPF_ANY)?;
        let prog = sys::prog_load(sys::BPF_PROG_TYPE_SCHED_CLS, &anchor_insns(), ANCHOR_PROG)?;
        sys::prog_bind_map(&prog, &hdr_map)?;
        sys::prog_bind_map(&prog, &data_map)?;
        sys::tcx_attach(sys::loopback_ifindex(), sys::BPF_TCX_INGRESS, &prog, None)?;
        Ok(Store {
            hdr_map,
            data_map,
            header,
            anchor: Some(prog),
        })
    }

    pub fn open_or_create() -> io::Result<Store> {
        match Store::find()? {
            Some(s) => Ok(s),
            None => Store::create(),
        }
    }

    /// The map fds, to bind them to the datapath's programs.
    pub fn maps(&self) -> (&OwnedFd, &OwnedFd) {
        (&self.hdr_map, &self.data_map)
    }

    pub fn generation(&self) -> u64 {
        self.header.generation
    }

    fn write_record(&self, slot: usize, kind: u8, half: u8, data: &[u8]) -> io::Result<()> {
        let mut chunk = vec![0u8; CHUNK];
        let n = data.len().div_ceil(CHUNK);
        if n as u32 > MAX_CHUNKS / 4 {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        for (i, part) in data.chunks(CHUNK).enumerate() {
            chunk[..part.len()].copy_from_slice(part);
            chunk[part.len()..].fill(0);
            sys::map_update(
                &self.data_map,
                &key(slot, kind, half, i as u32),
                &chunk,
                sys::BPF_ANY,
            )?;
        }
        // Free what an older, longer record left in this half.
        let mut i = n as u32;
        while sys::map_delete(&self.data_map, &key(slot, kind, half, i))? {
            i += 1;
        }
        Ok(())
    }

    fn read_record(&self, slot: usize, kind: u8, half: u8, len: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        let mut chunk = vec![0u8; CHUNK];
        let mut i = 0u32;
        while out.len() < len {
            if !sys::map_lookup(&self.data_map, &key(slot, kind, half, i), &mut chunk)? {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "store record truncated",
                ));
            }
            let take = (len - out.len()).min(CHUNK);
            out.extend_from_slice(&chunk[..take]);
            i += 1;
        }
        Ok(out)
    }

    fn publish(&mut self, header: Header) -> io::Result<()> {
        sys::map_update(
            &self.hdr_map,
            &0u32.to_ne_bytes(),
            &header.emit(),
            sys::BPF_ANY,
        )?;
        self.header = header;
        Ok(())
    }

    /// Records that a table now exists (with its initial contents), for the listing order.
    pub fn note_instantiated(&mut self, family: Family, name: &str) -> io::Result<()> {
        let Some(s) = slot(family, name) else {
            return Ok(());
        };
        if self.header.recs[s].present {
            return Ok(());
        }
        let mut h = self.header.clone();
        h.recs[s] = Rec {
            present: true,
            order: h.next_order,
            ..Rec::default()
        };
        h.next_order += 1;
        h.generation += 1;
        self.publish(h)
    }

    /// Commits a table's entries and counters atomically.
    pub fn commit_table(&mut self, t: &Table) -> io::Result<()> {
        let s =
            slot(t.family, &t.name).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let mut h = self.header.clone();
        let mut r = h.recs[s];
        if !r.present {
            r = Rec {
                present: true,
                order: h.next_order,
                ..Rec::default()
            };
            h.next_order += 1;
        }
        let tb = encode_table(t);
        let cb = abi::emit_counters(&t.counters);
        let th = r.table_half ^ 1;
        let ch = r.counters_half ^ 1;
        self.write_record(s, KIND_TABLE, th, &tb)?;
        self.write_record(s, KIND_COUNTERS, ch, &cb)?;
        r.table_half = th;
        r.counters_half = ch;
        r.table_len = tb.len() as u32;
        r.counters_len = cb.len() as u32;
        r.table_sum = checksum(&tb);
        r.counters_sum = checksum(&cb);
        h.recs[s] = r;
        h.generation += 1;
        self.publish(h)
    }

    /// Commits only a table's counters.
    pub fn commit_counters(&mut self, t: &Table) -> io::Result<()> {
        let s =
            slot(t.family, &t.name).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        if self.header.recs[s].table_len == 0 {
            // Initial contents are implied by length 0; write the table so the counters have
            // something to belong to.
            return self.commit_table(t);
        }
        let mut h = self.header.clone();
        let mut r = h.recs[s];
        let cb = abi::emit_counters(&t.counters);
        let ch = r.counters_half ^ 1;
        self.write_record(s, KIND_COUNTERS, ch, &cb)?;
        r.counters_half = ch;
        r.counters_len = cb.len() as u32;
        r.counters_sum = checksum(&cb);
        h.recs[s] = r;
        h.generation += 1;
        self.publish(h)
    }

    /// Reads every table back. A record whose checksum does not match is reported and
    /// replaced by the table's initial contents (never a mix of two versions).
    pub fn load(&self) -> io::Result<(Netns, Vec<String>)> {
        let mut ns = Netns::default();
        let mut problems = Vec::new();
        let mut present: Vec<(u32, usize)> = Vec::new();
        for (s, r) in self.header.recs.iter().enumerate() {
            if r.present {
                present.push((r.order, s));
            }
        }
        present.sort();
        for (_, s) in present {
            let r = self.header.recs[s];
            let (fam, name, hooks) = slot_table(s);
            let mut table = Table::initial(fam, name, hooks);
            if r.table_len > 0 {
                let tb = self.read_record(s, KIND_TABLE, r.table_half, r.table_len as usize)?;
                match decode_table(fam, name, &tb) {
                    Some(t) if checksum(&tb) == r.table_sum => table = t,
                    _ => problems.push(format!(
                        "{fam} table {name}: stored entries are corrupt; reset to initial"
                    )),
                }
            }
            if r.counters_len > 0 {
                let cb =
                    self.read_record(s, KIND_COUNTERS, r.counters_half, r.counters_len as usize)?;
                let c = abi::parse_counters(&cb);
                if checksum(&cb) == r.counters_sum && c.len() == table.number as usize {
                    table.counters = c;
                } else {
                    problems.push(format!(
                        "{fam} table {name}: stored counters are corrupt; zeroed"
                    ));
                }
            }
            let ft: &mut FamilyTables = ns.family_mut(fam);
            ft.order.push(name.to_string());
            ft.tables.insert(name.to_string(), table);
        }
        Ok((ns, problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let mut h = Header::empty();
        h.generation = 7;
        h.recs[3] = Rec {
            present: true,
            table_half: 1,
            counters_half: 0,
            order: 2,
            table_len: 99,
            counters_len: 16,
            table_sum: 5,
            counters_sum: 6,
        };
        assert_eq!(Header::parse(&h.emit()).unwrap(), h);
    }

    #[test]
    fn table_record_round_trips() {
        let t = Table::initial(Family::V6, "mangle", 0b11111);
        let d = decode_table(Family::V6, "mangle", &encode_table(&t)).unwrap();
        assert_eq!(d, t);
    }

    #[test]
    fn truncated_record_is_rejected() {
        let t = Table::initial(Family::V4, "filter", 0b01110);
        let b = encode_table(&t);
        assert!(decode_table(Family::V4, "filter", &b[..b.len() - 1]).is_none());
    }
}
