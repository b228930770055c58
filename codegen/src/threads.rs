//! The threads a run may use: the calling thread, plus a pool of helper threads the runtime
//! lends it for the duration of a run. Work stays on the calling thread (with its warm caches)
//! except in [`parallel_for`], where the caller and the helpers take parts from a shared
//! counter. Parallel regions do not nest: inside one, [`helpers`] is 0.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

thread_local! {
    static HELPERS: RefCell<Option<Arc<rayon::ThreadPool>>> = const { RefCell::new(None) };
}

/// Runs `f` with `pool`'s threads helping this thread's parallel regions.
pub fn with_helpers<R>(pool: Option<Arc<rayon::ThreadPool>>, f: impl FnOnce() -> R) -> R {
    let old = HELPERS.with(|h| std::mem::replace(&mut *h.borrow_mut(), pool));
    // Restored even if `f` unwinds.
    struct Restore(Option<Option<Arc<rayon::ThreadPool>>>);
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
    HELPERS.with(|h| h.borrow().as_ref().map_or(0, |p| p.current_num_threads()))
}

/// Runs `f(0..parts)`, each part once, on this thread and its helpers; returns when all are
/// done. Without helpers (or with one part) the parts run in order on this thread.
pub fn parallel_for(parts: usize, f: impl Fn(usize) + Sync) {
    let pool = HELPERS.with(|h| h.borrow().clone());
    let Some(pool) = pool.filter(|_| parts > 1) else {
        (0..parts).for_each(f);
        return;
    };
    with_helpers(None, || {
        let next = AtomicUsize::new(0);
        let work = || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= parts {
                break;
            }
            f(i);
        };
        pool.in_place_scope(|s| {
            for _ in 0..pool.current_num_threads().min(parts - 1) {
                s.spawn(|_| work());
            }
            work();
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn every_part_runs_once_and_regions_do_not_nest() {
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap(),
        );
        for parts in [0, 1, 2, 7, 100] {
            let seen = Mutex::new(vec![0; parts]);
            let nested = AtomicUsize::new(0);
            with_helpers(Some(pool.clone()), || {
                assert_eq!(helpers(), 2);
                parallel_for(parts, |i| {
                    seen.lock().unwrap()[i] += 1;
                    nested.fetch_add(helpers(), Ordering::Relaxed);
                });
                assert_eq!(helpers(), 2);
            });
            assert!(seen.into_inner().unwrap().iter().all(|&n| n == 1));
            // A single part runs as the caller would, helpers still available to it.
            let want = if parts == 1 { 2 } else { 0 };
            assert_eq!(nested.into_inner(), want, "{parts} parts");
        }
        assert_eq!(helpers(), 0);
    }
}
