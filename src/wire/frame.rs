//! The framer: message headers with Postgres's length limits, and the small readers the
//! engine needs over message bodies.

use crate::error::{PoolerError, Result};

use super::{MAX_MESSAGE_LEN, header as raw_header};

pub fn frame_header(buf: &[u8], from_server: bool) -> Result<Option<(u8, usize)>> {
    let Some((tag, len)) = raw_header(buf) else {
        return Ok(None);
    };
    if len < 4 || len as usize > MAX_MESSAGE_LEN {
        let msg = format!(
            "invalid message length {len} for message type '{}'",
            tag.escape_ascii()
        );
        return Err(if from_server {
            PoolerError::ServerProtocol(msg)
        } else {
            PoolerError::Protocol(msg)
        });
    }
    Ok(Some((tag, 1 + len as usize)))
}

pub fn cstr_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .iter()
        .position(|&b| b == 0)
        .map(|p| from + p)
}

/// Every message type a client may send after login (`Frontend`'s bytes, as a set the
/// relay checks a message's first byte against).
pub const FRONTEND_TAGS: &[u8] = b"QFSHEdcfPDCBX";

pub fn invalid_type(tag: u8) -> PoolerError {
    PoolerError::protocol(format!(
        "invalid frontend message type '{}'",
        tag.escape_ascii()
    ))
}

pub fn malformed(what: &str) -> PoolerError {
    PoolerError::protocol(format!("malformed {what} message"))
}
