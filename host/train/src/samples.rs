//! A plugin's labeled samples on the gateway's disk (the feedback its clients send), bounded
//! by a count and a byte cap: the oldest go first. Samples never leave the gateway.
//!
//! One file per plugin: `EPSAMP1\n`, then records `[u32 length][u32 crc32][label u32]
//! [content-type length u16][content type][input]` (little-endian). An append is one write and
//! an fsync; a record torn by a crash fails its length or checksum and is cut off when the
//! store is opened again, so an accepted (fsync'd) sample is never lost and a torn one never
//! read. Dropping the oldest rewrites the file crash-safe (temp file, fsync, rename).

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"EPSAMP1\n";

/// One labeled sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub label: u32,
    pub content_type: String,
    pub input: Vec<u8>,
}

impl Sample {
    fn encode(&self) -> Vec<u8> {
        let ct = self.content_type.as_bytes();
        let mut payload = Vec::with_capacity(6 + ct.len() + self.input.len());
        payload.extend_from_slice(&self.label.to_le_bytes());
        payload.extend_from_slice(&(ct.len() as u16).to_le_bytes());
        payload.extend_from_slice(ct);
        payload.extend_from_slice(&self.input);
        let mut record = Vec::with_capacity(8 + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
        record
    }

    fn decode(payload: &[u8]) -> Option<Sample> {
        let label = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?);
        let ct_len = u16::from_le_bytes(payload.get(4..6)?.try_into().ok()?) as usize;
        let content_type = std::str::from_utf8(payload.get(6..6 + ct_len)?)
            .ok()?
            .to_string();
        Some(Sample {
            label,
            content_type,
            input: payload.get(6 + ct_len..)?.to_vec(),
        })
    }
}

/// Bounds of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_samples: usize,
    pub max_bytes: u64,
}

/// Why a sample was not kept.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("the sample store cannot be read or written: {0}")]
    Io(#[from] std::io::Error),
    #[error("a sample of {size} bytes is larger than the store's cap of {cap} bytes")]
    TooLarge { size: u64, cap: u64 },
    #[error("the content type is longer than 65535 bytes")]
    ContentType,
}

/// A plugin's sample file.
#[derive(Debug)]
pub struct SampleStore {
    path: PathBuf,
    retention: Retention,
    /// Size on disk of each record, oldest first.
    records: Vec<u64>,
}

impl SampleStore {
    /// Opens (or creates) the store at `path`, cutting off a record a crash tore.
    pub fn open(path: &Path, retention: Retention) -> Result<SampleStore, SampleError> {
        let mut store = SampleStore {
            path: path.to_path_buf(),
            retention,
            records: Vec::new(),
        };
        match std::fs::read(path) {
            Ok(bytes) if bytes.starts_with(MAGIC) => {
                let (records, good) = scan(&bytes);
                store.records = records;
                if good < bytes.len() {
                    tracing::warn!(
                        path = %path.display(),
                        bytes = bytes.len() - good,
                        "cut off a sample record a crash tore"
                    );
                    let file = std::fs::OpenOptions::new().write(true).open(path)?;
                    file.set_len(good as u64)?;
                    file.sync_all()?;
                }
            }
            Ok(_) | Err(_) => {
                edgeplug_bundle::write_file_atomic(path, MAGIC)?;
            }
        }
        Ok(store)
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes the samples take on disk.
    pub fn bytes(&self) -> u64 {
        self.records.iter().sum()
    }

    /// Keeps `sample` (durably, once this returns), dropping the oldest ones the bounds no
    /// longer leave room for.
    pub fn add(&mut self, sample: &Sample) -> Result<(), SampleError> {
        if sample.content_type.len() > u16::MAX as usize {
            return Err(SampleError::ContentType);
        }
        let record = sample.encode();
        let size = record.len() as u64;
        if size > self.retention.max_bytes {
            return Err(SampleError::TooLarge {
                size,
                cap: self.retention.max_bytes,
            });
        }
        let mut drop = 0;
        let mut kept_bytes = self.bytes();
        while self.records.len() - drop + 1 > self.retention.max_samples
            || kept_bytes + size > self.retention.max_bytes
        {
            kept_bytes -= self.records[drop];
            drop += 1;
        }
        if drop > 0 {
            // Rewrite without the oldest, the new sample included, in one atomic replace.
            let bytes = std::fs::read(&self.path)?;
            let skip: u64 = self.records[..drop].iter().sum();
            let mut rewritten = MAGIC.to_vec();
            rewritten.extend_from_slice(&bytes[MAGIC.len() + skip as usize..]);
            rewritten.extend_from_slice(&record);
            edgeplug_bundle::write_file_atomic(&self.path, &rewritten)?;
            self.records.drain(..drop);
        } else {
            let mut file = std::fs::OpenOptions::new().write(true).open(&self.path)?;
            let end = MAGIC.len() as u64 + self.bytes();
            file.seek(SeekFrom::Start(end))?;
            file.write_all(&record)?;
            file.sync_data()?;
        }
        self.records.push(size);
        Ok(())
    }

    /// Every sample, oldest first.
    pub fn samples(&self) -> Result<Vec<Sample>, SampleError> {
        let bytes = std::fs::read(&self.path)?;
        let mut samples = Vec::with_capacity(self.records.len());
        let mut at = MAGIC.len();
        for size in &self.records {
            let end = at + *size as usize;
            if let Some(sample) = bytes.get(at + 8..end).and_then(Sample::decode) {
                samples.push(sample);
            }
            at = end;
        }
        Ok(samples)
    }
}

/// The records of a store file and where its last good one ends.
fn scan(bytes: &[u8]) -> (Vec<u64>, usize) {
    let mut records = Vec::new();
    let mut at = MAGIC.len();
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc || Sample::decode(payload).is_none() {
            break;
        }
        records.push(8 + len as u64);
        at += 8 + len;
    }
    (records, at)
}
