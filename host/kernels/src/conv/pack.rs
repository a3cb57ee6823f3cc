//! Packed convolution weights, made once per weight tensor that outlives the call.
//!
//! The 1×1 and dense kernels read their weights in a packed layout ([`PackedLhs`] panels per
//! group, or a transposed [`PackedRhs`]). Packing costs a pass over the weights and an
//! allocation per call; for a plugin's weights (`tensor.load`), which every request of every
//! instance convolves with, that is the same work over and over. So the packed form is cached
//! by the identity of the weight's storage:
//!
//! - a tensor's storage never changes once the tensor exists (kernels write fresh allocations
//!   only, and `Arc::get_mut` fails while a [`Weak`] to it exists), so while the storage lives,
//!   its address names its values;
//! - an entry holds a [`Weak`] to that storage, so a reused address of freed storage is never
//!   mistaken for the old weights, and an entry dies with its weights (it is dropped at the next
//!   insertion);
//! - only storage that someone else also holds is cached: a plugin's weights are held by the
//!   plugin's weights table and by the guest's tensor, while an intermediate tensor the guest
//!   computed and convolves with once is held by that tensor alone and is packed per call as
//!   before;
//! - each packed form's cache holds at most [`CACHE_BYTES`]; past that, weights are packed per
//!   call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::fast::{MR, PackedLhs, PackedRhs};

/// Most bytes of packed weights each form's cache holds (all of MobileNetV2's convolutions
/// packed are ~14 MB).
pub(crate) const CACHE_BYTES: usize = 32 << 20;

/// The widest panel [`PackedRhs`] pads its columns to.
const RHS_PANEL: usize = 48;

/// A 1×1 convolution's weights `[groups·opg, cpg]`, one [`PackedLhs`] of `opg × cpg` per group.
pub(crate) fn pointwise(
    storage: &Arc<[f32]>,
    groups: usize,
    opg: usize,
    cpg: usize,
) -> Arc<Vec<PackedLhs>> {
    static CACHE: OnceLock<Mutex<Cache<Vec<PackedLhs>>>> = OnceLock::new();
    let bytes = groups * opg.next_multiple_of(MR) * cpg * size_of::<f32>();
    cached(&CACHE, storage, [groups, opg, cpg], bytes, || {
        (0..groups)
            .map(|g| PackedLhs::pack(&storage[g * opg * cpg..][..opg * cpg], opg, cpg))
            .collect()
    })
}

/// A dense convolution's weights `[o, k]` (OIHW, `k = C·kH·kW`), transposed and packed
/// ([`PackedRhs::pack_transposed`]).
pub(crate) fn dense(storage: &Arc<[f32]>, o: usize, k: usize) -> Arc<PackedRhs> {
    static CACHE: OnceLock<Mutex<Cache<PackedRhs>>> = OnceLock::new();
    let bytes = o.next_multiple_of(RHS_PANEL) * k * size_of::<f32>();
    cached(&CACHE, storage, [o, k, 0], bytes, || {
        PackedRhs::pack_transposed(storage, o, k)
    })
}

/// What an entry was packed as: one storage can be convolved with different geometries (a
/// reshaped view shares its storage).
type Geometry = [usize; 3];

struct Entry<T> {
    storage: Weak<[f32]>,
    packed: Arc<T>,
    bytes: usize,
}

struct Cache<T> {
    /// By storage address and geometry.
    entries: HashMap<(usize, Geometry), Entry<T>>,
    bytes: usize,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            entries: HashMap::new(),
            bytes: 0,
        }
    }
}

impl<T> Cache<T> {
    fn get(&self, storage: &Arc<[f32]>, geometry: Geometry) -> Option<Arc<T>> {
        let entry = self.entries.get(&(address(storage), geometry))?;
        // The same address may be a new storage after the old one was freed.
        let alive = entry.storage.upgrade()?;
        Arc::ptr_eq(&alive, storage).then(|| entry.packed.clone())
    }

    fn insert(&mut self, storage: &Arc<[f32]>, geometry: Geometry, packed: Arc<T>, bytes: usize) {
        let mut freed = 0;
        self.entries.retain(|_, e| {
            let alive = e.storage.strong_count() > 0;
            if !alive {
                freed += e.bytes;
            }
            alive
        });
        self.bytes -= freed;
        if self.bytes + bytes > CACHE_BYTES {
            return;
        }
        let entry = Entry {
            storage: Arc::downgrade(storage),
            packed,
            bytes,
        };
        if let Some(old) = self.entries.insert((address(storage), geometry), entry) {
            self.bytes -= old.bytes;
        }
        self.bytes += bytes;
    }
}

fn address(storage: &Arc<[f32]>) -> usize {
    Arc::as_ptr(storage).cast::<f32>() as usize
}

/// `storage` packed by `pack`: from `cache` if this storage was packed with this geometry
/// before, else packed now, and kept if the storage is shared (see the module docs).
fn cached<T>(
    cache: &OnceLock<Mutex<Cache<T>>>,
    storage: &Arc<[f32]>,
    geometry: Geometry,
    bytes: usize,
    pack: impl FnOnce() -> T,
) -> Arc<T> {
    if Arc::strong_count(storage) < 2 {
        return Arc::new(pack());
    }
    let lock = || {
        cache
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    };
    if let Some(hit) = lock().get(storage, geometry) {
        return hit;
    }
    // Packed outside the lock: two threads may both pack the same weights once; the second
    // insert replaces the first with an equal value.
    let made = Arc::new(pack());
    lock().insert(storage, geometry, made.clone(), bytes);
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_storage_is_packed_once_and_forgotten_with_it() {
        static CACHE: OnceLock<Mutex<Cache<usize>>> = OnceLock::new();
        let storage: Arc<[f32]> = Arc::from(vec![1.0f32; 6]);
        let packs = std::cell::Cell::new(0);
        let pack = || {
            packs.set(packs.get() + 1);
            packs.get()
        };
        // Held only by the caller: packed per call, nothing kept.
        assert_eq!(*cached(&CACHE, &storage, [2, 3, 0], 24, pack), 1);
        assert_eq!(*cached(&CACHE, &storage, [2, 3, 0], 24, pack), 2);
        let held = |c: &OnceLock<Mutex<Cache<usize>>>| {
            c.get().map_or(0, |m| m.lock().unwrap().entries.len())
        };
        assert_eq!(held(&CACHE), 0);
        // Shared (a weights table holds it too): packed once per geometry.
        let table = storage.clone();
        assert_eq!(*cached(&CACHE, &storage, [2, 3, 0], 24, pack), 3);
        assert_eq!(*cached(&CACHE, &storage, [2, 3, 0], 24, pack), 3);
        assert_eq!(*cached(&CACHE, &storage, [3, 2, 0], 24, pack), 4);
        assert_eq!(held(&CACHE), 2);
        // Other storage with equal values is other weights.
        let other: Arc<[f32]> = Arc::from(vec![1.0f32; 6]);
        let other_table = other.clone();
        assert_eq!(*cached(&CACHE, &other, [2, 3, 0], 24, pack), 5);
        // Once the weights are gone, the next insertion drops their entries.
        drop((storage, table));
        let third: Arc<[f32]> = Arc::from(vec![2.0f32; 6]);
        let third_table = third.clone();
        assert_eq!(*cached(&CACHE, &third, [2, 3, 0], 24, pack), 6);
        assert_eq!(held(&CACHE), 2, "the other storage's entry and the third's");
        assert_eq!(CACHE.get().unwrap().lock().unwrap().bytes, 48);
        drop((other_table, third_table));
    }

    #[test]
    fn the_byte_budget_bounds_what_is_kept() {
        static CACHE: OnceLock<Mutex<Cache<u8>>> = OnceLock::new();
        let storage: Arc<[f32]> = Arc::from(vec![0.0f32; 4]);
        let _table = storage.clone();
        assert_eq!(*cached(&CACHE, &storage, [1, 0, 0], CACHE_BYTES, || 1), 1);
        // Over the budget: packed, answered, not kept.
        assert_eq!(*cached(&CACHE, &storage, [2, 0, 0], 1, || 2), 2);
        assert_eq!(*cached(&CACHE, &storage, [2, 0, 0], 1, || 3), 3);
        assert_eq!(*cached(&CACHE, &storage, [1, 0, 0], 1, || 4), 1);
    }
}
