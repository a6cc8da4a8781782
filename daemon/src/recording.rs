//! Terminal recordings in asciicast v3, the format `asciinema play` reads and
//! `sluice replay` plays: SSH channels and Kubernetes exec/attach streams are kept this
//! way (in the store's `recordings` tree, by session and operation), so this is core,
//! not any one protocol's.
//!
//! A recording is a JSON header line (`{"version":3,"term":{...},"timestamp":...}`)
//! and one line per event: `[seconds since the previous event, "o"|"i"|"r"|"x", data]`.
//! Written by hand because it is that simple; the only subtlety is that output arrives
//! in packets that may split a UTF-8 sequence, which is held back until complete.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The most a single channel's recording keeps; beyond it output is counted only and
/// the recording ends with a marker event.
pub const MAX_CAST: usize = 16 * 1024 * 1024;

/// One channel's recording in progress.
pub struct Cast {
    text: Vec<u8>,
    last: Instant,
    pending: Vec<u8>,
    full: bool,
}

impl Cast {
    /// `pty`: the terminal's columns, rows and type; `None` for an exec without one
    /// (recorded as an 80×24 terminal).
    pub fn new(pty: Option<(u32, u32, String)>) -> Self {
        let (cols, rows, term) = pty.unwrap_or((80, 24, String::new()));
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or_default();
        let mut header = serde_json::json!({
            "version": 3,
            "term": { "cols": cols, "rows": rows },
            "timestamp": timestamp,
        });
        if !term.is_empty() {
            header["term"]["type"] = serde_json::Value::String(term);
        }
        let mut text = header.to_string().into_bytes();
        text.push(b'\n');
        Self {
            text,
            last: Instant::now(),
            pending: Vec::new(),
            full: false,
        }
    }

    /// Output from the server (stdout, or stderr of an exec without a pty).
    pub fn output(&mut self, data: &[u8]) {
        if self.full {
            return;
        }
        self.pending.extend_from_slice(data);
        let complete = complete_utf8_prefix(&self.pending);
        if complete == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending.drain(..complete).collect();
        self.event("o", &String::from_utf8_lossy(&chunk));
    }

    /// Input the agent sent (stdin). Kept as it came: a character split across two
    /// chunks becomes U+FFFD, which is good enough for a record of keystrokes.
    pub fn input(&mut self, data: &[u8]) {
        self.event("i", &String::from_utf8_lossy(data));
    }

    /// A terminal resize.
    pub fn resize(&mut self, cols: u32, rows: u32) {
        self.event("r", &format!("{cols}x{rows}"));
    }

    /// The exit status.
    pub fn exit(&mut self, status: u32) {
        self.flush_pending();
        self.event("x", &status.to_string());
    }

    fn flush_pending(&mut self) {
        if !self.pending.is_empty() && !self.full {
            let chunk = std::mem::take(&mut self.pending);
            self.event("o", &String::from_utf8_lossy(&chunk));
        }
    }

    fn event(&mut self, code: &str, data: &str) {
        if self.full {
            return;
        }
        let now = Instant::now();
        let interval = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        let line = serde_json::json!([(interval * 1_000_000.0).round() / 1_000_000.0, code, data]);
        let mut line = line.to_string().into_bytes();
        line.push(b'\n');
        if self.text.len() + line.len() > MAX_CAST {
            self.full = true;
            let marker = serde_json::json!([0.0, "m", "recording truncated"]).to_string();
            self.text.extend_from_slice(marker.as_bytes());
            self.text.push(b'\n');
            return;
        }
        self.text.extend_from_slice(&line);
    }

    /// The recording's text.
    pub fn finish(mut self) -> Vec<u8> {
        self.flush_pending();
        self.text
    }
}

/// How many leading bytes of `bytes` end on a UTF-8 character boundary (invalid bytes
/// count as complete: they become U+FFFD rather than being held for ever).
fn complete_utf8_prefix(bytes: &[u8]) -> usize {
    let len = bytes.len();
    // A sequence is at most 4 bytes: look back at most 3 for an unfinished lead byte.
    for back in 1..=len.min(3) {
        let byte = bytes[len - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte
        }
        let needed = match byte {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => 1,
        };
        return if needed > back { len - back } else { len };
    }
    len
}

/// One event of a recording, for replay.
#[derive(Debug, Clone, PartialEq)]
pub struct CastEvent {
    pub interval: f64,
    pub code: String,
    pub data: String,
}

/// Parses a recording: the header's `term` and the events. Lines that are not events
/// are skipped.
pub fn parse(text: &str) -> Option<(serde_json::Value, Vec<CastEvent>)> {
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next()?).ok()?;
    if header.get("version").and_then(|v| v.as_u64()) != Some(3) {
        return None;
    }
    let events = lines
        .filter_map(|line| {
            let event: (f64, String, String) = serde_json::from_str(line).ok()?;
            Some(CastEvent {
                interval: event.0,
                code: event.1,
                data: event.2,
            })
        })
        .collect();
    Some((header, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_is_a_header_and_events() {
        let mut cast = Cast::new(Some((100, 30, "xterm".into())));
        cast.output(b"hello ");
        // "é" split across two packets is held back, then written whole.
        cast.output(&[0xc3]);
        cast.output(&[0xa9, b'\n']);
        cast.resize(120, 40);
        cast.exit(0);
        let text = String::from_utf8(cast.finish()).unwrap();
        let (header, events) = parse(&text).unwrap();
        assert_eq!(header["term"]["cols"], 100);
        assert_eq!(header["term"]["type"], "xterm");
        let codes: Vec<&str> = events.iter().map(|e| e.code.as_str()).collect();
        assert_eq!(codes, ["o", "o", "r", "x"]);
        assert_eq!(events[0].data, "hello ");
        assert_eq!(events[1].data, "é\n");
        assert_eq!(events[2].data, "120x40");
        assert_eq!(events[3].data, "0");
    }

    #[test]
    fn utf8_boundaries() {
        assert_eq!(complete_utf8_prefix(b"abc"), 3);
        assert_eq!(complete_utf8_prefix(&[b'a', 0xe2, 0x82]), 1);
        assert_eq!(complete_utf8_prefix(&[0xe2, 0x82, 0xac]), 3);
        assert_eq!(complete_utf8_prefix(&[0xff]), 1);
    }

    #[test]
    fn a_recording_stops_at_its_cap() {
        let mut cast = Cast::new(None);
        let chunk = vec![b'x'; 1024 * 1024];
        for _ in 0..20 {
            cast.output(&chunk);
        }
        let text = cast.finish();
        assert!(text.len() <= MAX_CAST + 100);
        assert!(String::from_utf8_lossy(&text).contains("recording truncated"));
    }
}
