//! The audit log: one JSON line per admin API request, allowed or refused, appended and
//! fsync'd before the answer leaves.
//!
//! ```json
//! {"time":"2025-01-31T12:00:00.123Z","peer":"10.0.0.7:51234","token":"ci","client_cert":null,
//!  "method":"PUT","path":"/v1/admin/plugins/digits","action":"push","plugin":"digits",
//!  "bundle_sha256":"9f2c...","outcome":"ok","status":200,"code":null,"version":"0.2.0",
//!  "previous":"0.1.0"}
//! ```
//!
//! `token` is the token's name from the token file (never its secret; `null` when the request
//! carried no known token), `client_cert` the SHA-256 of a verified client certificate.
//! `outcome` is `ok`, `denied` (refused by access control: no, wrong or insufficient token,
//! no client certificate) or `failed` (allowed, but the operation failed: a refused bundle,
//! nothing to roll back to...).
//!
//! Crash safety: each record is one `write` of one line to a file opened with `O_APPEND`,
//! then `fdatasync`. A crash can at worst leave the last line torn; the next append first
//! ends a torn line with a newline, so every later record stays on its own line, and
//! [`read`] skips lines that do not parse. The file is opened again for each record, so an
//! operator may rotate it by renaming.
//!
//! Size: a flood of refused requests must not fill the disk, so the log rotates itself. Before
//! an append would take the file past [`Rotation::max_bytes`], `audit.log` becomes
//! `audit.log.1` (`.1` becomes `.2`, and so on; the oldest beyond [`Rotation::keep`] is
//! dropped). The disk held is bounded by `max_bytes × (keep + 1)`. The price: a flood long
//! enough rotates old records out, so ship the log off the gateway if it is evidence
//! (THREAT_MODEL.md).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Fields taken from the request (a path, a plugin name) are cut to this many bytes, so a
/// client cannot make one record arbitrarily large.
const MAX_FIELD_BYTES: usize = 256;

/// How an admin request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Denied,
    Failed,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub peer: Option<String>,
    /// The token's name; never its secret.
    pub token: Option<String>,
    /// SHA-256 (hex) of the verified client certificate.
    pub client_cert: Option<String>,
    pub method: String,
    pub path: String,
    /// `list`, `push`, `rollback`, `remove`, or `unknown` for a path the admin API lacks.
    pub action: String,
    pub plugin: Option<String>,
    /// SHA-256 of the uploaded bundle, for a push whose body was read.
    pub bundle_sha256: Option<String>,
    pub outcome: Outcome,
    pub status: u16,
    /// The error code of a refusal or failure.
    pub code: Option<String>,
    /// The active version after the operation, and the one before.
    pub version: Option<String>,
    pub previous: Option<String>,
}

impl AuditRecord {
    /// A record stamped now, for a request `method path`; the caller fills in the rest.
    pub fn new(method: &str, path: &str) -> AuditRecord {
        AuditRecord {
            time: rfc3339(SystemTime::now()),
            peer: None,
            token: None,
            client_cert: None,
            method: clip(method),
            path: clip(path),
            action: "unknown".into(),
            plugin: None,
            bundle_sha256: None,
            outcome: Outcome::Denied,
            status: 0,
            code: None,
            version: None,
            previous: None,
        }
    }

    /// Sets the plugin name, cut to a bounded length.
    pub fn plugin(&mut self, name: &str) {
        self.plugin = Some(clip(name));
    }
}

fn clip(s: &str) -> String {
    if s.len() <= MAX_FIELD_BYTES {
        return s.to_string();
    }
    let mut end = MAX_FIELD_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// When the log rotates and how many rotated files stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// The largest the current file may grow to (a record larger than this still gets its
    /// own file).
    pub max_bytes: u64,
    /// Rotated files kept: `audit.log.1` (newest) to `audit.log.{keep}`.
    pub keep: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: 64 << 20,
            keep: 4,
        }
    }
}

/// The append-only log file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    rotation: Rotation,
    /// Serializes appends, so the torn-line check and the write see no other writer of this
    /// process in between.
    lock: Mutex<()>,
}

impl AuditLog {
    /// The log at `path`, created (mode 0600) if missing. Opens it once now, so an unwritable
    /// path fails the gateway's start rather than its first admin request.
    pub fn open(path: &Path, rotation: Rotation) -> std::io::Result<AuditLog> {
        let log = AuditLog {
            path: path.to_path_buf(),
            rotation,
            lock: Mutex::new(()),
        };
        log.check()?;
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a record can be appended now (the file opens for appending). An admin
    /// operation is refused when it cannot, rather than done without a record.
    pub fn check(&self) -> std::io::Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.open_append().map(|_| ())
    }

    fn directory(&self) -> &Path {
        self.path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }

    /// `audit.log.{n}`.
    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Shifts `audit.log` to `.1`, `.1` to `.2`... dropping the oldest, and makes the renames
    /// durable before the new file gets its first record.
    fn rotate(&self) -> std::io::Result<()> {
        if self.rotation.keep == 0 {
            return std::fs::remove_file(&self.path);
        }
        for n in (1..self.rotation.keep).rev() {
            match std::fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        std::fs::File::open(self.directory())?.sync_all()
    }

    fn open_append(&self) -> std::io::Result<std::fs::File> {
        let existed = self.path.exists();
        let file = OpenOptions::new()
            // Read too: the torn-line check reads the last byte.
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        if !existed {
            // The new file's directory entry must survive a crash too.
            std::fs::File::open(self.directory())?.sync_all()?;
        }
        Ok(file)
    }

    /// Appends one record and waits until it is on disk. Blocking (an fsync): call it off the
    /// reactor.
    pub fn append(&self, record: &AuditRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut file = self.open_append()?;
        let mut len = file.metadata()?.len();
        if len > 0 && len + line.len() as u64 > self.rotation.max_bytes {
            drop(file);
            self.rotate()?;
            file = self.open_append()?;
            len = 0;
        }
        if len > 0 {
            let mut last = [0u8];
            file.read_exact_at(&mut last, len - 1)?;
            if last[0] != b'\n' {
                // A torn line from a crash mid-append: end it, so this record parses.
                line.insert(0, b'\n');
            }
        }
        // One write call: with O_APPEND the line lands whole at the end, after any other
        // process's appends.
        file.write_all(&line)?;
        file.sync_data()
    }
}

/// The records of an audit log, skipping lines that do not parse (a torn last line).
pub fn read(path: &Path) -> std::io::Result<Vec<AuditRecord>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

/// `time` as RFC 3339 in UTC with milliseconds: `2025-01-31T12:00:00.123Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`): no date crate for one timestamp format.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(action: &str, outcome: Outcome, status: u16) -> AuditRecord {
        let mut r = AuditRecord::new("PUT", "/v1/admin/plugins/digits");
        r.action = action.into();
        r.plugin("digits");
        r.outcome = outcome;
        r.status = status;
        r
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |secs: u64, ms: u64| {
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_738_324_800, 123), "2025-01-31T12:00:00.123Z");
        assert_eq!(at(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn appends_one_line_per_record_and_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, Rotation::default()).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let records = [
            record("push", Outcome::Ok, 200),
            record("unknown", Outcome::Denied, 401),
            record("rollback", Outcome::Failed, 409),
        ];
        for r in &records {
            log.append(r).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with('\n'));
        assert_eq!(read(&path).unwrap(), records);
        // Reopening appends; it never truncates.
        let again = AuditLog::open(&path, Rotation::default()).unwrap();
        again.append(&records[0]).unwrap();
        assert_eq!(read(&path).unwrap().len(), 4);
    }

    #[test]
    fn a_torn_last_line_is_ended_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, Rotation::default()).unwrap();
        log.append(&record("push", Outcome::Ok, 200)).unwrap();
        // A crash in the middle of the next append.
        let torn = serde_json::to_string(&record("remove", Outcome::Ok, 200)).unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&torn.as_bytes()[..torn.len() / 2]).unwrap();
        drop(file);
        log.append(&record("rollback", Outcome::Failed, 409))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        let actions: Vec<String> = read(&path).unwrap().into_iter().map(|r| r.action).collect();
        assert_eq!(actions, ["push", "rollback"]);
    }

    #[test]
    fn request_fields_are_bounded_and_escaped() {
        let long = "é".repeat(1000);
        let mut r = AuditRecord::new("GET", &format!("/v1/admin/{long}"));
        r.plugin(&format!("a\nb\"{long}"));
        assert!(r.path.len() <= MAX_FIELD_BYTES + 3);
        assert!(r.plugin.as_ref().unwrap().len() <= MAX_FIELD_BYTES + 3);
        let line = serde_json::to_string(&r).unwrap();
        assert!(
            !line.contains('\n'),
            "a newline in a field must not split the record"
        );
        assert_eq!(serde_json::from_str::<AuditRecord>(&line).unwrap(), r);
    }

    #[test]
    fn an_unwritable_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            AuditLog::open(&dir.path().join("missing/audit.log"), Rotation::default()).is_err()
        );
        assert!(AuditLog::open(dir.path(), Rotation::default()).is_err());
    }

    #[test]
    fn the_log_rotates_before_it_passes_its_size_and_keeps_only_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let line_len = serde_json::to_vec(&record("unknown", Outcome::Denied, 401))
            .unwrap()
            .len() as u64
            + 1;
        // Three records per file.
        let rotation = Rotation {
            max_bytes: 3 * line_len,
            keep: 2,
        };
        let log = AuditLog::open(&path, rotation).unwrap();
        for status in 400..411u16 {
            log.append(&record("unknown", Outcome::Denied, status))
                .unwrap();
        }
        let statuses =
            |p: &Path| -> Vec<u16> { read(p).unwrap().iter().map(|r| r.status).collect() };
        // 11 records: 400-402, 403-405 (dropped), 406-408 in .1 ... newest last.
        assert_eq!(statuses(&path), [409, 410]);
        assert_eq!(statuses(&dir.path().join("audit.log.1")), [406, 407, 408]);
        assert_eq!(statuses(&dir.path().join("audit.log.2")), [403, 404, 405]);
        assert!(!dir.path().join("audit.log.3").exists());
        for file in std::fs::read_dir(dir.path()).unwrap() {
            assert!(file.unwrap().metadata().unwrap().len() <= rotation.max_bytes);
        }
    }
}
