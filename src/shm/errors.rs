//! A worker's failed requests by (method, endpoint, error_type), in shared
//! memory: a fixed table of label sets, each entry claimed once and then only
//! counted, safe for any number of threads of the worker recording at once
//! and read by the exporter without locks.
//!
//! Each entry has one state word: 0 while empty, else the label set's hash
//! with a WRITING or READY tag in its low bits. A writer claims an empty entry
//! with a compare-and-swap (so two threads never claim the same entry),
//! writes the labels and a count of one, and publishes them with a release
//! store of READY; readers and other writers acquire the state word before
//! they look at the labels. Entries are claimed in order and never given up
//! while the worker lives, so every writer scanning from the first entry meets
//! an earlier claim of its own label set before any empty entry: one label
//! set never gets two entries. Recording a known label set takes no lock, no
//! allocation and no syscall: a hash, a scan of state words, one atomic add.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Label sets of failed requests a worker keeps apart; later ones are
/// counted in one overflow series (bounded cardinality, docs/architecture.md).
pub const ERROR_SERIES: usize = 64;
/// Bytes of one label set: `method \0 endpoint \0 error_type`, the endpoint
/// shortened to fit.
const ERROR_KEY_WORDS: usize = 32;
const ERROR_KEY_BYTES: usize = ERROR_KEY_WORDS * 8;
/// Longest method and error type kept (the endpoint gets the rest).
const METHOD_BYTES: usize = 16;
const ERROR_TYPE_BYTES: usize = 64;

/// State word of an entry nobody claimed yet.
const EMPTY: u64 = 0;
/// Low bits of a claimed entry's state word (the rest is the hash).
const TAG: u64 = 0b11;
const WRITING: u64 = 0b01;
const READY: u64 = 0b10;

/// One failed-request series: its label set and count.
#[repr(C)]
struct ErrorSeries {
    /// [`EMPTY`], or the label set's hash (without its [`TAG`] bits) with
    /// [`WRITING`] or [`READY`].
    state: AtomicU64,
    key_len: AtomicU32,
    key: [AtomicU64; ERROR_KEY_WORDS],
    count: AtomicU64,
}

/// A worker's failed requests by (method, endpoint, error_type).
#[repr(C)]
pub struct ErrorTable {
    /// Failed requests that found the table full.
    overflow: AtomicU64,
    series: [ErrorSeries; ERROR_SERIES],
}

/// One failed request's labels, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorLabels {
    pub method: String,
    pub endpoint: String,
    pub error_type: String,
}

/// A label set encoded as the table stores it, built on the stack.
struct Key {
    words: [u64; ERROR_KEY_WORDS],
    len: usize,
    /// The hash with the [`TAG`] bits cleared.
    hash: u64,
}

impl Key {
    fn new(method: &str, endpoint: &str, error_type: &str) -> Key {
        let method = &method.as_bytes()[..floor_char(method, METHOD_BYTES)];
        let error_type = &error_type.as_bytes()[..floor_char(error_type, ERROR_TYPE_BYTES)];
        // Never negative: the method and error type are bounded above.
        let room = ERROR_KEY_BYTES - 2 - method.len() - error_type.len();
        let endpoint = &endpoint.as_bytes()[..floor_char(endpoint, room)];
        let mut bytes = [0u8; ERROR_KEY_BYTES];
        let mut len = 0;
        for part in [method, b"\0", endpoint, b"\0", error_type] {
            bytes[len..len + part.len()].copy_from_slice(part);
            len += part.len();
        }
        let mut words = [0u64; ERROR_KEY_WORDS];
        // FxHash-style mixing of the words: a handful of instructions each;
        // collisions only cost a comparison of the labels.
        let mut hash = len as u64;
        for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            *w = u64::from_le_bytes(word);
            hash = (hash.rotate_left(5) ^ *w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
        Key {
            words,
            len,
            hash: hash & !TAG,
        }
    }

    /// The words that hold the key's bytes (the rest are zero).
    fn used_words(&self) -> &[u64] {
        &self.words[..self.len.div_ceil(8)]
    }
}

impl ErrorSeries {
    /// Whether this (READY) entry holds `key`.
    fn holds(&self, key: &Key) -> bool {
        self.key_len.load(Ordering::Relaxed) as usize == key.len
            && key
                .used_words()
                .iter()
                .zip(&self.key)
                .all(|(k, w)| w.load(Ordering::Relaxed) == *k)
    }

    /// Waits while another thread writes the labels of this entry (a few
    /// dozen stores: it ends at once unless that thread was preempted right
    /// then). Returns the state word once it is not WRITING.
    fn settled(&self, mut s: u64) -> u64 {
        let mut spins = 0u32;
        while s & TAG == WRITING {
            if spins < 64 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
            s = self.state.load(Ordering::Acquire);
        }
        s
    }
}

impl ErrorTable {
    /// Counts one failed request (any thread of the worker). Allocates
    /// nothing; a label set seen before costs a hash, a scan of state words
    /// and one atomic add.
    pub fn record_failure(&self, method: &str, endpoint: &str, error_type: &str) {
        let key = Key::new(method, endpoint, error_type);
        let ready = key.hash | READY;
        for e in &self.series {
            let mut s = e.state.load(Ordering::Acquire);
            if s == EMPTY {
                match e.state.compare_exchange(
                    EMPTY,
                    key.hash | WRITING,
                    Ordering::Acquire,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        for (w, k) in e.key.iter().zip(&key.words) {
                            w.store(*k, Ordering::Relaxed);
                        }
                        e.key_len.store(key.len as u32, Ordering::Relaxed);
                        e.count.store(1, Ordering::Relaxed);
                        // Publish: whoever acquires READY sees the labels
                        // and the count.
                        e.state.store(ready, Ordering::Release);
                        return;
                    }
                    // Another thread claimed it first: maybe for these labels.
                    Err(now) => s = now,
                }
            }
            if s & !TAG == key.hash && e.settled(s) == ready && e.holds(&key) {
                e.count.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        self.overflow.fetch_add(1, Ordering::Relaxed);
    }

    /// The published series and the overflow count (exporter).
    pub fn read(&self) -> (Vec<(ErrorLabels, u64)>, u64) {
        let mut out = Vec::new();
        let mut bytes = Vec::with_capacity(ERROR_KEY_BYTES);
        for e in &self.series {
            let s = e.state.load(Ordering::Acquire);
            if s & TAG != READY {
                continue;
            }
            let len = (e.key_len.load(Ordering::Relaxed) as usize).min(ERROR_KEY_BYTES);
            bytes.clear();
            for w in &e.key {
                bytes.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
            }
            bytes.truncate(len);
            let count = e.count.load(Ordering::Relaxed);
            // The master clears a reaped worker's table, possibly while a
            // scrape reads it: labels read across a clear are dropped.
            fence(Ordering::Acquire);
            if e.state.load(Ordering::Relaxed) != s {
                continue;
            }
            if let Some(labels) = decode_key(&bytes) {
                out.push((labels, count));
            }
        }
        (out, self.overflow.load(Ordering::Relaxed))
    }

    /// Empties the table for the slot's next worker (master, after the
    /// worker was reaped: no writer is left).
    pub(super) fn clear(&self) {
        self.overflow.store(0, Ordering::Relaxed);
        for e in &self.series {
            e.state.store(EMPTY, Ordering::Relaxed);
            // Orders the stores below after EMPTY for a concurrent reader
            // (its acquire fence pairs with this one).
            fence(Ordering::Release);
            e.key_len.store(0, Ordering::Relaxed);
            for w in &e.key {
                w.store(0, Ordering::Relaxed);
            }
            e.count.store(0, Ordering::Relaxed);
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char
/// boundary.
fn floor_char(s: &str, max: usize) -> usize {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    n
}

fn decode_key(b: &[u8]) -> Option<ErrorLabels> {
    let mut parts = b.splitn(3, |c| *c == 0);
    let text = |p: Option<&[u8]>| {
        p.and_then(|p| std::str::from_utf8(p).ok())
            .map(str::to_owned)
    };
    Some(ErrorLabels {
        method: text(parts.next())?,
        endpoint: text(parts.next())?,
        error_type: text(parts.next())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeroed() -> Box<ErrorTable> {
        // SAFETY: ErrorTable holds only atomics, for which all-zero bytes
        // are valid values (this is what a fresh shared mapping contains).
        unsafe { Box::new(std::mem::zeroed()) }
    }

    fn labels(ep: &str) -> ErrorLabels {
        ErrorLabels {
            method: "GET".into(),
            endpoint: ep.into(),
            error_type: "ZeroDivisionError".into(),
        }
    }

    fn record(t: &ErrorTable, ep: &str) {
        t.record_failure("GET", ep, "ZeroDivisionError");
    }

    #[test]
    fn publishes_and_overflows() {
        let t = zeroed();
        record(&t, "/a");
        record(&t, "/a");
        record(&t, &"é".repeat(300));
        let (series, overflow) = t.read();
        assert_eq!(overflow, 0);
        assert_eq!(series[0], (labels("/a"), 2));
        // A long endpoint is cut on a character boundary.
        assert!(series[1].0.endpoint.starts_with("éé"));
        assert!(series[1].0.endpoint.len() < 256);
        // The same long endpoint again: the same (shortened) entry.
        record(&t, &"é".repeat(300));
        assert_eq!(t.read().0[1].1, 2);
        for n in 0..ERROR_SERIES {
            record(&t, &format!("/{n}"));
        }
        let (series, overflow) = t.read();
        assert_eq!(series.len(), ERROR_SERIES);
        assert_eq!(overflow, 2);
        t.clear();
        assert_eq!(t.read(), (Vec::new(), 0));
        record(&t, "/b");
        assert_eq!(t.read(), (vec![(labels("/b"), 1)], 0));
    }

    /// Threads of one worker record the same and distinct label sets at
    /// once, more of them than the table holds: every failure is counted
    /// exactly once, in its own entry or in the overflow, and no label set
    /// gets two entries.
    #[test]
    fn concurrent_writers_count_exactly() {
        const THREADS: usize = 8;
        const ROUNDS: usize = 200;
        // Per thread: one label set shared by all threads, and 20 of its own
        // (8 * 20 + 1 = 161 label sets, far beyond the 64 entries).
        const OWN: usize = 20;
        let t = zeroed();
        let start = std::sync::Barrier::new(THREADS);
        std::thread::scope(|s| {
            for th in 0..THREADS {
                let (t, start) = (&t, &start);
                s.spawn(move || {
                    start.wait();
                    for r in 0..ROUNDS {
                        record(t, "/shared");
                        record(t, &format!("/t{th}/{}", r % OWN));
                    }
                });
            }
        });
        let (series, overflow) = t.read();
        assert_eq!(series.len(), ERROR_SERIES);
        let mut seen = std::collections::HashSet::new();
        for (l, _) in &series {
            assert!(seen.insert(l.endpoint.clone()), "{l:?} twice");
        }
        // The shared set came first for every thread: it has an entry.
        let shared = series.iter().find(|(l, _)| l.endpoint == "/shared");
        assert_eq!(shared.map(|s| s.1), Some((THREADS * ROUNDS) as u64));
        // Each own label set is recorded ROUNDS / OWN times, all of them in
        // its entry or all in the overflow.
        for (l, n) in &series {
            if l.endpoint != "/shared" {
                assert_eq!(*n, (ROUNDS / OWN) as u64, "{l:?}");
            }
        }
        let total: u64 = series.iter().map(|s| s.1).sum::<u64>() + overflow;
        assert_eq!(total, (THREADS * ROUNDS * 2) as u64);
        let kept_own = (ERROR_SERIES - 1) as u64;
        assert_eq!(
            overflow,
            ((THREADS * OWN) as u64 - kept_own) * (ROUNDS / OWN) as u64
        );
    }

    /// Many threads racing to record one new label set: one entry.
    #[test]
    fn concurrent_first_records_share_one_entry() {
        for _ in 0..50 {
            let t = zeroed();
            let start = std::sync::Barrier::new(4);
            std::thread::scope(|s| {
                for _ in 0..4 {
                    let (t, start) = (&t, &start);
                    s.spawn(move || {
                        start.wait();
                        record(t, "/new");
                    });
                }
            });
            assert_eq!(t.read(), (vec![(labels("/new"), 4)], 0));
        }
    }

    /// A reader running alongside the writers sees only whole label sets
    /// and counts that never go down.
    #[test]
    fn reader_sees_whole_entries_while_threads_write() {
        let t = zeroed();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let (t, done) = (&t, &done);
            let reader = s.spawn(move || {
                let mut last = std::collections::HashMap::new();
                while !done.load(Ordering::Relaxed) {
                    for (l, n) in t.read().0 {
                        assert_eq!(l.method, "GET");
                        assert_eq!(l.error_type, "ZeroDivisionError");
                        let prev = last.insert(l.endpoint.clone(), n).unwrap_or(0);
                        assert!(n >= prev.max(1));
                    }
                }
            });
            let writers: Vec<_> = (0..3)
                .map(|th| {
                    s.spawn(move || {
                        for r in 0..2000 {
                            record(t, &format!("/{}", (r * 7 + th) % 50));
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            done.store(true, Ordering::Relaxed);
            reader.join().unwrap();
        });
        assert_eq!(t.read().0.iter().map(|s| s.1).sum::<u64>(), 6000);
    }

    /// Cost of counting a failure whose label set is known, in the 10th of
    /// 20 entries (the old single-writer table built a HashMap key of three
    /// cloned Strings per failure):
    /// `cargo test --release -- --ignored --nocapture bench`.
    #[test]
    #[ignore]
    fn bench_record_known_failure() {
        let t = zeroed();
        for n in 0..20 {
            record(&t, &format!("/api/v1/items/{n}"));
        }
        let n = 2_000_000;
        let start = std::time::Instant::now();
        for _ in 0..n {
            t.record_failure(
                std::hint::black_box("GET"),
                std::hint::black_box("/api/v1/items/9"),
                std::hint::black_box("ZeroDivisionError"),
            );
        }
        let dt = start.elapsed();
        assert_eq!(t.read().0[9].1, n + 1);
        println!(
            "known label set: {:.0} ns/failure",
            dt.as_nanos() as f64 / n as f64
        );
    }
}
