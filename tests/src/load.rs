//! A closed-loop HTTP/1.1 load generator for the gateway benchmarks: `connections`
//! keep-alive connections, each sending the next request as soon as the previous answer is
//! read, on a runtime of its own. It records every request's latency and status, so a
//! benchmark reports exact percentiles and counts every failure.
//!
//! [`run_in_child`] runs the load from a child process, as a real client would: a load
//! generator inside the server's process shares its address space, so every page the server
//! unmaps or write-protects (wasmtime resetting an instance's memory) also interrupts the
//! client's core to flush its TLB, a cost no outside client causes. (Measured on the trivial
//! plugin, the two gave the same ratio to the hello-world; the child is kept for realism.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

/// One kind of request, sent over and over.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub method: hyper::Method,
    pub path: String,
    pub content_type: Option<String>,
    /// Further request headers.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Target {
    pub fn get(addr: SocketAddr, path: &str) -> Target {
        Target {
            addr,
            method: hyper::Method::GET,
            path: path.to_string(),
            content_type: None,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn post(
        addr: SocketAddr,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> Target {
        Target {
            addr,
            method: hyper::Method::POST,
            path: path.to_string(),
            content_type: Some(content_type.to_string()),
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// The target with one more request header.
    pub fn with_header(mut self, name: &str, value: &str) -> Target {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// What a load run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub elapsed: Duration,
    /// Answers by HTTP status.
    pub statuses: BTreeMap<u16, usize>,
    /// Requests that got no answer at all (connection errors).
    pub transport_errors: usize,
    /// Every answered request's latency (sorted once the run is over).
    pub latencies: Vec<Duration>,
}

impl LoadResult {
    pub fn requests(&self) -> usize {
        self.latencies.len()
    }

    pub fn per_second(&self) -> f64 {
        self.requests() as f64 / self.elapsed.as_secs_f64()
    }

    /// Answers with a status other than 200, plus transport errors.
    pub fn failed(&self) -> usize {
        self.transport_errors
            + self
                .statuses
                .iter()
                .filter(|(status, _)| **status != 200)
                .map(|(_, n)| n)
                .sum::<usize>()
    }

    /// The `q` quantile of latency (0.5 is the median).
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[index]
    }
}

/// The argument that makes a program that calls [`serve_child_load`] first a load generator.
const CHILD_FLAG: &str = "--edgeplug-load-child";

/// [`run`] in a child process: this program again, which must call [`serve_child_load`]
/// first thing in `main`. Blocking.
pub fn run_in_child(target: &Target, connections: usize, duration: Duration) -> LoadResult {
    use std::io::Write;
    let exe = std::env::current_exe().expect("the running program's path");
    let mut child = std::process::Command::new(exe)
        .arg(CHILD_FLAG)
        .arg(target.addr.to_string())
        .arg(target.method.as_str())
        .arg(&target.path)
        .arg(target.content_type.as_deref().unwrap_or(""))
        .arg(serde_json::to_string(&target.headers).expect("headers serialize"))
        .arg(connections.to_string())
        .arg(duration.as_nanos().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the load child starts");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(&target.body)
        .expect("the request body reaches the load child");
    let output = child.wait_with_output().expect("the load child ends");
    assert!(output.status.success(), "the load child failed");
    decode(&output.stdout)
}

/// When this program was started by [`run_in_child`]: runs the load it describes, prints the
/// result to stdout and exits. Otherwise returns.
pub fn serve_child_load() {
    use std::io::{Read, Write};
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [
        flag,
        addr,
        method,
        path,
        content_type,
        headers,
        connections,
        nanos,
    ] = &args[..]
    else {
        return;
    };
    if flag != CHILD_FLAG {
        return;
    }
    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .expect("the request body");
    let target = Target {
        addr: addr.parse().expect("an address"),
        method: method.parse().expect("a method"),
        path: path.clone(),
        content_type: (!content_type.is_empty()).then(|| content_type.clone()),
        headers: serde_json::from_str(headers).expect("headers"),
        body: body.into(),
    };
    let result = run(
        &target,
        connections.parse().expect("a connection count"),
        Duration::from_nanos(nanos.parse().expect("a duration")),
    );
    std::io::stdout()
        .write_all(&encode(&result))
        .expect("stdout");
    std::process::exit(0);
}

/// The result as one JSON object, latencies in nanoseconds (what a load child prints).
pub fn encode(result: &LoadResult) -> Vec<u8> {
    let latencies: Vec<u64> = result
        .latencies
        .iter()
        .map(|d| d.as_nanos() as u64)
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "elapsed_ns": result.elapsed.as_nanos() as u64,
        "statuses": result.statuses,
        "transport_errors": result.transport_errors,
        "latencies_ns": latencies,
    }))
    .expect("serializable")
}

/// The result a load child printed.
pub fn decode(bytes: &[u8]) -> LoadResult {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).expect("the load child prints JSON");
    let nanos = |v: &serde_json::Value| Duration::from_nanos(v.as_u64().expect("nanoseconds"));
    LoadResult {
        elapsed: nanos(&value["elapsed_ns"]),
        statuses: value["statuses"]
            .as_object()
            .expect("statuses")
            .iter()
            .map(|(status, n)| {
                (
                    status.parse().expect("a status"),
                    n.as_u64().expect("a count") as usize,
                )
            })
            .collect(),
        transport_errors: value["transport_errors"].as_u64().expect("a count") as usize,
        latencies: value["latencies_ns"]
            .as_array()
            .expect("latencies")
            .iter()
            .map(nanos)
            .collect(),
    }
}

/// Runs `connections` closed-loop connections against `target` for `duration`, on a new
/// single-threaded runtime in this thread. Blocking.
pub fn run(target: &Target, connections: usize, duration: Duration) -> LoadResult {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("load runtime");
    runtime.block_on(async {
        let started = Instant::now();
        let deadline = started + duration;
        let tasks: Vec<_> = (0..connections)
            .map(|_| tokio::spawn(connection(target.clone(), deadline)))
            .collect();
        let mut result = LoadResult::default();
        for task in tasks {
            let part = task.await.expect("load task");
            for (status, n) in part.statuses {
                *result.statuses.entry(status).or_default() += n;
            }
            result.transport_errors += part.transport_errors;
            result.latencies.extend(part.latencies);
        }
        result.elapsed = started.elapsed();
        result.latencies.sort();
        result
    })
}

async fn connection(target: Target, deadline: Instant) -> LoadResult {
    let mut result = LoadResult::default();
    let mut sender = None;
    while Instant::now() < deadline {
        if sender.is_none() {
            sender = connect(target.addr).await;
            if sender.is_none() {
                result.transport_errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        }
        let Some(conn) = sender.as_mut() else {
            continue;
        };
        let mut request = hyper::Request::builder()
            .method(target.method.clone())
            .uri(&target.path)
            .header("host", target.addr.to_string());
        if let Some(content_type) = &target.content_type {
            request = request.header("content-type", content_type);
        }
        for (name, value) in &target.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(target.body.clone()))
            .expect("request builds");
        let sent = Instant::now();
        let answer = async {
            let response = conn.send_request(request).await?;
            let status = response.status().as_u16();
            let close = response
                .headers()
                .get("connection")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>((status, close))
        }
        .await;
        match answer {
            Ok((status, close)) => {
                result.latencies.push(sent.elapsed());
                *result.statuses.entry(status).or_default() += 1;
                if close {
                    sender = None;
                }
            }
            Err(_) => {
                result.transport_errors += 1;
                sender = None;
            }
        }
    }
    result
}

async fn connect(addr: SocketAddr) -> Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    Some(sender)
}
