//! Keeps injected secrets from coming back: an echo endpoint (or an error page that
//! quotes the request) must not hand the agent the token it was never given.
//!
//! Each secret is searched for in its raw, base64 (standard and URL-safe, with and
//! without padding), hex (both cases) and percent-encoded forms, in response headers
//! and bodies. Bodies are scrubbed as they stream: the scrubber holds back the last
//! `longest form - 1` bytes of each chunk so a secret split across chunks is still
//! found.

use std::sync::Arc;

use base64::Engine as _;

/// What a scrubbed secret is replaced with.
pub const SCRUBBED: &[u8] = b"[sluice:scrubbed]";

/// Secrets too short to search for safely are refused at injection time instead.
pub const MIN_SECRET_LEN: usize = 8;

/// The forms of a set of secrets. Built once per connection and cloned per request
/// (each response's stream scrubber holds its own), so the forms are shared.
#[derive(Clone, Default)]
pub struct Scrubber {
    forms: Arc<[Vec<u8>]>,
    longest: usize,
    /// Which bytes start a form: the bytes in between are copied without a search.
    starts: Arc<[bool]>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Scrubber")
            .field("forms", &self.forms.len())
            .finish()
    }
}

impl Scrubber {
    /// Forms of every secret in `secrets`.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut forms: Vec<Vec<u8>> = Vec::new();
        for secret in secrets {
            let raw = secret.as_bytes();
            if raw.is_empty() {
                continue;
            }
            forms.push(raw.to_vec());
            for engine in [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ] {
                forms.push(engine.encode(raw).into_bytes());
            }
            let hex: String = raw.iter().map(|byte| format!("{byte:02x}")).collect();
            forms.push(hex.to_ascii_uppercase().into_bytes());
            forms.push(hex.into_bytes());
            let percent: String = raw
                .iter()
                .map(|&byte| {
                    if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
                        char::from(byte).to_string()
                    } else {
                        format!("%{byte:02X}")
                    }
                })
                .collect();
            forms.push(percent.to_ascii_lowercase().into_bytes());
            forms.push(percent.into_bytes());
        }
        // Longer forms first, so a form that contains another is replaced whole.
        forms.sort_by_key(|form| std::cmp::Reverse(form.len()));
        forms.dedup();
        let longest = forms.first().map_or(0, Vec::len);
        let mut starts = vec![false; 256];
        for form in &forms {
            if let Some(&first) = form.first() {
                starts[usize::from(first)] = true;
            }
        }
        Self {
            forms: forms.into(),
            longest,
            starts: starts.into(),
        }
    }

    /// The first index from `from` (up to `end`) where a form may start.
    fn next_start(&self, text: &[u8], from: usize, end: usize) -> usize {
        text[from..end]
            .iter()
            .position(|&byte| self.starts.get(usize::from(byte)) == Some(&true))
            .map_or(end, |at| from + at)
    }

    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// `text` with every form replaced; the count of replacements.
    pub fn scrub(&self, text: &[u8]) -> (Vec<u8>, u64) {
        let mut out = Vec::with_capacity(text.len());
        let mut count = 0;
        let mut index = 0;
        while index < text.len() {
            let next = self.next_start(text, index, text.len());
            out.extend_from_slice(&text[index..next]);
            index = next;
            if index >= text.len() {
                break;
            }
            if let Some(form) = self.form_at(&text[index..]) {
                out.extend_from_slice(SCRUBBED);
                index += form;
                count += 1;
            } else {
                out.push(text[index]);
                index += 1;
            }
        }
        (out, count)
    }

    fn form_at(&self, text: &[u8]) -> Option<usize> {
        self.forms
            .iter()
            .find(|form| text.starts_with(form))
            .map(Vec::len)
    }

    /// Whether `text` holds any form.
    pub fn finds_in(&self, text: &[u8]) -> bool {
        (0..text.len()).any(|index| self.form_at(&text[index..]).is_some())
    }
}

/// A scrubber over a stream of chunks.
#[derive(Debug)]
pub struct StreamScrubber {
    scrubber: Scrubber,
    held: Vec<u8>,
    pub count: u64,
}

impl StreamScrubber {
    pub fn new(scrubber: Scrubber) -> Self {
        Self {
            scrubber,
            held: Vec::new(),
            count: 0,
        }
    }

    /// Scrubs what can be decided now; keeps back a tail that may start a secret.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.held.extend_from_slice(chunk);
        let keep = self.scrubber.longest.saturating_sub(1);
        if self.held.len() <= keep {
            return Vec::new();
        }
        // Scan positions up to `limit`; a match may extend into the kept tail.
        let limit = self.held.len() - keep;
        let mut out = Vec::with_capacity(limit);
        let mut index = 0;
        while index < limit {
            let next = self.scrubber.next_start(&self.held, index, limit);
            out.extend_from_slice(&self.held[index..next]);
            index = next;
            if index >= limit {
                break;
            }
            if let Some(form) = self.scrubber.form_at(&self.held[index..]) {
                out.extend_from_slice(SCRUBBED);
                index += form;
                self.count += 1;
            } else {
                out.push(self.held[index]);
                index += 1;
            }
        }
        self.held.drain(..index.min(self.held.len()));
        out
    }

    /// Scrubs one whole value (a trailer field), counted with the stream's.
    pub fn scrub_value(&mut self, value: &[u8]) -> Vec<u8> {
        let (out, count) = self.scrubber.scrub(value);
        self.count += count;
        out
    }

    /// The rest, at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let (out, count) = self.scrubber.scrub(&std::mem::take(&mut self.held));
        self.count += count;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "ghp_s3cr3t+token/value";

    #[test]
    fn every_form_is_scrubbed() {
        let scrubber = Scrubber::new([TOKEN]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(TOKEN);
        let hex: String = TOKEN.bytes().map(|b| format!("{b:02x}")).collect();
        for text in [
            format!("auth: {TOKEN}"),
            format!("x={b64}"),
            format!("h={hex}"),
            format!("h={}", hex.to_uppercase()),
            "p=ghp_s3cr3t%2Btoken%2Fvalue".to_owned(),
            "p=ghp_s3cr3t%2btoken%2fvalue".to_owned(),
        ] {
            let (out, count) = scrubber.scrub(text.as_bytes());
            assert_eq!(count, 1, "{text}");
            assert!(!scrubber.finds_in(&out));
            assert!(
                String::from_utf8(out)
                    .unwrap()
                    .contains("[sluice:scrubbed]")
            );
        }
    }

    #[test]
    fn secrets_split_across_chunks_are_found() {
        let text = format!(
            "{{\"echo\":\"Bearer {TOKEN}\",\"tail\":\"{}\"}}",
            "x".repeat(100)
        );
        for split in 1..text.len() {
            let mut stream = StreamScrubber::new(Scrubber::new([TOKEN]));
            let mut out = stream.push(&text.as_bytes()[..split]);
            out.extend(stream.push(&text.as_bytes()[split..]));
            out.extend(stream.finish());
            assert_eq!(stream.count, 1, "split at {split}");
            assert!(!String::from_utf8_lossy(&out).contains(TOKEN));
            assert!(String::from_utf8_lossy(&out).ends_with(&format!("{}\"}}", "x".repeat(100))));
        }
    }
}
