//! Camera sources: an MJPEG-over-HTTP stream read as it comes, sampled at a set rate into a
//! plugin, each result published like a trigger's.
//!
//! Frames never queue: the reader keeps only the newest frame, replacing the one before
//! (counted as dropped for the rate), and the sampler takes it at most `fps` times a second;
//! when the plugin is still busy with the last frame it took, the new one is dropped too
//! (counted as dropped busy). Memory is one frame per camera whatever the camera's rate. A
//! stream that ends or fails is reopened with backoff.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

use crate::envelope::{self, Answered, Output};
use crate::mjpeg::{MjpegParser, boundary_of};
use crate::runner::Shared;
use crate::topic;

/// Counters of one camera.
#[derive(Debug, Default)]
pub struct CameraCounters {
    /// Frames read from the stream.
    pub frames: AtomicU64,
    /// Frames run through the plugin.
    pub run: AtomicU64,
    /// Frames replaced by a newer one before the sampler took them, while the plugin was idle
    /// (the camera is faster than `fps`).
    pub dropped_rate: AtomicU64,
    /// Frames replaced by a newer one while the plugin was still busy with the last one (the
    /// plugin is slower than the camera).
    pub dropped_busy: AtomicU64,
    /// Frames whose run failed (the plugin's error).
    pub failed: AtomicU64,
    pub saturated_waits: AtomicU64,
    /// 1 while the stream is open.
    pub connected: AtomicI64,
}

/// The newest frame and its number, and whether the plugin is running one.
#[derive(Debug, Default)]
struct Latest {
    seq: u64,
    frame: Option<Vec<u8>>,
    busy: bool,
}

/// Reads and samples camera `index` until the triggers stop.
pub(crate) async fn run_camera(shared: Arc<Shared>, index: usize) {
    let latest = Arc::new(Mutex::new(Latest::default()));
    let reader = tokio::spawn(read_stream(shared.clone(), index, latest.clone()));
    sample(shared, index, latest).await;
    reader.abort();
}

async fn read_stream(shared: Arc<Shared>, index: usize, latest: Arc<Mutex<Latest>>) {
    let camera = &shared.config.cameras[index].config;
    let counters = &shared.metrics.per_camera[index];
    let mut backoff = Duration::from_millis(500);
    loop {
        let opened = Instant::now();
        let ended = stream_once(&shared, index, &latest).await;
        counters.connected.store(0, Ordering::Relaxed);
        if *shared.stopping.borrow() {
            return;
        }
        match ended {
            Ok(()) => tracing::info!(camera = %camera.name, "the camera's stream ended; reopening"),
            Err(e) => {
                tracing::warn!(camera = %camera.name, error = %format!("{e:#}"), "the camera's stream failed; reopening")
            }
        }
        if opened.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// One connection to the camera, read until it ends.
async fn stream_once(shared: &Shared, index: usize, latest: &Mutex<Latest>) -> anyhow::Result<()> {
    let camera = &shared.config.cameras[index].config;
    let counters = &shared.metrics.per_camera[index];
    let uri: hyper::Uri = camera.url.parse().context("the camera's url")?;
    let host = uri.host().context("the url has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)),
    )
    .await
    .with_context(|| format!("{host}:{port} did not answer within 10 s"))?
    .with_context(|| format!("cannot connect to {host}:{port}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or(host);
    let request = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, authority)
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    anyhow::ensure!(
        response.status() == hyper::StatusCode::OK,
        "the camera answered {}",
        response.status()
    );
    let content_type = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = boundary_of(content_type).with_context(|| {
        format!("not an MJPEG stream: content type {content_type:?}, not multipart/x-mixed-replace")
    })?;
    counters.connected.store(1, Ordering::Relaxed);
    let mut parser = MjpegParser::new(&boundary, camera.max_frame_kib as usize * 1024);
    let mut body = response.into_body();
    let mut stopping = shared.stopping.subscribe();
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = stopping.wait_for(|s| *s) => return Ok(()),
        };
        let Some(frame) = frame else { return Ok(()) };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        parser.push(&data);
        while let Some(image) = parser.next_frame().map_err(|e| anyhow::anyhow!("{e}"))? {
            counters.frames.fetch_add(1, Ordering::Relaxed);
            let mut latest = latest.lock().unwrap_or_else(|p| p.into_inner());
            if latest.frame.is_some() {
                let dropped = if latest.busy {
                    &counters.dropped_busy
                } else {
                    &counters.dropped_rate
                };
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            latest.seq += 1;
            latest.frame = Some(image);
        }
    }
}

/// Runs the newest frame at most `fps` times a second, and never two at once: a frame is
/// taken only when the plugin is idle, so while it is busy the newest frame waits (the ones it
/// replaces are dropped and counted). A tick that finds the plugin busy is made up when the
/// plugin is done, at once, and the ticks restart from there: no idle wait for the next tick,
/// and still at most one start a period. Nothing queues.
async fn sample(shared: Arc<Shared>, index: usize, latest: Arc<Mutex<Latest>>) {
    let camera = &shared.config.cameras[index].config;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / camera.fps));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let done = Arc::new(Notify::new());
    // A tick came while the plugin was busy.
    let mut missed = false;
    let mut stopping = shared.stopping.subscribe();
    loop {
        let plugin_done = tokio::select! {
            _ = ticker.tick() => false,
            () = done.notified() => true,
            _ = stopping.wait_for(|s| *s) => return,
        };
        if plugin_done && !missed {
            continue;
        }
        let taken = {
            let mut latest = latest.lock().unwrap_or_else(|p| p.into_inner());
            if latest.busy {
                missed = true;
                None
            } else {
                let seq = latest.seq;
                let frame = latest.frame.take();
                latest.busy = frame.is_some();
                frame.map(|frame| (seq, frame))
            }
        };
        let Some((seq, frame)) = taken else { continue };
        if plugin_done {
            ticker.reset();
        }
        missed = false;
        let shared = shared.clone();
        let latest = latest.clone();
        let done = done.clone();
        tokio::spawn(async move {
            shared.run_frame(index, seq, frame).await;
            latest.lock().unwrap_or_else(|p| p.into_inner()).busy = false;
            // Stored if the sampler is not waiting yet: the wake-up is never lost.
            done.notify_one();
        });
    }
}

impl Shared {
    /// Runs one frame of camera `index` and publishes its record.
    async fn run_frame(&self, index: usize, seq: u64, frame: Vec<u8>) {
        let camera = &self.config.cameras[index];
        let counters = &self.metrics.per_camera[index];
        let started = Instant::now();
        let received_unix_ms = envelope::since_epoch().as_millis() as u64;
        let plugin = &camera.config.plugin;
        let Some((version, result)) = self
            .invoke(
                plugin,
                &counters.saturated_waits,
                camera.config.content_type.clone(),
                frame,
                started,
            )
            .await
        else {
            return;
        };
        counters.run.fetch_add(1, Ordering::Relaxed);
        let output = match &result {
            Ok(response) => Output::Body {
                content_type: &response.content_type,
                body: &response.body,
            },
            Err((code, message)) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                Output::Error { code, message }
            }
        };
        let name = &camera.config.name;
        // Frame numbers restart with the process; the time keeps ids apart across restarts.
        let id = format!("{name}-{received_unix_ms}-{seq}");
        let gateway = &self.config.mqtt.client_id;
        let source = format!("camera/{name}");
        let record = envelope::record(
            &Answered {
                id: &id,
                gateway,
                device: Some(name),
                topic: &source,
                plugin,
                version: version.as_deref(),
                received_unix_ms,
                latency_ms: started.elapsed().as_secs_f64() * 1e3,
            },
            &output,
        );
        if let Some(template) = &camera.result_topic {
            let topic_name = template.render(&topic::Fields {
                device: name,
                plugin,
                version: version.as_deref().unwrap_or("none"),
                gateway,
            });
            self.publish(topic_name, record, &id, None).await;
        }
    }
}
