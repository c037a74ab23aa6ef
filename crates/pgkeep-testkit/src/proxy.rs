//! A fault-injecting HTTP/1.1 proxy on 127.0.0.1 in front of an S3 server (moto), for the
//! tests that prove pgkeep survives a slow, flaky or dead object store; stopped on drop.
//!
//! Requests are read whole (head, then a Content-Length or chunked body) before anything is
//! decided, so an injected fault always falls between requests: the store never sees a failed
//! request, and the client sees either a well-formed `503 Slow Down` or a TCP reset where a
//! response should be. Each client connection gets its own upstream connection and responses
//! are streamed back as they arrive.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A request head larger than this is not something an S3 client sends.
const MAX_HEAD: usize = 64 << 10;

const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";

pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    upstream_port: u16,
    latency_us: AtomicU64,
    /// f64 bits of the fraction of requests to fail.
    fault_rate: AtomicU64,
    strip_if_none_match: AtomicBool,
    down: AtomicBool,
    stopping: AtomicBool,
    requests: AtomicUsize,
    faults: AtomicUsize,
    next_id: AtomicU64,
    /// Clones of every live connection's sockets, so `set_down` and drop can cut them.
    live: Mutex<HashMap<u64, Vec<TcpStream>>>,
}

impl FaultProxy {
    /// Listen on 127.0.0.1:<free port>, forwarding to 127.0.0.1:`upstream_port`.
    pub fn start(upstream_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared { upstream_port, ..Default::default() });
        let s = shared.clone();
        let acceptor = std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if s.down.load(Ordering::SeqCst) {
                    reset(client);
                    continue;
                }
                let s = s.clone();
                std::thread::spawn(move || Connection::serve(s, client));
            }
        });
        FaultProxy { port, shared, acceptor: Some(acceptor) }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Added before forwarding each request.
    pub fn set_latency(&self, per_request: Duration) {
        self.shared.latency_us.store(per_request.as_micros() as u64, Ordering::SeqCst);
    }

    /// That fraction of requests fail: half answered `503 Slow Down`, half with a TCP reset.
    pub fn set_fault_rate(&self, fraction: f64) {
        self.shared.fault_rate.store(fraction.clamp(0.0, 1.0).to_bits(), Ordering::SeqCst);
    }

    /// Remove `If-None-Match` from requests: a store that ignores conditional creates.
    pub fn set_strip_if_none_match(&self, on: bool) {
        self.shared.strip_if_none_match.store(on, Ordering::SeqCst);
    }

    /// Down: new connections are reset on accept, and every existing one is cut now.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            self.shared.cut_all();
        }
    }

    /// Requests seen so far (failed ones included).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests failed on purpose so far.
    pub fn faults(&self) -> usize {
        self.shared.faults.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.cut_all();
        // Wake the blocking accept so the thread sees `stopping`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn cut_all(&self) {
        for socks in self.live.lock().unwrap_or_else(|e| e.into_inner()).values() {
            for s in socks {
                set_linger_zero(s);
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Whether request number `n` fails: a fixed pseudo-random sequence, so the fraction holds
    /// over any long run whatever the interleaving of connections.
    fn fails(&self, n: usize) -> bool {
        let rate = f64::from_bits(self.fault_rate.load(Ordering::SeqCst));
        rate > 0.0 && ((splitmix64(n as u64) >> 11) as f64) / ((1u64 << 53) as f64) < rate
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An abortive close: the peer sees ECONNRESET, not an orderly end of stream.
fn set_linger_zero(s: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket fd and a correctly sized, initialized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn reset(s: TcpStream) {
    set_linger_zero(&s);
    drop(s);
}

struct Upstream {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

struct Connection {
    shared: Arc<Shared>,
    id: u64,
    client: BufReader<TcpStream>,
    client_w: TcpStream,
    upstream: Option<Upstream>,
}

/// A request as read from the client: head lines (CRLF included) and the raw body bytes
/// (chunked framing kept).
struct Request {
    head: Vec<String>,
    body: Vec<u8>,
    is_head: bool,
}

impl Connection {
    fn serve(shared: Arc<Shared>, client: TcpStream) {
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        // Heads and bodies go out in separate writes; Nagle would hold them for a delayed ACK.
        let _ = client.set_nodelay(true);
        let Ok(client_w) = client.try_clone() else { return };
        if let Ok(c) = client.try_clone() {
            shared.live.lock().unwrap_or_else(|e| e.into_inner()).entry(id).or_default().push(c);
        }
        let mut c = Connection { shared, id, client: BufReader::new(client), client_w, upstream: None };
        let _ = c.run();
        c.shared.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        if c.shared.down.load(Ordering::SeqCst) || c.shared.stopping.load(Ordering::SeqCst) {
            set_linger_zero(&c.client_w);
        }
    }

    fn run(&mut self) -> io::Result<()> {
        loop {
            let Some(req) = self.read_request()? else { return Ok(()) };
            if self.shared.down.load(Ordering::SeqCst) {
                set_linger_zero(&self.client_w);
                return Ok(());
            }
            let n = self.shared.requests.fetch_add(1, Ordering::SeqCst);
            if self.shared.fails(n) {
                let f = self.shared.faults.fetch_add(1, Ordering::SeqCst);
                if f.is_multiple_of(2) {
                    let resp = format!(
                        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{}",
                        if req.is_head { 0 } else { SLOW_DOWN.len() },
                        if req.is_head { "" } else { SLOW_DOWN }
                    );
                    self.client_w.write_all(resp.as_bytes())?;
                    continue;
                }
                set_linger_zero(&self.client_w);
                return Ok(());
            }
            let latency = self.shared.latency_us.load(Ordering::SeqCst);
            if latency > 0 {
                std::thread::sleep(Duration::from_micros(latency));
            }
            if !self.forward(&req)? {
                return Ok(());
            }
        }
    }

    /// Read one whole request; None at a clean end of stream between requests.
    fn read_request(&mut self) -> io::Result<Option<Request>> {
        let Some(mut head) = read_head(&mut self.client)? else { return Ok(None) };
        let is_head = head[0].starts_with("HEAD ");
        if self.shared.strip_if_none_match.load(Ordering::SeqCst) {
            head.retain(|l| header_name(l).as_deref() != Some("if-none-match"));
        }
        // The client waits for `100 Continue` before sending the body; the proxy wants the
        // body before deciding, so it answers that itself and hides the expectation upstream.
        if header(&head, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            head.retain(|l| header_name(l).as_deref() != Some("expect"));
            self.client_w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let mut body = Vec::new();
        if is_chunked(&head) {
            copy_chunked(&mut self.client, &mut body)?;
        } else if let Some(len) = content_length(&head) {
            (&mut self.client).take(len).read_to_end(&mut body)?;
            if body.len() as u64 != len {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(Some(Request { head, body, is_head }))
    }

    /// Send the request upstream and stream the response back; false when the connection
    /// must end after it (the response said so, or was delimited by the end of stream).
    fn forward(&mut self, req: &Request) -> io::Result<bool> {
        let reused = self.upstream.is_some();
        match self.send_and_read_head(req) {
            Ok(head) => self.relay_response(req, head),
            // A kept-alive upstream connection the server had already closed: the request
            // never reached it, so one retry on a fresh connection is safe.
            Err(_) if reused => {
                self.upstream = None;
                let head = self.send_and_read_head(req)?;
                self.relay_response(req, head)
            }
            Err(e) => Err(e),
        }
    }

    fn send_and_read_head(&mut self, req: &Request) -> io::Result<Vec<String>> {
        if self.upstream.is_none() {
            let s = TcpStream::connect(("127.0.0.1", self.shared.upstream_port))?;
            let _ = s.set_nodelay(true);
            if let Ok(c) = s.try_clone() {
                self.shared.live.lock().unwrap_or_else(|e| e.into_inner()).entry(self.id).or_default().push(c);
            }
            self.upstream = Some(Upstream { reader: BufReader::new(s.try_clone()?), writer: s });
        }
        let up = self.upstream.as_mut().expect("connected above");
        let mut bytes = req.head.concat().into_bytes();
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(&req.body);
        up.writer.write_all(&bytes)?;
        read_head(&mut up.reader)?.ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
    }

    fn relay_response(&mut self, req: &Request, mut head: Vec<String>) -> io::Result<bool> {
        let up = self.upstream.as_mut().expect("forwarded on it");
        loop {
            let status: u16 = head[0].split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            self.client_w.write_all(format!("{}\r\n", head.concat()).as_bytes())?;
            if (100..200).contains(&status) {
                head = read_head(&mut up.reader)?.ok_or(io::ErrorKind::UnexpectedEof)?;
                continue;
            }
            let keep = !head[0].starts_with("HTTP/1.0")
                && !header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
            if req.is_head || status == 204 || status == 304 {
                return Ok(keep);
            }
            if is_chunked(&head) {
                copy_chunked(&mut up.reader, &mut self.client_w)?;
                return Ok(keep);
            }
            if let Some(len) = content_length(&head) {
                let n = io::copy(&mut (&mut up.reader).take(len), &mut self.client_w)?;
                if n != len {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                return Ok(keep);
            }
            io::copy(&mut up.reader, &mut self.client_w)?;
            let _ = self.client_w.shutdown(Shutdown::Write);
            return Ok(false);
        }
    }
}

/// Head lines up to (not including) the empty line; None on end of stream before any byte.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    let mut size = 0;
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line)?;
        if n == 0 {
            return if lines.is_empty() { Ok(None) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
        }
        size += n;
        if size > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "HTTP head too large"));
        }
        if line == "\r\n" || line == "\n" {
            if lines.is_empty() {
                continue;
            }
            return Ok(Some(lines));
        }
        lines.push(line);
    }
}

fn header_name(line: &str) -> Option<String> {
    line.split_once(':').map(|(k, _)| k.trim().to_ascii_lowercase())
}

fn header<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head[1..].iter().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn content_length(head: &[String]) -> Option<u64> {
    header(head, "content-length").and_then(|v| v.parse().ok())
}

fn is_chunked(head: &[String]) -> bool {
    header(head, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

/// Copy a chunked body verbatim (sizes, data, last chunk, trailers).
fn copy_chunked(r: &mut impl BufRead, w: &mut impl Write) -> io::Result<()> {
    loop {
        let mut size_line = String::new();
        if r.read_line(&mut size_line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        w.write_all(size_line.as_bytes())?;
        let hex = size_line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(hex, 16).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if size == 0 {
            loop {
                let mut trailer = String::new();
                if r.read_line(&mut trailer)? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                w.write_all(trailer.as_bytes())?;
                if trailer == "\r\n" || trailer == "\n" {
                    return Ok(());
                }
            }
        }
        // The data and its CRLF.
        let n = io::copy(&mut r.take(size + 2), w)?;
        if n != size + 2 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny keep-alive HTTP/1.1 server: answers each request with its method, path, body
    /// and whether it carried If-None-Match; counts the requests it saw.
    fn echo_server() -> (u16, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let count = count.clone();
                std::thread::spawn(move || {
                    let mut w = c.try_clone().unwrap();
                    let mut r = BufReader::new(c);
                    while let Ok(Some(head)) = read_head(&mut r) {
                        let mut body = Vec::new();
                        if is_chunked(&head) {
                            copy_chunked(&mut r, &mut body).unwrap();
                            body = dechunk(&body);
                        } else if let Some(n) = content_length(&head) {
                            (&mut r).take(n).read_to_end(&mut body).unwrap();
                        }
                        count.fetch_add(1, Ordering::SeqCst);
                        let inm = header(&head, "if-none-match").is_some();
                        let text = format!("{} inm={inm} body={}", head[0].trim(), String::from_utf8_lossy(&body));
                        // Chunked answers for POST, Content-Length otherwise: both framings relayed.
                        let resp = if head[0].starts_with("POST") {
                            format!(
                                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{text}\r\n0\r\n\r\n",
                                text.len()
                            )
                        } else {
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}", text.len())
                        };
                        if w.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, seen)
    }

    /// One request on a kept-alive client connection; returns (status, body) or the I/O error.
    fn call(conn: &mut BufReader<TcpStream>, req: &str) -> io::Result<(u16, String)> {
        conn.get_mut().write_all(req.as_bytes())?;
        let head = read_head(conn)?.ok_or(io::ErrorKind::UnexpectedEof)?;
        let status = head[0].split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut body = Vec::new();
        if is_chunked(&head) {
            copy_chunked(conn, &mut body)?;
            body = dechunk(&body);
        } else if let Some(n) = content_length(&head) {
            conn.take(n).read_to_end(&mut body)?;
        }
        Ok((status, String::from_utf8(body).unwrap()))
    }

    /// The data of a chunked body (no extensions, no trailers: what these tests send).
    fn dechunk(mut raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let eol = raw.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap(), 16).unwrap();
            if size == 0 {
                return out;
            }
            out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
            raw = &raw[eol + 4 + size..];
        }
    }

    fn connect(p: &FaultProxy) -> BufReader<TcpStream> {
        let s = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        BufReader::new(s)
    }

    #[test]
    fn forwards_keep_alive_requests_with_both_body_framings_and_strips_if_none_match() {
        let (up, seen) = echo_server();
        let p = FaultProxy::start(up);
        assert_eq!(p.endpoint(), format!("http://127.0.0.1:{}", p.port()));
        let mut c = connect(&p);
        let put = "PUT /b/k HTTP/1.1\r\nHost: x\r\nIf-None-Match: *\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(call(&mut c, put).unwrap(), (200, "PUT /b/k HTTP/1.1 inm=true body=hello".into()));
        let chunked =
            "POST /b/k?uploads HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(call(&mut c, chunked).unwrap(), (200, "POST /b/k?uploads HTTP/1.1 inm=false body=abcde".into()));
        let expect = "PUT /b/e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi";
        c.get_mut().write_all(expect.as_bytes()).unwrap();
        let cont = read_head(&mut c).unwrap().unwrap();
        assert!(cont[0].starts_with("HTTP/1.1 100"), "{cont:?}");
        let head = read_head(&mut c).unwrap().unwrap();
        assert!(head[0].starts_with("HTTP/1.1 200"));
        let mut b = vec![0; content_length(&head).unwrap() as usize];
        c.read_exact(&mut b).unwrap();
        assert!(String::from_utf8(b).unwrap().ends_with("body=hi"));
        p.set_strip_if_none_match(true);
        assert_eq!(call(&mut c, put).unwrap(), (200, "PUT /b/k HTTP/1.1 inm=false body=hello".into()));
        assert_eq!((p.requests(), p.faults(), seen.load(Ordering::SeqCst)), (4, 0, 4));
    }

    #[test]
    fn fails_the_given_fraction_half_503_half_reset_without_reaching_the_server() {
        let (up, seen) = echo_server();
        let p = FaultProxy::start(up);
        p.set_fault_rate(0.2);
        let (mut ok, mut slow, mut resets) = (0, 0, 0);
        let mut c = connect(&p);
        for i in 0..500 {
            match call(&mut c, &format!("GET /b/{i} HTTP/1.1\r\nHost: x\r\n\r\n")) {
                Ok((200, body)) => {
                    assert!(body.starts_with(&format!("GET /b/{i} ")), "{body}");
                    ok += 1
                }
                Ok((503, body)) => {
                    assert!(body.contains("SlowDown"), "{body}");
                    slow += 1
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
                    resets += 1;
                    c = connect(&p);
                }
            }
        }
        assert_eq!(p.requests(), 500);
        assert_eq!(p.faults(), slow + resets);
        assert!((60..=140).contains(&p.faults()), "about 20 % of 500 failed: {}", p.faults());
        assert!(slow.abs_diff(resets) <= 1, "half 503, half reset: {slow} / {resets}");
        assert_eq!(seen.load(Ordering::SeqCst), ok, "a failed request never reaches the server");
    }

    #[test]
    fn latency_is_added_and_down_resets_existing_and_new_connections() {
        let (up, _) = echo_server();
        let p = FaultProxy::start(up);
        p.set_latency(Duration::from_millis(150));
        let mut c = connect(&p);
        let t = std::time::Instant::now();
        call(&mut c, "GET /a HTTP/1.1\r\n\r\n").unwrap();
        assert!(t.elapsed() >= Duration::from_millis(150), "{:?}", t.elapsed());
        p.set_latency(Duration::ZERO);
        p.set_down(true);
        assert!(call(&mut c, "GET /a HTTP/1.1\r\n\r\n").is_err(), "an existing connection is cut");
        let mut fresh = connect(&p);
        assert!(call(&mut fresh, "GET /a HTTP/1.1\r\n\r\n").is_err(), "a new connection is reset");
        p.set_down(false);
        let mut again = connect(&p);
        assert_eq!(call(&mut again, "GET /a HTTP/1.1\r\n\r\n").unwrap().0, 200);
    }
}
