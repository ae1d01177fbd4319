//! rilld's configuration file as `Config::from_file` reads it:
//! `toml::from_str::<rill_daemon::config::Config>` then
//! `Config::validate`, then what rilld asks of a valid configuration for
//! each request: the ACL (`Config::check`) and `Config::keeps`. Must never
//! panic; a refusal must name the uid.
//!
//! Input: uid (u32), gid (u32), action (u8: even = publish), count of
//! supplementary groups (u8, mod 4) and the groups (u32 each), stream
//! name length (u8) and name, then the TOML text (must be UTF-8, as
//! `read_to_string` requires).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rill_daemon::config::{Action, Config};

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<10>() else { return };
    let uid = u32::from_le_bytes(head[0..4].try_into().unwrap());
    let gid = u32::from_le_bytes(head[4..8].try_into().unwrap());
    let action = if head[8] % 2 == 0 { Action::Publish } else { Action::Subscribe };
    let ngroups = usize::from(head[9] % 4);
    let Some((groups, rest)) = rest.split_at_checked(ngroups * 4) else { return };
    let groups: Vec<u32> = groups.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
    let Some((&name_len, rest)) = rest.split_first() else { return };
    let (name, text) = rest.split_at(usize::from(name_len).min(rest.len()));
    let name = String::from_utf8_lossy(name);
    let Ok(text) = std::str::from_utf8(text) else { return };
    let Ok(config) = toml::from_str::<Config>(text) else { return };
    if config.validate().is_err() {
        return;
    }
    let _ = config.keeps(&name);
    if let Err(e) = config.check(uid, gid, &groups, action, &name) {
        assert!(e.contains(&format!("uid {uid}")), "{e}");
    }
});
