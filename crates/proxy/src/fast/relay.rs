//! Moving bytes on the fast path: client reads under one lazily re-armed
//! deadline, a response body relayed by its framing, and the client bytes
//! handed to the general path ([`Rewind`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant as TokioInstant, Sleep};

use super::head::Framing;

/// Size of one read of a response body.
const READ_CHUNK: usize = 64 * 1024;

/// Reads more of the client's bytes into `buf`: false when the client closed
/// the connection, it failed, or the deadline passed first.
pub(super) async fn read_more(
    client: &mut TcpStream,
    buf: &mut BytesMut,
    deadline: &mut Deadline,
) -> bool {
    buf.reserve(4096);
    tokio::select! {
        r = client.read_buf(buf) => matches!(r, Ok(n) if n > 0),
        _ = deadline.passed() => false,
    }
}

/// One timer for all of a connection's deadlines, re-armed lazily: setting
/// a deadline only stores it, and tokio's timer wheel is touched when the
/// armed time passes or an earlier deadline is set, not for every read.
pub(super) struct Deadline {
    sleep: Pin<Box<Sleep>>,
    armed: TokioInstant,
    at: TokioInstant,
}

impl Deadline {
    pub(super) fn new(at: TokioInstant) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            armed: at,
            at,
        }
    }

    pub(super) fn set(&mut self, at: TokioInstant) {
        self.at = at;
        if at < self.armed {
            self.armed = at;
            self.sleep.as_mut().reset(at);
        }
    }

    /// Resolves once the deadline last set has passed.
    pub(super) async fn passed(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if TokioInstant::now() >= self.at {
                return;
            }
            self.armed = self.at;
            self.sleep.as_mut().reset(self.at);
        }
    }
}

/// How a relayed response body ended.
pub(super) enum End {
    /// At its framed end, nothing read past it: the upstream connection may serve another request.
    Exact,
    /// Complete, but the connection cannot be reused (bytes past the end, or delimited by its close).
    Extra,
    /// Cut short by the upstream (or its framing): the client connection must end too.
    Broken,
    /// The client's connection failed: it went away before the end.
    ClientGone,
}

pub(super) struct Relayed {
    /// Body bytes passed on (chunked: the data, without the framing).
    pub(super) bytes: u64,
    pub(super) end: End,
}

/// Writes the head in `out` and the response body to the client: what is
/// already in `rbuf`, then reads from the upstream until the body's end.
/// Every read and write must make progress within `idle` (a client that
/// stops reading, an upstream that stops sending): else the exchange ends.
pub(super) async fn relay_body(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    mut framing: Framing,
    out: &mut Vec<u8>,
    rbuf: &mut BytesMut,
    deadline: &mut Deadline,
    idle: std::time::Duration,
) -> Relayed {
    let mut bytes = 0u64;
    let mut first = true;
    loop {
        // How much of `rbuf` belongs to the body, and whether that ends it.
        let (take, done) = match &mut framing {
            Framing::Empty => (0, true),
            Framing::Length(left) => {
                let take = (*left).min(rbuf.len() as u64);
                *left -= take;
                bytes += take;
                (take as usize, *left == 0)
            }
            Framing::Chunked(chunked) => {
                let before = chunked.data;
                let end = match chunked.feed(rbuf) {
                    Ok(end) => end,
                    Err(()) => {
                        tracing::debug!("malformed chunked body from the upstream");
                        let _ = client.write_all(out).await;
                        return Relayed {
                            bytes,
                            end: End::Broken,
                        };
                    }
                };
                bytes += chunked.data - before;
                match end {
                    Some(n) => (n, true),
                    None => (rbuf.len(), false),
                }
            }
            Framing::UntilClose => {
                bytes += rbuf.len() as u64;
                (rbuf.len(), false)
            }
        };
        let write = if first {
            // The head and the first part of the body in one write.
            out.extend_from_slice(&rbuf[..take]);
            write_all_within(client, out, deadline, idle).await
        } else {
            write_all_within(client, &rbuf[..take], deadline, idle).await
        };
        first = false;
        rbuf.advance(take);
        if write.is_err() {
            return Relayed {
                bytes,
                end: End::ClientGone,
            };
        }
        if done {
            let end = if rbuf.is_empty() {
                End::Exact
            } else {
                End::Extra
            };
            return Relayed { bytes, end };
        }
        rbuf.clear();
        rbuf.reserve(READ_CHUNK);
        deadline.set(TokioInstant::now() + idle);
        match within(deadline, upstream.read_buf(rbuf)).await {
            Ok(n) if n > 0 => {}
            Ok(_) if matches!(framing, Framing::UntilClose) => {
                return Relayed {
                    bytes,
                    end: End::Extra,
                };
            }
            _ => {
                return Relayed {
                    bytes,
                    end: End::Broken,
                };
            }
        }
    }
}

/// Writes all of `buf` to the client: at once when the socket takes it (the
/// usual case: no timer is touched), else waiting for it to be writable at
/// most `idle` at a time.
async fn write_all_within(
    client: &mut TcpStream,
    mut buf: &[u8],
    deadline: &mut Deadline,
    idle: std::time::Duration,
) -> io::Result<()> {
    while !buf.is_empty() {
        match client.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                deadline.set(TokioInstant::now() + idle);
                within(deadline, client.writable()).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `io`, unless the deadline passes first (then a `TimedOut` error).
async fn within<T>(
    deadline: &mut Deadline,
    io: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::select! {
        r = io => r,
        () = deadline.passed() => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// A connection whose first bytes were already read: they are read again
/// first (so the general path sees the whole stream).
pub(crate) struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub(crate) fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

crate::guard::write_through!(Rewind);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deadline_moved_later_or_earlier_is_the_one_that_counts() {
        let start = TokioInstant::now();
        let mut d = Deadline::new(start + std::time::Duration::from_millis(30));
        d.set(start + std::time::Duration::from_millis(150));
        d.passed().await;
        assert!(start.elapsed() >= std::time::Duration::from_millis(150));

        let start = TokioInstant::now();
        let mut d = Deadline::new(start + std::time::Duration::from_secs(600));
        d.set(start + std::time::Duration::from_millis(20));
        tokio::time::timeout(std::time::Duration::from_secs(30), d.passed())
            .await
            .expect("an earlier deadline re-arms the timer");
    }
}
