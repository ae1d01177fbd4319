//! The `--key value` options of the test worker binaries (`ring-worker`,
//! `rill-worker`), after their role word.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;

/// `--key value` options; `flags` name the options that take no value
/// (they read as `"1"`).
#[derive(Debug)]
pub struct Opts(HashMap<String, String>);

impl Opts {
    /// Parses `args`; an option named in `flags` takes no value.
    pub fn parse(args: &[String], flags: &[&str]) -> Result<Self> {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let key = a.strip_prefix("--").ok_or_else(|| anyhow!("expected --option, got {a:?}"))?;
            let value = if flags.contains(&key) {
                "1".to_owned()
            } else {
                it.next().cloned().ok_or_else(|| anyhow!("--{key} needs a value"))?
            };
            map.insert(key.to_owned(), value);
        }
        Ok(Opts(map))
    }

    /// The value of `--key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The value of `--key`, or an error saying it is missing.
    pub fn req(&self, key: &str) -> Result<&str> {
        self.get(key).ok_or_else(|| anyhow!("missing --{key}"))
    }

    /// `--key` as a number, or `default` (an error if there is none).
    pub fn num(&self, key: &str, default: Option<u64>) -> Result<u64> {
        match (self.get(key), default) {
            (Some(v), _) => v.parse().with_context(|| format!("--{key} {v:?}")),
            (None, Some(d)) => Ok(d),
            (None, None) => bail!("missing --{key}"),
        }
    }
}
