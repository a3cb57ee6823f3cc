use super::*;

fn trusting(key: &SecretKey) -> TrustStore {
    let mut trust = TrustStore::new();
    trust.add_key(key.public_key());
    trust
}

fn notice() -> RoundNotice {
    RoundNotice {
        group: "g1".into(),
        plugin: "digits".into(),
        round: 3,
        sequence: 1_700_000_000_000,
        open: true,
        deadline_unix_ms: 1_700_000_060_000,
        quorum: 2,
        dp: Some(DpSettings {
            clip: 1.0,
            noise_multiplier: 1.1,
            delta: 1e-5,
        }),
        global: None,
        base: None,
        history: vec![],
    }
}

#[test]
fn a_signed_notice_verifies_and_round_trips() {
    let key = SecretKey::generate();
    let bytes = sign(&notice(), &key);
    let parsed: RoundNotice = verify(&bytes, &trusting(&key)).unwrap();
    assert_eq!(parsed, notice());
}

#[test]
fn forged_and_untrusted_notices_are_refused() {
    let key = SecretKey::generate();
    let trust = trusting(&key);
    let bytes = sign(&notice(), &key);
    // A changed body (a later deadline, a lower quorum) no longer matches its signature.
    let mut envelope: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let body = envelope["body"]
        .as_str()
        .unwrap()
        .replace("\"quorum\":2", "\"quorum\":1");
    envelope["body"] = body.into();
    let forged = serde_json::to_vec(&envelope).unwrap();
    assert!(matches!(
        verify::<RoundNotice>(&forged, &trust),
        Err(WireError::Signature(_))
    ));
    // Signed by a key the gateway does not trust.
    let other = sign(&notice(), &SecretKey::generate());
    assert!(matches!(
        verify::<RoundNotice>(&other, &trust),
        Err(WireError::Signature(_))
    ));
    // A bundle-style or checkpoint signature over the same bytes is another domain.
    let body = serde_json::to_string(&notice()).unwrap();
    let cross =
        edgeplug_bundle::sign_detached(&key, edgeplug_train::checkpoint::DOMAIN, body.as_bytes());
    let crossed = serde_json::json!({
        "body": body, "key_id": key.key_id().to_string(), "signature": hex::encode(cross)
    });
    assert!(verify::<RoundNotice>(&serde_json::to_vec(&crossed).unwrap(), &trust).is_err());
    // Garbage, and a message too large to read.
    assert!(matches!(
        verify::<RoundNotice>(b"offline", &trust),
        Err(WireError::Malformed(_))
    ));
    assert!(matches!(
        verify::<RoundNotice>(&vec![b' '; MAX_MESSAGE_BYTES + 1], &trust),
        Err(WireError::TooLarge(_))
    ));
}

#[test]
fn values_round_trip_and_wrong_sizes_are_refused() {
    let spec = HeadSpec {
        features: 3,
        classes: 2,
        hidden: None,
    };
    let params = vec![vec![1.0, -2.0, 0.5, 3.0, 4.0, -0.25], vec![0.125, 9.0]];
    let text = encode_values(params.iter().map(Vec::as_slice));
    assert_eq!(decode_values(&text, spec).unwrap(), params);
    let wider = HeadSpec {
        features: 4,
        ..spec
    };
    assert!(decode_values(&text, wider).is_err());
    assert!(decode_values("not base64!", spec).is_err());
}

#[test]
fn the_head_digest_names_the_weights_not_the_checkpoint() {
    let spec = HeadSpec {
        features: 3,
        classes: 2,
        hidden: None,
    };
    let a = Head::new(spec, 1).unwrap();
    let b = Head::new(spec, 2).unwrap();
    assert_eq!(head_digest(&a), head_digest(&a.clone()));
    assert_ne!(head_digest(&a), head_digest(&b));
    // Signed by two different keys, the same head has the same digest.
    let key = SecretKey::generate();
    let metadata = edgeplug_train::checkpoint::Metadata {
        plugin: "digits".into(),
        sequence: 1,
        features: 3,
        classes: 2,
        hidden: None,
        samples: 0,
        created_unix_ms: 0,
        key_id: key.key_id().to_string(),
        origin: None,
        plugin_version: None,
    };
    let text = encode_checkpoint(&edgeplug_train::checkpoint::encode(&a, &metadata, &key));
    let (decoded, _) = decode_head(&text, &trusting(&key)).unwrap();
    assert_eq!(head_digest(&decoded), head_digest(&a));
    assert!(decode_head(&text, &trusting(&SecretKey::generate())).is_err());
}
