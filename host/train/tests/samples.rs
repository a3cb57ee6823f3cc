//! The sample store: durable, bounded, and never reading a record a crash tore.

use edgeplug_train::samples::{Retention, Sample, SampleError, SampleStore};

fn sample(label: u32, size: usize) -> Sample {
    Sample {
        label,
        content_type: "application/json".into(),
        input: vec![label as u8; size],
    }
}

const ROOMY: Retention = Retention {
    max_samples: 100,
    max_bytes: 1 << 20,
};

#[test]
fn samples_persist_in_order_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("digits.samples");
    let mut store = SampleStore::open(&path, ROOMY).unwrap();
    assert!(store.is_empty());
    for label in 0..5 {
        store.add(&sample(label, 10 + label as usize)).unwrap();
    }
    drop(store);
    let store = SampleStore::open(&path, ROOMY).unwrap();
    assert_eq!(store.len(), 5);
    let samples = store.samples().unwrap();
    assert_eq!(
        samples,
        (0..5)
            .map(|l| sample(l, 10 + l as usize))
            .collect::<Vec<_>>()
    );
}

#[test]
fn the_oldest_samples_go_when_a_bound_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.samples");
    let mut store = SampleStore::open(
        &path,
        Retention {
            max_samples: 3,
            max_bytes: 1 << 20,
        },
    )
    .unwrap();
    for label in 0..7 {
        store.add(&sample(label, 8)).unwrap();
    }
    let labels: Vec<u32> = store.samples().unwrap().iter().map(|s| s.label).collect();
    assert_eq!(labels, [4, 5, 6]);
    // A byte cap: each record is 8 + 6 + 16 + 100 bytes, so 3 fit in 400.
    let path = dir.path().join("q.samples");
    let mut store = SampleStore::open(
        &path,
        Retention {
            max_samples: 100,
            max_bytes: 400,
        },
    )
    .unwrap();
    for label in 0..5 {
        store.add(&sample(label, 100)).unwrap();
    }
    assert_eq!(store.len(), 3);
    assert!(store.bytes() <= 400);
    let reopened = SampleStore::open(&path, ROOMY).unwrap();
    let labels: Vec<u32> = reopened
        .samples()
        .unwrap()
        .iter()
        .map(|s| s.label)
        .collect();
    assert_eq!(labels, [2, 3, 4]);
    assert!(matches!(
        store.add(&sample(9, 500)),
        Err(SampleError::TooLarge { .. })
    ));
}

#[test]
fn a_record_torn_by_a_crash_is_cut_off_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.samples");
    let mut store = SampleStore::open(&path, ROOMY).unwrap();
    for label in 0..3 {
        store.add(&sample(label, 50)).unwrap();
    }
    drop(store);
    let full = std::fs::read(&path).unwrap();
    // Every way the last record could have been torn: cut anywhere inside it, or a flipped
    // byte in it (a sector written only in part).
    let last = full.len() - (8 + 6 + 16 + 50);
    for cut in (last + 1..full.len()).step_by(7) {
        std::fs::write(&path, &full[..cut]).unwrap();
        let mut store = SampleStore::open(&path, ROOMY).unwrap();
        assert_eq!(store.len(), 2, "cut at {cut}");
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, last);
        store.add(&sample(7, 5)).unwrap();
        let labels: Vec<u32> = store.samples().unwrap().iter().map(|s| s.label).collect();
        assert_eq!(labels, [0, 1, 7]);
    }
    let mut flipped = full.clone();
    flipped[full.len() - 3] ^= 0xff;
    std::fs::write(&path, &flipped).unwrap();
    assert_eq!(SampleStore::open(&path, ROOMY).unwrap().len(), 2);
}
