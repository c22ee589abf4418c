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
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_timer(CachedTime)
            .try_init(),
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
