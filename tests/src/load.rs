//! A closed-loop HTTP/1.1 load generator for the gateway benchmarks: `connections`
//! keep-alive connections, each sending the next request as soon as the previous answer is
//! read, on a runtime of its own. It records every request's latency and status, so a
//! benchmark reports exact percentiles and counts every failure.

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
    pub body: Bytes,
}

impl Target {
    pub fn get(addr: SocketAddr, path: &str) -> Target {
        Target {
            addr,
            method: hyper::Method::GET,
            path: path.to_string(),
            content_type: None,
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
            body: body.into(),
        }
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
    latencies: Vec<Duration>,
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
