//! The symbol table: every distinct string used in a stat name (a scope, a leaf name, a tag key
//! or value such as a listener, cluster, host, Dubbo interface or method) is stored once and
//! named by a small integer. A stat's name is then a short varint string of symbol ids, so a
//! name costs a few bytes however many stats share its parts (as Envoy's `SymbolTable`).
//!
//! Lock-free: interning is an open-addressing hash set of ids over an append-only string arena.
//! A new string is appended, then published into the set with one compare-and-swap; a thread
//! that loses a race for the same string adopts the winner's id (its own appended copy is never
//! referenced). Lookups never block. Interning happens at config time, and on a shard once per
//! new Dubbo interface or method.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};

use super::arena::Arena;

/// The most distinct strings the table holds; beyond it `intern` returns `None` and callers
/// count under an `other` name.
pub const SYMBOLS_MAX: usize = 1 << 17;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Symbol(pub u32);

pub struct SymbolTable {
    /// 0 = empty, else symbol id + 1. Twice the capacity, so probes stay short.
    slots: Box<[AtomicU32]>,
    strings: Arena<Box<str>>,
}

fn hash(s: &[u8]) -> usize {
    let mut h = rustc_hash::FxBuildHasher.build_hasher();
    h.write(s);
    h.finish() as usize
}

impl Default for SymbolTable {
    fn default() -> Self {
        Self::new(SYMBOLS_MAX)
    }
}

impl SymbolTable {
    pub fn new(capacity: usize) -> Self {
        let slots = (capacity * 2).next_power_of_two();
        SymbolTable {
            slots: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            strings: Arena::new(capacity),
        }
    }

    /// The symbol for `s`, adding it if new; `None` when the table is full.
    pub fn intern(&self, s: &str) -> Option<Symbol> {
        let mask = self.slots.len() - 1;
        let mut i = hash(s.as_bytes()) & mask;
        let mut mine: Option<u32> = None;
        for _ in 0..self.slots.len() {
            let v = self.slots[i].load(Ordering::Acquire);
            if v == 0 {
                let id = match mine {
                    Some(id) => id,
                    None => {
                        let id = self.strings.push(s.into())?;
                        mine = Some(id);
                        id
                    }
                };
                match self.slots[i].compare_exchange(0, id + 1, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return Some(Symbol(id)),
                    Err(other) => {
                        if self.strings.get(other - 1).map(|x| &**x) == Some(s) {
                            return Some(Symbol(other - 1));
                        }
                    }
                }
            } else if self.strings.get(v - 1).map(|x| &**x) == Some(s) {
                return Some(Symbol(v - 1));
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Looks `s` up without adding it.
    pub fn find(&self, s: &[u8]) -> Option<Symbol> {
        let mask = self.slots.len() - 1;
        let mut i = hash(s) & mask;
        loop {
            let v = self.slots[i].load(Ordering::Acquire);
            if v == 0 {
                return None;
            }
            if self.strings.get(v - 1).map(|x| x.as_bytes()) == Some(s) {
                return Some(Symbol(v - 1));
            }
            i = (i + 1) & mask;
        }
    }

    pub fn resolve(&self, sym: Symbol) -> &str {
        self.strings.get(sym.0).map(|s| &**s).unwrap_or("?")
    }

    /// Distinct strings stored (plus any lost-race duplicates).
    pub fn len(&self) -> usize {
        self.strings.len() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the table holds: hash slots, arena chunks and the strings themselves.
    pub fn bytes(&self) -> usize {
        let strings: usize = (0..self.strings.len())
            .filter_map(|i| self.strings.get(i))
            .map(|s| s.len())
            .sum();
        self.slots.len() * std::mem::size_of::<AtomicU32>() + self.strings.chunk_bytes() + strings
    }
}

/// Appends `v` as a LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a LEB128 varint from the front of `buf`, advancing it.
pub fn take_varint(buf: &mut &[u8]) -> Option<u32> {
    let mut v: u32 = 0;
    for shift in (0..35).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= ((b & 0x7f) as u32) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}
