//! Cross-module tests: streaming splits, hostile input, and a real PostgreSQL 15
//! conversation decoded end to end.

use bytes::{BufMut, BytesMut};

use super::backend::{self, BackendMessage, Diagnostic, Severity, TransactionStatus};
use super::frame::{Frame, FrameDecoder, FrameError, Phase};
use super::frontend::{self, FrontendMessage};

/// xorshift64*: deterministic, dependency-free randomness for the tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A client stream covering every frontend message kind, startup phase first.
fn frontend_stream() -> Vec<u8> {
    let mut b = BytesMut::new();
    frontend::encode_ssl_request(&mut b);
    let params = [("user", "agent"), ("database", "app")];
    assert!(frontend::encode_startup_v3(&params, &mut b).is_ok());
    assert!(
        frontend::encode_sasl_initial_response("SCRAM-SHA-256", Some(b"n,,n=,r=x"), &mut b).is_ok()
    );
    assert!(frontend::encode_sasl_response(b"c=biws,r=x,p=y", &mut b).is_ok());
    assert!(frontend::encode_query("SELECT 1; SELECT 2", &mut b).is_ok());
    b.put_slice(&msg(b'P', b"s\0SELECT $1\0\x00\x01\x00\x00\x00\x19"));
    b.put_slice(&msg(
        b'B',
        b"\0s\0\x00\x00\x00\x01\x00\x00\x00\x03abc\x00\x01\x00\x01",
    ));
    b.put_slice(&msg(b'D', b"P\0"));
    b.put_slice(&msg(b'E', b"\0\x00\x00\x00\x00"));
    b.put_slice(&msg(b'C', b"S\0"));
    b.put_slice(&msg(b'H', b""));
    b.put_slice(&msg(b'S', b""));
    b.put_slice(&msg(b'd', b"1\tx\n"));
    b.put_slice(&msg(b'c', b""));
    b.put_slice(&msg(b'f', b"bye\0"));
    b.put_slice(&msg(b'F', b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"));
    frontend::encode_terminate(&mut b);
    b.to_vec()
}

/// A server stream covering every backend message kind.
fn backend_stream() -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_slice(&msg(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0\0"));
    b.put_slice(&msg(b'R', b"\0\0\0\x0br=x,s=y,i=4096"));
    b.put_slice(&msg(b'R', b"\0\0\0\x0cv=z"));
    b.put_slice(&msg(b'R', b"\0\0\0\0"));
    b.put_slice(&msg(b'S', b"client_encoding\0UTF8\0"));
    assert!(backend::encode_backend_key_data(99, b"\x01\x02\x03\x04", &mut b).is_ok());
    b.put_slice(&msg(b'v', b"\0\0\0\0\0\0\0\0"));
    backend::encode_ready_for_query(TransactionStatus::Idle, &mut b);
    b.put_slice(&msg(
        b'T',
        b"\x00\x01x\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
    ));
    assert!(backend::encode_data_row(&[Some(b"1"), None], &mut b).is_ok());
    b.put_slice(&msg(b'C', b"SELECT 1\0"));
    b.put_slice(&msg(b'I', b""));
    b.put_slice(&msg(b'1', b""));
    b.put_slice(&msg(b'2', b""));
    b.put_slice(&msg(b'3', b""));
    b.put_slice(&msg(b'n', b""));
    b.put_slice(&msg(b's', b""));
    b.put_slice(&msg(b't', b"\x00\x01\x00\x00\x00\x19"));
    b.put_slice(&msg(b'G', b"\x00\x00\x01\x00\x00"));
    b.put_slice(&msg(b'H', b"\x01\x00\x01\x00\x01"));
    b.put_slice(&msg(b'W', b"\x00\x00\x00"));
    b.put_slice(&msg(b'd', b"row\n"));
    b.put_slice(&msg(b'c', b""));
    b.put_slice(&msg(b'A', b"\0\0\0\x01ch\0payload\0"));
    b.put_slice(&msg(b'V', b"\x00\x00\x00\x01z"));
    let diag = Diagnostic::new(Severity::Warning, "01000", "careful").with_hint("really");
    assert!(backend::encode_notice_response(&diag, &mut b).is_ok());
    let diag = Diagnostic::new(Severity::Error, "42501", "denied").with_detail("policy");
    assert!(backend::encode_error_response(&diag, &mut b).is_ok());
    backend::encode_ready_for_query(TransactionStatus::Failed, &mut b);
    b.to_vec()
}

/// Feeds `wire` to `dec` in chunks chosen by `chunk`, collecting every frame.
fn feed(
    mut dec: FrameDecoder,
    wire: &[u8],
    mut chunk: impl FnMut() -> usize,
) -> Result<Vec<Frame>, FrameError> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = wire;
    while !rest.is_empty() {
        let (now, later) = rest.split_at(chunk().clamp(1, rest.len()));
        buf.extend_from_slice(now);
        rest = later;
        while let Some(f) = dec.decode(&mut buf)? {
            out.push(f);
        }
    }
    while let Some(f) = dec.decode_eof(&mut buf)? {
        out.push(f);
    }
    Ok(out)
}

fn assert_split_anywhere(dec: FrameDecoder, wire: &[u8], expected_frames: usize) {
    let whole = feed(dec.clone(), wire, || usize::MAX).unwrap_or_default();
    assert_eq!(whole.len(), expected_frames);
    let joined: Vec<u8> = whole.iter().flat_map(|f| f.as_bytes().to_vec()).collect();
    assert_eq!(joined, wire, "frames are the stream, byte for byte");

    assert_eq!(feed(dec.clone(), wire, || 1).ok().as_ref(), Some(&whole));
    for seed in 1..=50u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let split = feed(dec.clone(), wire, || rng.below(40) + 1);
        assert_eq!(split.ok().as_ref(), Some(&whole), "seed {seed}");
    }
}

#[test]
fn frontend_stream_splits_anywhere() {
    let wire = frontend_stream();
    assert_split_anywhere(FrameDecoder::frontend(), &wire, 17);
    let frames = feed(FrameDecoder::frontend(), &wire, || 3).unwrap_or_default();
    for f in &frames {
        assert!(
            FrontendMessage::decode(f).is_ok(),
            "{f:?}: {:?}",
            FrontendMessage::decode(f)
        );
    }
    assert!(matches!(
        frames.get(1).map(FrontendMessage::decode),
        Some(Ok(FrontendMessage::Startup(_)))
    ));
}

#[test]
fn backend_stream_splits_anywhere() {
    let wire = backend_stream();
    assert_split_anywhere(FrameDecoder::backend(), &wire, 28);
    let frames = feed(FrameDecoder::backend(), &wire, || 7).unwrap_or_default();
    for f in &frames {
        assert!(
            BackendMessage::decode(f).is_ok(),
            "{f:?}: {:?}",
            BackendMessage::decode(f)
        );
    }
}

/// Decodes everything `wire` frames into; returns how it ended.
fn chew(mut dec: FrameDecoder, wire: &[u8], frontend: bool) -> Result<usize, FrameError> {
    let mut buf = BytesMut::from(wire);
    let mut n = 0;
    while let Some(f) = dec.decode_eof(&mut buf)? {
        n += 1;
        // Message decoding may fail, but only with a typed error.
        if frontend {
            if let Err(e) = FrontendMessage::decode(&f) {
                assert!(!e.to_string().is_empty());
            }
            let _ = frontend::PasswordMessage::decode(&f);
            let _ = frontend::SaslInitialResponse::decode(&f);
            let _ = frontend::SaslResponse::decode(&f);
        } else if let Err(e) = BackendMessage::decode(&f) {
            assert!(!e.to_string().is_empty());
        }
    }
    Ok(n)
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x5eed);
    let mut errors = 0;
    for round in 0..3_000 {
        let len = rng.below(64);
        let mut wire = rng.bytes(len);
        // Make plausible headers common so the message decoders get exercised.
        if round % 2 == 0 && wire.len() >= 5 {
            let body_len = (wire.len() - 1) as i32;
            wire.splice(1..5, body_len.to_be_bytes());
        }
        let small = 32;
        for (dec, fe) in [
            (FrameDecoder::backend().with_max_frame_len(small), false),
            (FrameDecoder::new(Phase::Regular), true),
            (FrameDecoder::frontend().with_max_startup_len(small), true),
        ] {
            if let Err(e) = chew(dec, &wire, fe) {
                errors += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert!(errors > 0, "random input must produce framing errors");
}

#[test]
fn mutated_valid_frames_never_panic() {
    let mut rng = Rng(42);
    let fe = feed(FrameDecoder::frontend(), &frontend_stream(), || usize::MAX).unwrap_or_default();
    let be = feed(FrameDecoder::backend(), &backend_stream(), || usize::MAX).unwrap_or_default();
    for (frames, frontend) in [(fe, true), (be, false)] {
        for f in &frames {
            let raw = f.as_bytes().to_vec();
            let header = f.header_len();
            let body = raw.get(header..).unwrap_or_default();
            // Every truncation of the body, with the length field fixed up.
            for cut in 0..body.len() {
                let wire = reframe(f.tag(), body.get(..cut).unwrap_or_default());
                let _ = chew(decoder_for(f), &wire, frontend);
            }
            // Random byte flips.
            for _ in 0..200 {
                let mut body = body.to_vec();
                for _ in 0..=rng.below(3) {
                    let i = rng.below(body.len());
                    if let Some(b) = body.get_mut(i) {
                        *b = rng.next() as u8;
                    }
                }
                let _ = chew(decoder_for(f), &reframe(f.tag(), &body), frontend);
            }
        }
    }
}

fn decoder_for(f: &Frame) -> FrameDecoder {
    match f.tag() {
        Some(_) => FrameDecoder::new(Phase::Regular),
        None => FrameDecoder::frontend(),
    }
}

fn reframe(tag: Option<u8>, body: &[u8]) -> Vec<u8> {
    match tag {
        Some(t) => msg(t, body),
        None => {
            let mut v = (body.len() as i32 + 4).to_be_bytes().to_vec();
            v.extend_from_slice(body);
            v
        }
    }
}

#[test]
fn truncated_stream_at_eof_is_an_error() {
    let wire = backend_stream();
    for cut in [1, 4, 9, wire.len() - 1] {
        let mut buf = BytesMut::from(wire.get(..cut).unwrap_or_default());
        let mut dec = FrameDecoder::backend();
        let end = loop {
            match dec.decode_eof(&mut buf) {
                Ok(Some(_)) => continue,
                other => break other,
            }
        };
        assert!(
            matches!(end, Err(FrameError::Truncated { .. })),
            "cut {cut}: {end:?}"
        );
    }
}

mod live {
    //! One real conversation with a throwaway PostgreSQL 15 on loopback.

    use std::net::TcpListener;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::Duration;

    use bytes::{Bytes, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::super::backend::{Authentication, BackendMessage, TransactionStatus};
    use super::super::frame::{Frame, FrameDecoder};
    use super::super::frontend;
    use super::super::wire::Format;
    use super::msg;

    const BIN: &str = "/usr/lib/postgresql/15/bin";

    /// Runs a PostgreSQL tool as the unprivileged user (the server refuses root).
    fn as_user(uid: u32, gid: u32, tool: &str, cwd: &Path) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg(Path::new(BIN).join(tool))
            .current_dir(cwd);
        c
    }

    /// Stops the server when the test ends, even by panic.
    struct Server {
        uid: u32,
        gid: u32,
        dir: PathBuf,
        port: u16,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = as_user(self.uid, self.gid, "pg_ctl", &self.dir)
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w", "stop"])
                .status();
        }
    }

    fn start_server(dir: &Path) -> Server {
        let (uid, gid) = match nix::unistd::User::from_name("postgres") {
            Ok(Some(u)) => (u.uid.as_raw(), u.gid.as_raw()),
            _ => (65_534, 65_534),
        };
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown tempdir");
        let ok = as_user(uid, gid, "initdb", dir)
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        assert!(
            ok.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        // From here on the guard stops the server whatever happens.
        let server = Server {
            uid,
            gid,
            dir: dir.to_path_buf(),
            port,
        };
        let opts = format!(
            "-k {} -c listen_addresses=127.0.0.1 -p {port} -c fsync=off",
            dir.display()
        );
        let ok = as_user(uid, gid, "pg_ctl", dir)
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-l")
            .arg(dir.join("log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .output()
            .expect("run pg_ctl");
        assert!(
            ok.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&ok.stderr),
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        server
    }

    /// Reads frames until ReadyForQuery; checks they are the wire bytes exactly.
    async fn until_ready(
        sock: &mut TcpStream,
        dec: &mut FrameDecoder,
        buf: &mut BytesMut,
    ) -> Vec<Frame> {
        // Bytes read earlier but not framed yet come first.
        let mut raw = buf.to_vec();
        let mut frames = Vec::new();
        loop {
            while let Some(f) = dec.decode(buf).expect("framing") {
                let done = f.tag() == Some(b'Z');
                frames.push(f);
                if done {
                    let joined: Vec<u8> =
                        frames.iter().flat_map(|f| f.as_bytes().to_vec()).collect();
                    raw.truncate(joined.len());
                    assert_eq!(joined, raw, "frames reproduce the server's bytes");
                    return frames;
                }
            }
            let before = buf.len();
            let n = tokio::time::timeout(Duration::from_secs(20), sock.read_buf(buf))
                .await
                .expect("server reply in time")
                .expect("read");
            assert!(n > 0, "server closed the connection");
            raw.extend_from_slice(buf.get(before..).unwrap_or_default());
        }
    }

    fn decode_all(frames: &[Frame]) -> Vec<BackendMessage<'_>> {
        frames
            .iter()
            .map(|f| BackendMessage::decode(f).expect("decodes"))
            .collect()
    }

    #[test]
    fn real_postgres_15_conversation() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to run PostgreSQL as an unprivileged user");
            return;
        }
        if !Path::new(BIN).join("initdb").exists() {
            eprintln!("skipped: PostgreSQL 15 server binaries not installed in {BIN}");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let server = start_server(dir.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(converse(server.port));
        drop(server);
    }

    async fn converse(port: u16) {
        let mut sock = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut dec = FrameDecoder::backend();
        let mut buf = BytesMut::new();
        let mut out = BytesMut::new();

        let params = [
            ("user", "postgres"),
            ("database", "postgres"),
            ("application_name", "sluice-test"),
        ];
        frontend::encode_startup_v3(&params, &mut out).expect("startup");
        sock.write_all_buf(&mut out).await.expect("write startup");
        let frames = until_ready(&mut sock, &mut dec, &mut buf).await;
        let msgs = decode_all(&frames);
        assert_eq!(
            msgs.first(),
            Some(&BackendMessage::Authentication(Authentication::Ok))
        );
        let status = |name: &str| {
            msgs.iter().find_map(|m| match m {
                BackendMessage::ParameterStatus { name: n, value } if n == name => {
                    Some(value.to_string())
                }
                _ => None,
            })
        };
        assert!(status("server_version").is_some_and(|v| v.starts_with("15")));
        assert_eq!(status("client_encoding").as_deref(), Some("UTF8"));
        assert_eq!(status("application_name").as_deref(), Some("sluice-test"));
        assert!(msgs.iter().any(|m| matches!(
            m,
            BackendMessage::BackendKeyData { pid, secret_key } if *pid > 0 && secret_key.len() == 4
        )));
        assert_eq!(
            msgs.last(),
            Some(&BackendMessage::ReadyForQuery {
                status: TransactionStatus::Idle
            })
        );

        // Simple query.
        frontend::encode_query("SELECT 1 AS x, 'a'::text", &mut out).expect("query");
        sock.write_all_buf(&mut out).await.expect("write query");
        let frames = until_ready(&mut sock, &mut dec, &mut buf).await;
        let msgs = decode_all(&frames);
        assert_eq!(msgs.len(), 4, "{msgs:?}");
        let Some(BackendMessage::RowDescription { fields }) = msgs.first() else {
            panic!("no RowDescription: {msgs:?}");
        };
        let cols: Vec<_> = fields
            .iter()
            .map(|f| (f.name.as_ref(), f.type_oid, f.type_size, f.format))
            .collect();
        assert_eq!(
            cols,
            [("x", 23, 4, Format::Text), ("text", 25, -1, Format::Text)]
        );
        assert_eq!(
            msgs.get(1),
            Some(&BackendMessage::DataRow {
                values: vec![
                    Some(Bytes::from_static(b"1")),
                    Some(Bytes::from_static(b"a"))
                ]
            })
        );
        assert_eq!(
            msgs.get(2),
            Some(&BackendMessage::CommandComplete {
                tag: "SELECT 1".into()
            })
        );
        assert_eq!(
            msgs.get(3),
            Some(&BackendMessage::ReadyForQuery {
                status: TransactionStatus::Idle
            })
        );

        // An error, inside a transaction block.
        frontend::encode_query("BEGIN; SELECT * FROM nope", &mut out).expect("query");
        sock.write_all_buf(&mut out).await.expect("write query");
        let frames = until_ready(&mut sock, &mut dec, &mut buf).await;
        let msgs = decode_all(&frames);
        let err = msgs.iter().find_map(|m| match m {
            BackendMessage::ErrorResponse(d) => Some(d),
            _ => None,
        });
        let err = err.expect("ErrorResponse");
        assert_eq!(err.severity(), Some("ERROR"));
        assert_eq!(err.code(), Some("42P01"));
        assert_eq!(err.message(), Some("relation \"nope\" does not exist"));
        assert_eq!(
            msgs.last(),
            Some(&BackendMessage::ReadyForQuery {
                status: TransactionStatus::Failed
            })
        );

        // The extended protocol, with a binary parameter and a binary result.
        let mut wire = Vec::new();
        wire.extend(msg(b'Q', b"ROLLBACK\0"));
        wire.extend(msg(
            b'P',
            b"s1\0SELECT $1::int4 + 1 AS y\0\x00\x01\x00\x00\x00\x17",
        ));
        wire.extend(msg(
            b'B',
            b"\0s1\0\x00\x01\x00\x01\x00\x01\x00\x00\x00\x04\x00\x00\x00\x29\x00\x01\x00\x01",
        ));
        wire.extend(msg(b'D', b"P\0"));
        wire.extend(msg(b'E', b"\0\x00\x00\x00\x00"));
        wire.extend(msg(b'S', b""));
        sock.write_all(&wire).await.expect("write extended");
        let frames = until_ready(&mut sock, &mut dec, &mut buf).await;
        assert_eq!(
            decode_all(&frames).last(),
            Some(&BackendMessage::ReadyForQuery {
                status: TransactionStatus::Idle
            })
        );
        let frames = until_ready(&mut sock, &mut dec, &mut buf).await;
        let msgs = decode_all(&frames);
        assert!(
            matches!(msgs.first(), Some(BackendMessage::ParseComplete)),
            "{msgs:?}"
        );
        assert!(matches!(msgs.get(1), Some(BackendMessage::BindComplete)));
        assert!(matches!(
            msgs.get(2),
            Some(BackendMessage::RowDescription { fields })
                if fields.first().is_some_and(|f| f.name == "y" && f.format == Format::Binary)
        ));
        assert_eq!(
            msgs.get(3),
            Some(&BackendMessage::DataRow {
                values: vec![Some(Bytes::from_static(b"\x00\x00\x00\x2a"))]
            })
        );
        assert!(matches!(
            msgs.get(4),
            Some(BackendMessage::CommandComplete { tag }) if tag == "SELECT 1"
        ));

        frontend::encode_terminate(&mut out);
        sock.write_all_buf(&mut out).await.expect("write terminate");
        let n = tokio::time::timeout(Duration::from_secs(20), sock.read_buf(&mut buf))
            .await
            .expect("close in time")
            .expect("read");
        assert_eq!(n, 0, "server closes after Terminate");
    }
}
