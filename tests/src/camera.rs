//! An MJPEG-over-HTTP camera for the camera tests and benchmarks: what an IP camera's
//! `video.mjpg` serves (`multipart/x-mixed-replace`, one JPEG part per frame).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// An MJPEG-over-HTTP camera on 127.0.0.1: serves one stream (to the first client, on
/// `GET /video.mjpg`) of `frames` JPEG frames at `fps`, each with its `Content-Length`, then
/// closes; the address and a count of frames sent.
pub async fn mjpeg_camera(
    jpeg: Vec<u8>,
    frames: usize,
    fps: u32,
) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buffer = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "the gateway closed before its request");
            request.extend_from_slice(&buffer[..n]);
        }
        assert!(request.starts_with(b"GET /video.mjpg HTTP/1.1\r\n"));
        stream
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\
                  Cache-Control: no-cache\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(fps)));
        for _ in 0..frames {
            ticker.tick().await;
            let head = format!(
                "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                jpeg.len()
            );
            if stream.write_all(head.as_bytes()).await.is_err()
                || stream.write_all(&jpeg).await.is_err()
                || stream.write_all(b"\r\n").await.is_err()
            {
                return;
            }
            counter.fetch_add(1, Ordering::SeqCst);
        }
        // The listener goes with this task: the camera is gone for good.
    });
    (addr, sent)
}
