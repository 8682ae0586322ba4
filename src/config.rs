//! Settings parsed once, where they are read: an off-site target URL, a duration, age
//! recipients. Each type deserializes from the text the user wrote (profile.toml, a playbook, a
//! flag) and refuses what it cannot use there, so the rest of the crate only ever holds parsed
//! values and never re-parses or re-validates a string.
//!
//! A leaf module: it depends on nothing else in the crate, so `profile`, `offsite`, `pack` and
//! the engine can all use it without depending on each other.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// A setting that does not parse. The messages quote the value and say what is expected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SettingError {
    #[error("{value:?} is not a duration like 90s, 2m or 1h30m: {reason}")]
    Duration { value: String, reason: String },
    #[error("{value:?} must be positive")]
    NegativeDuration { value: String },
    #[error("{value:?} is not a URL ({reason}); expected s3://bucket/prefix or file:///path")]
    NotAUrl { value: String, reason: String },
    #[error("{value:?} has no bucket: expected s3://bucket/prefix")]
    NoBucket { value: String },
    #[error("{value:?} is not an absolute file:/// URL")]
    NotAbsolute { value: String },
    #[error(
        "{value:?}: scheme {scheme:?} is not supported; use s3://bucket/prefix or file:///path"
    )]
    Scheme { value: String, scheme: String },
    #[error("{value:?} is not an age X25519 recipient (expected age1…): {reason}")]
    Recipient { value: String, reason: String },
}

/// The one duration parser, for flags, playbooks and profiles alike: a jiff span (`90s`, `2m`,
/// `1h30m`, `1d`; days are 24 hours) or a bare number of seconds (`90`), which cron lines and
/// scripts tend to pass. Zero is allowed; negative spans are not.
pub fn parse_duration(s: &str) -> Result<Duration, SettingError> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let invalid = |reason: String| SettingError::Duration {
        value: s.to_owned(),
        reason,
    };
    let span: jiff::Span = s.parse().map_err(|e: jiff::Error| invalid(e.to_string()))?;
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| invalid(e.to_string()))?;
    Duration::try_from(d).map_err(|_| SettingError::NegativeDuration {
        value: s.to_owned(),
    })
}

/// A duration setting that keeps the text it was written as: it serializes back to exactly that
/// text (a playbook's fingerprint must not change because it was parsed) and messages quote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HumanDuration {
    text: String,
    value: Duration,
}

impl HumanDuration {
    pub fn parse(text: &str) -> Result<Self, SettingError> {
        Ok(Self {
            value: parse_duration(text)?,
            text: text.to_owned(),
        })
    }

    pub fn get(&self) -> Duration {
        self.value
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for HumanDuration {
    type Err = SettingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Reads as the text the user wrote, so messages can quote `timeout.as_deref()`.
impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Where off-site copies go: `s3://bucket/prefix` (any S3-compatible service) or
/// `file:///mnt/nfs/talos` (a directory on another disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetUrl {
    S3 { bucket: String, prefix: String },
    File { root: PathBuf },
}

impl TargetUrl {
    pub fn parse(url: &str) -> Result<Self, SettingError> {
        let u = url::Url::parse(url).map_err(|e| SettingError::NotAUrl {
            value: url.to_owned(),
            reason: e.to_string(),
        })?;
        match u.scheme() {
            "s3" => {
                let bucket = u.host_str().unwrap_or_default().to_owned();
                if bucket.is_empty() {
                    return Err(SettingError::NoBucket {
                        value: url.to_owned(),
                    });
                }
                Ok(TargetUrl::S3 {
                    bucket,
                    prefix: u.path().trim_matches('/').to_owned(),
                })
            }
            "file" => {
                let root = u.to_file_path().map_err(|()| SettingError::NotAbsolute {
                    value: url.to_owned(),
                })?;
                // `file:///a/b/` and `file:///a/b` are the same directory, and print the same.
                Ok(TargetUrl::File {
                    root: root.components().collect(),
                })
            }
            other => Err(SettingError::Scheme {
                value: url.to_owned(),
                scheme: other.to_owned(),
            }),
        }
    }
}

impl FromStr for TargetUrl {
    type Err = SettingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The canonical form, without a trailing `/`: what messages, manifests and listings show.
impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            TargetUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            TargetUrl::File { root } => match url::Url::from_file_path(root) {
                Ok(u) => f.write_str(u.as_str()),
                Err(()) => write!(f, "file://{}", root.display()),
            },
        }
    }
}

impl Serialize for TargetUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TargetUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// age X25519 recipients (`age1…`), the public keys copies are encrypted to. Empty means no
/// encryption.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Recipients(Vec<age::x25519::Recipient>);

impl Recipients {
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Self, SettingError> {
        list.iter()
            .map(|value| {
                let value = value.as_ref();
                age::x25519::Recipient::from_str(value.trim()).map_err(|reason| {
                    SettingError::Recipient {
                        value: value.to_owned(),
                        reason: reason.to_owned(),
                    }
                })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &age::x25519::Recipient> {
        self.0.iter()
    }
}

impl From<Vec<age::x25519::Recipient>> for Recipients {
    fn from(v: Vec<age::x25519::Recipient>) -> Self {
        Self(v)
    }
}

/// Public keys, so they may be shown.
impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|r| r.to_string()))
            .finish()
    }
}

impl Serialize for Recipients {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|r| r.to_string()))
    }
}

impl<'de> Deserialize<'de> for Recipients {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        Self::parse(&list).map_err(serde::de::Error::custom)
    }
}

/// A size setting (`"2GiB"`, `"500 MB"`, `"8589934592"`) that keeps the text it was written as.
/// Binary units (KiB, MiB, GiB, TiB) are powers of 1024, SI units (kB/KB, MB, GB, TB) of 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = (t[..split].trim(), t[split..].trim());
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "mb" => 1000_u64.pow(2),
            "gb" => 1000_u64.pow(3),
            "tb" => 1000_u64.pow(4),
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            _ => {
                return Err(format!(
                    "{text:?} is not a size: expected a number with B, KiB, MiB, GiB, TiB, kB, MB, GB or TB"
                ));
            }
        };
        let value: f64 = num
            .parse()
            .map_err(|_| format!("{text:?} is not a size: expected a number first, like 2GiB"))?;
        if !(value.is_finite() && value > 0.0) {
            return Err(format!("{text:?} must be a positive size"));
        }
        Ok(Self((value * mult as f64) as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(0) => Err(serde::de::Error::custom("the size must be positive")),
            Raw::Bytes(n) => Ok(Self(n)),
            Raw::Text(t) => Self::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

#[cfg(test)]
mod byte_size_tests {
    use super::ByteSize;

    #[test]
    fn sizes_parse_in_both_unit_systems() {
        assert_eq!(ByteSize::parse("2GiB"), Ok(ByteSize(2 << 30)));
        assert_eq!(ByteSize::parse("500 MB"), Ok(ByteSize(500_000_000)));
        assert_eq!(ByteSize::parse("1.5KiB"), Ok(ByteSize(1536)));
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert!(ByteSize::parse("2 GiBs").unwrap_err().contains("GiB"));
        assert!(ByteSize::parse("GiB").is_err());
        assert!(ByteSize::parse("0").is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("2m").unwrap().as_secs(), 120);
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_duration("1d").unwrap().as_secs(), 86400);
        assert!(parse_duration("soon").is_err());
        let e = parse_duration("soon").unwrap_err().to_string();
        assert!(e.contains("\"soon\"") && e.contains("90s"), "{e}");
        assert!(matches!(
            parse_duration("-5m"),
            Err(SettingError::NegativeDuration { .. })
        ));
    }

    #[test]
    fn a_duration_setting_keeps_its_text() {
        let d: HumanDuration = serde_json::from_str("\"1h30m\"").unwrap();
        assert_eq!(d.get(), Duration::from_secs(5400));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h30m\"");
        assert_eq!(d.to_string(), "1h30m");
        let e = serde_json::from_str::<HumanDuration>("\"later\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("later") && e.contains("1h30m"), "{e}");
    }

    #[test]
    fn urls_parse_or_say_what_is_expected() {
        assert_eq!(
            TargetUrl::parse("s3://backups/talos/lab").unwrap(),
            TargetUrl::S3 {
                bucket: "backups".into(),
                prefix: "talos/lab".into()
            }
        );
        assert_eq!(
            TargetUrl::parse("file:///mnt/nfs/talos").unwrap(),
            TargetUrl::File {
                root: "/mnt/nfs/talos".into()
            }
        );
        let e = |s: &str| TargetUrl::parse(s).unwrap_err().to_string();
        assert!(e("s3:///x").contains("bucket"));
        assert!(e("ftp://x/y").contains("ftp"));
        assert!(e("/mnt/x").contains("file:///"));
    }

    #[test]
    fn urls_print_without_a_trailing_slash_and_round_trip() {
        for (given, shown) in [
            ("s3://backups/talos/lab/", "s3://backups/talos/lab"),
            ("s3://backups", "s3://backups"),
            ("file:///mnt/nfs/talos/", "file:///mnt/nfs/talos"),
            ("file:///mnt/my%20disk", "file:///mnt/my%20disk"),
        ] {
            let u = TargetUrl::parse(given).unwrap();
            assert_eq!(u.to_string(), shown);
            assert_eq!(TargetUrl::parse(shown).unwrap(), u);
        }
    }

    #[test]
    fn bad_recipients_name_the_value() {
        let e = Recipients::parse(&["age1nope"]).unwrap_err();
        assert!(e.to_string().contains("age1nope"), "{e}");
        let key = age::x25519::Identity::generate().to_public().to_string();
        let r = Recipients::parse(&[format!(" {key} ")]).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(serde_json::to_value(&r).unwrap(), serde_json::json!([key]));
    }
}
