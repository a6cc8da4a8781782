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

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
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
        _ => {
            json!({"ok": false, "error": format!("usage: sluice-probe tcp|tcp-many|udp ...; got {args:?}")})
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
