//! A TCP relay between two tiers, whose link the test cuts, slows, narrows and restores: `tc
//! netem` is not in this kernel, and a relay needs no network namespace.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Forwards connections on `127.0.0.1:port` to a target while up; while cut, every
/// connection is closed and new ones are closed on arrival (a link that is down). With a
/// delay, every chunk waits that long before it is forwarded, each way (a slow link). With a
/// rate, each direction is a link of that many bits per second shared by every connection:
/// a chunk leaves once the link has sent everything before it and the chunk itself.
pub struct Relay {
    pub port: u16,
    state: Arc<State>,
}

struct State {
    up: AtomicBool,
    stopped: AtomicBool,
    delay_ms: AtomicU64,
    /// Bits per second each way; 0 is unlimited.
    rate_bps: AtomicU64,
    /// Per direction (to the target, back), when the link is free again.
    free_at: [Mutex<Instant>; 2],
    open: Mutex<Vec<TcpStream>>,
}

/// Under a rate limit, chunks of at most this many bytes: small, so a chunk's own transmission
/// time adds little store-and-forward delay, and large enough that the relay's per-chunk cost
/// (a read, a sleep, a write) does not eat the rate.
const RATED_CHUNK: usize = 8 * 1024;

impl Relay {
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("the relay binds");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            up: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            rate_bps: AtomicU64::new(0),
            free_at: [Mutex::new(Instant::now()), Mutex::new(Instant::now())],
            open: Mutex::new(Vec::new()),
        });
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if shared.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if !shared.up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut open = shared.open.lock().unwrap();
                    open.retain(|s| s.peer_addr().is_ok());
                    for stream in [&client, &server] {
                        if let Ok(clone) = stream.try_clone() {
                            open.push(clone);
                        }
                    }
                }
                for (direction, (from, to)) in [(&client, &server), (&server, &client)]
                    .into_iter()
                    .enumerate()
                {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    let link = shared.clone();
                    std::thread::spawn(move || {
                        let mut buffer = [0u8; 16 * 1024];
                        loop {
                            let rate = link.rate_bps.load(Ordering::SeqCst);
                            let chunk = if rate > 0 { RATED_CHUNK } else { buffer.len() };
                            match from.read(&mut buffer[..chunk]) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    let delay = link.delay_ms.load(Ordering::SeqCst);
                                    if delay > 0 {
                                        std::thread::sleep(Duration::from_millis(delay));
                                    }
                                    if rate > 0 {
                                        link.transmit(direction, n, rate);
                                    }
                                    if to.write_all(&buffer[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, state }
    }

    /// Takes the link down: open connections are closed, new ones refused.
    pub fn cut(&self) {
        self.state.up.store(false, Ordering::SeqCst);
        for stream in self.state.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Brings the link back, without delay.
    pub fn restore(&self) {
        self.state.delay_ms.store(0, Ordering::SeqCst);
        self.state.up.store(true, Ordering::SeqCst);
    }

    /// Limits each direction to `bits_per_second` (0: unlimited).
    pub fn limit_rate(&self, bits_per_second: u64) {
        self.state.rate_bps.store(bits_per_second, Ordering::SeqCst);
    }

    /// Delays every chunk by `delay` before forwarding it, each way.
    pub fn slow_down(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

impl State {
    /// Waits until `bytes` have gone over the link in `direction` after everything queued
    /// before them.
    fn transmit(&self, direction: usize, bytes: usize, rate: u64) {
        let takes = Duration::from_secs_f64(bytes as f64 * 8.0 / rate as f64);
        let done = {
            let mut free_at = self.free_at[direction].lock().unwrap();
            *free_at = (*free_at).max(Instant::now()) + takes;
            *free_at
        };
        if let Some(wait) = done.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the accept loop so that it sees `stopped`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
