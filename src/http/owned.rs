//! A request head that owns its bytes, for requests served away from the
//! buffer they were parsed in (another thread, a greenlet): the connection
//! reads on while the request runs, so the head cannot borrow its buffer.

use std::borrow::Cow;
use std::ops::Range;

use super::request::{Header, RequestHead};
use super::BodyKind;

/// The fields of a [`RequestHead`], copied once into one buffer.
#[derive(Debug)]
pub struct OwnedHead {
    bytes: Vec<u8>,
    method: String,
    uri: Range<usize>,
    path: Range<usize>,
    query: Range<usize>,
    fragment: Range<usize>,
    version: (u8, u8),
    /// Name and value of each header, in order.
    headers: Vec<(Range<usize>, Range<usize>)>,
    body: BodyKind,
    keep_alive: bool,
    expect_continue: bool,
}

impl OwnedHead {
    pub fn new(head: &RequestHead<'_>) -> OwnedHead {
        let total = head.uri.len()
            + head.path.len()
            + head.query.len()
            + head.fragment.len()
            + head
                .headers
                .iter()
                .map(|h| h.name.len() + h.value.len())
                .sum::<usize>();
        let mut bytes = Vec::with_capacity(total);
        let mut put = |b: &[u8]| {
            let start = bytes.len();
            bytes.extend_from_slice(b);
            start..bytes.len()
        };
        let uri = put(head.uri);
        let path = put(head.path);
        let query = put(head.query);
        let fragment = put(head.fragment);
        let headers = head
            .headers
            .iter()
            .map(|h| (put(h.name), put(&h.value)))
            .collect();
        OwnedHead {
            bytes,
            method: head.method.to_string(),
            uri,
            path,
            query,
            fragment,
            version: head.version,
            headers,
            body: head.body,
            keep_alive: head.keep_alive,
            expect_continue: head.expect_continue,
        }
    }

    /// The head as the parser made it, borrowing from `self`.
    pub fn view(&self) -> RequestHead<'_> {
        // The ranges were made from `bytes` in `new`: always in bounds.
        let b = |r: &Range<usize>| self.bytes.get(r.clone()).unwrap_or_default();
        RequestHead {
            method: Cow::Borrowed(&self.method),
            uri: b(&self.uri),
            path: b(&self.path),
            query: b(&self.query),
            fragment: b(&self.fragment),
            version: self.version,
            headers: self
                .headers
                .iter()
                .map(|(n, v)| Header {
                    name: b(n),
                    value: Cow::Borrowed(b(v)),
                })
                .collect(),
            body: self.body,
            keep_alive: self.keep_alive,
            expect_continue: self.expect_continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, Parsed, ParserConfig};

    #[test]
    fn the_view_equals_the_parsed_head() {
        let raw = b"POST /a/b?x=1#f HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\
                    Content-Length: 3\r\nExpect: 100-continue\r\n\r\nabc";
        let cfg = ParserConfig {
            permit_obsolete_folding: true,
            ..ParserConfig::default()
        };
        let Ok(Parsed::Complete { head, .. }) = parse_request(raw, &cfg, false) else {
            panic!("the request parses");
        };
        let owned = OwnedHead::new(&head);
        let v = owned.view();
        assert_eq!(v.method, head.method);
        assert_eq!(v.uri, head.uri);
        assert_eq!(v.path, b"/a/b");
        assert_eq!(v.query, b"x=1");
        assert_eq!(v.fragment, head.fragment);
        assert_eq!(v.version, head.version);
        assert_eq!(v.headers, head.headers);
        assert_eq!(v.body, BodyKind::Length(3));
        assert_eq!(v.keep_alive, head.keep_alive);
        assert!(v.expect_continue);
        // The owned copy outlives the buffer it was parsed from.
        drop(head);
        assert_eq!(owned.view().headers[1].value.as_ref(), b"a b");
    }
}
