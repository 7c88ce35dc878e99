//! The requests a worker is serving right now (method, path, start time),
//! for `ferrocorn top` through the exporter's `/workers`. One table per
//! slot, written only by the threads of that slot's worker.
//!
//! A request takes a free entry with one compare-and-swap on the entry's
//! sequence number, writes its method, the start of its path and its start
//! time with plain atomic stores, and frees the entry when it ends: no
//! lock, no syscall. Readers (the exporter) never block the worker: each
//! entry is a seqlock (odd while written), read again when it changed
//! under the reader. When every entry is taken the request is simply not
//! shown (the worker's count of requests in progress still counts it).

use std::sync::atomic::{fence, AtomicU64, Ordering};

/// Entries per worker: requests shown at once (gthread's threads, asgi's
/// tasks beyond this are counted, not listed).
pub const ENTRIES: usize = 8;

/// Bytes of the path kept (the rest is cut).
pub const PATH_BYTES: usize = 96;

const PATH_WORDS: usize = PATH_BYTES / 8;

/// One request in flight.
#[repr(C, align(64))]
struct Entry {
    /// Even: stable; odd: being written by its owner.
    seq: AtomicU64,
    /// CLOCK_MONOTONIC milliseconds when the request started; 0: free.
    started_ms: AtomicU64,
    /// The method's bytes (up to 8, zero padded) in the low 8 bytes...
    method: AtomicU64,
    /// ...the path's length kept, in bytes.
    path_len: AtomicU64,
    path: [AtomicU64; PATH_WORDS],
}

/// The in-flight table of one worker.
#[repr(C)]
pub struct InFlight {
    entries: [Entry; ENTRIES],
}

/// What [`InFlight::begin`] hands back to free the entry at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(usize);

/// A request in flight as read by [`InFlight::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub method: String,
    pub path: String,
    /// CLOCK_MONOTONIC milliseconds when it started.
    pub started_ms: u64,
}

fn pack(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    let n = bytes.len().min(8);
    word[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(word)
}

impl InFlight {
    /// A request starts at `now_ms` (which must not be 0): records it in a
    /// free entry. None when all entries are taken.
    pub fn begin(&self, method: &[u8], path: &[u8], now_ms: u64) -> Option<Ticket> {
        for (i, e) in self.entries.iter().enumerate() {
            let seq = e.seq.load(Ordering::Relaxed);
            if seq % 2 == 1 || e.started_ms.load(Ordering::Relaxed) != 0 {
                continue;
            }
            // Ours only if nobody claimed it since we read `seq`.
            if e.seq
                .compare_exchange(
                    seq,
                    seq.wrapping_add(1),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                continue;
            }
            fence(Ordering::Release);
            e.method.store(pack(method), Ordering::Relaxed);
            let kept = path.len().min(PATH_BYTES);
            e.path_len.store(kept as u64, Ordering::Relaxed);
            for (w, chunk) in e.path.iter().zip(path[..kept].chunks(8)) {
                w.store(pack(chunk), Ordering::Relaxed);
            }
            e.started_ms.store(now_ms.max(1), Ordering::Relaxed);
            e.seq.store(seq.wrapping_add(2), Ordering::Release);
            return Some(Ticket(i));
        }
        None
    }

    /// The request of `ticket` ended: its entry is free again.
    pub fn end(&self, ticket: Ticket) {
        let Some(e) = self.entries.get(ticket.0) else {
            return;
        };
        let seq = e.seq.fetch_add(1, Ordering::Acquire);
        fence(Ordering::Release);
        e.started_ms.store(0, Ordering::Relaxed);
        e.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// Frees every entry (the master, when it releases the slot).
    pub fn clear(&self) {
        for e in &self.entries {
            e.started_ms.store(0, Ordering::Relaxed);
            // Back to even, in case the worker died while writing.
            let seq = e.seq.load(Ordering::Relaxed);
            e.seq.store(seq.wrapping_add(seq % 2), Ordering::Release);
        }
    }

    /// The requests in flight now, oldest first. Never waits for the
    /// worker: an entry being rewritten on every try is left out.
    pub fn read(&self) -> Vec<Running> {
        let mut out = Vec::new();
        for e in &self.entries {
            for _ in 0..4 {
                let s1 = e.seq.load(Ordering::Acquire);
                if s1 % 2 == 1 {
                    std::hint::spin_loop();
                    continue;
                }
                let started_ms = e.started_ms.load(Ordering::Relaxed);
                let method = e.method.load(Ordering::Relaxed).to_le_bytes();
                let len = usize::try_from(e.path_len.load(Ordering::Relaxed))
                    .unwrap_or(0)
                    .min(PATH_BYTES);
                let mut path = Vec::with_capacity(PATH_BYTES);
                for w in &e.path {
                    path.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
                }
                fence(Ordering::Acquire);
                if e.seq.load(Ordering::Relaxed) != s1 {
                    continue;
                }
                if started_ms != 0 {
                    path.truncate(len);
                    let m_len = method.iter().position(|&b| b == 0).unwrap_or(8);
                    out.push(Running {
                        method: String::from_utf8_lossy(&method[..m_len]).into_owned(),
                        path: String::from_utf8_lossy(&path).into_owned(),
                        started_ms,
                    });
                }
                break;
            }
        }
        out.sort_by_key(|r| r.started_ms);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Table(super::super::Mapping<InFlight>);

    impl std::ops::Deref for Table {
        type Target = InFlight;
        fn deref(&self) -> &InFlight {
            self.0.get(0).unwrap()
        }
    }

    fn table() -> Table {
        Table(super::super::Mapping::new(1).unwrap())
    }

    #[test]
    fn begin_read_end() {
        let t = table();
        assert!(t.read().is_empty());
        let a = t.begin(b"GET", b"/slow?x=1", 100).unwrap();
        let long = vec![b'a'; 300];
        let b = t.begin(b"PROPFIND", &long, 50).unwrap();
        let r = t.read();
        assert_eq!(r.len(), 2);
        // oldest first
        assert_eq!(r[0].method, "PROPFIND");
        assert_eq!(r[0].path.len(), PATH_BYTES);
        assert_eq!(r[1].method, "GET");
        assert_eq!(r[1].path, "/slow?x=1");
        assert_eq!(r[1].started_ms, 100);
        t.end(b);
        assert_eq!(t.read().len(), 1);
        t.end(a);
        assert!(t.read().is_empty());
        // a non-UTF-8 path reads back lossily, never panics
        let c = t.begin(b"GET", b"/\xff\xfe", 7).unwrap();
        assert_eq!(t.read()[0].path, "/\u{fffd}\u{fffd}");
        t.end(c);
    }

    #[test]
    fn full_table_leaves_requests_out_and_clear_frees_all() {
        let t = table();
        let tickets: Vec<_> = (0..ENTRIES)
            .map(|i| {
                t.begin(b"GET", format!("/{i}").as_bytes(), 1 + i as u64)
                    .unwrap()
            })
            .collect();
        assert_eq!(t.begin(b"GET", b"/more", 99), None);
        assert_eq!(t.read().len(), ENTRIES);
        t.end(tickets[3]);
        assert!(t.begin(b"GET", b"/again", 99).is_some());
        t.clear();
        assert!(t.read().is_empty());
    }

    /// Threads begin and end requests at once while a reader reads: no
    /// entry is handed to two requests, and what is read is always a
    /// request that was begun (never a mix of two).
    #[test]
    fn concurrent_writers_and_reader() {
        let mapped = table();
        let t: &InFlight = &mapped;
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|sc| {
            for n in 0..6u64 {
                sc.spawn(move || {
                    let path = format!("/thread-{n}/{}", "x".repeat(n as usize * 10));
                    for _ in 0..20_000 {
                        if let Some(k) = t.begin(b"POST", path.as_bytes(), 1 + n) {
                            t.end(k);
                        }
                    }
                });
            }
            let stop = &stop;
            sc.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for r in t.read() {
                        let n = r.started_ms - 1;
                        assert_eq!(r.method, "POST");
                        assert_eq!(
                            r.path,
                            format!("/thread-{n}/{}", "x".repeat(n as usize * 10))
                        );
                    }
                }
            });
            std::thread::sleep(std::time::Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
        });
        assert!(t.read().is_empty());
    }
}
