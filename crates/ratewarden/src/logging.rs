//! How log lines are written: tracing-subscriber's human or JSON format on stderr, with
//! a timestamp whose date and time of day are formatted once a second and, when no
//! colours are wanted, fields written without the styling machinery.
//!
//! A flood of rate-limit violations writes a warning line per violation below the alert
//! threshold and a line per alert, so what a line costs is part of what alerting costs
//! (BENCHMARKS.md, issue 5). Without colours (a log file, a pipeline), the lines read as
//! tracing-subscriber's own, except that control characters are escaped in every value,
//! not only in the message, so a line break in a value cannot forge a second line, and
//! that they are escaped as JSON escapes them (`\u001b`), so a JSON value logged as it
//! is (the log sink's `alert=`) stays valid JSON. At a terminal, tracing-subscriber's
//! own fields, in colour.

use crate::cli::LogFormat;
use std::cell::RefCell;
use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::FormatFields;

/// Logs go to stderr through `tracing`; `RUST_LOG` filters them (default `default_level`).
pub fn init(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colour codes only for a person at a terminal: in a log file or pipeline they are
    // noise to every reader, and formatting them costs a flood's worth of alerts.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours)
        .with_timer(UtcMicros)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human if colours => builder.init(),
        LogFormat::Human => builder.fmt_fields(PlainFields).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Wall-clock time in UTC with microseconds, as tracing-subscriber's default timer
/// writes it (`2026-12-07T18:15:12.123456Z`), with the part up to the second formatted
/// once a second per thread rather than on every line.
#[derive(Clone, Copy, Debug, Default)]
pub struct UtcMicros;

impl FormatTime for UtcMicros {
    // Log lines are read beside other systems' logs: they follow the wall clock, steps
    // included, where decisions use ratewarden_core::clock, which never steps back.
    #[allow(clippy::disallowed_methods)]
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        write_utc_micros(w, since_epoch)
    }
}

thread_local! {
    /// The last second this thread formatted, and its text up to and including the
    /// decimal point.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

fn write_utc_micros(w: &mut impl fmt::Write, since_epoch: std::time::Duration) -> fmt::Result {
    let second = since_epoch.as_secs();
    let cached = SECOND.try_with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            cached.1.clear();
            write_second(&mut cached.1, second)?;
            cached.0 = second;
        }
        w.write_str(&cached.1)
    });
    // A thread that logs while it ends, after its cache is gone: formatted afresh.
    cached.unwrap_or_else(|_| write_second(w, second))?;
    let mut micros = since_epoch.subsec_micros();
    let mut digits = *b"000000Z";
    for digit in digits.iter_mut().take(6).rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    w.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)
}

/// `2026-12-07T18:15:12.` for the Unix second `second`. A clock before 1970, or past
/// 9999, reads as 1970-01-01 (the default timer writes those years out).
fn write_second(w: &mut impl fmt::Write, second: u64) -> fmt::Result {
    let time = i64::try_from(second)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    write!(
        w,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    )
}

/// Fields as tracing-subscriber's default formatter writes them without colours
/// (`message name=value ...`, strings quoted), written directly: the default formatter
/// paints every field name through a style even when colours are off, a third of a
/// line's cost. Control characters are escaped in every value (see the module doc).
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct PlainVisitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// Writes the separator and `name=` (nothing for the message) and says whether to
    /// go on and write the value.
    fn begin(&mut self, field: &Field) -> bool {
        let name = field.name();
        // Metadata of `log` records, already written as the line's target and level.
        if self.result.is_err() || name.starts_with("log.") {
            return false;
        }
        if !std::mem::take(&mut self.first) {
            self.result = self.writer.write_char(' ');
        }
        if name != "message" {
            let name = name.strip_prefix("r#").unwrap_or(name);
            self.result = self
                .result
                .and_then(|()| self.writer.write_str(name))
                .and_then(|()| self.writer.write_char('='));
        }
        self.result.is_ok()
    }

    /// Writes `value` escaped, unless a write has failed already (the line is dropped).
    fn escaped(&mut self, value: fmt::Arguments<'_>) {
        if self.result.is_ok() {
            self.result = Escaping(&mut self.writer).write_fmt(value);
        }
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.begin(field) {
            if field.name() == "message" {
                self.result = Escaping(&mut self.writer).write_str(value);
            } else {
                self.escaped(format_args!("{value:?}"));
            }
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.begin(field) {
            self.result = self.writer.write_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.begin(field) {
            self.result = self.writer.write_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.begin(field) {
            self.result = self.writer.write_str(if value { "true" } else { "false" });
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.begin(field) {
            self.escaped(format_args!("{value}"));
            if let Some(source) = value.source() {
                // As the default writes it: the name as tracing gives it.
                self.escaped(format_args!(" {}.sources=[", field.name()));
                let mut next = Some(source);
                let mut first = true;
                while let (Some(error), Ok(())) = (next, self.result) {
                    let separator = if std::mem::take(&mut first) { "" } else { ", " };
                    self.escaped(format_args!("{separator}{error}"));
                    next = error.source();
                }
                self.escaped(format_args!("]"));
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.begin(field) {
            self.escaped(format_args!("{value:?}"));
        }
    }
}

/// Passes text through with the characters a terminal or a log reader would act on
/// written as JSON escapes (`\u001b`): C0 controls but the tab, DEL and C1 controls. A
/// JSON text keeps its meaning (serde_json leaves DEL and C1 raw in strings). Plain runs
/// go through in one piece.
struct Escaping<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // Only these bytes can start a control character (0xc2 leads U+0080 to U+00BF);
        // each is a character boundary, so the text splits there.
        let may_start_control = |b: u8| b < 0x20 || b == 0x7f || b == 0xc2;
        let mut rest = text;
        while let Some(at) = rest.bytes().position(may_start_control) {
            let (plain, from) = rest.split_at(at);
            self.0.write_str(plain)?;
            let mut chars = from.chars();
            if let Some(c) = chars.next() {
                let code = u32::from(c);
                if c == '\t' || (0xa0..).contains(&code) {
                    self.0.write_char(c)?;
                } else {
                    write!(self.0, "\\u{code:04x}")?;
                }
            }
            rest = chars.as_str();
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What a subscriber wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("lock").clone()).expect("UTF-8")
        }
    }

    /// The lines `events` writes through tracing-subscriber's default fields and
    /// through [`PlainFields`], both without colours and time.
    fn both(events: impl Fn()) -> (String, String) {
        let default = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_writer({
                let c = default.clone();
                move || c.clone()
            })
            .finish();
        tracing::subscriber::with_default(subscriber, &events);
        let plain = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .fmt_fields(PlainFields)
            .with_writer({
                let c = plain.clone();
                move || c.clone()
            })
            .finish();
        tracing::subscriber::with_default(subscriber, &events);
        (default.text(), plain.text())
    }

    /// An error with a chain of sources.
    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);
    impl fmt::Display for Chain {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1
                .as_deref()
                .map(|e| e as &(dyn std::error::Error + 'static))
        }
    }

    #[test]
    fn lines_read_as_the_default_formatter_writes_them() {
        let (default, plain) = both(|| {
            let path = "/api/v1/auth/login";
            tracing::warn!(
                target: "ratewarden::abuse",
                identity = "ip",
                client = %"203.0.113.7",
                violations = 2_u64,
                offset = -3_i64,
                share = 0.5_f64,
                authenticated = true,
                rules = ?["auth", "api"],
                path = %path,
                r#type = "x",
                "rate limit violation"
            );
            tracing::info!(listen = %"127.0.0.1:8080", "gateway listening on {}", 8080);
            let refused = Chain(
                "upstream unreachable",
                Some(Box::new(Chain(
                    "connect",
                    Some(Box::new(Chain("refused", None))),
                ))),
            );
            tracing::error!(error = &refused as &(dyn std::error::Error + 'static));
            tracing::error!(
                r#type = &refused as &(dyn std::error::Error + 'static),
                "typed"
            );
            tracing::warn!(empty = "");
            let span = tracing::info_span!("connection", peer = %"127.0.0.1", id = 7_u64);
            let _inside = span.enter();
            span.record("id", 8_u64);
            tracing::info!(status = 429_u64, "answered");
        });
        assert_eq!(plain, default);
        assert_eq!(plain.lines().count(), 6, "{plain}");
        assert!(plain.contains(
            "ratewarden::abuse: rate limit violation identity=\"ip\" client=203.0.113.7 \
             violations=2 offset=-3 share=0.5 authenticated=true rules=[\"auth\", \"api\"] \
             path=/api/v1/auth/login type=\"x\"\n"
        ));
        assert!(
            plain.contains("error=upstream unreachable error.sources=[connect, refused]\n"),
            "{plain}"
        );
        assert!(
            plain.contains("typed type=upstream unreachable type.sources=[connect, refused]\n"),
            "{plain}"
        );
        assert!(
            plain.contains("connection{peer=127.0.0.1 id=7 id=8}: ratewarden::logging::tests: answered status=429\n"),
            "{plain}"
        );
    }

    #[test]
    fn control_characters_are_escaped_in_messages_and_every_value() {
        let (default, plain) = both(|| {
            let agent = "curl\n2026-12-07T00:00:00.000000Z  INFO forged\x1b[2J\r\x7f\u{85}\u{9f}\u{9b}\tend \u{a0}¢é";
            tracing::warn!(user_agent = %agent, quoted = agent, "seen {}", agent);
            let failed = Chain("bad\x1b]0;title\x07", None);
            tracing::warn!(error = &failed as &(dyn std::error::Error + 'static));
        });
        assert_eq!(plain.lines().count(), 2, "{plain}");
        // The default escapes only the message's terminal controls, not its line break.
        assert_eq!(default.lines().count(), 4, "{default}");
        let escaped = "curl\\u000a2026-12-07T00:00:00.000000Z  INFO forged\\u001b[2J\\u000d\\u007f\\u0085\\u009f\\u009b\tend \u{a0}¢é";
        assert!(
            plain.contains(&format!("seen {escaped} user_agent={escaped} ")),
            "{plain}"
        );
        // Debug-quoted strings arrive escaped by Rust already, and stay as they were.
        assert!(plain.contains(r#"quoted="curl\n2026"#), "{plain}");
        assert!(
            plain.contains("error=bad\\u001b]0;title\\u0007\n"),
            "{plain}"
        );
        assert!(
            !plain.contains(['\x1b', '\x07', '\r', '\x7f', '\u{85}', '\u{9b}', '\u{9f}']),
            "{plain}"
        );
    }

    #[test]
    fn a_json_value_logged_as_it_is_stays_valid_json_with_the_same_content() {
        let value = serde_json::json!({"instance": "gw\u{7f}1\u{85}", "path": "/a\u{1b}b\nc"});
        let text = value.to_string();
        assert!(
            text.contains('\u{7f}') && text.contains('\u{85}'),
            "serde_json leaves them raw"
        );
        let (_, plain) = both(|| tracing::warn!(alert = %text, "alert"));
        let logged = plain
            .trim_end()
            .split_once("alert=")
            .map(|(_, json)| json)
            .expect("the alert field");
        assert!(!logged.contains(['\u{7f}', '\u{85}', '\n']), "{logged}");
        let parsed: serde_json::Value = serde_json::from_str(logged).expect("valid JSON");
        assert_eq!(parsed, value);
    }

    #[test]
    fn timestamps_are_utc_with_microseconds_across_seconds_and_days() {
        let at = |nanos: u64| {
            let mut text = String::new();
            write_utc_micros(&mut text, std::time::Duration::from_nanos(nanos)).expect("write");
            text
        };
        assert_eq!(at(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(1_700_000_000_123_456_789), "2023-11-14T22:13:20.123456Z");
        // Same second again (from the cache), then the next one, then a leap day.
        assert_eq!(at(1_700_000_000_000_000_999), "2023-11-14T22:13:20.000000Z");
        assert_eq!(at(1_700_000_001_999_999_999), "2023-11-14T22:13:21.999999Z");
        assert_eq!(at(1_709_164_800_000_001_000), "2024-02-29T00:00:00.000001Z");
        // And back: the cache follows a clock that steps back.
        assert_eq!(at(1_700_000_000_000_007_000), "2023-11-14T22:13:20.000007Z");
    }

    #[test]
    fn the_timer_reads_the_wall_clock_as_the_default_timer_does() {
        let default = || {
            let mut text = String::new();
            tracing_subscriber::fmt::time::SystemTime
                .format_time(&mut Writer::new(&mut text))
                .expect("write");
            text
        };
        let before = default();
        let mut ours = String::new();
        UtcMicros
            .format_time(&mut Writer::new(&mut ours))
            .expect("write");
        let after = default();
        // Same shape, and read between the two (the text sorts as the time does).
        assert_eq!(ours.len(), before.len(), "{ours} {before}");
        assert!(before <= ours && ours <= after, "{before} {ours} {after}");
    }
}
