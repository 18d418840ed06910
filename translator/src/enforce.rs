//! Who enforces each family of a namespace: the eBPF datapath (`apply`) or, for a ruleset it
//! cannot run, the kernel's own ip_tables (`fallback`). A switch first starts the new enforcer,
//! then stops the old one: for an instant a packet meets both rulesets (either may drop it),
//! never neither.
//!
//! The datapath runs the IPv4 filter table. A family is the datapath's when its filter table
//! compiles and every other table of the family is *trivial* (built-in chains without rules,
//! ACCEPT policies): nothing else to enforce. IPv6 has no datapath yet, so a non-trivial IPv6
//! ruleset is the kernel's.

use std::os::fd::OwnedFd;

use crate::abi::{Counters, Family};
use crate::apply::{self, Datapath, EntrySlot, Prepared};
use crate::dataplane::Limits;
use crate::fallback::KernelTables;
use crate::ir::{RuleCache, Ruleset, Verdict};
use crate::kernel::{Netns, Table};
use crate::log;

/// Who enforces a family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The datapath (or nothing needs enforcing).
    Datapath,
    /// The kernel's ip_tables, and why.
    Kernel(String),
}

/// What a commit of one table needs.
pub enum Decision {
    /// The datapath takes the family; `Some` carries the compiled IPv4 filter table.
    Datapath(Option<Box<Prepared>>),
    /// The kernel must take it, for this reason.
    Kernel(String),
}

/// What enforcing a commit produced, for the store and the caller.
#[derive(Default)]
pub struct Outcome {
    /// The datapath's slots record of the IPv4 filter table (see `apply::encode_slots`).
    pub slots: Option<Vec<u8>>,
    /// The old counters as the kernel reported them, when the kernel enforced the table.
    pub kernel_old_counters: Option<Vec<Counters>>,
}

pub struct Enforcer {
    pub dp: Option<Datapath>,
    kernel: Option<KernelTables>,
    pub mode: [Mode; 2],
    /// The IPv4 filter table's rules of recent commits, for `ir`.
    rules: RuleCache,
}

pub fn idx(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

/// A table that enforces nothing: built-in chains without rules, ACCEPT policies.
pub fn trivial(t: &Table) -> bool {
    match Ruleset::from_table(t) {
        Ok(rs) => rs
            .chains
            .iter()
            .filter(|c| c.hook.is_some())
            .all(|c| c.rules.is_empty() && c.policy == Some(Verdict::Accept)),
        Err(_) => false,
    }
}

fn limits_for(rules: u32) -> Limits {
    let d = Limits::default();
    // Room for a full replacement of the table beside the old one.
    let slots = ((rules + 64) * 5 / 2).next_power_of_two().max(d.slots);
    Limits { slots, ..d }
}

/// The datapath programs a previous daemon left attached: their counters and the slot of
/// each filter entry (from the store), to fold what they counted.
pub struct Inherited {
    pub slots: Vec<Option<EntrySlot>>,
    pub counters: OwnedFd,
}

impl Default for Enforcer {
    fn default() -> Self {
        Enforcer::new()
    }
}

impl Enforcer {
    pub fn new() -> Enforcer {
        Enforcer {
            dp: None,
            kernel: None,
            mode: [Mode::Datapath, Mode::Datapath],
            rules: RuleCache::default(),
        }
    }

    fn kernel(&mut self) -> Result<&KernelTables, String> {
        if self.kernel.is_none() {
            let k = KernelTables::here()
                .map_err(|e| format!("raw socket for the kernel's ip_tables: {e}"))?;
            self.kernel = Some(k);
        }
        Ok(self.kernel.as_ref().unwrap())
    }

    /// The live counters of table `name`: what its base plus the datapath counted, or what
    /// the kernel counted. `None`: the stored counters are the live ones.
    pub fn live_counters(&mut self, ns: &Netns, f: Family, name: &str) -> Option<Vec<Counters>> {
        let t = ns.family(f).tables.get(name)?;
        match self.mode[idx(f)] {
            Mode::Kernel(_) => {
                let c = self.kernel().ok()?.counters(f, name).ok()?;
                (c.len() == t.counters.len()).then_some(c)
            }
            Mode::Datapath => {
                let dp = self
                    .dp
                    .as_mut()
                    .filter(|_| f == Family::V4 && name == "filter")?;
                let mut c = t.counters.clone();
                for (c, d) in c.iter_mut().zip(dp.counted()) {
                    c.add(d);
                }
                Some(c)
            }
        }
    }

    /// Decides who enforces family `f` once `new` is in place of its table of that name.
    /// (The rule representation is freed by another thread: for 10000 rules that is
    /// milliseconds the caller need not wait for.)
    pub fn decide(&mut self, ns: &Netns, f: Family, new: &Table) -> Decision {
        let others = ns
            .family(f)
            .tables
            .iter()
            .filter(|(n, _)| **n != new.name)
            .map(|(_, t)| t);
        let mut filter = None;
        for t in others.chain(std::iter::once(new)) {
            if f == Family::V4 && t.name == "filter" {
                filter = Some(t);
            } else if !trivial(t) {
                return Decision::Kernel(match f {
                    Family::V4 => format!(
                        "the {} table has rules; the eBPF datapath runs the filter table only",
                        t.name
                    ),
                    Family::V6 => format!(
                        "the IPv6 {} table has rules; the eBPF datapath runs IPv4 only",
                        t.name
                    ),
                });
            }
        }
        let Some(filter) = filter else {
            return Decision::Datapath(None);
        };
        if self.dp.is_none() && trivial(filter) {
            return Decision::Datapath(None);
        }
        let t0 = std::time::Instant::now();
        let rs = match Ruleset::from_table_cached(filter, &mut self.rules) {
            Ok(rs) => rs,
            Err(e) => return Decision::Kernel(format!("filter table: {e}")),
        };
        let t1 = std::time::Instant::now();
        let prepared = match &self.dp {
            Some(dp) => dp.prepare(&rs, filter.number as usize),
            None => apply::prepare_fresh(&rs, filter.number as usize),
        };
        if log::debug_enabled() {
            log::debug(&format!(
                "decide: ir {:?}, compile {:?}",
                t1 - t0,
                t1.elapsed()
            ));
        }
        drop_later(rs);
        match prepared {
            Ok(p) => Decision::Datapath(Some(Box::new(p))),
            Err(e) => Decision::Kernel(format!("filter table: {e}")),
        }
    }

    /// Enforces `new` (not yet installed in `ns`; `ns` holds the family's other tables with
    /// their live counters) as `d` says. On error nothing the caller can see changed, except
    /// that the family may have moved to the kernel (logged).
    pub fn enforce(
        &mut self,
        ns: &mut Netns,
        f: Family,
        new: &Table,
        d: Decision,
        inherited: Option<Inherited>,
    ) -> Result<Outcome, String> {
        let mut out = Outcome::default();
        let was = self.mode[idx(f)].clone();
        match d {
            Decision::Datapath(p) => {
                if let Some(p) = p {
                    let mut base = new.counters.clone();
                    match self.dp.as_mut() {
                        Some(dp) => dp.commit(*p).map_err(|e| format!("datapath commit: {e}"))?,
                        None => {
                            let old = inherited.map(|i| (i.slots, i.counters));
                            let old = old.as_ref().map(|(s, c)| (s.as_slice(), c));
                            let dp = Datapath::start(*p, &mut base, old, limits_for(new.number))
                                .map_err(|e| format!("loading the eBPF datapath: {e}"))?;
                            log::info("eBPF datapath loaded and attached");
                            self.dp = Some(dp);
                        }
                    }
                    if base != new.counters {
                        // Counts inherited from a previous daemon's programs.
                        out.kernel_old_counters = Some(base);
                    }
                    out.slots = Some(apply::encode_slots(&self.dp.as_ref().unwrap().slots));
                }
                if let Mode::Kernel(_) = was {
                    if let Some(dp) = self.dp.as_mut() {
                        dp.set_fallback(false)
                            .map_err(|e| format!("datapath: {e}"))?;
                    }
                    let k = self.kernel()?;
                    for name in ns.family(f).order.clone() {
                        // What the kernel counted on the other tables stays theirs.
                        if name != new.name {
                            if let Ok(c) = k.counters(f, &name) {
                                let t = ns.family_mut(f).tables.get_mut(&name).unwrap();
                                if c.len() == t.counters.len() {
                                    t.counters = c;
                                }
                            }
                        }
                        let hooks = ns.family(f).tables[&name].valid_hooks;
                        k.install_table(&Table::initial(f, &name, hooks), &[])
                            .map_err(|e| e.to_string())?;
                    }
                    log::info(&format!(
                        "{f}: enforced by the eBPF datapath again; the kernel's ip_tables released"
                    ));
                    self.mode[idx(f)] = Mode::Datapath;
                }
            }
            Decision::Kernel(reason) => {
                let k = self.kernel()?;
                if let Mode::Kernel(_) = was {
                    let old = k
                        .install_table(new, &new.counters)
                        .map_err(|e| e.to_string())?;
                    out.kernel_old_counters = Some(old);
                } else {
                    for name in &ns.family(f).order {
                        if *name != new.name {
                            let t = &ns.family(f).tables[name];
                            k.install_table(t, &t.counters).map_err(|e| e.to_string())?;
                        }
                    }
                    k.install_table(new, &new.counters)
                        .map_err(|e| e.to_string())?;
                    if let (Family::V4, Some(dp)) = (f, self.dp.as_mut()) {
                        dp.set_fallback(true)
                            .map_err(|e| format!("datapath: {e}"))?;
                    }
                    log::warn(&format!(
                        "{f}: enforced by the kernel's ip_tables: {reason}"
                    ));
                }
                self.mode[idx(f)] = Mode::Kernel(reason);
            }
        }
        Ok(out)
    }

    /// Adds counters in the kernel too when it enforces the family.
    pub fn add_counters(&mut self, f: Family, t: &Table, add: &[Counters]) -> Result<(), String> {
        if let Mode::Kernel(_) = self.mode[idx(f)] {
            self.kernel()?
                .add_counters(t, add)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Takes over a namespace after a daemon (re)start: every family enforced as its stored
    /// tables say, programs a previous daemon left attached replaced and their counts folded
    /// into the stored counters (returned per table that changed).
    pub fn recover(
        &mut self,
        ns: &mut Netns,
        inherited_slots: Option<Vec<Option<EntrySlot>>>,
    ) -> Vec<(Family, String, String)> {
        let mut problems = Vec::new();
        let attached = Datapath::attached_counters();
        for f in [Family::V4, Family::V6] {
            let Some(first) = ns.family(f).order.first().cloned() else {
                continue;
            };
            let probe = if f == Family::V4 && ns.v4.tables.contains_key("filter") {
                "filter".to_string()
            } else {
                first
            };
            let mut new = ns.family(f).tables[&probe].clone();
            let mut d = self.decide(ns, f, &new);
            let inherited = match (f, &attached) {
                (Family::V4, Some(_)) => {
                    if let Decision::Datapath(None) = d {
                        // Take over the programs even though nothing is enforced (hot-plug).
                        if let Ok(rs) = Ruleset::from_table(&new) {
                            if let Ok(p) = apply::prepare_fresh(&rs, new.number as usize) {
                                d = Decision::Datapath(Some(Box::new(p)));
                            }
                        }
                    }
                    Some(Inherited {
                        slots: inherited_slots.clone().unwrap_or_default(),
                        counters: attached.as_ref().unwrap().try_clone().expect("dup"),
                    })
                }
                _ => None,
            };
            if let Decision::Kernel(_) = d {
                // Tables a previous daemon installed in the kernel keep what it counted.
                if let Ok(k) = self.kernel() {
                    let found: Vec<(String, Vec<Counters>)> = ns
                        .family(f)
                        .tables
                        .iter()
                        .filter_map(|(n, t)| k.matching_counters(t).map(|c| (n.clone(), c)))
                        .collect();
                    for (n, c) in found {
                        ns.family_mut(f).tables.get_mut(&n).unwrap().counters = c;
                    }
                    new = ns.family(f).tables[&probe].clone();
                }
                // A previous daemon may have left programs that still enforce old rules.
                if f == Family::V4 && attached.is_some() {
                    if let Err(e) = Datapath::detach_all() {
                        problems.push((
                            f,
                            probe.clone(),
                            format!("detaching old datapath programs: {e}"),
                        ));
                    }
                }
                // Pretend the datapath had it, so that every table is installed.
                self.mode[idx(f)] = Mode::Datapath;
            }
            match self.enforce(ns, f, &new, d, inherited) {
                Ok(out) => {
                    if let (Some(c), Family::V4) = (out.kernel_old_counters, f) {
                        if let Some(t) = ns.v4.tables.get_mut("filter") {
                            t.counters = c;
                        }
                    }
                }
                Err(e) => problems.push((f, probe, e)),
            }
        }
        problems
    }
}

/// Frees `v` on a helper thread (started on first use), or here if it cannot be handed over.
pub(crate) fn drop_later<T: Send + 'static>(v: T) {
    use std::sync::mpsc::{channel, Sender};
    use std::sync::{Mutex, OnceLock};
    type Garbage = Box<dyn Send>;
    static BIN: OnceLock<Option<Mutex<Sender<Garbage>>>> = OnceLock::new();
    let bin = BIN.get_or_init(|| {
        let (tx, rx) = channel::<Garbage>();
        std::thread::Builder::new()
            .name("bpfipt-free".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .ok()
            .map(|_| Mutex::new(tx))
    });
    if let Some(tx) = bin {
        if let Ok(tx) = tx.lock() {
            let _ = tx.send(Box::new(v));
        }
    }
}
