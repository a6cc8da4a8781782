//! Compressed response bodies that must be inspected (credential scrubbing, masking).
//!
//! sluice asks the upstream for `identity` when it must read a response, but upstreams
//! may compress anyway. gzip and br bodies are decoded here (flate2, brotli-decompressor)
//! within a size cap, so a small body cannot expand into the daemon's memory: above the
//! cap, or in an encoding not decoded here, the response is refused, never passed
//! unread.

use std::io::Read as _;

/// A content coding sluice decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Brotli,
}

impl Coding {
    /// The coding a `Content-Encoding` value names; `Err` for one sluice does not decode
    /// (and for several codings stacked).
    pub fn from_header(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "gzip" | "x-gzip" => Ok(Self::Gzip),
            "br" => Ok(Self::Brotli),
            other => Err(format!(
                "the response body is encoded as `{other}`, which sluice cannot decode to inspect it (credential scrubbing or masking): refused"
            )),
        }
    }
}

/// Decodes `body`; `Err` when it is corrupt or decodes to more than `cap` bytes.
pub fn decode(coding: Coding, body: &[u8], cap: usize) -> Result<Vec<u8>, String> {
    let limit = cap as u64 + 1;
    let mut decoded = Vec::with_capacity(body.len().saturating_mul(4).min(cap));
    let result = match coding {
        Coding::Gzip => flate2::read::MultiGzDecoder::new(body)
            .take(limit)
            .read_to_end(&mut decoded),
        Coding::Brotli => brotli_decompressor::Decompressor::new(body, 4096)
            .take(limit)
            .read_to_end(&mut decoded),
    };
    let name = match coding {
        Coding::Gzip => "gzip",
        Coding::Brotli => "br",
    };
    if let Err(error) = result {
        return Err(format!(
            "the {name} response body cannot be decoded: {error}"
        ));
    }
    if decoded.len() > cap {
        return Err(format!(
            "the {name} response body decodes to more than {cap} bytes: refused"
        ));
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).expect("gzip");
        encoder.finish().expect("gzip")
    }

    #[test]
    fn gzip_decodes_within_its_cap() {
        let body = gzip(b"hello sluice");
        assert_eq!(
            decode(Coding::Gzip, &body, 64).expect("decoded"),
            b"hello sluice"
        );
        let bomb = gzip(&vec![b'a'; 1 << 20]);
        assert!(bomb.len() < 4096);
        let error = decode(Coding::Gzip, &bomb, 64 * 1024).expect_err("over the cap");
        assert!(error.contains("more than 65536 bytes"), "{error}");
        assert!(decode(Coding::Gzip, b"not gzip at all", 64).is_err());
    }

    #[test]
    fn brotli_decodes_and_corrupt_bodies_are_refused() {
        // "hello sluice hello sluice", as python's brotli module encodes it.
        let body = [
            27, 24, 0, 248, 29, 169, 83, 159, 187, 89, 161, 205, 53, 200, 88, 26, 155, 46, 99, 123,
            171, 19, 65, 69, 3, 195, 70, 79, 0,
        ];
        match decode(Coding::Brotli, &body, 64) {
            Ok(decoded) => assert_eq!(decoded, b"hello sluice hello sluice"),
            Err(error) => panic!("{error}"),
        }
        assert!(decode(Coding::Brotli, &body, 8).is_err_and(|e| e.contains("more than 8")));
        assert!(decode(Coding::Brotli, b"\xff\xff\xff", 64).is_err());
    }

    #[test]
    fn unknown_codings_are_named() {
        assert_eq!(Coding::from_header(" GZIP "), Ok(Coding::Gzip));
        assert_eq!(Coding::from_header("br"), Ok(Coding::Brotli));
        assert!(Coding::from_header("zstd").is_err_and(|e| e.contains("`zstd`")));
        assert!(Coding::from_header("gzip, br").is_err());
        assert!(Coding::from_header("deflate").is_err());
    }
}
