//! knp-e2e-echo: the tiny programs the end-to-end tests run inside network namespaces.
//!
//! - `serve NAME PORT`: answers TCP and UDP on PORT (IPv4 and IPv6) with `NAME PEER-IP` and
//!   prints `ready` once listening.
//! - `connect tcp|udp ADDR:PORT COUNT TIMEOUT_MS [INTERVAL_MS]`: COUNT attempts, one result line
//!   each: `ok NAME PEER-IP MS`, `refused MS`, `denied MS` (the local send was rejected),
//!   `timeout MS` or `error TEXT MS`.
//! - `http-get ADDR:PORT PATH`: prints the status line, then the body.
//!
//! Only std; test tooling, not part of the proxy.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["serve", name, port] => serve(name, port),
        ["connect", proto, addr, count, timeout] => connect(proto, addr, count, timeout, "0"),
        ["connect", proto, addr, count, timeout, interval] => connect(proto, addr, count, timeout, interval),
        ["http-get", addr, path] => http_get(addr, path),
        _ => Err("usage: serve NAME PORT | connect tcp|udp ADDR:PORT COUNT TIMEOUT_MS [INTERVAL_MS] | http-get ADDR:PORT PATH".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("knp-e2e-echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(name: &str, port: &str) -> Result<(), String> {
    let port: u16 = port.parse().map_err(|_| "bad port")?;
    let mut handles = Vec::new();
    // One IPv6 socket per protocol accepts both families (v4-mapped), the kernel default.
    let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    let tcp = TcpListener::bind(addr).map_err(|e| format!("tcp bind: {e}"))?;
    let udp = UdpSocket::bind(addr).map_err(|e| format!("udp bind: {e}"))?;
    let tcp_name = name.to_string();
    handles.push(thread::spawn(move || {
        for stream in tcp.incoming().flatten() {
            let name = tcp_name.clone();
            thread::spawn(move || answer_tcp(stream, &name));
        }
    }));
    let udp_name = name.to_string();
    handles.push(thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, peer)) = udp.recv_from(&mut buf) {
            let reply = format!("{udp_name} {}\n", plain_ip(peer));
            let _ = udp.send_to(reply.as_bytes(), peer);
        }
    }));
    println!("ready");
    let _ = std::io::stdout().flush();
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn answer_tcp(mut stream: TcpStream, name: &str) {
    if let Ok(peer) = stream.peer_addr() {
        let _ = stream.write_all(format!("{name} {}\n", plain_ip(peer)).as_bytes());
    }
    // Stay open briefly so a long-lived client can hold the connection (see `connect`).
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut sink = [0u8; 64];
    let _ = stream.read(&mut sink);
}

/// The peer's IP without the v4-mapped prefix.
fn plain_ip(peer: SocketAddr) -> String {
    match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.ip().to_string(),
        },
        SocketAddr::V4(v4) => v4.ip().to_string(),
    }
}

fn connect(
    proto: &str,
    addr: &str,
    count: &str,
    timeout: &str,
    interval: &str,
) -> Result<(), String> {
    let addr: SocketAddr = addr.parse().map_err(|_| format!("bad address {addr}"))?;
    let count: u32 = count.parse().map_err(|_| "bad count")?;
    let timeout = Duration::from_millis(timeout.parse().map_err(|_| "bad timeout")?);
    let interval = Duration::from_millis(interval.parse().map_err(|_| "bad interval")?);
    let mut out = std::io::stdout();
    for i in 0..count {
        if i > 0 && !interval.is_zero() {
            thread::sleep(interval);
        }
        let start = Instant::now();
        let result = match proto {
            "tcp" => tcp_once(addr, timeout),
            "udp" => udp_once(addr, timeout),
            _ => return Err("protocol must be tcp or udp".into()),
        };
        let ms = start.elapsed().as_millis();
        let line = match result {
            Ok(reply) => format!("ok {} {ms}", reply.trim()),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => format!("refused {ms}"),
            // A packet the node's own output path rejects fails the send itself (EPERM).
            Err(e) if e.kind() == ErrorKind::PermissionDenied => format!("denied {ms}"),
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                format!("timeout {ms}")
            }
            Err(e) => format!("error {} {ms}", e.to_string().replace(' ', "_")),
        };
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    Ok(())
}

fn tcp_once(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

fn udp_once(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()
    } else {
        "[::]:0".parse()
    }
    .map_err(|_| std::io::Error::other("bind address"))?;
    let socket = UdpSocket::bind(bind)?;
    socket.connect(addr)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send(b"hello\n")?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn http_get(addr: &str, path: &str) -> Result<(), String> {
    let addr: SocketAddr = addr.parse().map_err(|_| format!("bad address {addr}"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    println!("{}", head.lines().next().unwrap_or(""));
    print!("{body}");
    Ok(())
}
