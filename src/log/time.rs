//! Local-time stamps in gunicorn's two formats, cached per second and per
//! thread.
//!
//! * error log (`Logger.datefmt`): `[%Y-%m-%d %H:%M:%S %z]`
//! * access log `t` atom (`Logger.now()`): `[%d/%b/%Y:%H:%M:%S %z]`
//!
//! `%b` is always the English abbreviation: Python never sets `LC_TIME`,
//! so `time.strftime` runs in the C locale.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use super::sys::{self, Tm};

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Longest stamp we produce is 32 bytes (`[%d/%b/%Y:%H:%M:%S %z]` with a
/// 5-digit year); anything longer is not cached.
const CAP: usize = 40;

#[derive(Clone, Copy)]
struct Cached {
    secs: i64,
    len: u8,
    bytes: [u8; CAP],
}

const EMPTY: Cached = Cached {
    secs: i64::MIN,
    len: 0,
    bytes: [0; CAP],
};

thread_local! {
    static ERR_CACHE: Cell<Cached> = const { Cell::new(EMPTY) };
    static CLF_CACHE: Cell<Cached> = const { Cell::new(EMPTY) };
}

/// Seconds since the epoch (floored) of `t`.
pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => {
            let d = e.duration();
            let s = d.as_secs() as i64;
            if d.subsec_nanos() > 0 {
                -s - 1
            } else {
                -s
            }
        }
    }
}

fn two(out: &mut Vec<u8>, v: u8) {
    out.push(b'0' + v / 10 % 10);
    out.push(b'0' + v % 10);
}

fn year(out: &mut Vec<u8>, y: i64) {
    // glibc's %Y: plain decimal, no padding.
    out.extend_from_slice(itoa::Buffer::new().format(y).as_bytes());
}

/// strftime's `%z`: `+hhmm` / `-hhmm`.
fn zone(out: &mut Vec<u8>, gmtoff: i64) {
    out.push(if gmtoff < 0 { b'-' } else { b'+' });
    let m = gmtoff.unsigned_abs() / 60;
    two(out, (m / 60 % 100) as u8);
    two(out, (m % 60) as u8);
}

/// `[%Y-%m-%d %H:%M:%S %z]`
pub(crate) fn format_err(out: &mut Vec<u8>, tm: &Tm) {
    out.push(b'[');
    year(out, tm.year);
    out.push(b'-');
    two(out, tm.mon);
    out.push(b'-');
    two(out, tm.mday);
    out.push(b' ');
    hms(out, tm);
    out.push(b' ');
    zone(out, tm.gmtoff);
    out.push(b']');
}

/// `[%d/%b/%Y:%H:%M:%S %z]`
pub(crate) fn format_clf(out: &mut Vec<u8>, tm: &Tm) {
    out.push(b'[');
    two(out, tm.mday);
    out.push(b'/');
    out.extend_from_slice(MONTHS[(tm.mon.clamp(1, 12) - 1) as usize].as_bytes());
    out.push(b'/');
    year(out, tm.year);
    out.push(b':');
    hms(out, tm);
    out.push(b' ');
    zone(out, tm.gmtoff);
    out.push(b']');
}

fn hms(out: &mut Vec<u8>, tm: &Tm) {
    two(out, tm.hour);
    out.push(b':');
    two(out, tm.min);
    out.push(b':');
    two(out, tm.sec);
}

type Key = &'static std::thread::LocalKey<Cell<Cached>>;

fn cached(out: &mut Vec<u8>, secs: i64, cache: Key, f: fn(&mut Vec<u8>, &Tm)) {
    let c = cache.with(Cell::get);
    if c.secs == secs {
        out.extend_from_slice(&c.bytes[..c.len as usize]);
        return;
    }
    let Some(tm) = sys::localtime(secs) else {
        out.extend_from_slice(b"[-]");
        return;
    };
    let start = out.len();
    f(out, &tm);
    let s = &out[start..];
    if s.len() <= CAP {
        let mut n = Cached {
            secs,
            len: s.len() as u8,
            bytes: [0; CAP],
        };
        n.bytes[..s.len()].copy_from_slice(s);
        cache.with(|c| c.set(n));
    }
}

/// Appends the error-log stamp for `secs` (local time).
pub(crate) fn push_err_stamp(out: &mut Vec<u8>, secs: i64) {
    cached(out, secs, &ERR_CACHE, format_err);
}

/// Appends the access-log `t` stamp for `secs` (local time).
pub(crate) fn push_clf_stamp(out: &mut Vec<u8>, secs: i64) {
    cached(out, secs, &CLF_CACHE, format_clf);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tm(gmtoff: i64) -> Tm {
        Tm {
            year: 2000,
            mon: 10,
            mday: 1,
            hour: 3,
            min: 5,
            sec: 9,
            gmtoff,
        }
    }

    #[test]
    fn err_format() {
        let mut v = Vec::new();
        format_err(&mut v, &tm(0));
        assert_eq!(v, b"[2000-10-01 03:05:09 +0000]");
        v.clear();
        format_err(&mut v, &tm(-(7 * 3600 + 30 * 60)));
        assert_eq!(v, b"[2000-10-01 03:05:09 -0730]");
    }

    #[test]
    fn clf_format() {
        let mut v = Vec::new();
        format_clf(&mut v, &tm(3600 * 5 + 45 * 60));
        assert_eq!(v, b"[01/Oct/2000:03:05:09 +0545]");
        for (i, m) in MONTHS.iter().enumerate() {
            let mut t = tm(0);
            t.mon = i as u8 + 1;
            v.clear();
            format_clf(&mut v, &t);
            assert_eq!(&v[4..7], m.as_bytes());
        }
    }

    #[test]
    fn matches_localtime() {
        // Whatever the local zone, the cached stamp equals a fresh one and
        // has the fixed shape.
        let now = unix_secs(SystemTime::now());
        let tm = sys::localtime(now).unwrap();
        let mut fresh = Vec::new();
        format_clf(&mut fresh, &tm);
        let mut a = Vec::new();
        push_clf_stamp(&mut a, now);
        let mut b = Vec::new();
        push_clf_stamp(&mut b, now);
        assert_eq!(a, fresh);
        assert_eq!(b, fresh);
        assert_eq!(a.len(), 28);
        let mut e = Vec::new();
        push_err_stamp(&mut e, now);
        assert_eq!(e.len(), 27);
    }

    #[test]
    fn negative_secs() {
        assert_eq!(
            unix_secs(UNIX_EPOCH - std::time::Duration::from_millis(1)),
            -1
        );
        assert_eq!(
            unix_secs(UNIX_EPOCH - std::time::Duration::from_secs(2)),
            -2
        );
    }
}
