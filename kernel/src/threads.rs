//! The threads a run may use: the calling thread, plus a [`Pool`] of helper threads the runtime
//! lends it for the duration of a run. Work stays on the calling thread (with its warm caches)
//! except in [`parallel_for`], where the caller and the helpers take parts from a shared
//! counter. Parallel regions do not nest: inside one, [`helpers`] is 0.
//!
//! Kernels are short (often tens of microseconds), so helpers spin for a while after each job
//! before they sleep: a run's next parallel stage then starts on them within nanoseconds
//! instead of after a wake-up.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long an idle helper spins before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

/// One parallel region: parts handed out by a counter.
struct Job {
    /// The region's function with its lifetime erased: only called for parts below `parts`,
    /// all of which finish before the caller returns (and the function dies).
    f: *const (dyn Fn(usize) + Sync),
    parts: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
}

// SAFETY: `f` is Sync and only called while the caller keeps it alive (see `Job::f`).
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// Runs parts until none are left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.parts {
                return;
            }
            // SAFETY: i < parts, so the caller is still waiting for this part (see `f`).
            let f = unsafe { &*self.f };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

struct Shared {
    /// Bumped whenever a job is published (helpers spin on it).
    epoch: AtomicU64,
    job: Mutex<(u64, Option<Arc<Job>>)>,
    wake: Condvar,
    sleeping: AtomicUsize,
    stop: AtomicBool,
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
            epoch: AtomicU64::new(0),
            job: Mutex::new((0, None)),
            wake: Condvar::new(),
            sleeping: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("kiln-helper-{i}"))
                    .spawn(move || helper(&s))?,
            );
        }
        Ok(Pool { shared, threads })
    }

    /// How many helper threads there are.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    fn publish(&self, job: Arc<Job>) {
        let mut slot = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
        slot.0 += 1;
        slot.1 = Some(job);
        self.shared.epoch.store(slot.0, Ordering::Release);
        drop(slot);
        if self.shared.sleeping.load(Ordering::Acquire) > 0 {
            self.shared.wake.notify_all();
        }
    }

    fn retire(&self) {
        self.shared.job.lock().unwrap_or_else(|e| e.into_inner()).1 = None;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let mut slot = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
            slot.0 += 1;
            self.shared.epoch.store(slot.0, Ordering::Release);
        }
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn helper(s: &Shared) {
    let mut seen = 0u64;
    loop {
        // Spin for a new epoch, then sleep until one comes.
        let start = Instant::now();
        let mut spins = 0u32;
        while s.epoch.load(Ordering::Acquire) == seen {
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
                let mut slot = s.job.lock().unwrap_or_else(|e| e.into_inner());
                s.sleeping.fetch_add(1, Ordering::AcqRel);
                while slot.0 == seen && !s.stop.load(Ordering::Acquire) {
                    slot = s.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
                }
                s.sleeping.fetch_sub(1, Ordering::AcqRel);
                break;
            }
        }
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        let (epoch, job) = {
            let slot = s.job.lock().unwrap_or_else(|e| e.into_inner());
            (slot.0, slot.1.clone())
        };
        seen = epoch;
        if let Some(job) = job {
            job.work();
        }
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
    let pool = HELPERS.with(|h| h.borrow().clone());
    let Some(pool) = pool.filter(|p| !p.is_empty()) else {
        (0..parts).for_each(f);
        return;
    };
    let f: &(dyn Fn(usize) + Sync) = &f;
    // SAFETY (of the erased lifetime): every call of `f` finishes before `done` reaches
    // `parts`, which this function waits for before returning.
    let f: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
    let job = Arc::new(Job {
        f,
        parts,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
    });
    #[cfg(test)]
    REGIONS.with(|r| r.set(r.get() + 1));
    pool.publish(job.clone());
    with_helpers(None, || job.work());
    while job.done.load(Ordering::Acquire) < parts {
        std::hint::spin_loop();
    }
    pool.retire();
    if job.panicked.load(Ordering::Relaxed) {
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
    fn a_panicking_part_panics_the_caller() {
        let pool = Arc::new(Pool::new(2).unwrap());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_helpers(Some(pool.clone()), || {
                parallel_for(16, |i| {
                    if i == 9 {
                        panic!("part 9");
                    }
                })
            })
        }));
        assert!(r.is_err());
        // The pool still works.
        let n = AtomicUsize::new(0);
        with_helpers(Some(pool), || {
            parallel_for(8, |_| {
                n.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(n.into_inner(), 8);
    }
}
