//! Log output: tracing to stderr, as text for people or one JSON object per line for log
//! shippers (`log_format`), with the level from `POOLER_LOG`.
//!
//! Colour only when stderr is a terminal: escape codes in a container's log (Kubernetes,
//! journald, a file) are noise that breaks searches. JSON is formatted here, with serde_json
//! (already in the dependency tree), because tracing-subscriber's `json` feature needs
//! `tracing-serde`, which this project's offline build does not have.

use std::fmt;
use std::io::IsTerminal;

use serde::Deserialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// `log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// tracing's human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// `{"timestamp":...,"level":"INFO","target":"pooler::listener","fields":{"message":...}}`
    /// per line: the shape of tracing-subscriber's own JSON format.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Installs the process's logger; `filter` is `POOLER_LOG`'s syntax (default `info`).
pub fn init(format: LogFormat, filter: Option<&str>) {
    let filter = filter
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text if std::io::stderr().is_terminal() => {
            builder.with_ansi(true).with_timer(CachedTime).try_init()
        }
        LogFormat::Text => builder.event_format(Plain).try_init(),
        LogFormat::Json => builder.event_format(Json).try_init(),
    };
}

/// tracing's own timestamp (`2026-12-03T06:30:00.123456Z`, UTC), with the date and time of day
/// worked out once a second per thread: converting the time to a calendar date for every line
/// was a quarter of what a login's two log lines cost (callgrind), and logins log by default
/// (`log_connections`, `log_disconnections`).
pub struct CachedTime;

thread_local! {
    /// The last second formatted, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

impl FormatTime for CachedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = now.as_secs();
        let prefix = SECOND.with(|c| match c.get() {
            (s, prefix) if s == secs => prefix,
            _ => {
                let prefix = second_of(secs);
                c.set((secs, prefix));
                prefix
            }
        });
        let mut tail = *b".000000Z";
        let mut micros = now.subsec_micros();
        for d in tail[1..7].iter_mut().rev() {
            *d = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        // Both are ASCII digits and punctuation.
        w.write_str(std::str::from_utf8(&prefix).map_err(|_| fmt::Error)?)?;
        w.write_str(std::str::from_utf8(&tail).map_err(|_| fmt::Error)?)
    }
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix time in seconds.
fn second_of(secs: u64) -> [u8; 19] {
    let (y, m, d) = crate::clock::civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    let text = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        t / 3600,
        t % 3600 / 60,
        t % 60
    );
    let mut out = [b'0'; 19];
    let n = text.len().min(19);
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out
}

/// tracing's text lines without colour, written here: tracing's own formatter wraps every
/// piece of a line in a paint call even with ANSI off, and logins write two lines by default
/// (`log_connections`, `log_disconnections`); with `Addr` for the peer, a logged login costs
/// 10 % less (callgrind: 47.2 k -> 42.3 k instructions). The same text:
/// `<time> <LEVEL> <target>: <message> <k>=<v>...`, the message's terminal control
/// characters escaped as tracing escapes them, and the other fields' as well.
pub struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        use tracing_log::NormalizeEvent;
        CachedTime.format_time(&mut writer)?;
        // A `log` crate record (rustls logs so) as tracing shows it: its own target.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let level = match *meta.level() {
            tracing::Level::TRACE => " TRACE ",
            tracing::Level::DEBUG => " DEBUG ",
            tracing::Level::INFO => "  INFO ",
            tracing::Level::WARN => "  WARN ",
            tracing::Level::ERROR => " ERROR ",
        };
        writer.write_str(level)?;
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        let mut fields = PlainFields {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// An event's fields as tracing's default formatter writes them: the message as text, then
/// `name=value` with the value's `Debug` (so `%x` fields as text and string values quoted);
/// terminal control characters escaped in all of them.
struct PlainFields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for PlainFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        use fmt::Write as _;
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        // A `log` record's metadata, already in the line's target.
        if name.starts_with("log.") {
            return;
        }
        let pad = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        self.result = match name {
            "message" => self
                .writer
                .write_str(pad)
                .and_then(|()| write!(Escaping(&mut *self.writer), "{value:?}")),
            // Escaped too, unlike tracing's: names and addresses a client chose (a user
            // name) must not drive the terminal of whoever reads the log.
            name => write!(
                Escaping(&mut *self.writer),
                "{pad}{}={value:?}",
                name.strip_prefix("r#").unwrap_or(name)
            ),
        };
    }
}

/// Writes through, with the characters a terminal acts on (ESC, BEL, BS, FF, DEL and the C1
/// controls) written as escapes: tracing's sanitising of messages.
struct Escaping<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // By byte: the ASCII ones are single bytes, the C1 controls (U+0080-U+009F) are 0xC2
        // then 0x80-0x9F in UTF-8. Most pieces have none and are written whole.
        let bytes = s.as_bytes();
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            let escape = match bytes[i] {
                0x1b | 0x07 | 0x08 | 0x0c | 0x7f => Some((bytes[i] as u32, 1)),
                0xc2 if bytes.get(i + 1).is_some_and(|b| (0x80..=0x9f).contains(b)) => {
                    Some((bytes[i + 1] as u32, 2))
                }
                _ => None,
            };
            let Some((code, len)) = escape else {
                i += 1;
                continue;
            };
            self.0.write_str(&s[start..i])?;
            if len == 1 {
                write!(self.0, "\\x{code:02x}")?;
            } else {
                write!(self.0, "\\u{{{code:x}}}")?;
            }
            i += len;
            start = i;
        }
        self.0.write_str(&s[start..])
    }
}

/// A socket address for a log line (`%Addr(peer)`), written as std writes it: std's own
/// `Display` costs about 1,900 instructions for an IPv4 one, and logins log theirs twice.
pub struct Addr(pub std::net::SocketAddr);

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let std::net::SocketAddr::V4(v4) = self.0 else {
            return self.0.fmt(f);
        };
        let mut digits = itoa::Buffer::new();
        for (i, octet) in v4.ip().octets().into_iter().enumerate() {
            f.write_str(digits.format(octet))?;
            f.write_str(if i < 3 { "." } else { ":" })?;
        }
        f.write_str(digits.format(v4.port()))
    }
}

/// One JSON object per event.
pub struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let line = serde_json::json!({
            "timestamp": timestamp,
            "level": meta.level().to_string(),
            "target": meta.target(),
            "fields": serde_json::Value::Object(fields.0),
        });
        writeln!(writer, "{line}")
    }
}

/// An event's fields as JSON values: numbers and booleans as such, the rest as text.
#[derive(Default)]
struct Fields(serde_json::Map<String, serde_json::Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_second_is_written_as_tracing_writes_it() {
        assert_eq!(&second_of(1_796_276_575), b"2026-12-03T05:42:55");
        assert_eq!(&second_of(951_782_400 + 3661), b"2000-02-29T01:01:01");
    }

    #[test]
    fn the_cached_timestamp_reads_as_tracings_own() {
        let format = |t: &dyn FormatTime| {
            let mut s = String::new();
            t.format_time(&mut Writer::new(&mut s)).unwrap();
            s
        };
        // The same minute for both, unless one was read just across a minute's end: retry.
        let agree = (0..3).any(|_| {
            let (ours, theirs) = (format(&CachedTime), format(&SystemTime));
            ours.len() == theirs.len() && ours[..16] == theirs[..16] && ours.ends_with('Z')
        });
        assert!(agree, "{} vs {}", format(&CachedTime), format(&SystemTime));
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Lines of `format` for the same events, timestamps cut off.
    fn lines<F>(format: F) -> Vec<String>
    where
        F: FormatEvent<
                tracing_subscriber::Registry,
                tracing_subscriber::fmt::format::DefaultFields,
            > + Send
            + Sync
            + 'static,
    {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .event_format(format)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 5432));
            let e = std::io::Error::other("broken pipe");
            tracing::info!(peer = %Addr(peer), db = %"app", user = %"bob", "login");
            tracing::info!(%peer, "std's address");
            tracing::warn!(error = %e, kind = "io", n = 3u64, ok = false, "a \x1b[2J \u{9b}x\x07 \"q\"\nend");
            tracing::error!(r#type = 1i64, age_s = 0.25f64, "closing");
            tracing::debug!("no fields");
            tracing::trace!(only = "field");
            let record = log::Record::builder()
                .level(log::Level::Warn)
                .target("rustls::client")
                .module_path(Some("rustls::client"))
                .file(Some("client.rs"))
                .line(Some(7))
                .args(format_args!("from the log crate"))
                .build();
            tracing_log::format_trace(&record).unwrap();
        });
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        out.lines()
            .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest).to_string())
            .collect()
    }

    #[test]
    fn plain_lines_read_as_tracings_own() {
        let theirs = lines(
            tracing_subscriber::fmt::format()
                .with_ansi(false)
                .with_timer(CachedTime),
        );
        let ours = lines(Plain);
        assert_eq!(ours.len(), 8, "{ours:?}");
        assert_eq!(ours[7], " WARN rustls::client: from the log crate");
        assert_eq!(ours, theirs);
        // The message's control characters are escaped, not written.
        assert!(ours[2].contains("a \\x1b[2J \\u{9b}x\\x07"), "{}", ours[2]);
        assert!(!ours.concat().contains('\x1b'));
    }

    #[test]
    fn an_address_is_written_as_std_writes_it() {
        for addr in [
            "0.0.0.0:0",
            "127.0.0.1:5432",
            "255.255.255.255:65535",
            "10.20.3.40:9",
            "[::1]:6432",
            "[fe80::1%2]:80",
        ] {
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            assert_eq!(Addr(addr).to_string(), addr.to_string());
        }
    }

    #[test]
    fn plain_lines_escape_control_characters_in_every_field() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(Plain)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(user = %"evil\x1b]0;owned\x07", db = "d\u{90}b", "login");
        });
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(
            out.ends_with("login user=evil\\x1b]0;owned\\x07 db=\"d\\u{90}b\"\n"),
            "{out}"
        );
    }

    #[test]
    fn json_lines_carry_level_target_message_and_typed_fields() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(Json)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(port = 6432u64, ok = true, addr = %"127.0.0.1", "say \"hi\"\nnow");
        });
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "pooler::logging::tests");
        assert_eq!(v["fields"]["message"], "say \"hi\"\nnow");
        assert_eq!(v["fields"]["port"], 6432);
        assert_eq!(v["fields"]["ok"], true);
        assert_eq!(v["fields"]["addr"], "127.0.0.1");
        assert!(v["timestamp"].as_str().is_some_and(|t| t.contains('T')));
    }
}
