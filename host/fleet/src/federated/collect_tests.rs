use super::*;
use edgeplug_train::HeadSpec;

const SPEC: HeadSpec = HeadSpec {
    features: 2,
    classes: 2,
    hidden: None,
};

fn head(values: [f32; 6]) -> Head {
    Head::from_params(SPEC, vec![values[..4].to_vec(), values[4..].to_vec()]).unwrap()
}

fn upload(gateway: &str, round: u64, base: &Head, delta: [f32; 6], samples: u64) -> Upload {
    Upload {
        group: "g1".into(),
        plugin: "digits".into(),
        gateway: gateway.into(),
        round,
        base: wire::head_digest(base),
        samples,
        steps: 10,
        features: 2,
        classes: 2,
        hidden: None,
        delta: wire::encode_values([&delta[..4], &delta[4..]]),
        norm: 1.0,
        dp: None,
        bootstrap_base: None,
    }
}

fn bytes(upload: &Upload) -> Vec<u8> {
    serde_json::to_vec(upload).unwrap()
}

fn values(head: &Head) -> Vec<f32> {
    head.params()
        .iter()
        .flat_map(|p| p.as_f32().unwrap().to_vec())
        .collect()
}

#[test]
fn accepted_uploads_are_averaged_by_samples_and_the_rest_counted() {
    let global = head([1.0, 2.0, 3.0, 4.0, 0.0, 0.0]);
    let mut round = Collector::new("g1", "digits", 2, Some(&global), None);
    let a = upload("gw-a", 2, &global, [1.0; 6], 1);
    let b = upload("gw-b", 2, &global, [3.0, 3.0, 3.0, 3.0, -1.0, 5.0], 3);
    assert_eq!(round.offer("gw-a", &bytes(&a)), Verdict::Accepted);
    assert_eq!(round.offer("gw-b", &bytes(&b)), Verdict::Accepted);
    // A second upload, an old round's, a future round's, another head's.
    assert_eq!(round.offer("gw-a", &bytes(&a)), Verdict::Duplicate);
    assert_eq!(
        round.offer("gw-c", &bytes(&upload("gw-c", 1, &global, [9.0; 6], 5))),
        Verdict::Late
    );
    assert_eq!(
        round.offer("gw-c", &bytes(&upload("gw-c", 3, &global, [9.0; 6], 5))),
        Verdict::WrongRound
    );
    let stale = head([0.0; 6]);
    assert_eq!(
        round.offer("gw-c", &bytes(&upload("gw-c", 2, &stale, [9.0; 6], 5))),
        Verdict::WrongRound
    );
    // Another gateway's name on this topic, a mismatched shape, garbage.
    assert!(matches!(
        round.offer("gw-d", &bytes(&a)),
        Verdict::Refused(_)
    ));
    let mut wide = upload("gw-d", 2, &global, [9.0; 6], 5);
    wide.features = 3;
    assert!(
        matches!(round.offer("gw-d", &bytes(&wide)), Verdict::Refused(m) if m.contains("does not match"))
    );
    assert!(matches!(round.offer("gw-d", b"{}"), Verdict::Refused(_)));
    let mut nan = upload("gw-d", 2, &global, [0.0; 6], 5);
    nan.delta = wire::encode_values([&[f32::NAN, 0.0, 0.0, 0.0][..], &[0.0, 0.0][..]]);
    assert!(matches!(
        round.offer("gw-d", &bytes(&nan)),
        Verdict::Refused(_)
    ));
    assert_eq!(round.arrived(), 2);
    assert_eq!(round.ignored_total(), 8);
    assert_eq!(round.ignored["duplicate"], 1);
    assert_eq!(round.ignored["late"], 1);
    assert_eq!(round.ignored["wrong-round"], 2);
    assert_eq!(round.ignored["refused"], 4);

    let averaged = round.average().unwrap();
    assert_eq!(averaged.participants, ["gw-a", "gw-b"]);
    assert_eq!(averaged.samples, 4);
    // (1·1 + 3·3)/4 = 2.5; biases (1 − 3)/4 = −0.5 and (1 + 15)/4 = 4.
    assert_eq!(values(&averaged.head), vec![3.5, 4.5, 5.5, 6.5, -0.5, 4.0]);
}

#[test]
fn uploads_must_follow_the_rounds_dp_settings() {
    let global = head([0.0; 6]);
    let dp = DpSettings {
        clip: 1.0,
        noise_multiplier: 1.0,
        delta: 1e-5,
    };
    let mut round = Collector::new("g1", "digits", 1, Some(&global), Some(dp));
    let plain = upload("gw-a", 1, &global, [0.1; 6], 5);
    assert!(matches!(round.offer("gw-a", &bytes(&plain)), Verdict::Refused(m) if m.contains("DP")));
    let noised = Upload {
        dp: Some(dp),
        ..plain
    };
    assert_eq!(round.offer("gw-a", &bytes(&noised)), Verdict::Accepted);
}

#[test]
fn a_bootstrap_round_averages_onto_the_most_common_starting_head() {
    let shipped = head([1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
    let odd = head([5.0; 6]);
    let mut round = Collector::new("g1", "digits", 1, None, None);
    let with_base = |mut u: Upload, base: &Head| {
        u.bootstrap_base = Some(wire::encode_values(
            base.params().iter().map(|p| p.as_f32().unwrap()),
        ));
        u
    };
    let a = with_base(upload("gw-a", 1, &shipped, [2.0; 6], 2), &shipped);
    let b = with_base(upload("gw-b", 1, &shipped, [4.0; 6], 2), &shipped);
    let c = with_base(upload("gw-c", 1, &odd, [100.0; 6], 3), &odd);
    for (id, u) in [("gw-a", &a), ("gw-b", &b), ("gw-c", &c)] {
        assert_eq!(round.offer(id, &bytes(u)), Verdict::Accepted, "{id}");
    }
    // Without its starting head, or naming another one than it carries.
    let bare = upload("gw-d", 1, &shipped, [1.0; 6], 1);
    assert!(matches!(
        round.offer("gw-d", &bytes(&bare)),
        Verdict::Refused(_)
    ));
    let lying = with_base(upload("gw-d", 1, &shipped, [1.0; 6], 1), &odd);
    assert!(matches!(
        round.offer("gw-d", &bytes(&lying)),
        Verdict::Refused(_)
    ));

    let averaged = round.average().unwrap();
    assert_eq!(averaged.participants, ["gw-a", "gw-b"]);
    assert_eq!(averaged.samples, 4);
    assert_eq!(values(&averaged.head), vec![4.0, 4.0, 4.0, 4.0, 3.0, 3.0]);
    assert_eq!(round.ignored["other-base"], 1);
}

#[test]
fn an_empty_round_has_no_average() {
    let mut round = Collector::new("g1", "digits", 1, None, None);
    assert!(round.average().is_err());
}
