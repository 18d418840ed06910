//! Where the tables of a namespace live between processes: in two BPF maps that belong to the
//! namespace itself.
//!
//! The maps are bound (`BPF_PROG_BIND_MAP`) to a program attached at TCX ingress of the
//! namespace's loopback device without a link, so the kernel keeps them as long as `lo` exists,
//! which is exactly as long as the namespace does. No file, no bpffs mount (`ip netns exec`
//! remounts /sys), nothing stale after the namespace is gone, and a daemon that dies loses
//! nothing: the next one finds the maps again through `lo` (`BPF_PROG_QUERY`, map ids).
//!
//! Layout: `bpfipt_store` is a content-addressed chunk store (key: a 128-bit hash of the
//! chunk; value: the chunk, at most 64 KiB). A record (a table's entries, a table's counters)
//! is a *manifest*, itself a chunk, listing its chunks. `bpfipt_hdr`, a single-entry array,
//! names each table's manifests.
//!
//! Atomicity: a commit writes the chunks the new version needs that are not stored yet, then
//! its manifest, then replaces the header with one map update (one copy in the kernel), and only
//! then deletes chunks no record references any more. A process killed at any point leaves the
//! old header (whose chunks are all still there) or the new one. Table chunks are cut at entry
//! boundaries chosen by content, so inserting or deleting a rule rewrites one chunk, not the
//! whole table.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::OwnedFd;

use crate::abi::{self, Counters, Family, NUMHOOKS};
use crate::kernel::{FamilyTables, Netns, Table, KNOWN_TABLES};
use crate::sys;

pub const HDR_MAP: &str = "bpfipt_hdr";
pub const STORE_MAP: &str = "bpfipt_store";
pub const ANCHOR_PROG: &str = "bpfipt_anchor";

const MAGIC: &[u8; 8] = b"BPFIPT03";
const HDR_SIZE: usize = 2048;
/// Chunk value size: 4 bytes of length, then the data.
const CHUNK: usize = 64 * 1024;
const CHUNK_DATA: usize = CHUNK - 4;
/// A chunk is cut at the first entry boundary past this size whose entry hash says so.
const CHUNK_MIN: usize = 16 * 1024;
/// Chunks the store can hold (the hash map allocates elements on use): 512 MiB.
const MAX_CHUNKS: u32 = 8192;
const SLOTS: usize = 2 * KNOWN_TABLES.len();
const REC_SIZE: usize = 64;
const REC_BASE: usize = 32;

/// A chunk id: the 128-bit XXH3 of its content.
type ChunkId = [u8; 16];
const NO_CHUNK: ChunkId = [0; 16];

/// Per-table bookkeeping in the header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Rec {
    present: bool,
    /// Instantiation sequence number (orders /proc/net/ip_tables_names).
    order: u32,
    /// Manifests of the entries and of the counters; NO_CHUNK means "initial contents".
    table: ChunkId,
    counters: ChunkId,
    /// The datapath's counter slot and offset of each entry (see `apply`), if it runs
    /// the table.
    slots: ChunkId,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    generation: u64,
    next_order: u32,
    /// Namespace settings: the XDP option (`xdp::Mode`; 0, off, in stores older than it).
    xdp: u8,
    recs: [Rec; SLOTS],
}

impl Header {
    fn empty() -> Header {
        Header {
            generation: 0,
            next_order: 1,
            xdp: 0,
            recs: [Rec::default(); SLOTS],
        }
    }

    fn emit(&self) -> Vec<u8> {
        let mut b = vec![0u8; HDR_SIZE];
        b[..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.generation.to_ne_bytes());
        b[16..20].copy_from_slice(&self.next_order.to_ne_bytes());
        b[20] = self.xdp;
        for (i, r) in self.recs.iter().enumerate() {
            let o = REC_BASE + i * REC_SIZE;
            b[o] = r.present as u8;
            b[o + 4..o + 8].copy_from_slice(&r.order.to_ne_bytes());
            b[o + 16..o + 32].copy_from_slice(&r.table);
            b[o + 32..o + 48].copy_from_slice(&r.counters);
            b[o + 48..o + 64].copy_from_slice(&r.slots);
        }
        b
    }

    fn parse(b: &[u8]) -> Option<Header> {
        if b.len() < HDR_SIZE || &b[..8] != MAGIC {
            return None;
        }
        let mut recs = [Rec::default(); SLOTS];
        for (i, r) in recs.iter_mut().enumerate() {
            let o = REC_BASE + i * REC_SIZE;
            *r = Rec {
                present: b[o] != 0,
                order: u32::from_ne_bytes(b[o + 4..o + 8].try_into().unwrap()),
                table: b[o + 16..o + 32].try_into().unwrap(),
                counters: b[o + 32..o + 48].try_into().unwrap(),
                slots: b[o + 48..o + 64].try_into().unwrap(),
            };
        }
        Some(Header {
            generation: u64::from_ne_bytes(b[8..16].try_into().unwrap()),
            next_order: u32::from_ne_bytes(b[16..20].try_into().unwrap()),
            xdp: b[20],
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

fn chunk_id(data: &[u8]) -> ChunkId {
    let mut id = xxhash_rust::xxh3::xxh3_128(data).to_le_bytes();
    // NO_CHUNK is reserved for "nothing stored".
    if id == NO_CHUNK {
        id[0] = 1;
    }
    id
}

/// Cuts a table record into chunks at entry boundaries chosen by content (a boundary follows
/// an entry whose bytes hash to 0 mod 8 once the chunk is at least CHUNK_MIN long), so that a
/// change to one rule changes one chunk.
#[cfg(test)]
fn table_cuts(family: Family, rec: &[u8], blob_off: usize) -> Vec<usize> {
    table_cuts_of(family, blob_off, &rec[blob_off..])
}

/// [`table_cuts`] of the record `blob_off` bytes of header then `blob`.
fn table_cuts_of(family: Family, blob_off: usize, blob: &[u8]) -> Vec<usize> {
    let len = blob_off + blob.len();
    let mut cuts = Vec::new();
    let mut start = 0;
    let mut pos = blob_off;
    for e in abi::entries(family, blob) {
        let end = blob_off + e.offset + e.next_offset();
        if end - start > CHUNK_DATA {
            cuts.push(pos);
            start = pos;
        }
        if end - start >= CHUNK_MIN && xxhash_rust::xxh3::xxh3_64(e.bytes).is_multiple_of(8) {
            cuts.push(end);
            start = end;
        }
        pos = end;
    }
    cuts.retain(|&c| c > 0 && c < len);
    cuts.dedup();
    // Anything past the last entry (or a record without entries) in fixed-size pieces.
    let mut out = Vec::new();
    let mut prev = 0;
    for c in cuts.into_iter().chain(std::iter::once(len)) {
        while c - prev > CHUNK_DATA {
            prev += CHUNK_DATA;
            out.push(prev);
        }
        if c > prev {
            out.push(c);
            prev = c;
        }
    }
    out
}

fn fixed_cuts(len: usize) -> Vec<usize> {
    let piece = 16 * 1024;
    let mut v: Vec<usize> = (1..).map(|i| i * piece).take_while(|&c| c < len).collect();
    if len > 0 {
        v.push(len);
    }
    v
}

/// Serialized form of a table's entries record.
pub fn encode_table(t: &Table) -> Vec<u8> {
    let mut b = table_head(t);
    b.extend_from_slice(&t.blob);
    b
}

/// The record of [`encode_table`] up to the entries (`TABLE_BLOB_OFF` bytes).
fn table_head(t: &Table) -> Vec<u8> {
    let mut b = Vec::with_capacity(TABLE_BLOB_OFF);
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
    b
}

/// The pieces of the record `head` then `body` between consecutive `cuts`: slices of `body`
/// but for pieces that hold some of `head` (the record is not joined: a table's is 1.4 MB
/// at 10000 rules).
fn pieces<'a>(
    head: &'a [u8],
    body: &'a [u8],
    cuts: &'a [usize],
) -> impl Iterator<Item = std::borrow::Cow<'a, [u8]>> + 'a {
    use std::borrow::Cow;
    let h = head.len();
    let mut prev = 0;
    cuts.iter().map(move |&c| {
        let p = if prev >= h {
            Cow::Borrowed(&body[prev - h..c - h])
        } else {
            let mut v = head[prev..c.min(h)].to_vec();
            v.extend_from_slice(&body[..c.max(h) - h]);
            Cow::Owned(v)
        };
        prev = c;
        p
    })
}

/// Offset of the entries in an encoded table record.
const TABLE_BLOB_OFF: usize = 56;

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
    if b.len() != TABLE_BLOB_OFF + len {
        return None;
    }
    let blob = b[TABLE_BLOB_OFF..].to_vec();
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
    /// Chunk ids each manifest lists (the manifests of the current header).
    manifests: HashMap<ChunkId, Vec<ChunkId>>,
    /// Every chunk stored in the map.
    stored: BTreeSet<ChunkId>,
    /// Kept so that the anchor can be replaced by the datapath's ingress program later.
    pub anchor: Option<OwnedFd>,
}

/// The anchor program: `r0 = TCX_NEXT; exit`. It only holds the store maps.
fn anchor_insns() -> [u64; 2] {
    let mov_r0_next = 0xb7u64 | ((-1i32 as u32 as u64) << 32);
    let exit = 0x95u64;
    [mov_r0_next, exit]
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
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
                let stored = sys::map_keys(&data_map, 16)?
                    .into_iter()
                    .map(|k| k.try_into().unwrap())
                    .collect();
                let mut s = Store {
                    hdr_map,
                    data_map,
                    header,
                    manifests: HashMap::new(),
                    stored,
                    anchor: Some(prog),
                };
                s.load_manifests()?;
                s.collect_garbage()?;
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    /// Creates the maps and the anchor and attaches it to `lo`.
    pub fn create() -> io::Result<Store> {
        let hdr_map = sys::map_create(sys::BPF_MAP_TYPE_ARRAY, 4, HDR_SIZE as u32, 1, 0, HDR_MAP)?;
        let data_map = sys::map_create(
            sys::BPF_MAP_TYPE_HASH,
            16,
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
            manifests: HashMap::new(),
            stored: BTreeSet::new(),
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

    fn read_chunk(&self, id: &ChunkId) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; CHUNK];
        if !sys::map_lookup(&self.data_map, id, &mut v)? {
            return Err(corrupt("store chunk missing"));
        }
        let len = u32::from_ne_bytes(v[..4].try_into().unwrap()) as usize;
        if len > CHUNK_DATA {
            return Err(corrupt("store chunk length"));
        }
        v.truncate(4 + len);
        v.drain(..4);
        if chunk_id(&v) != *id {
            return Err(corrupt("store chunk content does not match its id"));
        }
        Ok(v)
    }

    fn write_chunk(&mut self, data: &[u8]) -> io::Result<ChunkId> {
        let id = chunk_id(data);
        if !self.stored.contains(&id) {
            let mut v = vec![0u8; 4 + data.len()];
            v[..4].copy_from_slice(&(data.len() as u32).to_ne_bytes());
            v[4..].copy_from_slice(data);
            v.resize(CHUNK, 0);
            sys::map_update(&self.data_map, &id, &v, sys::BPF_ANY)?;
            self.stored.insert(id);
        }
        Ok(id)
    }

    /// Writes a record cut at `cuts`; returns its manifest id.
    fn write_record(&mut self, data: &[u8], cuts: &[usize]) -> io::Result<ChunkId> {
        self.write_record_of(&[], data, cuts)
    }

    /// [`Store::write_record`] of the record `head` then `body`.
    fn write_record_of(&mut self, head: &[u8], body: &[u8], cuts: &[usize]) -> io::Result<ChunkId> {
        let mut ids = Vec::with_capacity(cuts.len());
        let mut manifest = Vec::with_capacity(8 + cuts.len() * 16);
        manifest.extend_from_slice(&((head.len() + body.len()) as u64).to_ne_bytes());
        for piece in pieces(head, body, cuts) {
            let id = self.write_chunk(&piece)?;
            manifest.extend_from_slice(&id);
            ids.push(id);
        }
        if manifest.len() > CHUNK_DATA {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        let mid = self.write_chunk(&manifest)?;
        self.manifests.insert(mid, ids);
        Ok(mid)
    }

    fn read_record(&self, manifest: &ChunkId) -> io::Result<Vec<u8>> {
        let m = self.read_chunk(manifest)?;
        if m.len() < 8 || (m.len() - 8) % 16 != 0 {
            return Err(corrupt("store manifest"));
        }
        let len = u64::from_ne_bytes(m[..8].try_into().unwrap()) as usize;
        let mut out = Vec::with_capacity(len);
        for id in m[8..].chunks_exact(16) {
            out.extend_from_slice(&self.read_chunk(id.try_into().unwrap())?);
        }
        if out.len() != len {
            return Err(corrupt("store record length"));
        }
        Ok(out)
    }

    fn load_manifests(&mut self) -> io::Result<()> {
        self.manifests.clear();
        for r in self.header.recs {
            for mid in [r.table, r.counters, r.slots] {
                if mid == NO_CHUNK || self.manifests.contains_key(&mid) {
                    continue;
                }
                let m = self.read_chunk(&mid)?;
                let ids = m
                    .get(8..)
                    .unwrap_or_default()
                    .chunks_exact(16)
                    .map(|c| c.try_into().unwrap())
                    .collect();
                self.manifests.insert(mid, ids);
            }
        }
        Ok(())
    }

    /// Deletes every chunk the header does not reach.
    fn collect_garbage(&mut self) -> io::Result<()> {
        let mut live: BTreeSet<ChunkId> = BTreeSet::new();
        for r in self.header.recs {
            for mid in [r.table, r.counters, r.slots] {
                if mid == NO_CHUNK {
                    continue;
                }
                live.insert(mid);
                if let Some(ids) = self.manifests.get(&mid) {
                    live.extend(ids.iter().copied());
                }
            }
        }
        self.manifests.retain(|k, _| live.contains(k));
        let dead: Vec<ChunkId> = self.stored.difference(&live).copied().collect();
        for id in dead {
            sys::map_delete(&self.data_map, &id)?;
            self.stored.remove(&id);
        }
        Ok(())
    }

    fn publish(&mut self, mut header: Header) -> io::Result<()> {
        header.generation = self.header.generation + 1;
        sys::map_update(
            &self.hdr_map,
            &0u32.to_ne_bytes(),
            &header.emit(),
            sys::BPF_ANY,
        )?;
        self.header = header;
        self.collect_garbage()
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
        self.publish(h)
    }

    /// Commits a table's entries and counters atomically (and forgets its slots record).
    pub fn commit_table(&mut self, t: &Table) -> io::Result<()> {
        self.commit_table_with_slots(t, None)
    }

    /// Commits a table's entries, counters and the datapath's slots record atomically.
    pub fn commit_table_with_slots(&mut self, t: &Table, slots: Option<&[u8]>) -> io::Result<()> {
        let s =
            slot(t.family, &t.name).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let mut h = self.header.clone();
        if !h.recs[s].present {
            h.recs[s] = Rec {
                present: true,
                order: h.next_order,
                ..Rec::default()
            };
            h.next_order += 1;
        }
        let head = table_head(t);
        let cuts = table_cuts_of(t.family, TABLE_BLOB_OFF, &t.blob);
        let cb = abi::emit_counters(&t.counters);
        h.recs[s].table = self.write_record_of(&head, &t.blob, &cuts)?;
        h.recs[s].counters = self.write_record(&cb, &fixed_cuts(cb.len()))?;
        h.recs[s].slots = match slots {
            Some(b) => self.write_record(b, &fixed_cuts(b.len()))?,
            None => NO_CHUNK,
        };
        self.publish(h)
    }

    /// The slots record of a table, if one is stored.
    pub fn slots(&self, family: Family, name: &str) -> io::Result<Option<Vec<u8>>> {
        let Some(s) = slot(family, name) else {
            return Ok(None);
        };
        let mid = self.header.recs[s].slots;
        if mid == NO_CHUNK {
            return Ok(None);
        }
        self.read_record(&mid).map(Some)
    }

    /// Commits only a table's counters.
    pub fn commit_counters(&mut self, t: &Table) -> io::Result<()> {
        let s =
            slot(t.family, &t.name).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        if self.header.recs[s].table == NO_CHUNK {
            return self.commit_table(t);
        }
        let mut h = self.header.clone();
        let cb = abi::emit_counters(&t.counters);
        h.recs[s].counters = self.write_record(&cb, &fixed_cuts(cb.len()))?;
        self.publish(h)
    }

    /// The namespace's XDP setting (`xdp::Mode` as a number).
    pub fn xdp_setting(&self) -> u8 {
        self.header.xdp
    }

    /// Stores the namespace's XDP setting.
    pub fn set_xdp_setting(&mut self, v: u8) -> io::Result<()> {
        if self.header.xdp == v {
            return Ok(());
        }
        let mut h = self.header.clone();
        h.xdp = v;
        self.publish(h)
    }

    /// Number of chunks stored (for status and tests).
    pub fn chunks(&self) -> usize {
        self.stored.len()
    }

    /// Reads every table back. A record that does not read back whole is reported and the
    /// table takes its initial contents (never a mix of two versions).
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
            if r.table != NO_CHUNK {
                match self
                    .read_record(&r.table)
                    .map(|tb| decode_table(fam, name, &tb))
                {
                    Ok(Some(t)) => table = t,
                    Ok(None) => problems.push(format!(
                        "{fam} table {name}: stored entries do not decode; reset to initial"
                    )),
                    Err(e) => problems.push(format!("{fam} table {name}: {e}; reset to initial")),
                }
            }
            if r.counters != NO_CHUNK {
                match self.read_record(&r.counters) {
                    Ok(cb) if cb.len() == table.number as usize * abi::COUNTERS_SIZE => {
                        table.counters = abi::parse_counters(&cb)
                    }
                    Ok(_) => problems.push(format!(
                        "{fam} table {name}: stored counters do not match the entries; zeroed"
                    )),
                    Err(e) => problems.push(format!("{fam} table {name}: counters: {e}; zeroed")),
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
            order: 2,
            table: [7; 16],
            counters: [9; 16],
            slots: [3; 16],
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

    fn big_table(n: usize, skip: Option<usize>) -> Vec<u8> {
        let mut rec = vec![0u8; TABLE_BLOB_OFF];
        for i in 0..n {
            if Some(i) == skip {
                continue;
            }
            let mut e = abi::build::standard_entry(Family::V4, abi::VERDICT_ACCEPT);
            e[..4].copy_from_slice(&(i as u32).to_be_bytes());
            rec.extend(e);
        }
        rec
    }

    #[test]
    fn cuts_are_at_entry_boundaries_and_bounded() {
        let rec = big_table(3000, None);
        let cuts = table_cuts(Family::V4, &rec, TABLE_BLOB_OFF);
        assert_eq!(*cuts.last().unwrap(), rec.len());
        let mut prev = 0;
        for &c in &cuts {
            assert!(c - prev <= CHUNK_DATA);
            assert!(
                c == rec.len() || (c - TABLE_BLOB_OFF).is_multiple_of(152),
                "cut {c} inside an entry"
            );
            prev = c;
        }
        assert!(
            cuts.len() > 4,
            "{} chunks for {} bytes",
            cuts.len(),
            rec.len()
        );
    }

    /// A record written as header and entries has the chunks of the joined record.
    #[test]
    fn pieces_of_head_and_body_are_the_joined_records_chunks() {
        let rec = big_table(3000, None);
        let cuts = table_cuts(Family::V4, &rec, TABLE_BLOB_OFF);
        let (head, body) = rec.split_at(TABLE_BLOB_OFF);
        let mut prev = 0;
        let joined: Vec<&[u8]> = cuts
            .iter()
            .map(|&c| {
                let p = &rec[prev..c];
                prev = c;
                p
            })
            .collect();
        let split: Vec<Vec<u8>> = pieces(head, body, &cuts).map(|p| p.into_owned()).collect();
        assert_eq!(split, joined);
        // Cuts inside the header too.
        let cuts = [10, TABLE_BLOB_OFF, TABLE_BLOB_OFF + 5, rec.len()];
        let split: Vec<Vec<u8>> = pieces(head, body, &cuts).map(|p| p.into_owned()).collect();
        assert_eq!(split.concat(), rec);
        assert_eq!(split[0], rec[..10]);
    }

    #[test]
    fn removing_one_rule_changes_few_chunks() {
        let a = big_table(3000, None);
        let b = big_table(3000, Some(1500));
        let chunks = |rec: &[u8]| -> BTreeSet<ChunkId> {
            let mut prev = 0;
            table_cuts(Family::V4, rec, TABLE_BLOB_OFF)
                .into_iter()
                .map(|c| {
                    let id = chunk_id(&rec[prev..c]);
                    prev = c;
                    id
                })
                .collect()
        };
        let (ca, cb) = (chunks(&a), chunks(&b));
        let new = cb.difference(&ca).count();
        assert!(new <= 2, "{new} of {} chunks changed", cb.len());
    }
}
