//! `sluice-probe`: the agent side of the integration tests.
//!
//! The tests start it with `sluice run`, so it runs inside the managed cgroup exactly as
//! an agent would, and it reports what it saw as one JSON line on stdout:
//!
//! - `tcp ADDR`: connect, read the sink's greeting line, send a line, read the echo.
//! - `tcp-many ADDR[,ADDR...] COUNT`: COUNT connections held open at once, spread over
//!   the addresses; each checks that the sink that answered is the one it dialled.
//! - `udp ADDR`: one unconnected UDP datagram.
//! - `raw ADDR HEX`: connect, send the bytes, read until the other side closes.
//! - `tfo ADDR`, `io-uring ADDR`: the `tcp` exchange, connecting by TCP Fast Open
//!   (`sendto(MSG_FASTOPEN)`) or by io_uring's IORING_OP_CONNECT.
//! - `udp-connect ADDR`, `udp-sendmsg ADDR`: a connected UDP send; an unconnected
//!   sendmsg(2).
//! - `families`: socket(2) and socketpair(2) in families sluice mediates and in some it
//!   does not (vsock, packet), the x32 system call too on x86_64; each outcome with
//!   its errno.
//! - `sockets`: try raw IPv4/IPv6 and packet sockets. `ping ADDR`: an ICMP echo
//!   through an unprivileged ping socket and sendto.
//! - `serve ADDR`: listen, and answer the first peer that connects in.
//! - `unix PATH REQUEST`: a unix socket exchange.
//! - `fd-recv PATH ACTION [ADDR]`: use an inet socket received over SCM_RIGHTS.
//! - `leave-cgroup PROCS...`: try to move itself to other cgroups.
//! - `io-uring-socket`: vsock, packet and inet sockets made with io_uring's
//!   IORING_OP_SOCKET, which no seccomp filter on socket(2) sees; outcomes as `families`.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{Arc, Barrier},
    time::Duration,
};

use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let report = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["tcp", addr] => tcp(addr),
        ["tcp-many", addrs, count] => tcp_many(addrs, count),
        ["udp", addr] => udp(addr),
        ["raw", addr, hex] => raw(addr, hex),
        ["tfo", addr] => tfo(addr),
        ["udp-connect", addr] => udp_connect(addr),
        ["udp-sendmsg", addr] => udp_sendmsg(addr),
        ["sockets"] => sockets(),
        ["families"] => families(),
        ["serve", addr] => serve(addr),
        ["ping", addr] => ping(addr),
        ["unix", path, request] => unix(path, request),
        ["fd-recv", path, action] => fd_recv(path, action, None),
        ["fd-recv", path, action, addr] => fd_recv(path, action, Some(addr)),
        ["leave-cgroup", ..] => leave_cgroup(&args[1..]),
        ["io-uring", addr] => io_uring(addr),
        ["io-uring-socket"] => io_uring_socket(),
        _ => {
            json!({"ok": false, "error": format!("usage: sluice-probe MODE ... (see the module doc); got {args:?}")})
        }
    };
    println!("{report}");
}

fn tcp(addr: &str) -> Value {
    match talk(addr, "hello from the agent") {
        Ok(report) => report,
        Err(error) => json!({"ok": false, "error": error}),
    }
}

/// One full exchange with a sink; the error string keeps the OS error's kind.
fn talk(addr: &str, line: &str) -> Result<Value, String> {
    let target: SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad address {addr}: {e}"))?;
    let stream = TcpStream::connect_timeout(&target, TIMEOUT)
        .map_err(|e| format!("connect: {e} ({:?})", e.kind()))?;
    let peer = stream
        .peer_addr()
        .map_err(|e| format!("getpeername: {e}"))?;
    let local = stream
        .local_addr()
        .map_err(|e| format!("getsockname: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut greeting = String::new();
    let read = reader
        .read_line(&mut greeting)
        .map_err(|e| format!("read greeting: {e} ({:?})", e.kind()))?;
    if read == 0 {
        return Err("read greeting: connection closed".into());
    }
    let mut writer = stream;
    writeln!(writer, "{line}").map_err(|e| format!("write: {e}"))?;
    let mut echo = String::new();
    reader
        .read_line(&mut echo)
        .map_err(|e| format!("read echo: {e}"))?;
    Ok(json!({
        "ok": true,
        "peer": peer.to_string(),
        "local": local.to_string(),
        "greeting": greeting.trim_end(),
        "echo": echo.trim_end(),
    }))
}

fn tcp_many(addrs: &str, count: &str) -> Value {
    let addrs: Vec<String> = addrs.split(',').map(str::to_owned).collect();
    let Ok(count) = count.parse::<usize>() else {
        return json!({"ok": false, "error": "bad count"});
    };
    let barrier = Arc::new(Barrier::new(count));
    let handles: Vec<_> = (0..count)
        .map(|i| {
            let addr = addrs[i % addrs.len()].clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || -> Result<(), String> {
                let target: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
                let stream = TcpStream::connect_timeout(&target, TIMEOUT);
                // Everyone waits here, so all connections are open at the same time.
                barrier.wait();
                let stream = stream.map_err(|e| format!("{addr}: connect: {e}"))?;
                stream
                    .set_read_timeout(Some(TIMEOUT))
                    .map_err(|e| e.to_string())?;
                let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
                let mut greeting = String::new();
                reader
                    .read_line(&mut greeting)
                    .map_err(|e| format!("{addr}: greeting: {e}"))?;
                let expected = format!("SINK {addr}");
                if greeting.trim_end() != expected {
                    return Err(format!(
                        "dialled {addr} but reached {:?}",
                        greeting.trim_end()
                    ));
                }
                let token = format!("token-{i}");
                let mut writer = stream;
                writeln!(writer, "{token}").map_err(|e| e.to_string())?;
                let mut echo = String::new();
                reader.read_line(&mut echo).map_err(|e| e.to_string())?;
                if echo.trim_end() != token {
                    return Err(format!("{addr}: sent {token}, echo {:?}", echo.trim_end()));
                }
                Ok(())
            })
        })
        .collect();
    let mut errors = Vec::new();
    for handle in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => errors.push(error),
            Err(_) => errors.push("thread panicked".into()),
        }
    }
    json!({"ok": errors.is_empty(), "count": count, "errors": errors})
}

fn udp(addr: &str) -> Value {
    let result = (|| -> Result<usize, String> {
        let target: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
        let bind: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .map_err(|e| format!("{e}"))?;
        let socket = UdpSocket::bind(bind).map_err(|e| format!("bind: {e}"))?;
        socket
            .send_to(b"datagram from the agent", target)
            .map_err(|e| format!("sendto: {e} ({:?})", e.kind()))
    })();
    match result {
        Ok(sent) => json!({"ok": true, "sent": sent}),
        Err(error) => json!({"ok": false, "error": error}),
    }
}

fn raw(addr: &str, hex: &str) -> Value {
    let result = (|| -> Result<usize, String> {
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .ok_or_else(|| format!("bad hex at {i}"))
            })
            .collect::<Result<Vec<u8>, String>>()?;
        let target: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
        let mut stream =
            TcpStream::connect_timeout(&target, TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(&bytes)
            .map_err(|e| format!("write: {e}"))?;
        let mut received = Vec::new();
        // A reset is a fine way for the other side to end it.
        let _ = std::io::Read::read_to_end(&mut stream, &mut received);
        Ok(received.len())
    })();
    match result {
        Ok(received) => json!({"ok": true, "received": received}),
        Err(error) => json!({"ok": false, "error": error}),
    }
}

/// `tfo ADDR`: TCP Fast Open: `sendto(MSG_FASTOPEN)` on an unconnected socket carries
/// the first line, then the exchange goes on as in `tcp`.
fn tfo(addr: &str) -> Value {
    let result = (|| -> Result<Value, String> {
        let target: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
        let socket = new_socket(&target, libc::SOCK_STREAM)?;
        let (storage, len) = sockaddr_of(&target);
        let line = b"hello from the agent\n";
        // SAFETY: line and storage are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                line.as_ptr().cast(),
                line.len(),
                libc::MSG_FASTOPEN,
                (&raw const storage).cast(),
                len,
            )
        };
        if sent < 0 {
            let error = std::io::Error::last_os_error();
            return Err(format!(
                "sendto(MSG_FASTOPEN): {error} ({:?})",
                error.kind()
            ));
        }
        let stream = TcpStream::from(socket);
        exchange_after_send(stream)
    })();
    result.unwrap_or_else(|error| json!({"ok": false, "error": error}))
}

/// Reads the greeting and the echo of a line already sent.
fn exchange_after_send(stream: TcpStream) -> Result<Value, String> {
    let peer = stream
        .peer_addr()
        .map_err(|e| format!("getpeername: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut greeting = String::new();
    reader
        .read_line(&mut greeting)
        .map_err(|e| format!("read greeting: {e} ({:?})", e.kind()))?;
    let mut echo = String::new();
    reader
        .read_line(&mut echo)
        .map_err(|e| format!("read echo: {e} ({:?})", e.kind()))?;
    Ok(json!({
        "ok": !greeting.is_empty(),
        "peer": peer.to_string(),
        "greeting": greeting.trim_end(),
        "echo": echo.trim_end(),
    }))
}

fn new_socket(target: &SocketAddr, kind: libc::c_int) -> Result<OwnedFd, String> {
    let family = if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    raw_socket_call(family, kind, 0).map_err(|e| format!("socket: {e}"))
}

fn raw_socket_call(
    family: libc::c_int,
    kind: libc::c_int,
    protocol: libc::c_int,
) -> std::io::Result<OwnedFd> {
    // SAFETY: socket has no memory preconditions; the fd is owned from here on.
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_of(target: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match target {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// `udp-connect ADDR`: connect a UDP socket (connect4/6 see it), then send.
fn udp_connect(addr: &str) -> Value {
    let result = (|| -> Result<usize, String> {
        let target: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
        let bind = if target.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let socket = UdpSocket::bind(bind).map_err(|e| format!("bind: {e}"))?;
        socket
            .connect(target)
            .map_err(|e| format!("connect: {e} ({:?})", e.kind()))?;
        socket
            .send(b"datagram from the agent")
            .map_err(|e| format!("send: {e} ({:?})", e.kind()))
    })();
    match result {
        Ok(sent) => json!({"ok": true, "sent": sent}),
        Err(error) => json!({"ok": false, "error": error}),
    }
}

/// `udp-sendmsg ADDR`: one unconnected datagram through sendmsg(2) with msg_name.
fn udp_sendmsg(addr: &str) -> Value {
    let result = (|| -> Result<isize, String> {
        let target: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
        let socket = new_socket(&target, libc::SOCK_DGRAM)?;
        let (mut storage, len) = sockaddr_of(&target);
        let mut payload = *b"datagram from the agent";
        let mut iov = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        };
        // SAFETY: all-zero is a valid msghdr; the pointers set below outlive the call.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_name = (&raw mut storage).cast();
        message.msg_namelen = len;
        message.msg_iov = &raw mut iov;
        message.msg_iovlen = 1;
        // SAFETY: message points at live buffers.
        let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &raw const message, 0) };
        if sent < 0 {
            let error = std::io::Error::last_os_error();
            return Err(format!("sendmsg: {error} ({:?})", error.kind()));
        }
        Ok(sent)
    })();
    match result {
        Ok(sent) => json!({"ok": true, "sent": sent}),
        Err(error) => json!({"ok": false, "error": error}),
    }
}

/// `sockets`: tries raw IPv4, raw IPv6 and packet sockets; reports each outcome.
fn sockets() -> Value {
    let attempts = [
        (
            "inet_raw",
            libc::AF_INET,
            libc::SOCK_RAW,
            libc::IPPROTO_ICMP,
        ),
        (
            "inet6_raw",
            libc::AF_INET6,
            libc::SOCK_RAW,
            libc::IPPROTO_ICMPV6,
        ),
        ("packet", libc::AF_PACKET, libc::SOCK_RAW, 0x0300), // htons(ETH_P_ALL)
        ("packet_dgram", libc::AF_PACKET, libc::SOCK_DGRAM, 0x0300),
    ];
    let mut report = serde_json::Map::new();
    let mut any_created = false;
    for (name, family, kind, protocol) in attempts {
        let outcome = match raw_socket_call(family, kind, protocol) {
            Ok(_) => {
                any_created = true;
                "created".to_owned()
            }
            Err(error) => format!("{error} ({:?})", error.kind()),
        };
        report.insert(name.into(), Value::String(outcome));
    }
    report.insert("ok".into(), Value::Bool(any_created));
    Value::Object(report)
}

/// `families`: which address families get a socket. Each key is `created` or
/// `errno N (message)`.
fn families() -> Value {
    fn outcome(rc: libc::c_long, fds: &[libc::c_int]) -> Value {
        if rc < 0 {
            let error = std::io::Error::last_os_error();
            return Value::String(format!(
                "errno {} ({error})",
                error.raw_os_error().unwrap_or(0)
            ));
        }
        for fd in fds {
            // SAFETY: a descriptor this function just got and owns.
            unsafe { libc::close(*fd) };
        }
        Value::String("created".into())
    }
    let socket = |family: libc::c_int, kind: libc::c_int, protocol: libc::c_int| {
        // SAFETY: socket has no memory preconditions.
        let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, protocol) };
        outcome(fd.into(), &[fd])
    };
    let socketpair = |family: libc::c_int, kind: libc::c_int| {
        let mut pair = [-1; 2];
        // SAFETY: pair has room for the two descriptors.
        let rc =
            unsafe { libc::socketpair(family, kind | libc::SOCK_CLOEXEC, 0, pair.as_mut_ptr()) };
        outcome(rc.into(), &pair)
    };
    let mut report = serde_json::Map::new();
    report.insert("unix".into(), socket(libc::AF_UNIX, libc::SOCK_STREAM, 0));
    report.insert(
        "unix_pair".into(),
        socketpair(libc::AF_UNIX, libc::SOCK_STREAM),
    );
    report.insert("inet".into(), socket(libc::AF_INET, libc::SOCK_STREAM, 0));
    report.insert("inet6".into(), socket(libc::AF_INET6, libc::SOCK_STREAM, 0));
    report.insert(
        "netlink".into(),
        socket(libc::AF_NETLINK, libc::SOCK_RAW, 0),
    );
    report.insert("vsock".into(), socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0));
    report.insert(
        "vsock_pair".into(),
        socketpair(libc::AF_VSOCK, libc::SOCK_STREAM),
    );
    // htons(ETH_P_ALL)
    report.insert(
        "packet".into(),
        socket(libc::AF_PACKET, libc::SOCK_RAW, 0x0300),
    );
    #[cfg(target_arch = "x86_64")]
    {
        // The x32 ABI's socket(2): the same number with __X32_SYSCALL_BIT. ENOSYS where
        // the kernel has no x32 support.
        // SAFETY: a system call on integers only.
        let fd = unsafe {
            libc::syscall(
                0x4000_0000 | libc::SYS_socket,
                libc::AF_VSOCK,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
            )
        };
        report.insert("x32_vsock".into(), outcome(fd, &[fd as libc::c_int]));
    }
    report.insert("ok".into(), Value::Bool(true));
    Value::Object(report)
}

/// `serve ADDR`: listens on ADDR, answers the first peer that connects within 5 s
/// with a line, and reports whether anyone connected.
fn serve(addr: &str) -> Value {
    let result = (|| -> Result<Value, String> {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| format!("bind: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
                    let wrote = stream
                        .write(b"secret from the agent\n")
                        .map_err(|e| format!("write: {e}"))?;
                    std::thread::sleep(Duration::from_millis(500));
                    return Ok(json!({"ok": true, "peer": peer.to_string(), "wrote": wrote}));
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() > deadline {
                        return Ok(json!({"ok": false, "error": "nobody connected"}));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => return Err(format!("accept: {error}")),
            }
        }
    })();
    result.unwrap_or_else(|error| json!({"ok": false, "error": error}))
}

/// `ping ADDR`: one ICMP echo through an unprivileged ping socket and sendto, then
/// waits half a second for the reply.
fn ping(addr: &str) -> Value {
    let result = (|| -> Result<Value, String> {
        let target: SocketAddr = format!("{addr}:0").parse().map_err(|e| format!("{e}"))?;
        let socket = raw_socket_call(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP)
            .map_err(|e| format!("socket: {e} ({:?})", e.kind()))?;
        // Type 8 (echo request), code 0; the kernel fills in checksum and id.
        let request = [8u8, 0, 0, 0, 0, 0, 0, 1, b's', b'l', b'u', b'i', b'c', b'e'];
        let (storage, len) = sockaddr_of(&target);
        // SAFETY: request and storage are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&raw const storage).cast(),
                len,
            )
        };
        let send_error = (sent < 0).then(|| {
            let error = std::io::Error::last_os_error();
            format!("sendto: {error} ({:?})", error.kind())
        });
        let socket = UdpSocket::from(socket);
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(|e| e.to_string())?;
        let mut reply = [0u8; 64];
        let replied = socket.recv(&mut reply).is_ok();
        Ok(json!({"ok": replied, "reply": replied, "send_error": send_error}))
    })();
    result.unwrap_or_else(|error| json!({"ok": false, "error": error}))
}

/// `unix PATH REQUEST`: connect to a unix socket, send REQUEST, read until closed.
fn unix(path: &str, request: &str) -> Value {
    let result = (|| -> Result<String, String> {
        let mut stream = std::os::unix::net::UnixStream::connect(path)
            .map_err(|e| format!("connect: {e} ({:?})", e.kind()))?;
        stream
            .set_read_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("write: {e} ({:?})", e.kind()))?;
        let mut response = String::new();
        let _ = std::io::Read::read_to_string(&mut stream, &mut response);
        Ok(response)
    })();
    match result {
        Ok(response) => json!({"ok": true, "response": response}),
        Err(error) => json!({"ok": false, "error": error}),
    }
}

/// `fd-recv PATH connect|send|sendto [ADDR]`: receives an inet socket over SCM_RIGHTS
/// from a process outside the cgroup, then uses it: connect to ADDR and send a line,
/// send a line on it as it is (already connected), or send a datagram to ADDR.
fn fd_recv(path: &str, action: &str, addr: Option<&str>) -> Value {
    let result = (|| -> Result<Value, String> {
        let channel = std::os::unix::net::UnixStream::connect(path)
            .map_err(|e| format!("connect to the fd channel: {e}"))?;
        let socket = receive_fd(&channel)?;
        let line = b"hello from the agent\n";
        let outcome = match (action, addr) {
            ("connect", Some(addr)) => {
                let target: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
                let (storage, len) = sockaddr_of(&target);
                // SAFETY: storage is valid for len bytes.
                let rc =
                    unsafe { libc::connect(socket.as_raw_fd(), (&raw const storage).cast(), len) };
                if rc < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    let mut stream = TcpStream::from(socket);
                    stream.write_all(line).map(|()| line.len())
                }
            }
            ("send", None) => {
                let mut stream = TcpStream::from(socket);
                stream.write_all(line).map(|()| line.len())
            }
            ("sendto", Some(addr)) => {
                let target: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
                UdpSocket::from(socket).send_to(line, target)
            }
            _ => return Err(format!("unknown fd-recv action {action}")),
        };
        Ok(match outcome {
            Ok(sent) => json!({"ok": true, "sent": sent}),
            Err(error) => {
                json!({"ok": false, "error": format!("{action}: {error} ({:?})", error.kind())})
            }
        })
    })();
    result.unwrap_or_else(|error| json!({"ok": false, "error": error}))
}

fn receive_fd(channel: &std::os::unix::net::UnixStream) -> Result<OwnedFd, String> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Room for one descriptor, aligned as cmsghdr needs.
    let mut control = [0u64; 8];
    // SAFETY: all-zero is a valid msghdr; the buffers outlive the call.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &raw mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: message points at live buffers.
    let received = unsafe { libc::recvmsg(channel.as_raw_fd(), &raw mut message, 0) };
    if received < 0 {
        return Err(format!("recvmsg: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel filled message; CMSG_FIRSTHDR checks the length.
    let header = unsafe { libc::CMSG_FIRSTHDR(&raw const message) };
    if header.is_null() {
        return Err("no descriptor came over the channel".into());
    }
    // SAFETY: header points inside control; SCM_RIGHTS data is one c_int here.
    unsafe {
        if (*header).cmsg_level != libc::SOL_SOCKET || (*header).cmsg_type != libc::SCM_RIGHTS {
            return Err("the control message is not SCM_RIGHTS".into());
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<libc::c_int>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// `leave-cgroup PROCS...`: writes its own pid to each `cgroup.procs` given, then
/// reports where it is.
fn leave_cgroup(targets: &[String]) -> Value {
    let pid = std::process::id().to_string();
    let mut attempts = serde_json::Map::new();
    let mut any_moved = false;
    for target in targets {
        let outcome = match std::fs::write(target, &pid) {
            Ok(()) => {
                any_moved = true;
                "moved".to_owned()
            }
            Err(error) => format!("{error} ({:?})", error.kind()),
        };
        attempts.insert(target.clone(), Value::String(outcome));
    }
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let unified = cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap_or_default()
        .to_owned();
    json!({"ok": any_moved, "attempts": attempts, "cgroup": unified})
}

/// `io-uring ADDR`: connect with IORING_OP_CONNECT, then the `tcp` exchange.
fn io_uring(addr: &str) -> Value {
    let result = (|| -> Result<Value, String> {
        let target: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
        let socket = new_socket(&target, libc::SOCK_STREAM)?;
        let (storage, len) = sockaddr_of(&target);
        let res = uring::connect(socket.as_raw_fd(), &storage, len)?;
        if res < 0 {
            let error = std::io::Error::from_raw_os_error(-res);
            return Err(format!("io_uring connect: {error} ({:?})", error.kind()));
        }
        let mut stream = TcpStream::from(socket);
        stream
            .set_read_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        // The sink greets first; the line goes after the greeting is read.
        let peer = stream
            .peer_addr()
            .map_err(|e| format!("getpeername: {e}"))?;
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let mut greeting = String::new();
        reader
            .read_line(&mut greeting)
            .map_err(|e| format!("read greeting: {e}"))?;
        writeln!(stream, "hello from the agent").map_err(|e| format!("write: {e}"))?;
        let mut echo = String::new();
        reader
            .read_line(&mut echo)
            .map_err(|e| format!("read echo: {e}"))?;
        Ok(json!({
            "ok": !greeting.is_empty(),
            "peer": peer.to_string(),
            "greeting": greeting.trim_end(),
            "echo": echo.trim_end(),
        }))
    })();
    result.unwrap_or_else(|error| json!({"ok": false, "error": error}))
}

/// `io-uring-socket`: which families io_uring's IORING_OP_SOCKET creates sockets in.
/// Each key is `created` or `errno N (message)`.
fn io_uring_socket() -> Value {
    let attempt = |family: libc::c_int, kind: libc::c_int, protocol: libc::c_int| {
        match uring::socket(family, kind | libc::SOCK_CLOEXEC, protocol) {
            Ok(fd) if fd >= 0 => {
                // SAFETY: a descriptor the ring just created for this process.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
                Value::String("created".into())
            }
            Ok(res) => {
                let error = std::io::Error::from_raw_os_error(-res);
                Value::String(format!("errno {} ({error})", -res))
            }
            Err(error) => Value::String(format!("io_uring: {error}")),
        }
    };
    json!({
        "ok": true,
        "inet": attempt(libc::AF_INET, libc::SOCK_STREAM, 0),
        "vsock": attempt(libc::AF_VSOCK, libc::SOCK_STREAM, 0),
        // htons(ETH_P_ALL)
        "packet": attempt(libc::AF_PACKET, libc::SOCK_RAW, 0x0300),
    })
}

/// The least of io_uring needed to submit one connect and reap it, by raw syscalls:
/// the io-uring crate is not in the tree and one operation needs little.
mod uring {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

    const IORING_OP_CONNECT: u8 = 16;
    const IORING_OP_SOCKET: u8 = 45;
    const IORING_ENTER_GETEVENTS: u32 = 1;
    const IORING_OFF_SQ_RING: i64 = 0;
    const IORING_OFF_CQ_RING: i64 = 0x800_0000;
    const IORING_OFF_SQES: i64 = 0x1000_0000;

    #[repr(C)]
    #[derive(Default)]
    struct SqRingOffsets {
        head: u32,
        tail: u32,
        ring_mask: u32,
        ring_entries: u32,
        flags: u32,
        dropped: u32,
        array: u32,
        resv1: u32,
        user_addr: u64,
    }

    #[repr(C)]
    #[derive(Default)]
    struct CqRingOffsets {
        head: u32,
        tail: u32,
        ring_mask: u32,
        ring_entries: u32,
        overflow: u32,
        cqes: u32,
        flags: u32,
        resv1: u32,
        user_addr: u64,
    }

    #[repr(C)]
    #[derive(Default)]
    struct Params {
        sq_entries: u32,
        cq_entries: u32,
        flags: u32,
        sq_thread_cpu: u32,
        sq_thread_idle: u32,
        features: u32,
        wq_fd: u32,
        resv: [u32; 3],
        sq_off: SqRingOffsets,
        cq_off: CqRingOffsets,
    }

    #[repr(C)]
    #[derive(Default)]
    struct Sqe {
        opcode: u8,
        flags: u8,
        ioprio: u16,
        fd: i32,
        off: u64,
        addr: u64,
        len: u32,
        op_flags: u32,
        user_data: u64,
        buf_index: u16,
        personality: u16,
        splice_fd_in: i32,
        addr3: u64,
        pad: u64,
    }

    #[repr(C)]
    struct Cqe {
        user_data: u64,
        res: i32,
        flags: u32,
    }

    struct Mapping(*mut u8, usize);

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: the mapping was created by mmap with this length.
            unsafe { libc::munmap(self.0.cast(), self.1) };
        }
    }

    fn map(ring: RawFd, len: usize, offset: i64) -> Result<Mapping, String> {
        // SAFETY: a fresh shared mapping of the ring's fd.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                ring,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(Mapping(ptr.cast(), len))
    }

    /// Connects `socket` to `addr` through a one-entry ring; returns the CQE result.
    pub fn connect(
        socket: RawFd,
        addr: &libc::sockaddr_storage,
        len: libc::socklen_t,
    ) -> Result<i32, String> {
        submit(Sqe {
            opcode: IORING_OP_CONNECT,
            fd: socket,
            off: u64::from(len),
            addr: std::ptr::from_ref(addr) as u64,
            user_data: 1,
            ..Sqe::default()
        })
    }

    /// Creates a socket with IORING_OP_SOCKET (5.19+), which never calls socket(2);
    /// returns the CQE result (the descriptor, or minus the errno).
    pub fn socket(domain: i32, kind: i32, protocol: i32) -> Result<i32, String> {
        submit(Sqe {
            opcode: IORING_OP_SOCKET,
            fd: domain,
            off: kind as u64,
            len: protocol as u32,
            user_data: 1,
            ..Sqe::default()
        })
    }

    /// Submits one entry through a one-entry ring and reaps its completion.
    fn submit(sqe: Sqe) -> Result<i32, String> {
        let mut params = Params::default();
        // SAFETY: params is a valid io_uring_params for the kernel to fill.
        let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, &raw mut params) };
        if fd < 0 {
            return Err(format!(
                "io_uring_setup: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a fresh descriptor owned from here on.
        let ring = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let sq_len = params.sq_off.array as usize + params.sq_entries as usize * 4;
        let cq_len = params.cq_off.cqes as usize + params.cq_entries as usize * size_of::<Cqe>();
        let sq = map(ring.as_raw_fd(), sq_len, IORING_OFF_SQ_RING)?;
        let cq = map(ring.as_raw_fd(), cq_len, IORING_OFF_CQ_RING)?;
        let sqes = map(
            ring.as_raw_fd(),
            params.sq_entries as usize * size_of::<Sqe>(),
            IORING_OFF_SQES,
        )?;
        // SAFETY: the offsets come from the kernel and lie inside the mappings; the
        // tail is published with a release store after the entry is written.
        unsafe {
            let tail = &*sq
                .0
                .add(params.sq_off.tail as usize)
                .cast::<std::sync::atomic::AtomicU32>();
            let mask = *sq.0.add(params.sq_off.ring_mask as usize).cast::<u32>();
            let current = tail.load(std::sync::atomic::Ordering::Acquire);
            let index = current & mask;
            std::ptr::write(sqes.0.cast::<Sqe>().add(index as usize), sqe);
            *sq.0
                .add(params.sq_off.array as usize)
                .cast::<u32>()
                .add(index as usize) = index;
            tail.store(current + 1, std::sync::atomic::Ordering::Release);
        }
        // SAFETY: plain syscall on our ring.
        let entered = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                ring.as_raw_fd(),
                1u32,
                1u32,
                IORING_ENTER_GETEVENTS,
                std::ptr::null::<u8>(),
                0usize,
            )
        };
        if entered < 0 {
            return Err(format!(
                "io_uring_enter: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: as above, for the completion ring.
        unsafe {
            let head = &*cq
                .0
                .add(params.cq_off.head as usize)
                .cast::<std::sync::atomic::AtomicU32>();
            let tail = &*cq
                .0
                .add(params.cq_off.tail as usize)
                .cast::<std::sync::atomic::AtomicU32>();
            let mask = *cq.0.add(params.cq_off.ring_mask as usize).cast::<u32>();
            let current = head.load(std::sync::atomic::Ordering::Acquire);
            if tail.load(std::sync::atomic::Ordering::Acquire) == current {
                return Err("io_uring: no completion".into());
            }
            let cqe = &*cq
                .0
                .add(params.cq_off.cqes as usize)
                .cast::<Cqe>()
                .add((current & mask) as usize);
            let res = cqe.res;
            head.store(current + 1, std::sync::atomic::Ordering::Release);
            Ok(res)
        }
    }
}
