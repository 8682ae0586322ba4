//! Snapshot names, checked before any API call.
//!
//! PVE accepts `^[a-z][a-z0-9_-]+$` (case-insensitive) of at most 40 characters and reserves
//! `current` and `pending`. We are stricter (lower-case only) so names sort and compare simply.
//! Our names are `talosdr-<label>-<yymmddhhmm>` (UTC), which leaves 21 characters for the label.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::pve::error::PveError;

pub const MAX_LEN: usize = 40;
pub const PREFIX: &str = "talosdr";
/// `yymmddhhmm`.
const STAMP_LEN: usize = 10;
const STAMP_FORMAT: &str = "%y%m%d%H%M";

/// A valid snapshot name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotName(String);

fn check(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err("empty".into()),
        Some(c) if !c.is_ascii_lowercase() => {
            return Err("must start with a lower-case letter".into());
        }
        _ => {}
    }
    if name.len() < 2 {
        return Err("must be at least 2 characters".into());
    }
    if name.len() > MAX_LEN {
        return Err(format!(
            "{} characters, at most {MAX_LEN} allowed",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "character {c:?} not allowed (only a-z, 0-9, '_' and '-')"
        ));
    }
    if name == "current" || name == "pending" {
        return Err("reserved by Proxmox VE".into());
    }
    Ok(())
}

impl SnapshotName {
    pub fn parse(name: &str) -> Result<Self, PveError> {
        check(name).map_err(|reason| PveError::InvalidSnapshotName {
            name: name.to_owned(),
            reason,
        })?;
        Ok(Self(name.to_owned()))
    }

    /// `talosdr-<label>-<yymmddhhmm>` for `at` (UTC).
    pub fn for_label(label: &str, at: jiff::Timestamp) -> Result<Self, PveError> {
        validate_label(label)?;
        let stamp = at.strftime(STAMP_FORMAT).to_string();
        Self::parse(&format!("{PREFIX}-{label}-{stamp}"))
    }

    /// For a name made by [`SnapshotName::for_label`], its label and time.
    pub fn label_and_time(&self) -> Option<(&str, jiff::Timestamp)> {
        let rest = self.0.strip_prefix(PREFIX)?.strip_prefix('-')?;
        let (label, stamp) = rest.rsplit_once('-')?;
        if stamp.len() != STAMP_LEN || !stamp.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let dt = jiff::civil::DateTime::strptime(STAMP_FORMAT, stamp).ok()?;
        let ts = dt.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
        Some((label, ts))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A label can make a valid name: lower-case letters, digits, `_`, `-`, at most 21 characters.
pub fn validate_label(label: &str) -> Result<(), PveError> {
    let max = MAX_LEN - PREFIX.len() - 2 - STAMP_LEN;
    let err = |reason: String| PveError::InvalidLabel {
        label: label.to_owned(),
        reason,
    };
    if label.is_empty() {
        return Err(err("empty".into()));
    }
    if label.len() > max {
        return Err(err(format!(
            "{} characters, at most {max} fit in a snapshot name",
            label.len()
        )));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        return Err(err(format!(
            "character {c:?} not allowed (only a-z, 0-9, '_' and '-')"
        )));
    }
    Ok(())
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SnapshotName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SnapshotName {
    type Error = PveError;
    fn try_from(s: String) -> Result<Self, PveError> {
        Self::parse(&s)
    }
}

impl From<SnapshotName> for String {
    fn from(n: SnapshotName) -> String {
        n.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("pre-dr-20240524")]
    #[case("k8sdr20240524141826")]
    #[case("ab")]
    #[case("a_b-c")]
    #[case("talosdr-upgrade-1-2405241418")]
    fn valid(#[case] n: &str) {
        SnapshotName::parse(n).unwrap();
    }

    #[rstest]
    #[case("")]
    #[case("a")]
    #[case("1bad")]
    #[case("-x")]
    #[case("Upper")]
    #[case("k8sdr-20240524T14:18")]
    #[case("has space")]
    #[case("dot.ted")]
    #[case("current")]
    #[case("pending")]
    #[case("a23456789012345678901234567890123456789012")]
    fn invalid(#[case] n: &str) {
        assert!(SnapshotName::parse(n).is_err(), "{n}");
    }

    #[test]
    fn label_names() {
        let at: jiff::Timestamp = "2024-05-24T14:18:26Z".parse().unwrap();
        let n = SnapshotName::for_label("upgrade-1-9", at).unwrap();
        assert_eq!(n.as_str(), "talosdr-upgrade-1-9-2405241418");
        let (label, ts) = n.label_and_time().unwrap();
        assert_eq!(label, "upgrade-1-9");
        assert_eq!(ts, "2024-05-24T14:18:00Z".parse().unwrap());
        assert!(n.as_str().len() <= MAX_LEN);
        let max = "a".repeat(21);
        assert_eq!(
            SnapshotName::for_label(&max, at).unwrap().as_str().len(),
            40
        );
        for bad in ["", "Upper", "with.dot", "sp ace", &"a".repeat(22)] {
            assert!(
                matches!(
                    SnapshotName::for_label(bad, at),
                    Err(PveError::InvalidLabel { .. })
                ),
                "{bad}"
            );
        }
        assert!(
            SnapshotName::parse("pre-dr-20240524")
                .unwrap()
                .label_and_time()
                .is_none()
        );
    }
}
