//! SCRAM-SHA-256 for the login check, with the salted password kept.
//!
//! Every scrape logs in afresh (`pg_up`). Under scram-sha-256 the client's
//! share of a login is PBKDF2 over the password: 4096 rounds of
//! HMAC-SHA-256 (the server's `scram_iterations`), the same result each time
//! for the same password, salt and iteration count. tokio-postgres does the
//! whole exchange inside `connect` and takes only the password, so it would
//! derive the key again on every scrape. [`ScramStream`] sits between it and
//! the socket and answers the server's SASL messages itself, with the salted
//! password from a [`ScramCache`] (derived once, with ring's PBKDF2); it
//! checks the server's signature as tokio-postgres does, then hands the rest
//! (AuthenticationOk onwards) to tokio-postgres. Every login still proves the
//! password to the server: only the client's derivation is reused.
//!
//! It is used only where it is simple: plain TCP (`sslmode=disable`), one
//! host, a password of printable ASCII (which SASLprep leaves as it is).
//! Anything else the server asks for (another mechanism, MD5, cleartext, an
//! error) goes to tokio-postgres untouched.

use std::io;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use ring::{digest, hmac, pbkdf2, rand};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::session::lock;

/// What was derived from a password: the salt and iteration count it was
/// derived with, and the salted password.
struct Derived {
    password: Vec<u8>,
    salt: Vec<u8>,
    iterations: u32,
    salted: [u8; 32],
}

/// The salted password of the last login, shared by the clones of a data source.
#[derive(Default)]
pub struct ScramCache {
    last: Mutex<Option<Derived>>,
}

impl std::fmt::Debug for ScramCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramCache")
    }
}

impl ScramCache {
    fn salted(&self, password: &[u8], salt: &[u8], iterations: NonZeroU32) -> [u8; 32] {
        let mut last = lock(&self.last);
        if let Some(d) = last.as_ref() {
            if d.password == password && d.salt == salt && d.iterations == iterations.get() {
                return d.salted;
            }
        }
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            salt,
            password,
            &mut salted,
        );
        *last = Some(Derived {
            password: password.to_vec(),
            salt: salt.to_vec(),
            iterations: iterations.get(),
            salted,
        });
        salted
    }
}

/// Whether [`ScramStream`] can answer for this password (SASLprep leaves
/// printable ASCII as it is; anything else is left to tokio-postgres).
pub fn usable(password: &[u8]) -> bool {
    !password.is_empty() && password.iter().all(|b| (0x20..0x7f).contains(b))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the server's first authentication message.
    First,
    /// Sent the client-first message; waiting for the server-first.
    Continue,
    /// Sent the proof; waiting for the server's signature.
    Final,
    /// Everything goes through.
    Through,
}

/// A stream that answers the server's SCRAM-SHA-256 exchange (see the module docs).
pub struct ScramStream<S> {
    inner: S,
    state: State,
    password: Vec<u8>,
    cache: Arc<ScramCache>,
    /// Read from the server, not yet handled or handed on.
    pending: Vec<u8>,
    /// To write to the server before anything else.
    out: Vec<u8>,
    nonce: String,
    client_first_bare: String,
    server_signature: Option<[u8; 32]>,
}

impl<S> ScramStream<S> {
    pub fn new(inner: S, password: &[u8], cache: Arc<ScramCache>) -> Self {
        Self {
            inner,
            state: State::First,
            password: password.to_vec(),
            cache,
            pending: Vec::new(),
            out: Vec::new(),
            nonce: String::new(),
            client_first_bare: String::new(),
            server_signature: None,
        }
    }

    /// Handles one whole message from the server (type, body).
    fn handle(&mut self, kind: u8, body: &[u8]) -> io::Result<bool> {
        let code = (kind == b'R' && body.len() >= 4)
            .then(|| u32::from_be_bytes([body[0], body[1], body[2], body[3]]));
        match (self.state, code) {
            (State::First, Some(10)) => {
                let offered = body[4..].split(|b| *b == 0).any(|m| m == b"SCRAM-SHA-256");
                if !offered {
                    return Ok(false);
                }
                let mut raw = [0u8; 18];
                rand::SecureRandom::fill(&rand::SystemRandom::new(), &mut raw)
                    .map_err(|_| io::Error::other("no random numbers for the SCRAM nonce"))?;
                self.nonce = base64(&raw);
                self.client_first_bare = format!("n=,r={}", self.nonce);
                let first = format!("n,,{}", self.client_first_bare);
                let mut msg = b"SCRAM-SHA-256\0".to_vec();
                msg.extend_from_slice(&(first.len() as u32).to_be_bytes());
                msg.extend_from_slice(first.as_bytes());
                self.send(b'p', &msg);
                self.state = State::Continue;
                Ok(true)
            }
            (State::Continue, Some(11)) => {
                let server_first = std::str::from_utf8(&body[4..])
                    .map_err(|_| bad("the server's SCRAM message is not UTF-8"))?;
                let (client_final, server_signature) = self.prove(server_first)?;
                self.server_signature = Some(server_signature);
                self.send(b'p', client_final.as_bytes());
                self.state = State::Final;
                Ok(true)
            }
            (State::Final, Some(12)) => {
                let text = std::str::from_utf8(&body[4..]).unwrap_or("");
                let verifier = text
                    .split(',')
                    .find_map(|a| a.strip_prefix("v="))
                    .and_then(unbase64);
                match (verifier, self.server_signature) {
                    (Some(v), Some(expected)) if v == expected => {
                        self.state = State::Through;
                        Ok(true)
                    }
                    _ => Err(bad(
                        "the server's SCRAM signature is wrong: it does not know this role's password \
                         (check host and port: is this the server you meant?)",
                    )),
                }
            }
            // Anything else: tokio-postgres takes it from here.
            _ => Ok(false),
        }
    }

    /// The client-final message and the server signature to expect.
    fn prove(&self, server_first: &str) -> io::Result<(String, [u8; 32])> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in server_first.split(',') {
            match attr.split_at_checked(2) {
                Some(("r=", v)) => nonce = Some(v),
                Some(("s=", v)) => salt = unbase64_vec(v),
                Some(("i=", v)) => iterations = v.parse::<u32>().ok().and_then(NonZeroU32::new),
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(bad(
                "the server's SCRAM message lacks its nonce, salt or iterations",
            ));
        };
        if !nonce.starts_with(&self.nonce) || nonce.len() <= self.nonce.len() {
            return Err(bad("the server's SCRAM nonce does not extend ours"));
        }
        let salted = self.cache.salted(&self.password, &salt, iterations);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let salted_key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
        let client_key = hmac::sign(&salted_key, b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
        let signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(signature.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac::sign(&salted_key, b"Server Key");
        let server_signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, server_key.as_ref()),
            auth_message.as_bytes(),
        );
        let mut expected = [0u8; 32];
        expected.copy_from_slice(server_signature.as_ref());
        Ok((format!("{without_proof},p={}", base64(&proof)), expected))
    }

    fn send(&mut self, kind: u8, body: &[u8]) {
        self.out.push(kind);
        self.out
            .extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        self.out.extend_from_slice(body);
    }
}

fn bad(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

impl<S: AsyncRead + AsyncWrite + Unpin> ScramStream<S> {
    /// Writes what this stream has to say to the server.
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.drain(..n);
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ScramStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.poll_out(cx))?;
            if this.state == State::Through {
                if this.pending.is_empty() {
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.drain(..n);
                return Poll::Ready(Ok(()));
            }
            // A whole message at the head of what was read?
            if this.pending.len() >= 5 {
                let len = u32::from_be_bytes([
                    this.pending[1],
                    this.pending[2],
                    this.pending[3],
                    this.pending[4],
                ]) as usize;
                if len < 4 {
                    this.state = State::Through;
                    continue;
                }
                if this.pending.len() > len {
                    let kind = this.pending[0];
                    let body = this.pending[5..1 + len].to_vec();
                    if this.handle(kind, &body)? {
                        this.pending.drain(..1 + len);
                    } else {
                        this.state = State::Through;
                    }
                    continue;
                }
            }
            let mut chunk = [0u8; 2048];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // The server closed: tokio-postgres says so.
                this.state = State::Through;
                continue;
            }
            this.pending.extend_from_slice(read.filled());
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ScramStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_out(cx))?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_out(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unbase64_vec(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn unbase64(s: &str) -> Option<[u8; 32]> {
    unbase64_vec(s)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
            assert_eq!(unbase64_vec(&base64(data)).unwrap(), data);
        }
        assert_eq!(base64(b"n,,"), "biws");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert!(unbase64_vec("a*").is_none());
    }

    /// RFC 7677's example exchange (user "user", password "pencil").
    #[test]
    fn rfc_7677_exchange() {
        let mut s = ScramStream::new((), b"pencil", Arc::default());
        s.nonce = "rOprNGfwEbeRWgbNEkqO".into();
        s.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
        let (client_final, server_signature) = s
            .prove("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .unwrap();
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(
            base64(&server_signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        // The nonce must extend ours.
        assert!(
            s.prove("r=other,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
                .is_err()
        );
        assert!(usable(b"pencil") && !usable(b"") && !usable("p\u{e9}".as_bytes()));
    }
}
