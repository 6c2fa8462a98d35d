//! The rules' eyes in front of hyper, for HTTP/1 connections.
//!
//! hyper reads a request's framing fields its own way (with both
//! `Content-Length` and `Transfer-Encoding` it silently drops the length;
//! equal repeated lengths become one), so the general path cannot see what
//! the client actually sent. This wrapper watches the bytes the client
//! sends, finds each request head exactly as hyper does (httparse, same
//! configuration), checks it with the same rules as the fast path
//! ([`rules::analyze_request`] on the raw fields) and follows its body
//! (Content-Length, or the shared chunked framer). The general path pops
//! one [`Verdict`] per HTTP/1 request, in order; a request for which there
//! is none (the guard stopped following) is refused, never waved through.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::h1::ChunkedEnd;
use crate::rules::{self, Body, Reject, Version};

/// The rules' verdict on one request head.
pub(crate) type Verdict = Result<(), Reject>;

/// Most verdicts waiting for hyper (pipelined heads not yet served).
const MAX_WAITING: usize = 1024;
/// Most header fields in a head (hyper's own limit is 100; more fails there).
const MAX_FIELDS: usize = 128;

/// Verdicts of the request heads seen so far, oldest first.
#[derive(Debug, Default, Clone)]
pub(crate) struct Verdicts(Arc<Mutex<VecDeque<Verdict>>>);

impl Verdicts {
    /// The verdict on the next HTTP/1 request, in order; None when the guard
    /// has none (then the request must be refused).
    pub(crate) fn next(&self) -> Option<Verdict> {
        self.0.lock().ok()?.pop_front()
    }

    /// False when the queue is full (the guard then stops: later requests
    /// find no verdict and are refused).
    fn push(&self, verdict: Verdict) -> bool {
        let Ok(mut q) = self.0.lock() else {
            return false;
        };
        if q.len() >= MAX_WAITING {
            return false;
        }
        q.push_back(verdict);
        true
    }
}

#[derive(Debug)]
enum State {
    /// Collecting a request head.
    Head(Vec<u8>),
    /// Skipping `n` body bytes.
    Length(u64),
    Chunked(ChunkedEnd),
    /// Not HTTP/1 framing any more (HTTP/2, an upgrade, a refused or
    /// unparsable request after which hyper closes): stop looking.
    Off,
}

/// Wraps a client connection.
pub(crate) struct Guarded<T> {
    inner: T,
    state: State,
    verdicts: Verdicts,
    max_head: usize,
    started: bool,
}

impl<T> Guarded<T> {
    pub(crate) fn new(inner: T, max_head: usize) -> (Self, Verdicts) {
        let verdicts = Verdicts::default();
        (
            Self {
                inner,
                state: State::Head(Vec::new()),
                verdicts: verdicts.clone(),
                max_head,
                started: false,
            },
            verdicts,
        )
    }

    fn scan(&mut self, mut data: &[u8]) {
        if !self.started && !data.is_empty() {
            self.started = true;
            if data.starts_with(b"PRI * HTTP/2.0") {
                self.state = State::Off;
            }
        }
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Head(buf) => {
                    let before = buf.len();
                    buf.extend_from_slice(data);
                    // A head can only end at a line feed: parse only then.
                    if !data.contains(&b'\n') {
                        if buf.len() > self.max_head {
                            self.state = State::Off; // hyper answers 431
                        }
                        return;
                    }
                    let head = std::mem::take(buf);
                    match self.head(&head) {
                        Some((len, next)) => {
                            data = &data[len - before..];
                            self.state = next;
                        }
                        None => {
                            self.state = if head.len() > self.max_head {
                                State::Off
                            } else {
                                State::Head(head)
                            };
                            return;
                        }
                    }
                }
                State::Length(n) => {
                    let take = (*n).min(data.len() as u64);
                    *n -= take;
                    data = &data[take as usize..];
                    if *n == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::Chunked(chunked) => match chunked.feed(data) {
                    Ok(Some(n)) => {
                        data = &data[n..];
                        self.state = State::Head(Vec::new());
                    }
                    Ok(None) => return,
                    Err(()) => self.state = State::Off, // hyper fails the body
                },
            }
        }
    }

    /// Parses a head at the start of `buf` as hyper does: None while it is
    /// incomplete; else its length and what follows it (after recording
    /// its verdict).
    fn head(&self, buf: &[u8]) -> Option<(usize, State)> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut fields);
        let len = match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return None,
            // hyper fails the same head and closes the connection.
            Err(_) => return Some((buf.len(), State::Off)),
        };
        let version = match req.version {
            Some(1) => Version::Http11,
            _ => Version::Http10,
        };
        let target = req.path.unwrap_or("");
        let verdict = rules::analyze_request(version, rules::target_authority(target), req.headers);
        if !self.verdicts.push(verdict.map(|_| ())) {
            return Some((len, State::Off));
        }
        let next = match verdict {
            // Refused: the connection closes after the answer.
            Err(_) => State::Off,
            // What follows is another protocol.
            Ok(f) if f.upgrade || req.method == Some("CONNECT") => State::Off,
            Ok(f) => match f.body {
                Body::Empty | Body::Length(0) => State::Head(Vec::new()),
                Body::Length(n) => State::Length(n),
                Body::Chunked => State::Chunked(ChunkedEnd::default()),
            },
        };
        Some((len, next))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            if !matches!(this.state, State::Off) {
                this.scan(&buf.filled()[before..]);
            }
        }
        result
    }
}

/// `AsyncWrite` for a read-side wrapper: writes go straight to `self.inner`.
macro_rules! write_through {
    ($wrapper:ident) => {
        impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<T> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                data: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }
    };
}
pub(crate) use write_through;

write_through!(Guarded);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn verdicts(stream: &[u8], cuts: &[usize]) -> Vec<Verdict> {
        let (mut g, v) = Guarded::new((), 64 * 1024);
        let mut last = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| (*c).min(stream.len())).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        for c in cuts {
            g.scan(&stream[last..c]);
            last = c;
        }
        std::iter::from_fn(|| v.next()).collect()
    }

    const PIPELINE: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 18\r\n\r\nContent-Length: 5\r\n\
GET /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\nTrailer: y\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
GET /d HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn follows_framing_and_stops_after_a_refused_head() {
        // The refused head closes the connection: the guard does not read on.
        assert_eq!(
            verdicts(PIPELINE, &[]),
            vec![Ok(()), Ok(()), Err(Reject::LengthTwice)]
        );
    }

    #[test]
    fn finds_head_ends_as_the_parser_does_after_a_bare_lf_head() {
        // A head ending in a bare LF, then a CL+TE request: the old guard
        // searched for CRLFCRLF first and read both heads as one.
        let stream = b"GET /a HTTP/1.1\nHost: x\n\n\
POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(
            verdicts(stream, &[]),
            vec![Ok(()), Err(Reject::LengthTwice)]
        );
    }

    #[test]
    fn stops_at_http2_and_upgrades() {
        assert!(verdicts(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &[]).is_empty());
        let v = verdicts(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nGET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", &[]);
        assert_eq!(v, vec![Ok(())]);
        // An h2c upgrade is declined: HTTP/1.1 goes on.
        let v = verdicts(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: upgrade, http2-settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\nGET /x HTTP/1.1\r\n\r\n", &[]);
        assert_eq!(v, vec![Ok(()), Err(Reject::MissingHost)]);
    }

    #[test]
    fn a_full_queue_stops_the_guard_so_later_requests_find_no_verdict() {
        let one = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let stream: Vec<u8> = one.repeat(MAX_WAITING + 5);
        let (mut g, v) = Guarded::new((), 64 * 1024);
        g.scan(&stream);
        assert!(matches!(g.state, State::Off));
        let mut n = 0;
        while v.next().is_some() {
            n += 1;
        }
        assert_eq!(n, MAX_WAITING);
    }

    proptest! {
        #[test]
        fn the_same_verdicts_however_the_bytes_arrive(cuts in proptest::collection::vec(0usize..400, 0..12)) {
            prop_assert_eq!(verdicts(PIPELINE, &cuts), vec![Ok(()), Ok(()), Err(Reject::LengthTwice)]);
        }
    }
}
