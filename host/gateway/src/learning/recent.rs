//! The last inputs a learning plugin answered on `/v1`, by the request id its answer carried
//! (`x-edgeplug-request-id`), so a client labels what it was answered with
//! `{"request_id": ..., "label": n}` instead of sending the input again. Bounded by a count
//! and bytes; the oldest go first. In memory only: an id from before a restart is unknown.

use std::collections::VecDeque;
use std::sync::Mutex;

use hyper::body::Bytes;

/// Inputs kept at most, and their bytes.
const MAX_INPUTS: usize = 512;
const MAX_BYTES: usize = 32 << 20;

#[derive(Debug, Default)]
pub struct RecentInputs {
    inner: Mutex<Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    inputs: VecDeque<Kept>,
    bytes: usize,
}

#[derive(Debug)]
struct Kept {
    id: String,
    plugin: String,
    content_type: String,
    input: Bytes,
}

impl RecentInputs {
    /// Keeps `input` (shared, not copied) and returns its new request id.
    pub fn keep(&self, plugin: &str, content_type: &str, input: Bytes) -> String {
        let id = hex::encode(rand::random::<[u8; 12]>());
        let mut recent = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        recent.bytes += input.len();
        recent.inputs.push_back(Kept {
            id: id.clone(),
            plugin: plugin.to_string(),
            content_type: content_type.to_string(),
            input,
        });
        while recent.inputs.len() > MAX_INPUTS || recent.bytes > MAX_BYTES {
            let Some(old) = recent.inputs.pop_front() else {
                break;
            };
            recent.bytes -= old.input.len();
        }
        id
    }

    /// The content type and input of request `id` to `plugin`, if still kept.
    pub fn find(&self, plugin: &str, id: &str) -> Option<(String, Bytes)> {
        let recent = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .inputs
            .iter()
            .rev()
            .find(|k| k.id == id && k.plugin == plugin)
            .map(|k| (k.content_type.clone(), k.input.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_by_id_and_plugin_and_forgets_the_oldest() {
        let recent = RecentInputs::default();
        let first = recent.keep("digits", "application/json", Bytes::from_static(b"[1]"));
        let second = recent.keep("digits", "image/png", Bytes::from_static(b"png"));
        assert_ne!(first, second);
        assert_eq!(
            recent.find("digits", &first),
            Some(("application/json".into(), Bytes::from_static(b"[1]")))
        );
        assert_eq!(recent.find("other", &first), None, "ids are per plugin");
        for _ in 0..MAX_INPUTS {
            recent.keep("digits", "application/json", Bytes::from_static(b"[2]"));
        }
        assert_eq!(recent.find("digits", &first), None);
        // A large input pushes out as many older ones as its bytes need.
        let big = recent.keep("digits", "x", Bytes::from(vec![0u8; MAX_BYTES]));
        assert!(recent.find("digits", &big).is_some());
        assert_eq!(recent.inner.lock().unwrap().inputs.len(), 1);
    }
}
