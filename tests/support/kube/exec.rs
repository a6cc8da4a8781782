//! The stand-in's `pods/exec`: the command really runs (`tokio::process`, no
//! container), and its streams travel the way an API server (through the kubelet)
//! sends them:
//!
//! - **WebSocket** (kubectl 1.30 and later): subprotocol `v5.channel.k8s.io`, else
//!   `v4.channel.k8s.io`, as the API server negotiates them; every binary message is
//!   one channel byte and data: 0 stdin, 1 stdout, 2 stderr, 3 error (a `meta/v1 Status`
//!   with the exit code), 4 resize (`{"Width":W,"Height":H}`), and in v5 255 close
//!   (`[255, 0]` half-closes stdin). The first message is an empty one on the lowest
//!   writable channel, as the kubelet sends to say the streams are up.
//! - **SPDY/3.1** (kubectl 1.28 and earlier): `X-Stream-Protocol-Version:
//!   v4.channel.k8s.io`; the client opens one stream per channel (`streamtype` error,
//!   stdin, stdout, stderr, resize) and the server answers each with a SYN_REPLY, then
//!   writes stdout and stderr, the error stream's `Status`, and FIN on each.
//!
//! What a stand-in cannot do: `-t` gets no real terminal (the command runs on pipes,
//! stderr is merged into stdout as a terminal would, and resize messages are logged,
//! not applied). Everything is logged in [`ExecSeen`] as the witness of what the
//! stand-in received.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    process::{Child, ChildStdin},
    sync::mpsc,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        protocol::{CloseFrame, Role, frame::coding::CloseCode},
    },
};

/// One exec the stand-in served.
#[derive(Clone, Debug, Default)]
pub struct ExecSeen {
    /// `v5.channel.k8s.io`, `v4.channel.k8s.io` (WebSocket) or `SPDY/3.1+v4.channel.k8s.io`.
    pub protocol: String,
    pub command: Vec<String>,
    /// What arrived on stdin.
    pub stdin: Vec<u8>,
    /// The resize messages, as sent.
    pub resizes: Vec<String>,
    /// Whether a v5 close signal for stdin arrived.
    pub stdin_closed: bool,
    pub exit_code: Option<i32>,
    /// Why the stand-in gave up on the streams, if it did.
    pub error: Option<String>,
}

/// What the query of an exec asks for.
struct ExecRequest {
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

impl ExecRequest {
    fn from_query(query: &str) -> Self {
        let values = |key: &str| super::form_values(query, key);
        let flag = |key: &str| values(key).last().is_some_and(|v| v == "true" || v == "1");
        Self {
            command: values("command"),
            stdin: flag("stdin"),
            stdout: flag("stdout"),
            stderr: flag("stderr"),
            tty: flag("tty"),
        }
    }

    fn spawn(&self) -> std::io::Result<Child> {
        let Some((program, args)) = self.command.split_first() else {
            return Err(std::io::Error::other("no command"));
        };
        let piped = |wanted: bool| {
            if wanted {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            }
        };
        tokio::process::Command::new(program)
            .args(args)
            .stdin(piped(self.stdin))
            .stdout(piped(self.stdout))
            .stderr(piped(self.stderr || self.tty))
            .kill_on_drop(true)
            .spawn()
    }
}

/// The error channel's `Status` for how the command ended, as the kubelet writes it.
fn exit_status(
    command: &[String],
    status: std::io::Result<std::process::ExitStatus>,
) -> (Value, i32) {
    let code = match status {
        Ok(status) => status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt as _;
            128 + status.signal().unwrap_or(0)
        }),
        Err(_) => 126,
    };
    if code == 0 {
        return (json!({"metadata":{},"status":"Success"}), 0);
    }
    (
        json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", command.join(" ")),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        code,
    )
}

/// Copies a child's output into `sink` as (channel, data) until it ends.
fn pump(
    mut output: impl AsyncRead + Unpin + Send + 'static,
    channel: u8,
    sink: mpsc::Sender<(u8, Vec<u8>)>,
) {
    tokio::spawn(async move {
        let mut buffer = vec![0; 16 * 1024];
        loop {
            match output.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if sink.send((channel, buffer[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// A command's output as it comes: (channel byte, data).
type Outputs = mpsc::Receiver<(u8, Vec<u8>)>;

/// Starts the command with its outputs flowing into a channel of (channel byte, data);
/// the receiver ends when both outputs have.
fn start(exec: &ExecRequest) -> std::io::Result<(Child, Outputs)> {
    let mut child = exec.spawn()?;
    let (sender, receiver) = mpsc::channel(16);
    if let Some(stdout) = child.stdout.take() {
        pump(stdout, 1, sender.clone());
    }
    if let Some(stderr) = child.stderr.take() {
        // A terminal has no separate stderr.
        pump(stderr, if exec.tty { 1 } else { 2 }, sender.clone());
    }
    Ok((child, receiver))
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":message,"reason":reason,"code":code.as_u16()})
            .to_string(),
    )));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Answers an exec request: the upgrade, then the streams in a task of their own.
pub(super) fn serve(
    mut request: Request<Incoming>,
    execs: Arc<Mutex<Vec<ExecSeen>>>,
) -> Response<Full<Bytes>> {
    let query = request.uri().query().unwrap_or_default().to_owned();
    let exec = ExecRequest::from_query(&query);
    if exec.command.is_empty() {
        return status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "you must specify at least 1 command",
        );
    }
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let upgrade = header("upgrade").to_ascii_lowercase();
    if upgrade == "websocket" {
        let offered: Vec<String> = header("sec-websocket-protocol")
            .split(',')
            .map(|p| p.trim().to_owned())
            .collect();
        let Some(protocol) = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
            .into_iter()
            .find(|wanted| offered.iter().any(|p| p == wanted))
        else {
            return status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "unable to upgrade: no supported subprotocol was requested",
            );
        };
        let key = header("sec-websocket-key");
        let on_upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let socket =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            websocket(socket, protocol, exec, execs).await;
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(
            header::UPGRADE,
            header::HeaderValue::from_static("websocket"),
        );
        headers.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("Upgrade"),
        );
        headers.insert(
            "sec-websocket-accept",
            header::HeaderValue::from_str(
                &tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
            )
            .expect("accept key"),
        );
        headers.insert(
            "sec-websocket-protocol",
            header::HeaderValue::from_static(protocol),
        );
        return response;
    }
    if upgrade.starts_with("spdy/3.1") {
        let offered = header("x-stream-protocol-version");
        if !offered.split(',').any(|p| p.trim() == "v4.channel.k8s.io") {
            return status_response(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "the stand-in speaks only v4.channel.k8s.io over SPDY",
            );
        }
        let on_upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            spdy(TokioIo::new(upgraded), exec, execs).await;
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(
            header::UPGRADE,
            header::HeaderValue::from_static("SPDY/3.1"),
        );
        headers.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("Upgrade"),
        );
        headers.insert(
            "x-stream-protocol-version",
            header::HeaderValue::from_static("v4.channel.k8s.io"),
        );
        return response;
    }
    status_response(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        "Upgrade request required",
    )
}

async fn websocket<S>(
    socket: WebSocketStream<S>,
    protocol: &'static str,
    exec: ExecRequest,
    execs: Arc<Mutex<Vec<ExecSeen>>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let v5 = protocol == "v5.channel.k8s.io";
    let mut seen = ExecSeen {
        protocol: protocol.into(),
        command: exec.command.clone(),
        ..Default::default()
    };
    let (mut sink, mut messages) = socket.split();
    let send = |channel: u8, data: &[u8]| {
        let mut message = Vec::with_capacity(data.len() + 1);
        message.push(channel);
        message.extend_from_slice(data);
        Message::binary(message)
    };
    // The kubelet's "streams are up" signal.
    let first = if exec.stdout {
        1
    } else if exec.stderr {
        2
    } else {
        3
    };
    if sink.send(send(first, &[])).await.is_err() {
        return;
    }
    let (mut child, mut outputs) = match start(&exec) {
        Ok(started) => started,
        Err(error) => {
            let status = json!({"metadata":{},"status":"Failure","message":format!("cannot run the command: {error}"),"reason":"InternalError"});
            let _ = sink.send(send(3, status.to_string().as_bytes())).await;
            let _ = sink.close().await;
            return;
        }
    };
    let mut stdin: Option<ChildStdin> = child.stdin.take();
    let mut client_gone = false;
    loop {
        tokio::select! {
            output = outputs.recv() => match output {
                Some((channel, data)) => {
                    if sink.send(send(channel, &data)).await.is_err() {
                        client_gone = true;
                        break;
                    }
                }
                None => break,
            },
            message = messages.next(), if !client_gone => match message {
                Some(Ok(Message::Binary(data))) => match data.first() {
                    Some(0) => {
                        seen.stdin.extend_from_slice(&data[1..]);
                        if let Some(input) = &mut stdin {
                            let _ = input.write_all(&data[1..]).await;
                        }
                    }
                    Some(4) => seen.resizes.push(String::from_utf8_lossy(&data[1..]).into_owned()),
                    Some(255) if v5 && data.get(1) == Some(&0) => {
                        seen.stdin_closed = true;
                        stdin = None;
                    }
                    _ => {}
                },
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    client_gone = true;
                    break;
                }
            },
        }
    }
    drop(stdin);
    if client_gone {
        let _ = child.kill().await;
        execs.lock().expect("execs").push(seen);
        return;
    }
    let (status, code) = exit_status(&exec.command, child.wait().await);
    seen.exit_code = Some(code);
    execs.lock().expect("execs").push(seen);
    let _ = sink.send(send(3, status.to_string().as_bytes())).await;
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    // The client answers the close; wait for it (bounded), as a server does.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = messages.next().await {}
    })
    .await;
}

/// SPDY/3's header-compression dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1):
/// these names, each with a 4-byte length, then a run of status codes, reasons, dates
/// and media types.
fn spdy_dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
    let mut dictionary = Vec::with_capacity(1423);
    for word in WORDS {
        dictionary.extend_from_slice(&(word.len() as u32).to_be_bytes());
        dictionary.extend_from_slice(word.as_bytes());
    }
    dictionary.extend_from_slice(TAIL.as_bytes());
    dictionary
}

const SPDY_VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 0x01;

/// One SPDY frame as read.
enum SpdyFrame {
    Control {
        kind: u16,
        body: Vec<u8>,
    },
    Data {
        stream: u32,
        flags: u8,
        data: Vec<u8>,
    },
}

async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<SpdyFrame> {
    let mut head = [0u8; 8];
    reader.read_exact(&mut head).await?;
    let flags = head[4];
    let length = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    if head[0] & 0x80 != 0 {
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != SPDY_VERSION {
            return Err(std::io::Error::other(format!("SPDY version {version}")));
        }
        Ok(SpdyFrame::Control {
            kind: u16::from_be_bytes([head[2], head[3]]),
            body,
        })
    } else {
        Ok(SpdyFrame::Data {
            stream: u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff,
            flags,
            data: body,
        })
    }
}

fn control_frame(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + body.len());
    frame.extend_from_slice(&(0x8000 | SPDY_VERSION).to_be_bytes());
    frame.extend_from_slice(&kind.to_be_bytes());
    frame.push(flags);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(body);
    frame
}

fn data_frame(stream: u32, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + data.len());
    frame.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    frame.push(flags);
    frame.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(data);
    frame
}

/// The header blocks of one direction of a SPDY connection: one zlib stream for the
/// connection's whole life.
struct HeaderInflater {
    zlib: flate2::Decompress,
    dictionary: Vec<u8>,
}

impl HeaderInflater {
    fn new() -> Self {
        Self {
            zlib: flate2::Decompress::new(true),
            dictionary: spdy_dictionary(),
        }
    }

    fn headers(&mut self, block: &[u8]) -> Result<BTreeMap<String, String>, String> {
        let mut plain = Vec::with_capacity(4096);
        let mut offset = 0;
        loop {
            plain.reserve(4096);
            let before_in = self.zlib.total_in();
            let before_out = self.zlib.total_out();
            let result = self.zlib.decompress_vec(
                &block[offset..],
                &mut plain,
                flate2::FlushDecompress::Sync,
            );
            let consumed = (self.zlib.total_in() - before_in) as usize;
            offset += consumed;
            match result {
                Ok(_) => {}
                Err(error) if error.needs_dictionary().is_some() => {
                    self.zlib
                        .set_dictionary(&self.dictionary)
                        .map_err(|error| format!("SPDY dictionary: {error}"))?;
                    continue;
                }
                Err(error) => return Err(format!("SPDY header block: {error}")),
            }
            let produced = self.zlib.total_out() - before_out;
            if offset >= block.len() && plain.len() < plain.capacity() {
                break;
            }
            if consumed == 0 && produced == 0 {
                break;
            }
        }
        let mut pairs = BTreeMap::new();
        let mut at = 0;
        let mut take = |n: usize| -> Result<&[u8], String> {
            let slice = plain.get(at..at + n).ok_or("short SPDY header block")?;
            at += n;
            Ok(slice)
        };
        let word = |bytes: &[u8]| u32::from_be_bytes(bytes.try_into().unwrap_or([0; 4])) as usize;
        let count = word(take(4)?);
        for _ in 0..count {
            let length = word(take(4)?);
            let name = String::from_utf8_lossy(take(length)?).into_owned();
            let length = word(take(4)?);
            let value = String::from_utf8_lossy(take(length)?).into_owned();
            pairs.insert(name, value);
        }
        Ok(pairs)
    }
}

/// The stand-in's side of header compression: a zlib stream of stored (uncompressed)
/// deflate blocks, which any inflater with or without the dictionary reads.
struct HeaderDeflater {
    started: bool,
}

impl HeaderDeflater {
    fn block(&mut self, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut plain = Vec::new();
        plain.extend_from_slice(&(pairs.len() as u32).to_be_bytes());
        for (name, value) in pairs {
            plain.extend_from_slice(&(name.len() as u32).to_be_bytes());
            plain.extend_from_slice(name.as_bytes());
            plain.extend_from_slice(&(value.len() as u32).to_be_bytes());
            plain.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::new();
        if !self.started {
            // zlib header: deflate, 32 KiB window, no preset dictionary.
            out.extend_from_slice(&[0x78, 0x01]);
            self.started = true;
        }
        let length = plain.len() as u16;
        out.push(0x00); // not final, stored
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(&(!length).to_le_bytes());
        out.extend_from_slice(&plain);
        // A sync flush, as every SPDY writer ends a header block: an empty stored
        // block, after which an inflater hands out what it has.
        out.extend_from_slice(&[0x00, 0x00, 0x00, 0xff, 0xff]);
        out
    }
}

async fn spdy<S>(connection: S, exec: ExecRequest, execs: Arc<Mutex<Vec<ExecSeen>>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(connection);
    let (out, mut out_queue) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer_task = tokio::spawn(async move {
        let mut writer = writer;
        while let Some(frame) = out_queue.recv().await {
            if writer.write_all(&frame).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    let mut seen = ExecSeen {
        protocol: "SPDY/3.1+v4.channel.k8s.io".into(),
        command: exec.command.clone(),
        ..Default::default()
    };
    let expected = 1
        + usize::from(exec.stdin)
        + usize::from(exec.stdout)
        + usize::from(exec.stderr && !exec.tty)
        + usize::from(exec.tty);
    let mut inflater = HeaderInflater::new();
    let mut deflater = HeaderDeflater { started: false };
    let mut streams: BTreeMap<String, u32> = BTreeMap::new();
    // Streams first (the kubelet waits for all it expects), answering each.
    let setup = tokio::time::timeout(Duration::from_secs(30), async {
        while streams.len() < expected {
            match read_frame(&mut reader).await? {
                SpdyFrame::Control {
                    kind: SYN_STREAM,
                    body,
                    ..
                } if body.len() >= 10 => {
                    let id = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) & 0x7fff_ffff;
                    let headers = inflater
                        .headers(&body[10..])
                        .map_err(std::io::Error::other)?;
                    let kind = headers.get("streamtype").cloned().unwrap_or_default();
                    let mut reply = id.to_be_bytes().to_vec();
                    reply.extend_from_slice(&deflater.block(&[]));
                    let _ = out.send(control_frame(SYN_REPLY, 0, &reply));
                    streams.insert(kind, id);
                }
                SpdyFrame::Control {
                    kind: PING, body, ..
                } => {
                    let _ = out.send(control_frame(PING, 0, &body));
                }
                _ => {}
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    match setup {
        Ok(Ok(())) => {}
        Ok(Err(error)) => seen.error = Some(format!("SPDY stream setup: {error}")),
        Err(_) => seen.error = Some("SPDY stream setup timed out".into()),
    }
    if seen.error.is_some() {
        execs.lock().expect("execs").push(seen);
        return;
    }
    let stream_of = |kind: &str| streams.get(kind).copied();
    let (mut child, mut outputs) = match start(&exec) {
        Ok(started) => started,
        Err(error) => {
            if let Some(id) = stream_of("error") {
                let status = json!({"metadata":{},"status":"Failure","message":format!("cannot run the command: {error}"),"reason":"InternalError"});
                let _ = out.send(data_frame(id, 0, status.to_string().as_bytes()));
                let _ = out.send(data_frame(id, FLAG_FIN, &[]));
            }
            execs.lock().expect("execs").push(seen);
            return;
        }
    };
    let mut stdin = child.stdin.take();
    let stdin_stream = stream_of("stdin");
    let resize_stream = stream_of("resize");
    let mut client_gone = false;
    loop {
        tokio::select! {
            output = outputs.recv() => match output {
                Some((channel, data)) => {
                    let kind = if channel == 2 { "stderr" } else { "stdout" };
                    if let Some(id) = stream_of(kind) {
                        let _ = out.send(data_frame(id, 0, &data));
                    }
                }
                None => break,
            },
            frame = read_frame(&mut reader), if !client_gone => match frame {
                Ok(SpdyFrame::Data { stream, flags, data }) => {
                    if Some(stream) == stdin_stream {
                        seen.stdin.extend_from_slice(&data);
                        if let Some(input) = &mut stdin {
                            let _ = input.write_all(&data).await;
                        }
                        if flags & FLAG_FIN != 0 {
                            seen.stdin_closed = true;
                            stdin = None;
                        }
                    } else if Some(stream) == resize_stream && !data.is_empty() {
                        seen.resizes.push(String::from_utf8_lossy(&data).into_owned());
                    }
                }
                Ok(SpdyFrame::Control { kind: PING, body, .. }) => {
                    let _ = out.send(control_frame(PING, 0, &body));
                }
                Ok(SpdyFrame::Control { kind: RST_STREAM | GOAWAY, .. }) | Err(_) => {
                    client_gone = true;
                    break;
                }
                Ok(_) => {}
            },
        }
    }
    drop(stdin);
    if client_gone {
        let _ = child.kill().await;
        execs.lock().expect("execs").push(seen);
        return;
    }
    for kind in ["stdout", "stderr"] {
        if let Some(id) = stream_of(kind) {
            let _ = out.send(data_frame(id, FLAG_FIN, &[]));
        }
    }
    let (status, code) = exit_status(&exec.command, child.wait().await);
    seen.exit_code = Some(code);
    execs.lock().expect("execs").push(seen);
    if let Some(id) = stream_of("error") {
        let _ = out.send(data_frame(id, 0, status.to_string().as_bytes()));
        let _ = out.send(data_frame(id, FLAG_FIN, &[]));
    }
    // The client closes the connection once it has the status; go away then (bounded).
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while read_frame(&mut reader).await.is_ok() {}
    })
    .await;
    let mut goaway = 0u32.to_be_bytes().to_vec();
    goaway.extend_from_slice(&0u32.to_be_bytes());
    let _ = out.send(control_frame(GOAWAY, 0, &goaway));
    drop(out);
    let _ = writer_task.await;
}
