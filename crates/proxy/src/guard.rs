//! Request-smuggling guard for HTTP/1 connections.
//!
//! hyper reads a request that carries both `Content-Length` and
//! `Transfer-Encoding` as chunked and silently drops `Content-Length`, so
//! the service cannot see the conflict. This wrapper watches the bytes a
//! client sends, follows HTTP/1 message framing (heads, Content-Length and
//! chunked bodies, exactly as hyper does), and records for each request head
//! whether it declared its length both ways; the service pops those verdicts
//! in order and refuses such requests with 400.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Verdicts of the request heads seen so far, oldest first.
#[derive(Debug, Default, Clone)]
pub struct Verdicts(Arc<Mutex<VecDeque<bool>>>);

impl Verdicts {
    /// True when the next request (in order) declared its body length twice.
    pub fn next_is_ambiguous(&self) -> bool {
        self.0
            .lock()
            .map(|mut q| q.pop_front().unwrap_or(false))
            .unwrap_or(false)
    }

    fn push(&self, ambiguous: bool) {
        if let Ok(mut q) = self.0.lock() {
            if q.len() < 1024 {
                q.push_back(ambiguous);
            }
        }
    }
}

#[derive(Debug)]
enum State {
    /// Collecting a request head.
    Head(Vec<u8>),
    /// Skipping `n` body bytes.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Skipping chunk data (plus its CRLF).
    ChunkData(u64),
    /// Reading trailer lines after the last chunk.
    Trailers(Vec<u8>),
    /// Not HTTP/1 framing any more (HTTP/2, an upgrade, something unparsable): stop looking.
    Off,
}

/// Wraps a client connection.
pub struct Guarded<T> {
    inner: T,
    state: State,
    verdicts: Verdicts,
    max_head: usize,
    started: bool,
}

impl<T> Guarded<T> {
    pub fn new(inner: T, max_head: usize) -> (Self, Verdicts) {
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
                    if buf.is_empty() {
                        // Tolerate blank lines between requests, as parsers do.
                        let skip = data
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            return;
                        }
                    }
                    let before = buf.len();
                    buf.extend_from_slice(data);
                    let Some(end) = find_head_end(buf) else {
                        if buf.len() > self.max_head {
                            self.state = State::Off; // hyper answers 431
                        }
                        return;
                    };
                    let consumed = end - before;
                    let head = std::mem::take(buf);
                    data = &data[consumed..];
                    self.state = self.after_head(&head[..end]);
                }
                State::Body(n) => {
                    let take = (*n).min(data.len() as u64);
                    *n -= take;
                    data = &data[take as usize..];
                    if *n == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(line) => match data.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        line.extend_from_slice(&data[..=i]);
                        data = &data[i + 1..];
                        let text = String::from_utf8_lossy(line);
                        let size = text.split(';').next().unwrap_or("").trim();
                        self.state = match u64::from_str_radix(size, 16) {
                            Ok(0) => State::Trailers(Vec::new()),
                            Ok(n) => State::ChunkData(n + 2),
                            Err(_) => State::Off,
                        };
                    }
                    None => {
                        line.extend_from_slice(data);
                        if line.len() > 1024 {
                            self.state = State::Off;
                        }
                        return;
                    }
                },
                State::ChunkData(n) => {
                    let take = (*n).min(data.len() as u64);
                    *n -= take;
                    data = &data[take as usize..];
                    if *n == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailers(line) => match data.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        line.extend_from_slice(&data[..i]);
                        let blank = line.is_empty() || line.as_slice() == b"\r";
                        line.clear();
                        data = &data[i + 1..];
                        if blank {
                            self.state = State::Head(Vec::new());
                        }
                    }
                    None => {
                        line.extend_from_slice(data);
                        if line.len() > self.max_head {
                            self.state = State::Off;
                        }
                        return;
                    }
                },
            }
        }
    }

    /// Records the verdict of a complete head and says how its body is framed.
    fn after_head(&self, head: &[u8]) -> State {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return State::Off,
        }
        let mut content_length: Option<u64> = None;
        let mut te = false;
        let mut te_chunked = false;
        let mut upgrade = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                content_length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
                if content_length.is_none() {
                    content_length = Some(0);
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = true;
                te_chunked = String::from_utf8_lossy(h.value)
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        let ambiguous = te && content_length.is_some();
        self.verdicts.push(ambiguous);
        if upgrade || req.method == Some("CONNECT") {
            return State::Off;
        }
        match (te, te_chunked, content_length) {
            (true, true, _) => State::ChunkSize(Vec::new()),
            (true, false, _) => State::Off, // hyper refuses it
            (false, _, Some(n)) if n > 0 => State::Body(n),
            _ => State::Head(Vec::new()),
        }
    }
}

/// Index just past the `\r\n\r\n` (or `\n\n`) ending a head.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
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

    fn verdicts(stream: &[u8], cuts: &[usize]) -> Vec<bool> {
        let (mut g, v) = Guarded::new((), 64 * 1024);
        let mut last = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| (*c).min(stream.len())).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        for c in cuts {
            g.scan(&stream[last..c]);
            last = c;
        }
        let mut out = Vec::new();
        while let Ok(mut q) = v.0.lock() {
            match q.pop_front() {
                Some(b) => out.push(b),
                None => break,
            }
        }
        out
    }

    const PIPELINE: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 18\r\n\r\nContent-Length: 5\r\n\
GET /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\nTrailer: y\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
GET /d HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn follows_framing_and_flags_only_ambiguous_heads() {
        assert_eq!(verdicts(PIPELINE, &[]), vec![false, false, true, false]);
    }

    #[test]
    fn stops_at_http2_and_upgrades() {
        assert!(verdicts(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &[]).is_empty());
        let v = verdicts(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", &[]);
        assert_eq!(v, vec![false]);
    }

    proptest! {
        #[test]
        fn the_same_verdicts_however_the_bytes_arrive(cuts in proptest::collection::vec(0usize..400, 0..12)) {
            prop_assert_eq!(verdicts(PIPELINE, &cuts), vec![false, false, true, false]);
        }
    }
}
