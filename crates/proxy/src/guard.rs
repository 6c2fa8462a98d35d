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
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::h1::ChunkedEnd;
use crate::rules::{self, Body, Reject, Version};

/// The rules' verdict on one request head.
pub(crate) type Verdict = Result<(), Reject>;

/// Most verdicts waiting for hyper (pipelined heads not yet served): more
/// than hyper can hold unparsed in its read buffer (max(`max_head`, 8 KiB)),
/// a head being at least 16 bytes.
fn max_waiting(max_head: usize) -> usize {
    max_head.max(8192) / 16 + 64
}
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
    fn push(&self, verdict: Verdict, max: usize) -> bool {
        let Ok(mut q) = self.0.lock() else {
            return false;
        };
        if q.len() >= max {
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

/// Wraps a client connection. Writes to it that make no progress for
/// `stream_idle` (a client that stopped reading) fail with `TimedOut`, so
/// hyper ends the connection and lets go of the upstream's.
pub(crate) struct Guarded<T> {
    inner: T,
    state: State,
    verdicts: Verdicts,
    max_head: usize,
    started: bool,
    stream_idle: Duration,
    /// Armed while a write waits.
    stall: Option<Pin<Box<Sleep>>>,
}

impl<T> Guarded<T> {
    pub(crate) fn new(inner: T, max_head: usize, stream_idle: Duration) -> (Self, Verdicts) {
        let verdicts = Verdicts::default();
        (
            Self {
                inner,
                state: State::Head(Vec::new()),
                verdicts: verdicts.clone(),
                max_head,
                started: false,
                stream_idle,
                stall: None,
            },
            verdicts,
        )
    }

    /// A write that cannot go on: arms (or checks) the stall timer.
    fn stalled<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let idle = self.stream_idle;
        let sleep = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for the stream idle timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// A write went on: disarms the timer.
    fn progressed<R>(
        &mut self,
        result: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<R>> {
        match result {
            Poll::Pending => self.stalled(cx),
            ready => {
                self.stall = None;
                ready
            }
        }
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
        if !self
            .verdicts
            .push(verdict.map(|_| ()), max_waiting(self.max_head))
        {
            return Some((len, State::Off));
        }
        // An upgrade or CONNECT is followed as any request: if the upstream
        // declines it, HTTP/1.1 goes on and the next head needs its verdict;
        // if it switches, what follows is not HTTP and stops the guard at once.
        let next = match verdict {
            // Refused: the connection closes after the answer.
            Err(_) => State::Off,
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

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        self.progressed(result, cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.progressed(result, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progressed(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn verdicts(stream: &[u8], cuts: &[usize]) -> Vec<Verdict> {
        let (mut g, v) = Guarded::new((), 64 * 1024, Duration::from_secs(300));
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
    fn stops_at_http2_and_at_what_is_not_http() {
        assert!(verdicts(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &[]).is_empty());
        // An upgrade the upstream may decline: the next head gets its verdict.
        let v = verdicts(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nGET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", &[]);
        assert_eq!(v, vec![Ok(()), Err(Reject::LengthTwice)]);
        // A switched one: WebSocket frames are not HTTP, the guard stops.
        let v = verdicts(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58\n", &[]);
        assert_eq!(v, vec![Ok(())]);
        // An h2c upgrade is declined: HTTP/1.1 goes on.
        let v = verdicts(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: upgrade, http2-settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\nGET /x HTTP/1.1\r\n\r\n", &[]);
        assert_eq!(v, vec![Ok(()), Err(Reject::MissingHost)]);
    }

    #[test]
    fn a_full_queue_stops_the_guard_so_later_requests_find_no_verdict() {
        let one = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let max = max_waiting(64 * 1024);
        let stream: Vec<u8> = one.repeat(max + 5);
        let (mut g, v) = Guarded::new((), 64 * 1024, Duration::from_secs(300));
        g.scan(&stream);
        assert!(matches!(g.state, State::Off));
        let mut n = 0;
        while v.next().is_some() {
            n += 1;
        }
        assert_eq!(n, max);
    }

    proptest! {
        #[test]
        fn the_same_verdicts_however_the_bytes_arrive(cuts in proptest::collection::vec(0usize..400, 0..12)) {
            prop_assert_eq!(verdicts(PIPELINE, &cuts), vec![Ok(()), Ok(()), Err(Reject::LengthTwice)]);
        }
    }

    /// Serves `stream` with hyper behind the guard, as the general path
    /// does; returns, for each request hyper parsed, its path and the
    /// verdict the guard had for it.
    fn through_hyper(stream: Vec<u8>) -> Vec<(String, Option<Verdict>)> {
        use http_body_util::BodyExt;
        use tokio::io::AsyncWriteExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (client, server) = tokio::io::duplex(1 << 20);
            let (io, verdicts) = Guarded::new(server, 64 * 1024, Duration::from_secs(300));
            let seen = Arc::new(Mutex::new(Vec::new()));
            let record = Arc::clone(&seen);
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let verdict = verdicts.next();
                    record
                        .lock()
                        .unwrap()
                        .push((req.uri().path().to_string(), verdict));
                    async move {
                        // The body is read whole, as the proxy streams it on.
                        let _ = req.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new()))
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .serve_connection(hyper_util::rt::TokioIo::new(io), service);
            let mut client = client;
            let feed = async move {
                let _ = client.write_all(&stream).await;
                let _ = client.shutdown().await;
                // Drain what hyper answers so it never blocks on a full pipe.
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
                tokio::join!(conn, feed)
            })
            .await;
            seen.lock().unwrap().clone()
        })
    }

    /// A chunked body, then maybe damaged: a bare LF, stray bytes, a
    /// trailer, an extension, a fake head in the trailers.
    fn chunked_body(data: &[u8], damage: u8, at: usize) -> Vec<u8> {
        let mut b = Vec::new();
        for piece in data.chunks(5) {
            b.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            b.extend_from_slice(piece);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"0\r\n");
        match damage % 7 {
            0 => {}
            // A bare LF where the trailers could end, then what reads as a
            // request head to a framer that stops there (hyper does not).
            6 => b.extend_from_slice(b"\nGET /fake HTTP/1.1\r\nHost: x\r\n"),
            1 => b.extend_from_slice(b"X-T: a\r\n"),
            2 => b.extend_from_slice(b"\n"),
            3 => b.extend_from_slice(b"X: a\n"),
            4 => {
                let at = at % b.len();
                b.insert(at, b'\n');
            }
            _ => {
                let at = at % b.len();
                b.insert(at, b';');
            }
        }
        b.extend_from_slice(b"\r\n");
        b
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// The guard and hyper agree on where every request starts: each
        /// request hyper serves gets the verdict on its own head (the one
        /// smuggling attempt gets the refusal; no other does).
        #[test]
        fn hyper_gets_the_verdict_on_its_own_head(
            bodies in proptest::collection::vec(
                (proptest::collection::vec(b'a'..=b'z', 0..12), 0u8..7, 0usize..64),
                1..4,
            ),
            smuggle_at in 0usize..4,
        ) {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (i, (data, damage, at)) in bodies.iter().enumerate() {
                stream.extend_from_slice(format!("POST /r{i} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes());
                stream.extend_from_slice(&chunked_body(data, *damage, *at));
                expected.push(format!("/r{i}"));
                if i == smuggle_at {
                    stream.extend_from_slice(b"POST /smuggle HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
                }
            }
            stream.extend_from_slice(b"GET /last HTTP/1.1\r\nHost: x\r\n\r\n");
            let served = through_hyper(stream.clone());
            prop_assert_eq!(served.first().map(|s| s.0.as_str()), Some("/r0"), "{:?}", served);
            for (path, verdict) in served {
                let refused = path == "/smuggle";
                // No verdict: the guard stopped following, and the request
                // is refused (fail closed), which is safe for any request.
                if let Some(v) = verdict {
                    prop_assert_eq!(
                        v.is_err(), refused,
                        "{} got {:?} in {:?}", path, v, String::from_utf8_lossy(&stream)
                    );
                }
                if refused {
                    prop_assert_eq!(verdict, Some(Err(Reject::LengthTwice)), "{}", String::from_utf8_lossy(&stream));
                }
            }
        }
    }
}
