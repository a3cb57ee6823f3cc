//! What the aggregator keeps between rounds and runs: the round reached, the head, the
//! records, the last sequence (a state file, written crash-safe after every round, so the same
//! command resumes), and the privacy the recorded rounds have spent.

use anyhow::Context as _;
use edgeplug_train::fedavg;
use serde::{Deserialize, Serialize};

use super::aggregator::AggregatorOptions;
use super::wire::{DpSettings, RoundRecord};

/// What a state file holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct State {
    pub group: String,
    pub plugin: String,
    pub next_round: u64,
    pub sequence: u64,
    /// The global head, a checkpoint signed by the aggregator's key (base64).
    pub head: Option<String>,
    pub history: Vec<RoundRecord>,
}

pub(super) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The (ε, δ) after every noised round of `history` plus `this` one: Rényi DP adds over
/// rounds, `Σ α/(2z_r²)`, which is `T·α/(2z²)` for `z = sqrt(T / Σ 1/z_r²)`.
pub(super) fn epsilon(
    history: &[RoundRecord],
    this: Option<DpSettings>,
) -> anyhow::Result<Option<f64>> {
    let Some(dp) = this else { return Ok(None) };
    let zs: Vec<f64> = history
        .iter()
        .filter_map(|r| r.dp.map(|d| d.noise_multiplier))
        .chain([dp.noise_multiplier])
        .collect();
    let t = zs.len() as f64;
    let z = (t / zs.iter().map(|z| 1.0 / (z * z)).sum::<f64>()).sqrt();
    Ok(Some(
        fedavg::privacy_spent(z, zs.len() as u64, dp.delta)?.epsilon,
    ))
}

pub(super) fn load_state(options: &AggregatorOptions) -> anyhow::Result<State> {
    let fresh = State {
        group: options.group.clone(),
        plugin: options.plugin.clone(),
        next_round: 1,
        ..State::default()
    };
    let Some(path) = &options.state_file else {
        return Ok(fresh);
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(fresh),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let state: State = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not an aggregator state file", path.display()))?;
    anyhow::ensure!(
        state.group == options.group && state.plugin == options.plugin,
        "{} is the state of {} in group {}, not {} in {}",
        path.display(),
        state.plugin,
        state.group,
        options.plugin,
        options.group
    );
    Ok(state)
}

pub(super) fn save_state(options: &AggregatorOptions, state: &State) -> anyhow::Result<()> {
    if let Some(path) = &options.state_file {
        let bytes = serde_json::to_vec_pretty(state).expect("the state serializes");
        edgeplug_bundle::write_file_atomic(path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(z: Option<f64>) -> RoundRecord {
        RoundRecord {
            round: 1,
            participants: vec![],
            samples: 1,
            ignored: 0,
            dp: z.map(|noise_multiplier| DpSettings {
                clip: 1.0,
                noise_multiplier,
                delta: 1e-5,
            }),
            epsilon: None,
        }
    }

    #[test]
    fn epsilon_composes_the_noised_rounds_only() {
        let dp = |z| {
            Some(DpSettings {
                clip: 1.0,
                noise_multiplier: z,
                delta: 1e-5,
            })
        };
        assert_eq!(epsilon(&[record(Some(1.0))], None).unwrap(), None);
        // Four rounds at z = 1, one of them unnoised and left out: three rounds' worth.
        let history = [record(Some(1.0)), record(None), record(Some(1.0))];
        let three = fedavg::privacy_spent(1.0, 3, 1e-5).unwrap().epsilon;
        assert_eq!(epsilon(&history, dp(1.0)).unwrap(), Some(three));
        // z = 1 then z = 2: Rényi DP adds α/2 + α/8 = 2·α/(2·z²) for z² = 1.6.
        let mixed = epsilon(&[record(Some(1.0))], dp(2.0)).unwrap().unwrap();
        let expected = fedavg::privacy_spent(1.6f64.sqrt(), 2, 1e-5)
            .unwrap()
            .epsilon;
        assert!((mixed - expected).abs() < 1e-9, "{mixed} {expected}");
    }

    #[test]
    fn a_state_file_resumes_only_its_own_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let options = AggregatorOptions {
            broker: edgeplug_mqtt::BrokerOptions::from_url("mqtt://127.0.0.1:1").unwrap(),
            client_id: "c".into(),
            group: "g1".into(),
            plugin: "digits".into(),
            rounds: 3,
            round_time: std::time::Duration::from_secs(1),
            quorum: 1,
            max_extensions: 0,
            dp: None,
            out_dir: None,
            state_file: Some(dir.path().join("state.json")),
        };
        let fresh = load_state(&options).unwrap();
        assert_eq!((fresh.next_round, fresh.history.len()), (1, 0));
        let state = State {
            next_round: 3,
            sequence: 42,
            history: vec![record(None), record(None)],
            ..fresh
        };
        save_state(&options, &state).unwrap();
        let again = load_state(&options).unwrap();
        assert_eq!((again.next_round, again.sequence), (3, 42));
        let other = AggregatorOptions {
            plugin: "other".into(),
            ..options.clone()
        };
        assert!(format!("{:#}", load_state(&other).unwrap_err()).contains("not other"));
        std::fs::write(dir.path().join("state.json"), b"{").unwrap();
        assert!(load_state(&options).is_err());
    }
}
