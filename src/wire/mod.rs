//! Wire protocol v3: framing of the few messages the pooler reads whole, and builders for the
//! backend messages it writes itself.
//!
//! Frontend messages the pooler *sends* (to Postgres) and backend messages it *parses* during
//! login come from `postgres-protocol`; that crate has no backend writers and no parser for
//! the startup packet, so those few live here.

mod frame;
mod tag;
pub use frame::*;
pub use tag::*;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt};

use crate::error::{PoolerError, Result};

/// Postgres refuses startup packets above 10000 bytes; so do we.
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Password and SASL messages are small; anything larger during login is an attack.
pub const MAX_LOGIN_MESSAGE_LEN: usize = 16 * 1024;
/// Postgres's own limit on one message (`PQ_LARGE_MESSAGE_LIMIT` is 1 GB).
pub const MAX_MESSAGE_LEN: usize = 0x3fff_ffff;

pub const PROTOCOL_3_0: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// What a client can send before it is logged in. A startup's parameters are borrowed from
/// the packet: a login copies only what it keeps.
#[derive(Debug)]
pub enum StartupRequest<'a> {
    Startup { params: Vec<(&'a str, &'a str)> },
    Ssl,
    GssEnc,
    Cancel { pid: i32, secret: i32 },
}

/// The lengths a startup-phase packet may have (the length word counts itself and the code).
const STARTUP_LENS: std::ops::RangeInclusive<i32> = 8..=MAX_STARTUP_LEN as i32;

/// Reads one startup-phase packet (length, code, body) and returns what follows the length
/// word, for `parse_startup`.
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>> {
    let len = r.read_i32().await?;
    if !STARTUP_LENS.contains(&len) {
        return Err(PoolerError::protocol(format!(
            "invalid startup packet length {len}"
        )));
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await?;
    Ok(body)
}

/// `read_startup` through a buffered reader: a packet that arrived whole (every driver's, in
/// one segment) is taken from the buffer at once, without the two read futures.
pub async fn read_startup_buffered<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Vec<u8>> {
    let buf = r.fill_buf().await?;
    if let Some(len) = buf
        .get(..4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        && STARTUP_LENS.contains(&len)
        && buf.len() >= len as usize
    {
        let body = buf[4..len as usize].to_vec();
        r.consume(len as usize);
        return Ok(body);
    }
    // Split across reads, cut short or invalid: the general path, with its errors.
    read_startup(r).await
}

/// Parses a startup packet body (after the length word).
pub fn parse_startup(mut body: &[u8]) -> Result<StartupRequest<'_>> {
    if body.len() < 4 {
        return Err(PoolerError::protocol("startup packet too short"));
    }
    let code = body.get_i32();
    match code {
        SSL_REQUEST if body.is_empty() => Ok(StartupRequest::Ssl),
        GSSENC_REQUEST if body.is_empty() => Ok(StartupRequest::GssEnc),
        CANCEL_REQUEST if body.len() == 8 => {
            let pid = body.get_i32();
            let secret = body.get_i32();
            Ok(StartupRequest::Cancel { pid, secret })
        }
        PROTOCOL_3_0 => {
            // One UTF-8 check for the whole packet (NUL is UTF-8 too), then splits at each NUL.
            let mut rest = std::str::from_utf8(body)
                .map_err(|_| PoolerError::protocol("invalid UTF-8 in string"))?;
            // A byte search: `split_once('\0')`'s char searcher cost more than the strings.
            let mut take = || {
                let end = rest
                    .bytes()
                    .position(|b| b == 0)
                    .ok_or_else(|| PoolerError::protocol("missing string terminator"))?;
                let s = &rest[..end];
                rest = &rest[end + 1..];
                Ok::<_, PoolerError>(s)
            };
            // Drivers send three to six parameters: one allocation for the list.
            let mut params = Vec::with_capacity(8);
            loop {
                let name = take()?;
                if name.is_empty() {
                    break;
                }
                params.push((name, take()?));
            }
            if !rest.is_empty() {
                return Err(PoolerError::protocol("trailing bytes after startup packet"));
            }
            Ok(StartupRequest::Startup { params })
        }
        other => Err(PoolerError::protocol(format!(
            "unsupported frontend protocol {}.{}: server supports 3.0",
            other >> 16,
            other & 0xffff
        ))),
    }
}

/// Takes one NUL-terminated UTF-8 string off the front of `buf`.
pub fn take_cstr(buf: &mut &[u8]) -> Result<String> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| PoolerError::protocol("missing string terminator"))?;
    let s = std::str::from_utf8(&buf[..end])
        .map_err(|_| PoolerError::protocol("invalid UTF-8 in string"))?
        .to_string();
    *buf = &buf[end + 1..];
    Ok(s)
}

/// Reads one typed message (tag, body) whole; only for the login phase, where messages are small.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    max_len: usize,
) -> Result<(u8, Vec<u8>)> {
    let tag = r.read_u8().await?;
    let len = r.read_i32().await?;
    if len < 4 || len as usize - 4 > max_len {
        return Err(PoolerError::protocol(format!(
            "invalid message length {len} for message type '{}'",
            tag.escape_ascii()
        )));
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await?;
    Ok((tag, body))
}

/// Reads one message through a buffered reader and hands its tag and body to `take`: a
/// message that arrived whole (a password or SASL message, in one segment) is read in place
/// from the buffer, with no copy and none of `read_message`'s three read futures; one split
/// across reads goes through `read_message`, with its checks and errors.
pub async fn with_message_buffered<R, T>(
    r: &mut R,
    max_len: usize,
    take: impl FnOnce(u8, &[u8]) -> T,
) -> Result<T>
where
    R: AsyncBufRead + Unpin,
{
    let buf = r.fill_buf().await?;
    if let Some((tag, len)) = header(buf)
        && len >= 4
        && len as usize - 4 <= max_len
        && buf.len() > len as usize
    {
        let end = 1 + len as usize;
        let taken = take(tag, &buf[5..end]);
        r.consume(end);
        return Ok(taken);
    }
    let (tag, body) = read_message(r, max_len).await?;
    Ok(take(tag, &body))
}

/// A 5-byte message header: tag and the length of the body that follows.
#[inline]
pub fn header(buf: &[u8]) -> Option<(u8, i32)> {
    if buf.len() < 5 {
        return None;
    }
    Some((buf[0], i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]])))
}

fn put_message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let len_at = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = (buf.len() - len_at) as i32;
    buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    // A NUL inside would end the string early on the wire; drop it rather than corrupt framing.
    // (Looked for first: extending byte by byte through the filter cost ~100 instructions a
    // ParameterStatus, and a login writes fifteen of them.)
    if s.as_bytes().contains(&0) {
        buf.extend(s.bytes().filter(|&b| b != 0));
    } else {
        buf.extend_from_slice(s.as_bytes());
    }
    buf.put_u8(0);
}

pub fn auth_ok(buf: &mut BytesMut) {
    put_message(buf, b'R', |b| b.put_i32(0));
}

pub fn auth_cleartext(buf: &mut BytesMut) {
    put_message(buf, b'R', |b| b.put_i32(3));
}

pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    put_message(buf, b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

pub fn auth_sasl(buf: &mut BytesMut, mechanism: &str) {
    put_message(buf, b'R', |b| {
        b.put_i32(10);
        put_cstr(b, mechanism);
        b.put_u8(0);
    });
}

pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    put_message(buf, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    put_message(buf, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

/// A simple Query message (the pooler's own, or one it rewrote).
pub fn query(buf: &mut BytesMut, sql: &str) {
    buf.put_u8(b'Q');
    buf.put_i32((4 + sql.len() + 1) as i32);
    buf.put_slice(sql.as_bytes());
    buf.put_u8(0);
}

/// A Parse message: the statement name, then the rest of the body (query text with its
/// terminator, parameter types) given in parts, so a caller can splice a new text in front
/// of a client's own parameter types without copying them first.
pub fn parse(buf: &mut BytesMut, name: &str, rest: &[&[u8]]) {
    let len: usize = rest.iter().map(|p| p.len()).sum();
    buf.put_u8(b'P');
    buf.put_i32((4 + name.len() + 1 + len) as i32);
    buf.put_slice(name.as_bytes());
    buf.put_u8(0);
    for part in rest {
        buf.put_slice(part);
    }
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    put_message(buf, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    put_message(buf, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    put_message(buf, b'Z', |b| b.put_u8(status));
}

pub fn error_response(buf: &mut BytesMut, severity: &str, code: &str, message: &str) {
    put_message(buf, b'E', |b| {
        b.put_u8(b'S');
        put_cstr(b, severity);
        b.put_u8(b'V');
        put_cstr(b, severity);
        b.put_u8(b'C');
        put_cstr(b, code);
        b.put_u8(b'M');
        put_cstr(b, message);
        b.put_u8(0);
    });
}

impl PoolerError {
    /// The FATAL ErrorResponse that ends the client's session. It is written here, with the
    /// encoder, rather than in `error.rs`: the error type sits below the wire layer that
    /// returns it, and only its SQLSTATE and text are decided there.
    pub fn to_fatal(&self) -> BytesMut {
        let mut buf = BytesMut::new();
        error_response(&mut buf, "FATAL", self.sqlstate(), &self.to_string());
        buf
    }
}

/// A NoticeResponse (`query_wait_notify`).
pub fn notice(buf: &mut BytesMut, message: &str) {
    put_message(buf, b'N', |b| {
        for (field, value) in [(b'S', "NOTICE"), (b'V', "NOTICE"), (b'C', "00000")] {
            b.put_u8(field);
            put_cstr(b, value);
        }
        b.put_u8(b'M');
        put_cstr(b, message);
        b.put_u8(0);
    });
}

/// A NoticeResponse with a detail (the admin console's `SHOW HELP`).
pub fn notice_response(buf: &mut BytesMut, message: &str, detail: &str) {
    put_message(buf, b'N', |b| {
        for (field, value) in [(b'S', "NOTICE"), (b'V', "NOTICE"), (b'C', "00000")] {
            b.put_u8(field);
            put_cstr(b, value);
        }
        b.put_u8(b'M');
        put_cstr(b, message);
        b.put_u8(b'D');
        put_cstr(b, detail);
        b.put_u8(0);
    });
}

/// Type OIDs of the columns the pooler's own result sets use.
pub const TEXT_OID: u32 = 25;
pub const INT8_OID: u32 = 20;

/// RowDescription for text-format columns of the given names and type OIDs.
pub fn row_description(buf: &mut BytesMut, columns: &[(&str, u32)]) {
    put_message(buf, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for (name, oid) in columns {
            put_cstr(b, name);
            b.put_u32(0); // table OID
            b.put_i16(0); // column number
            b.put_u32(*oid);
            b.put_i16(if *oid == INT8_OID { 8 } else { -1 }); // type size
            b.put_i32(-1); // type modifier
            b.put_i16(0); // text format
        }
    });
}

/// DataRow; `None` is SQL NULL.
pub fn data_row<S: AsRef<str>>(buf: &mut BytesMut, values: &[Option<S>]) {
    put_message(buf, b'D', |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.as_ref().len() as i32);
                    b.put_slice(v.as_ref().as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    });
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    put_message(buf, b'C', |b| put_cstr(b, tag));
}

pub fn empty_query_response(buf: &mut BytesMut) {
    put_message(buf, b'I', |_| {});
}

/// The fields of an ErrorResponse/NoticeResponse body that the pooler cares about.
pub fn error_fields(mut body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    while let Some((&field, rest)) = body.split_first() {
        if field == 0 {
            break;
        }
        body = rest;
        let Ok(value) = take_cstr(&mut body) else {
            break;
        };
        match field {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    (code, message)
}

/// Quotes a value as an SQL string literal for `SET name = '...'`.
pub fn quote_literal(value: &str) -> String {
    // An escape string when there is a backslash: it means the same whatever the session's
    // standard_conforming_strings (a client may have turned it off).
    if value.contains('\\') {
        format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", value.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_inside_a_string_is_dropped_not_sent() {
        let mut buf = BytesMut::new();
        parameter_status(&mut buf, "appl\0ication_name", "psql");
        assert_eq!(&buf[..], b"S\0\0\0\x1aapplication_name\0psql\0");
        buf.clear();
        parameter_status(&mut buf, "a", "");
        assert_eq!(&buf[..], b"S\0\0\0\x07a\0\0");
    }

    #[test]
    fn startup_roundtrip() {
        let mut pkt = BytesMut::new();
        postgres_protocol::message::frontend::startup_message(
            [("user", "u"), ("database", "d")],
            &mut pkt,
        )
        .unwrap();
        match parse_startup(&pkt[4..]).unwrap() {
            StartupRequest::Startup { params } => {
                assert_eq!(params, vec![("user", "u"), ("database", "d")])
            }
            other => panic!("{other:?}"),
        }
    }

    /// A buffered reader that gets `bytes` one at a time, and the task writing them.
    fn a_byte_per_read(
        bytes: Vec<u8>,
    ) -> (
        tokio::io::BufReader<tokio::io::DuplexStream>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let (mut w, rd) = tokio::io::duplex(1);
        let writer =
            tokio::spawn(async move { tokio::io::AsyncWriteExt::write_all(&mut w, &bytes).await });
        (tokio::io::BufReader::new(rd), writer)
    }

    /// Whole in one read, a byte per read, or followed by the next message: the same body,
    /// and what follows stays in the buffer; a bad length is the general path's error.
    #[tokio::test]
    async fn a_buffered_startup_read_takes_a_whole_packet_or_its_pieces() {
        let mut pkt = BytesMut::new();
        postgres_protocol::message::frontend::startup_message(
            [("user", "u"), ("database", "d")],
            &mut pkt,
        )
        .unwrap();
        let mut whole = pkt.to_vec();
        whole.extend_from_slice(b"Q");
        let mut r = tokio::io::BufReader::new(&whole[..]);
        assert_eq!(read_startup_buffered(&mut r).await.unwrap(), &pkt[4..]);
        assert_eq!(r.buffer(), b"Q");

        let (mut r, writer) = a_byte_per_read(pkt.to_vec());
        assert_eq!(read_startup_buffered(&mut r).await.unwrap(), &pkt[4..]);
        writer.await.unwrap().unwrap();

        let bad = [0u8, 0, 0, 3, 0, 0, 0, 0];
        let mut r = tokio::io::BufReader::new(&bad[..]);
        let e = read_startup_buffered(&mut r).await.unwrap_err();
        assert!(
            e.to_string().contains("invalid startup packet length 3"),
            "{e}"
        );
    }

    /// A login message whole in one read, a byte per read, or followed by the next one: the
    /// same tag and body, and what follows stays in the buffer; a length out of bounds is
    /// `read_message`'s error, and nothing is handed over.
    #[tokio::test]
    async fn a_buffered_message_read_takes_a_whole_message_or_its_pieces() {
        let msg = b"p\0\0\0\x08pw\0\0".to_vec();
        let mut whole = msg.clone();
        whole.extend_from_slice(b"Q\0");
        let mut r = tokio::io::BufReader::new(&whole[..]);
        let got = with_message_buffered(&mut r, 100, |tag, body| (tag, body.to_vec()));
        assert_eq!(got.await.unwrap(), (b'p', b"pw\0\0".to_vec()));
        assert_eq!(r.buffer(), b"Q\0");

        let (mut r, writer) = a_byte_per_read(msg.clone());
        let got = with_message_buffered(&mut r, 100, |tag, body| (tag, body.to_vec()));
        assert_eq!(got.await.unwrap(), (b'p', b"pw\0\0".to_vec()));
        writer.await.unwrap().unwrap();

        for (bytes, max) in [(&b"p\0\0\0\x03"[..], 100), (&msg[..], 3)] {
            let mut r = tokio::io::BufReader::new(bytes);
            let mut called = false;
            let e = with_message_buffered(&mut r, max, |_, _| called = true)
                .await
                .unwrap_err();
            assert!(e.to_string().contains("invalid message length"), "{e}");
            assert!(!called);
        }
    }

    #[test]
    fn garbage_startup_is_an_error_not_a_panic() {
        for body in [
            &b""[..],
            b"\x00\x03",
            b"\x00\x03\x00\x00user",
            b"\x12\x34\x56\x78",
            b"\x00\x03\x00\x00a\x00b\x00c",
        ] {
            assert!(parse_startup(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn result_set_parses_with_postgres_protocol() {
        use fallible_iterator::FallibleIterator;
        use postgres_protocol::message::backend::Message;
        let mut b = BytesMut::new();
        row_description(&mut b, &[("name", TEXT_OID), ("n", INT8_OID)]);
        data_row(&mut b, &[Some("x"), None]);
        command_complete(&mut b, "SHOW");
        match Message::parse(&mut b).unwrap() {
            Some(Message::RowDescription(body)) => {
                let names: Vec<String> = body
                    .fields()
                    .map(|f| Ok(f.name().to_string()))
                    .collect()
                    .unwrap();
                assert_eq!(names, ["name", "n"]);
            }
            _ => panic!("expected RowDescription"),
        }
        match Message::parse(&mut b).unwrap() {
            Some(Message::DataRow(body)) => {
                let ranges: Vec<_> = body.ranges().collect().unwrap();
                assert_eq!(ranges.len(), 2);
                assert!(ranges[1].is_none());
                let r = ranges[0].clone().unwrap();
                assert_eq!(&body.buffer()[r], b"x");
            }
            _ => panic!("expected DataRow"),
        }
        assert!(matches!(
            Message::parse(&mut b).unwrap(),
            Some(Message::CommandComplete(_))
        ));
    }

    #[test]
    fn error_response_fields_roundtrip() {
        let mut b = BytesMut::new();
        error_response(&mut b, "FATAL", "28P01", "nope");
        assert_eq!(b[0], b'E');
        let (code, msg) = error_fields(&b[5..]);
        assert_eq!((code.as_str(), msg.as_str()), ("28P01", "nope"));
    }
}
