//! Federated averaging over the fleet's broker (issue 16): gateways that opt in train their
//! plugin's head on their own labeled samples and upload only the change (a delta, and how
//! many samples it came from); a center aggregator (`edgeplug aggregate`) averages the deltas
//! weighted by sample counts (FedAvg, `edgeplug_train::fedavg`) and publishes the new global
//! head, signed, which each gateway installs through its own gate.
//!
//! Topics, for group `G`, plugin `P` and gateway `ID`:
//!
//! ```text
//! edgeplug/fleet/G/federated/P/round          the open round (retained, signed): number,
//!                                             global head, deadline, quorum, DP, history
//! edgeplug/fleet/G/federated/P/head           the last averaged head (retained, signed)
//! edgeplug/fleet/G/federated/P/uploads/ID     a gateway's delta for a round (QoS 1)
//! ```
//!
//! A round: the aggregator publishes round `r` with the global head and a deadline; each
//! participating gateway trains from that head (on its low-priority training lane), computes
//! `local − global`, clips and noises it if the round asks for differential privacy, and
//! uploads it. At the deadline, if at least `quorum` gateways uploaded, the aggregator averages
//! them, publishes the head and opens round `r + 1` from it; otherwise it extends the round
//! (the deltas already in stay valid: they are relative to the same head). Uploads for another
//! round or head, a second one from the same gateway, one arriving after its round closed,
//! and one whose head shape does not match are left out and counted.
//!
//! Round notices are retained and the gateways' sessions persistent, so a gateway that was
//! offline keeps serving its local head and joins the round that is open when it returns.
//!
//! Round 1 may have no global head (a *bootstrap* round, when the operator gives none): each
//! gateway then trains from its own starting head and uploads that head with its delta; the
//! aggregator averages the deltas of the gateways that share the most common starting head
//! (normally all: the head the plugin ships). A bootstrap upload carries the starting head
//! unnoised, so a round with differential privacy needs a global head.
//!
//! Differential privacy: the guarantee is each gateway's, about its own samples, from its own
//! clipping and noise (the Gaussian mechanism); the aggregator only post-processes. The (ε, δ)
//! a round records is that of a gateway that took part in every noised round so far
//! (`edgeplug_train::fedavg::privacy_spent`), an upper bound for the others.

pub mod aggregator;
pub mod collect;
mod ledger;
pub mod participant;
pub mod wire;

pub use wire::{DpSettings, HeadNotice, RoundNotice, RoundRecord, Upload};

use crate::topics::ROOT;

/// The retained round notice for `plugin`.
pub fn round_topic(group: &str, plugin: &str) -> String {
    format!("{ROOT}/{group}/federated/{plugin}/round")
}

/// The retained averaged head for `plugin`.
pub fn head_topic(group: &str, plugin: &str) -> String {
    format!("{ROOT}/{group}/federated/{plugin}/head")
}

/// Gateway `id`'s uploads for `plugin`.
pub fn upload_topic(group: &str, plugin: &str, id: &str) -> String {
    format!("{ROOT}/{group}/federated/{plugin}/uploads/{id}")
}

/// Every gateway's uploads for `plugin` (the aggregator's subscription).
pub fn upload_filter(group: &str, plugin: &str) -> String {
    format!("{ROOT}/{group}/federated/{plugin}/uploads/+")
}

/// What a federated topic names: `(plugin, kind)` with kind `round`, `head` or `uploads/ID`.
pub fn parse_topic<'a>(group: &str, topic: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = topic
        .strip_prefix(ROOT)?
        .strip_prefix('/')?
        .strip_prefix(group)?
        .strip_prefix("/federated/")?;
    rest.split_once('/')
}
