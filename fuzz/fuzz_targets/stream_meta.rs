//! `<data_dir>/<stream>/stream.toml`, which rilld reads back at start to
//! recreate a persisted stream (`Streams::recover_one` in
//! daemon/src/streams.rs): `toml::from_str::<StreamMeta>`, then the
//! durability (`rill_protocol::Durability::from_str`) and policy names,
//! then the ring shape it would create (`RingConfig::validate`).
//!
//! `StreamMeta` and `parse_policy` are private to rill-daemon and no public
//! path reaches them without starting a whole daemon (`Streams::new`
//! starts a ring keeper process), so this target parses the same text
//! into a copy of that struct: same fields, same serde derive, same toml
//! version. Keep it in step with daemon/src/streams.rs (see the fuzz
//! report for the one public function that would let this call rilld's
//! own code instead).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rill_protocol::Durability;
use rill_shm::ring::{PagePreference, RingConfig};
use rill_shm::Policy;

/// daemon/src/streams.rs `StreamMeta`, field for field.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StreamMeta {
    capacity: u64,
    max_message_len: u32,
    policy: String,
    durability: String,
    archiver_slot: u32,
}

/// daemon/src/streams.rs `parse_policy`.
fn parse_policy(name: &str) -> Result<Policy, String> {
    match name {
        "back-pressure" => Ok(Policy::BackPressure),
        "overwrite" => Ok(Policy::Overwrite),
        other => Err(format!("unknown policy {other:?} (back-pressure or overwrite)")),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(meta) = toml::from_str::<StreamMeta>(text) else { return };
    let Ok(durability) = meta.durability.parse::<Durability>() else { return };
    // What parses prints back as itself (rilld rewrites the file so).
    assert_eq!(durability.to_string().parse::<Durability>(), Ok(durability));
    let Ok(policy) = parse_policy(&meta.policy) else { return };
    let config = RingConfig { capacity: meta.capacity, max_message_len: meta.max_message_len, policy, slot_count: 16, pages: PagePreference::NormalOnly };
    let _ = config.validate();
    // rilld writes the file back with toml::to_string: that must parse to
    // the same values.
    let again: StreamMeta = toml::from_str(&toml::to_string(&meta).expect("serialise")).expect("reparse");
    assert_eq!((again.capacity, again.max_message_len, &again.policy, &again.durability, again.archiver_slot),
        (meta.capacity, meta.max_message_len, &meta.policy, &meta.durability, meta.archiver_slot));
});
