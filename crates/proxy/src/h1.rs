//! HTTP/1 pieces that the fast path, the rules and the smuggling guard
//! share: `Content-Length` values, comma-separated token lists, and the
//! chunked-body framer ([`ChunkedEnd`]).

/// Optional whitespace (RFC 9110 §5.6.3): SP and HTAB only.
pub(crate) fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `value` without leading and trailing SP/HTAB (never any other byte:
/// Unicode whitespace such as NBSP is not whitespace in HTTP).
pub(crate) fn trim_ows(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|b| !is_ows(*b))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(*b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// A byte table: ASCII letters and digits, the unreserved marks (`-._~`),
/// `%` (pct-encoded), the sub-delims of RFC 3986 (`!$&'()*+,;=`), and
/// `extra`. Host values and request targets are checked with one.
pub(crate) const fn uri_bytes(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

/// A `Content-Length` value (RFC 9112 §6.2): ASCII digits only, SP and HTAB
/// trimmed; no sign, no list, nothing that overflows.
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = trim_ows(value);
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// The elements of a comma-separated list (RFC 9110 §5.6.1), trimmed, empty
/// ones skipped.
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

/// True when the list `value` has `token` (ASCII case-insensitive).
pub(crate) fn has_token(value: &[u8], token: &str) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// Follows a chunked body (RFC 9112 §7.1) to find its end: after the last
/// (empty) chunk and the trailer section. Counts the data bytes on the way.
///
/// It accepts exactly what hyper's decoder accepts (hyper 1.x,
/// `proto/h1/decode.rs`), byte for byte, because the guard in front of
/// hyper must find the same end of a body as hyper does, and the fast path
/// must relay only the bodies the general path would: size lines end in
/// CRLF (never a bare LF); SP/HTAB may follow the size; extensions may hold
/// no LF and total at most 16 KiB per body; chunk data ends in CRLF;
/// trailer lines end in CRLF, at most 100 of them in 16 KiB, and must
/// parse as header fields.
#[derive(Debug, Default)]
pub(crate) struct ChunkedEnd {
    state: Chunk,
    /// Size of the chunk whose size line is being read, or data left in the current one.
    size: u64,
    /// Extension bytes so far in this body.
    extensions: u64,
    /// The trailer section so far (allocated only if there is one).
    trailers: Vec<u8>,
    trailer_lines: usize,
    /// Data bytes seen so far.
    pub(crate) data: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The first hex digit of a size line.
    #[default]
    Start,
    Size,
    /// SP/HTAB after the size.
    SizeLws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// After the last chunk's size line: CR (the end) or a trailer line.
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// hyper's limits: extension bytes per body, trailer bytes, trailer lines.
const MAX_EXTENSIONS: u64 = 16 * 1024;
const MAX_TRAILER_BYTES: usize = 16 * 1024;
const MAX_TRAILER_LINES: usize = 100;

impl ChunkedEnd {
    /// Feeds the next bytes: `Ok(Some(n))` when the body ends after `n` of
    /// them, `Ok(None)` when it goes on, `Err` when it is not chunked framing.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                Chunk::Start => {
                    self.size = 0;
                    self.digit(b).ok_or(())?;
                    Chunk::Size
                }
                Chunk::Size => match b {
                    b'\t' | b' ' => Chunk::SizeLws,
                    b';' => Chunk::Extension,
                    b'\r' => Chunk::SizeLf,
                    _ => {
                        self.digit(b).ok_or(())?;
                        Chunk::Size
                    }
                },
                Chunk::SizeLws => match b {
                    b'\t' | b' ' => Chunk::SizeLws,
                    b';' => Chunk::Extension,
                    b'\r' => Chunk::SizeLf,
                    _ => return Err(()),
                },
                Chunk::Extension => match b {
                    b'\r' => Chunk::SizeLf,
                    b'\n' => return Err(()),
                    _ => {
                        self.extensions += 1;
                        if self.extensions >= MAX_EXTENSIONS {
                            return Err(());
                        }
                        Chunk::Extension
                    }
                },
                Chunk::SizeLf if b == b'\n' && self.size == 0 => Chunk::EndCr,
                Chunk::SizeLf if b == b'\n' => Chunk::Data,
                Chunk::SizeLf => return Err(()),
                Chunk::Data => {
                    let take = self.size.min((bytes.len() - i) as u64);
                    self.size -= take;
                    self.data += take;
                    i += take as usize;
                    if self.size == 0 {
                        self.state = Chunk::DataCr;
                    }
                    continue;
                }
                Chunk::DataCr if b == b'\r' => Chunk::DataLf,
                Chunk::DataLf if b == b'\n' => Chunk::Start,
                Chunk::DataCr | Chunk::DataLf => return Err(()),
                Chunk::EndCr => {
                    if !self.trailers.is_empty() || b != b'\r' {
                        self.trailer_byte(b)?;
                    }
                    if b == b'\r' {
                        Chunk::EndLf
                    } else {
                        Chunk::Trailer
                    }
                }
                Chunk::Trailer => {
                    self.trailer_byte(b)?;
                    if b == b'\r' {
                        Chunk::TrailerLf
                    } else {
                        Chunk::Trailer
                    }
                }
                Chunk::TrailerLf if b == b'\n' => {
                    if self.trailer_lines >= MAX_TRAILER_LINES {
                        return Err(());
                    }
                    self.trailer_lines += 1;
                    self.trailer_byte(b)?;
                    Chunk::EndCr
                }
                Chunk::TrailerLf => return Err(()),
                Chunk::EndLf if b == b'\n' => {
                    if !self.trailers.is_empty() {
                        self.trailer_byte(b)?;
                        self.check_trailers()?;
                    }
                    self.state = Chunk::Done;
                    return Ok(Some(i + 1));
                }
                Chunk::EndLf => return Err(()),
                Chunk::Done => return Ok(Some(i)),
            };
            i += 1;
        }
        Ok((self.state == Chunk::Done).then_some(i))
    }

    /// Adds a hex digit to the size (None: not a digit, or overflow).
    fn digit(&mut self, b: u8) -> Option<()> {
        let d = (b as char).to_digit(16)?;
        self.size = self.size.checked_mul(16)?.checked_add(u64::from(d))?;
        Some(())
    }

    fn trailer_byte(&mut self, b: u8) -> Result<(), ()> {
        if self.trailers.len() >= MAX_TRAILER_BYTES {
            return Err(());
        }
        self.trailers.push(b);
        Ok(())
    }

    /// The trailer section must parse as header fields, as hyper requires.
    fn check_trailers(&self) -> Result<(), ()> {
        let mut fields = vec![httparse::EMPTY_HEADER; self.trailer_lines];
        match httparse::parse_headers(&self.trailers, &mut fields) {
            Ok(httparse::Status::Complete(_)) => Ok(()),
            _ => Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BODY: &[u8] =
        b"4\r\nwiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\n";

    fn end_of(stream: &[u8], cuts: &[usize]) -> (Option<usize>, u64) {
        let mut c = ChunkedEnd::default();
        let mut cuts: Vec<usize> = cuts.iter().map(|x| (*x).min(stream.len())).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut last = 0;
        for cut in cuts {
            if let Some(n) = c.feed(&stream[last..cut]).unwrap() {
                return (Some(last + n), c.data);
            }
            last = cut;
        }
        (None, c.data)
    }

    #[test]
    fn finds_the_end_of_a_chunked_body_and_counts_its_data() {
        let mut stream = BODY.to_vec();
        stream.extend_from_slice(b"HTTP/1.1 200 OK\r\n"); // the next response
        assert_eq!(end_of(&stream, &[]), (Some(BODY.len()), 23));
        assert_eq!(end_of(b"0\r\n\r\n", &[]), (Some(5), 0));
        assert_eq!(end_of(b"0 ;x\r\n\r\n", &[]), (Some(8), 0));
        assert_eq!(end_of(b"000000000000000000001\r\nz\r\n0\r\n\r\n", &[]).1, 1);
        assert_eq!(end_of(&BODY[..BODY.len() - 1], &[]).0, None);
        // A bare LF where the trailer section could end does not end it:
        // hyper reads on to the next CRLF CRLF (here a whole "request"),
        // and so must the guard, or it would see a request hyper never does.
        let trick = b"0\r\n\nGET /fake HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut stream = trick.to_vec();
        stream.extend_from_slice(b"POST /3 HTTP/1.1\r\n");
        assert_eq!(end_of(&stream, &[]), (Some(trick.len()), 0));
        assert_eq!(
            end_of(b"0\r\nX: a\n\r\n", &[]),
            (None, 0),
            "a bare LF inside a trailer line ends nothing: incomplete, as for hyper"
        );
    }

    #[test]
    fn rejects_what_is_not_chunked_framing() {
        // As hyper: a bare LF ends no line, anywhere in the framing.
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"4\r\nwikiXX",
            b"4\rX",
            b"fffffffffffffffff\r\n",
            b"5\nhello\r\n",
            b"5 junk\r\n",
            b"4;a\nb\r\n",
            b"4\r\nwiki\n",
            b"0\n\n",
            b"0\r\nX\x00: \x01\r\n\r\n",
            b"0\r\nno colon\r\n\r\n",
        ] {
            assert!(
                ChunkedEnd::default().feed(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn content_length_is_ascii_digits_with_only_sp_and_htab_trimmed() {
        assert_eq!(parse_length(b" 42 "), Some(42));
        assert_eq!(parse_length(b"\t7\t"), Some(7));
        assert_eq!(parse_length(b"18446744073709551615"), None, "20 digits");
        assert_eq!(
            parse_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1,1",
            b"5, 5",
            b"0x10",
            b"99999999999999999999999",
            "5\u{a0}".as_bytes(),
            "\u{a0}5".as_bytes(),
            "\u{2003}5".as_bytes(),
            b"5\x0b",
            b"5\r",
            "\u{0665}".as_bytes(), // ARABIC-INDIC DIGIT FIVE
        ] {
            assert_eq!(
                parse_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn token_lists_split_on_commas_and_trim_only_ows() {
        let got: Vec<&[u8]> = tokens(b" close ,, Keep-Alive\t,x-a").collect();
        assert_eq!(got, vec![&b"close"[..], b"Keep-Alive", b"x-a"]);
        assert!(has_token(b"keep-alive, UPGRADE", "upgrade"));
        assert!(!has_token("upgrade\u{a0}".as_bytes(), "upgrade"));
    }

    proptest! {
        #[test]
        fn the_same_end_however_the_bytes_arrive(cuts in proptest::collection::vec(0usize..80, 0..10)) {
            prop_assert_eq!(end_of(BODY, &cuts), (Some(BODY.len()), 23));
        }

        #[test]
        fn any_chunk_sizes_frame_exactly(sizes in proptest::collection::vec(1usize..300, 0..8), cut in 0usize..3000) {
            let mut stream = Vec::new();
            for n in &sizes {
                stream.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                stream.extend(std::iter::repeat_n(b'z', *n));
                stream.extend_from_slice(b"\r\n");
            }
            stream.extend_from_slice(b"0\r\n\r\n");
            let total: usize = sizes.iter().sum();
            prop_assert_eq!(end_of(&stream, &[cut]), (Some(stream.len()), total as u64));
        }

        #[test]
        fn lengths_read_back_as_written(n: u64, pad in "[ \t]{0,3}") {
            let text = format!("{pad}{n}{pad}");
            let expected = (n.to_string().len() <= 19).then_some(n);
            prop_assert_eq!(parse_length(text.as_bytes()), expected);
        }
    }
}
