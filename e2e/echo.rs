//! knp-e2e-echo: the tiny programs the end-to-end tests run inside network namespaces.
//!
//! - `serve NAME PORT`: answers TCP and UDP on PORT (IPv4 and IPv6) with `NAME PEER-IP` and
//!   prints `ready` once listening. A TCP connection gets the answer when it opens and again for
//!   every line the client sends, until the client closes it (or is idle for 30 s).
//! - `connect tcp|udp ADDR:PORT COUNT TIMEOUT_MS [INTERVAL_MS [BIND]]`: COUNT attempts, from the
//!   local address BIND (`ip:port`, port 0 for any) if given; one result line each:
//!   `ok NAME PEER-IP MS`, `refused MS`, `denied MS` (the local send was rejected),
//!   `timeout MS` or `error TEXT MS`.
//! - `hold ADDR:PORT SECONDS INTERVAL_MS`: opens ONE TCP connection, prints `connected NAME`
//!   once the server has greeted it, then for SECONDS writes a line every INTERVAL_MS and reads
//!   the answer on the same connection; finally prints
//!   `held NAME exchanges=N errors=M first_error=TEXT@EXCHANGE|-` (`NAME` is `-` if it never
//!   connected).
//!   An answer from another backend, a 1 s read timeout, a reset or the server closing all count
//!   as errors; the last two end the hold. Exits 0 even with errors: the summary is the result.
//! - `http-get ADDR:PORT PATH`: prints the response head, an empty line, then the body.
//!
//! Only std and socket2; test tooling, not part of the proxy.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["serve", name, port] => serve(name, port),
        ["connect", proto, addr, count, timeout, rest @ ..] if rest.len() <= 2 => {
            connect(proto, addr, count, timeout, rest.first().copied().unwrap_or("0"), rest.get(1).copied())
        }
        ["hold", addr, seconds, interval] => hold(addr, seconds, interval),
        ["http-get", addr, path] => http_get(addr, path),
        _ => Err("usage: serve NAME PORT | connect tcp|udp ADDR:PORT COUNT TIMEOUT_MS [INTERVAL_MS [BIND]] | \
                  hold ADDR:PORT SECONDS INTERVAL_MS | http-get ADDR:PORT PATH"
            .into()),
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
    // One IPv6 socket per protocol accepts both families (v4-mapped), the kernel default.
    let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    let tcp = TcpListener::bind(addr).map_err(|e| format!("tcp bind: {e}"))?;
    let udp = UdpSocket::bind(addr).map_err(|e| format!("udp bind: {e}"))?;
    let tcp_name = name.to_string();
    let tcp_thread = thread::spawn(move || {
        for stream in tcp.incoming().flatten() {
            let name = tcp_name.clone();
            thread::spawn(move || answer_tcp(stream, &name));
        }
    });
    let udp_name = name.to_string();
    let udp_thread = thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, peer)) = udp.recv_from(&mut buf) {
            let reply = format!("{udp_name} {}\n", plain_ip(peer));
            let _ = udp.send_to(reply.as_bytes(), peer);
        }
    });
    println!("ready");
    let _ = std::io::stdout().flush();
    let _ = tcp_thread.join();
    let _ = udp_thread.join();
    Ok(())
}

fn answer_tcp(stream: TcpStream, name: &str) {
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let answer = format!("{name} {}\n", plain_ip(peer));
    let mut writer = &stream;
    if writer.write_all(answer.as_bytes()).is_err() {
        return;
    }
    // Stay open until the client goes, so a client can hold the connection, and answer every
    // line it sends the same way.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(&stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if writer.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
        }
    }
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
    bind: Option<&str>,
) -> Result<(), String> {
    let addr: SocketAddr = addr.parse().map_err(|_| format!("bad address {addr}"))?;
    let count: u32 = count.parse().map_err(|_| "bad count")?;
    let timeout = Duration::from_millis(timeout.parse().map_err(|_| "bad timeout")?);
    let interval = Duration::from_millis(interval.parse().map_err(|_| "bad interval")?);
    let bind: Option<SocketAddr> = match bind {
        Some(b) => Some(b.parse().map_err(|_| format!("bad bind address {b}"))?),
        None => None,
    };
    let mut out = std::io::stdout();
    for i in 0..count {
        if i > 0 && !interval.is_zero() {
            thread::sleep(interval);
        }
        let start = Instant::now();
        let result = match proto {
            "tcp" => tcp_once(addr, timeout, bind),
            "udp" => udp_once(addr, timeout, bind),
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

fn socket(
    addr: SocketAddr,
    kind: socket2::Type,
    protocol: socket2::Protocol,
) -> std::io::Result<socket2::Socket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    socket2::Socket::new(domain, kind, Some(protocol))
}

fn tcp_once(
    addr: SocketAddr,
    timeout: Duration,
    bind: Option<SocketAddr>,
) -> std::io::Result<String> {
    // std cannot bind before connecting; socket2 can.
    let socket = socket(addr, socket2::Type::STREAM, socket2::Protocol::TCP)?;
    if let Some(local) = bind {
        socket.set_reuse_address(true)?;
        socket.bind(&local.into())?;
    }
    socket.connect_timeout(&addr.into(), timeout)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

fn udp_once(
    addr: SocketAddr,
    timeout: Duration,
    bind: Option<SocketAddr>,
) -> std::io::Result<String> {
    let socket = socket(addr, socket2::Type::DGRAM, socket2::Protocol::UDP)?;
    if let Some(local) = bind {
        socket.set_reuse_address(true)?;
        socket.bind(&local.into())?;
    }
    let socket: UdpSocket = socket.into();
    socket.connect(addr)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send(b"hello\n")?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn hold(addr: &str, seconds: &str, interval: &str) -> Result<(), String> {
    let addr: SocketAddr = addr.parse().map_err(|_| format!("bad address {addr}"))?;
    let duration = Duration::from_secs(seconds.parse().map_err(|_| "bad seconds")?);
    let interval = Duration::from_millis(interval.parse().map_err(|_| "bad interval")?);
    let timeout = Duration::from_secs(1);
    let word = |e: std::io::Error| e.to_string().replace(' ', "_");
    let mut out = std::io::stdout();
    let opened = TcpStream::connect_timeout(&addr, timeout).and_then(|stream| {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut greeting = String::new();
        reader.read_line(&mut greeting)?;
        Ok((stream, reader, greeting))
    });
    let (mut writer, mut reader, greeting) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            let _ = writeln!(
                out,
                "held - exchanges=0 errors=1 first_error=connect:{}",
                word(e)
            );
            return Ok(());
        }
    };
    let Some(name) = greeting.split_whitespace().next().map(str::to_string) else {
        let _ = writeln!(
            out,
            "held - exchanges=0 errors=1 first_error=closed_before_greeting"
        );
        return Ok(());
    };
    let _ = writeln!(out, "connected {name}");
    let _ = out.flush();

    let end = Instant::now() + duration;
    let (mut exchanges, mut errors, mut first_error) = (0u64, 0u64, None::<String>);
    let mut seq = 0u64;
    while Instant::now() + interval <= end {
        thread::sleep(interval);
        seq += 1;
        let mut answer = String::new();
        // (error text, whether the connection is gone)
        let result = writeln!(writer, "ping {seq}")
            .and_then(|()| reader.read_line(&mut answer))
            .map_err(|e| match e.kind() {
                ErrorKind::TimedOut | ErrorKind::WouldBlock => ("timeout".to_string(), false),
                _ => (word(e), true),
            })
            .and_then(|n| match answer.split_whitespace().next() {
                _ if n == 0 => Err(("closed_by_server".to_string(), true)),
                Some(other) if other != name => Err((format!("answered_by_{other}"), false)),
                _ => Ok(()),
            });
        match result {
            Ok(()) => exchanges += 1,
            Err((text, gone)) => {
                errors += 1;
                first_error.get_or_insert(format!("{text}@{seq}"));
                if gone {
                    break;
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "held {name} exchanges={exchanges} errors={errors} first_error={}",
        first_error.as_deref().unwrap_or("-")
    );
    Ok(())
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
    println!("{}\n", head.replace("\r\n", "\n"));
    print!("{body}");
    Ok(())
}
