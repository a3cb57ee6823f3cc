//! A headless chromium driven over the Chrome DevTools Protocol, for the web page's tests: it
//! opens a page, runs JavaScript in it and puts a file in a file input, as a person would.
//!
//! The protocol runs over `--remote-debugging-pipe` (commands in on fd 3, answers out on fd 4,
//! each message JSON ended by a NUL byte), so no port and no websocket client are needed.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Chromium for a browser test, or `None` (the test then returns: it is skipped, and says so)
/// when it is absent on a developer's machine. Under CI (`CI` set) its absence is a failure.
pub fn chromium_for_test() -> Option<PathBuf> {
    let chromium = find_chromium();
    if chromium.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed, and CI is set: install it (apt-get install -y chromium)"
        );
        eprintln!("SKIPPED: chromium is not installed (apt-get install -y chromium)");
    }
    chromium
}

/// Where Debian, Ubuntu or a PATH install put chromium.
pub fn find_chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| {
            std::env::var_os("PATH")
                .map(|paths| {
                    std::env::split_paths(&paths)
                        .map(|dir| dir.join(name))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .find(|p| p.is_file())
}

/// A running headless chromium.
pub struct Browser {
    child: Child,
    commands: std::io::PipeWriter,
    answers: Receiver<Value>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// A page (tab) of a [`Browser`].
pub struct Page {
    session: String,
}

const TIMEOUT: Duration = Duration::from_secs(20);

impl Browser {
    pub fn launch(chromium: &Path) -> std::io::Result<Browser> {
        let profile = tempfile::tempdir()?;
        let (command_reader, commands) = std::io::pipe()?;
        let (answer_reader, answer_writer) = std::io::pipe()?;
        let (command_fd, answer_fd) = (command_reader.as_raw_fd(), answer_writer.as_raw_fd());
        let mut command = Command::new(chromium);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2) run, on
        // file descriptors this process owns.
        unsafe {
            command.pre_exec(move || {
                // Move both ends above 4 first, so that placing one on 3 or 4 cannot close the
                // other; dup2 then clears close-on-exec on 3 and 4.
                let high_command = libc::fcntl(command_fd, libc::F_DUPFD, 10);
                let high_answer = libc::fcntl(answer_fd, libc::F_DUPFD, 10);
                if high_command < 0
                    || high_answer < 0
                    || libc::dup2(high_command, 3) < 0
                    || libc::dup2(high_answer, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        drop((command_reader, answer_writer));
        let (sender, answers) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(answer_reader);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop_if(|b| *b == 0);
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && sender.send(value).is_err()
                {
                    return;
                }
                message.clear();
            }
        });
        Ok(Browser {
            child,
            commands,
            answers,
            next_id: 0,
            _profile: profile,
        })
    }

    /// Sends a command (to a page's session, or to the browser) and waits for its answer.
    fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .map_err(|e| format!("chromium is gone: {e}"))?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.answers.recv_timeout(left) {
                Ok(answer) if answer["id"] == id => {
                    return match answer.get("error") {
                        Some(error) => Err(format!("{method}: {error}")),
                        None => Ok(answer["result"].clone()),
                    };
                }
                Ok(_event) => continue,
                Err(RecvTimeoutError::Timeout) => return Err(format!("{method}: no answer")),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("{method}: chromium closed the pipe"));
                }
            }
        }
    }

    /// Opens `url` in a new page.
    pub fn open(&mut self, url: &str) -> Result<Page, String> {
        let target = self.call(None, "Target.createTarget", json!({"url": url}))?;
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        )?;
        let session = attached["sessionId"]
            .as_str()
            .ok_or("no session id")?
            .to_string();
        Ok(Page { session })
    }

    /// Evaluates `expression` in `page` and returns its value (promises are awaited).
    pub fn eval(&mut self, page: &Page, expression: &str) -> Result<Value, String> {
        let result = self.call(
            Some(&page.session),
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(exception) = result.get("exceptionDetails") {
            return Err(format!("{expression}: {exception}"));
        }
        Ok(result["result"]["value"].clone())
    }

    /// Evaluates `expression` until it is truthy or the timeout passes; returns its value.
    pub fn wait_for(&mut self, page: &Page, expression: &str) -> Result<Value, String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let value = self.eval(page, expression)?;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!("")
                && value != json!(0);
            if truthy {
                return Ok(value);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out waiting for {expression}; last value {value}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Puts `file` into the file input matching `selector`, as choosing it in a dialog does
    /// (the input's `change` event fires).
    pub fn set_file(&mut self, page: &Page, selector: &str, file: &Path) -> Result<(), String> {
        let document = self.call(Some(&page.session), "DOM.getDocument", json!({}))?;
        let node = self.call(
            Some(&page.session),
            "DOM.querySelector",
            json!({"nodeId": document["root"]["nodeId"], "selector": selector}),
        )?;
        self.call(
            Some(&page.session),
            "DOM.setFileInputFiles",
            json!({"nodeId": node["nodeId"], "files": [file]}),
        )?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
