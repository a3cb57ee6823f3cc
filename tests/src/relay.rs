//! A TCP relay between two tiers, whose link the test cuts and restores: `tc netem` is not in
//! this kernel, and a relay needs no network namespace.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Forwards connections on `127.0.0.1:port` to a target while up; while cut, every
/// connection is closed and new ones are closed on arrival (a link that is down).
pub struct Relay {
    pub port: u16,
    state: Arc<State>,
}

struct State {
    up: AtomicBool,
    stopped: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
}

impl Relay {
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("the relay binds");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            up: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
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
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    std::thread::spawn(move || {
                        let mut buffer = [0u8; 16 * 1024];
                        loop {
                            match from.read(&mut buffer) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
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

    /// Brings the link back.
    pub fn restore(&self) {
        self.state.up.store(true, Ordering::SeqCst);
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
