//! The threads a run may use: the calling thread, plus a [`Pool`] of helper threads the runtime
//! lends it for the duration of a run. Work stays on the calling thread (with its warm caches)
//! except in [`parallel_for`], where the caller and the helpers take parts from a shared
//! counter. Parallel regions do not nest: inside one, [`helpers`] is 0.
//!
//! Kernels are short (often tens of microseconds), so helpers spin for a while after each job
//! before they sleep: a run's next parallel stage then starts on them within nanoseconds
//! instead of after a wake-up. A region costs a few cache-line transfers between cores and
//! nothing else: the caller publishes the job in one line (its function, part count and next
//! part, claimed with one `fetch_add`), keeps part 0 without claiming it, and waits on a
//! second line the helpers count finished parts in — no lock, no allocation. (Through a
//! mutex-guarded, reference-counted job a region of two 1 µs parts took 2.1 µs; now 1.8.)
//! One caller uses the pool at a time; another thread's region meanwhile runs alone.

use std::cell::{RefCell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long an idle helper spins before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

/// The fields of a published job's claim word: `epoch << EPOCH | parts << PARTS | next part`.
const EPOCH: u32 = 40;
const PARTS: u32 = 20;
const FIELD: u64 = (1 << PARTS) - 1;
/// Parts a region publishes at most (more are grouped into ranges, see [`parallel_for`]),
/// leaving room in the `next` field for the claims that find no part left.
const MAX_PARTS: usize = 1 << 16;

/// A region's function with its lifetime erased (see [`Slot::f`]).
type Func = *const (dyn Fn(usize) + Sync);

/// What a caller publishes to the helpers, in one cache line: helpers read it when the epoch
/// changes and claim parts from it with one `fetch_add`.
#[repr(align(128))]
struct Slot {
    /// The job's epoch, its part count and the next unclaimed part (fields above). A claim
    /// `(e, i)` with `i` below the part count is a part of the job now running: its caller
    /// waits for it, so the function it calls is alive.
    claim: AtomicU64,
    /// The region's function: written by the owning caller before it publishes the claim word
    /// (release), read by a helper only after a successful claim (acquire), called only for
    /// claimed parts, every one of which finishes before the caller returns.
    f: UnsafeCell<Option<Func>>,
}

/// Parts finished by helpers, on its own line (the caller spins on it).
#[repr(align(128))]
struct Done(AtomicUsize);

struct Shared {
    slot: Slot,
    done: Done,
    /// Whether a caller owns the slot (callers on other threads meanwhile run their regions
    /// alone).
    busy: AtomicBool,
    /// Set when a part panics.
    panicked: AtomicBool,
    /// What sleeping helpers wait on.
    lock: Mutex<()>,
    wake: Condvar,
    sleeping: AtomicUsize,
    stop: AtomicBool,
}

// SAFETY: `f` is written only by the caller owning the slot (`busy`) while no helper holds a
// claim that reads it, and read only under a claim (see `Slot::f`).
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

impl Shared {
    /// Publishes a job of `parts` parts whose claims start at part `next`, under a new epoch,
    /// and wakes sleeping helpers (a job of no parts just makes them look, as `Drop` needs).
    fn publish(&self, parts: usize, next: u64) {
        let epoch = (self.slot.claim.load(Ordering::Relaxed) >> EPOCH) + 1;
        let word = epoch << EPOCH | (parts as u64) << PARTS | next;
        self.slot.claim.store(word, Ordering::SeqCst);
        // A helper going to sleep counts itself, then checks the epoch under the lock: either
        // it sees this epoch or this sees it sleeping (both SeqCst).
        if self.sleeping.load(Ordering::SeqCst) > 0 {
            drop(self.lock.lock().unwrap_or_else(|e| e.into_inner()));
            self.wake.notify_all();
        }
    }

    /// Claims and runs parts of the published job until none are left; returns the parts run.
    /// A helper (`count`) counts each in `done` as soon as it finishes (the caller may be
    /// waiting for it); the caller counts its own.
    fn work(&self, count: bool) -> usize {
        let mut ran = 0;
        loop {
            let w = self.slot.claim.fetch_add(1, Ordering::AcqRel);
            let (i, parts) = ((w & FIELD) as usize, ((w >> PARTS) & FIELD) as usize);
            if i >= parts {
                return ran;
            }
            // SAFETY: a claimed part of the running job: its function is alive (`Slot::f`).
            let f = unsafe { &*(*self.slot.f.get()).expect("a published function") };
            if !ran_cleanly(|| f(i)) {
                self.panicked.store(true, Ordering::Relaxed);
            }
            if count {
                self.done.0.fetch_add(1, Ordering::Release);
            }
            ran += 1;
        }
    }
}

/// Runs `f`; false if it panicked. A panic's payload is dropped inside the catch too (a
/// payload whose drop panics must not unwind through a region, which would leave its parts
/// running on the helpers).
fn ran_cleanly(f: impl FnOnce()) -> bool {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => true,
        Err(payload) => {
            let dropped = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            // A payload whose drop panicked again is leaked rather than unwound.
            if let Err(again) = dropped {
                std::mem::forget(again);
            }
            false
        }
    }
}

/// Helper threads.
pub struct Pool {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Pool {
    /// Starts `n` helper threads.
    pub fn new(n: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            slot: Slot {
                claim: AtomicU64::new(0),
                f: UnsafeCell::new(None),
            },
            done: Done(AtomicUsize::new(0)),
            busy: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            sleeping: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        // Built in place, so a failed spawn drops (stops and joins) the helpers started.
        let mut pool = Pool {
            shared,
            threads: Vec::with_capacity(n),
        };
        for i in 0..n {
            let s = pool.shared.clone();
            pool.threads.push(
                std::thread::Builder::new()
                    .name(format!("kiln-helper-{i}"))
                    .spawn(move || helper(&s, 0))?,
            );
        }
        Ok(pool)
    }

    /// How many helper threads there are.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Runs `parts` parts of `f` here and on the helpers, if this caller gets the slot: then
    /// whether a part panicked (else `None`, having run nothing).
    fn run(&self, parts: usize, f: Func) -> Option<bool> {
        debug_assert!((2..=MAX_PARTS).contains(&parts));
        let s = &*self.shared;
        if s.busy.swap(true, Ordering::Acquire) {
            return None;
        }
        s.done.0.store(0, Ordering::Relaxed);
        s.panicked.store(false, Ordering::Relaxed);
        // SAFETY: this caller owns the slot, and every claim of the previous job has finished
        // (its caller waited for them), so no helper reads `f` now.
        unsafe { *s.slot.f.get() = Some(f) };
        // The caller keeps part 0 without claiming it; helpers take the rest.
        s.publish(parts, 1);
        // SAFETY: as in `Shared::work`: part 0 is this caller's.
        let f0 = unsafe { &*f };
        let mine = with_helpers(None, || {
            if !ran_cleanly(|| f0(0)) {
                s.panicked.store(true, Ordering::Relaxed);
            }
            1 + s.work(false)
        });
        while s.done.0.load(Ordering::Acquire) < parts - mine {
            std::hint::spin_loop();
        }
        let panicked = s.panicked.load(Ordering::Relaxed);
        s.busy.store(false, Ordering::Release);
        Some(panicked)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // A new epoch with no parts: spinning helpers look, sleeping ones are woken.
        self.shared.publish(0, 0);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A helper's life: `seen` is the epoch the pool was made with, so that a job published
/// before this thread first looks is still its to help with (a region whose part 0 waits
/// for part 1 — a test's — hung when the helper started after it).
fn helper(s: &Shared, mut seen: u64) {
    let epoch = |s: &Shared| s.slot.claim.load(Ordering::SeqCst) >> EPOCH;
    loop {
        // Spin for a new epoch, then sleep until one comes.
        let start = Instant::now();
        let mut spins = 0u32;
        while epoch(s) == seen {
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
                let mut guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleeping.fetch_add(1, Ordering::SeqCst);
                while epoch(s) == seen && !s.stop.load(Ordering::SeqCst) {
                    guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                s.sleeping.fetch_sub(1, Ordering::SeqCst);
                break;
            }
        }
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        seen = epoch(s);
        s.work(true);
    }
}

thread_local! {
    static HELPERS: RefCell<Option<Arc<Pool>>> = const { RefCell::new(None) };
}

/// Runs `f` with `pool`'s threads helping this thread's parallel regions.
pub fn with_helpers<R>(pool: Option<Arc<Pool>>, f: impl FnOnce() -> R) -> R {
    let old = HELPERS.with(|h| std::mem::replace(&mut *h.borrow_mut(), pool));
    // Restored even if `f` unwinds.
    struct Restore(Option<Option<Arc<Pool>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let old = self.0.take().flatten();
            HELPERS.with(|h| *h.borrow_mut() = old);
        }
    }
    let _restore = Restore(Some(old));
    f()
}

/// Helper threads available to a parallel region started on this thread now.
pub fn helpers() -> usize {
    HELPERS.with(|h| h.borrow().as_ref().map_or(0, |p| p.len()))
}

#[cfg(test)]
thread_local! {
    /// Parallel regions this thread handed to helpers (what tests of cost decisions read).
    pub(crate) static REGIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `f(0..parts)`, each part once, on this thread and its helpers; returns when all are
/// done. Without helpers (or with one part) the parts run in order on this thread.
pub fn parallel_for(parts: usize, f: impl Fn(usize) + Sync) {
    // One part runs here without touching the pool.
    if parts <= 1 {
        (0..parts).for_each(f);
        return;
    }
    if parts > MAX_PARTS {
        // Ranges of parts, as many as the claim word holds.
        let per = parts.div_ceil(MAX_PARTS);
        return regions(parts.div_ceil(per), &|r| {
            (r * per..((r + 1) * per).min(parts)).for_each(&f)
        });
    }
    regions(parts, &f)
}

/// [`parallel_for`] of at most [`MAX_PARTS`] parts.
fn regions(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    let pool = HELPERS.with(|h| h.borrow().clone());
    let Some(pool) = pool.filter(|p| !p.is_empty()) else {
        (0..parts).for_each(f);
        return;
    };
    // SAFETY (of the erased lifetime): every call of `f` finishes before `Pool::run` returns.
    let fp: Func = unsafe { std::mem::transmute(f) };
    let Some(panicked) = pool.run(parts, fp) else {
        // Another thread's region holds the pool.
        return with_helpers(None, || (0..parts).for_each(f));
    };
    #[cfg(test)]
    REGIONS.with(|r| r.set(r.get() + 1));
    if panicked {
        panic!("a part of a parallel region panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_and_regions_do_not_nest() {
        let pool = Arc::new(Pool::new(2).unwrap());
        for parts in [0, 1, 2, 7, 100, 1000] {
            let seen: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
            let nested = AtomicUsize::new(0);
            with_helpers(Some(pool.clone()), || {
                assert_eq!(helpers(), 2);
                parallel_for(parts, |i| {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                    nested.fetch_add(helpers(), Ordering::Relaxed);
                });
                assert_eq!(helpers(), 2);
            });
            assert!(seen.iter().all(|n| n.load(Ordering::Relaxed) == 1));
            // A single part runs as the caller would, helpers still available to it.
            let want = if parts == 1 { 2 } else { 0 };
            assert_eq!(nested.into_inner(), want, "{parts} parts");
        }
        assert_eq!(helpers(), 0);
    }

    #[test]
    fn helpers_sleep_and_wake_and_stop() {
        let pool = Arc::new(Pool::new(3).unwrap());
        let total = AtomicUsize::new(0);
        for round in 0..3 {
            if round > 0 {
                // Long enough for every helper to go to sleep.
                std::thread::sleep(SPIN * 3);
            }
            with_helpers(Some(pool.clone()), || {
                parallel_for(64, |i| {
                    total.fetch_add(i, Ordering::Relaxed);
                })
            });
        }
        assert_eq!(total.into_inner(), 3 * (63 * 64 / 2));
        drop(pool);
    }

    #[test]
    fn callers_on_several_threads_share_a_pool() {
        // Regions from four threads at once on one pool of two helpers: whoever holds the
        // pool shares it, the others run alone; every part runs once either way.
        let pool = Arc::new(Pool::new(2).unwrap());
        let total = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (pool, total) = (pool.clone(), total.clone());
                std::thread::spawn(move || {
                    with_helpers(Some(pool), || {
                        for round in 0..500 {
                            let parts = 1 + (t + round) % 9;
                            let seen: Vec<AtomicUsize> =
                                (0..parts).map(|_| AtomicUsize::new(0)).collect();
                            parallel_for(parts, |i| {
                                seen[i].fetch_add(1, Ordering::Relaxed);
                            });
                            assert!(seen.iter().all(|n| n.load(Ordering::Relaxed) == 1));
                            total.fetch_add(parts, Ordering::Relaxed);
                        }
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let want: usize = (0..4)
            .map(|t| (0..500).map(|r| 1 + (t + r) % 9).sum::<usize>())
            .sum();
        assert_eq!(total.load(Ordering::Relaxed), want);
    }

    #[test]
    fn more_parts_than_a_claim_holds_run_once_each() {
        let pool = Arc::new(Pool::new(1).unwrap());
        let parts = MAX_PARTS * 2 + 3;
        let seen: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
        with_helpers(Some(pool), || {
            parallel_for(parts, |i| {
                seen[i].fetch_add(1, Ordering::Relaxed);
            })
        });
        assert!(seen.iter().all(|n| n.load(Ordering::Relaxed) == 1));
    }

    /// Runs a region of `parts` parts calling `part` on `pool`: it must panic the caller, and
    /// the pool must run a region fully afterwards.
    fn panics_and_the_pool_still_works(
        pool: &Arc<Pool>,
        parts: usize,
        part: impl Fn(usize) + Sync,
    ) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_helpers(Some(pool.clone()), || parallel_for(parts, &part))
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        with_helpers(Some(pool.clone()), || {
            parallel_for(8, |_| {
                n.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(n.into_inner(), 8);
    }

    #[test]
    fn a_panic_whose_payload_panics_when_dropped_leaves_the_pool_usable() {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("the payload's drop");
            }
        }
        let pool = Arc::new(Pool::new(1).unwrap());
        for _ in 0..4 {
            panics_and_the_pool_still_works(&pool, 8, |i| {
                if i % 3 == 1 {
                    std::panic::panic_any(Bomb);
                }
            });
        }
    }

    #[test]
    fn a_panicking_part_panics_the_caller() {
        let pool = Arc::new(Pool::new(2).unwrap());
        panics_and_the_pool_still_works(&pool, 16, |i| {
            if i == 9 {
                panic!("part 9");
            }
        });
    }
}
