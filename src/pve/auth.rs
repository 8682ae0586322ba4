//! The API token: parsing, loading from a file, and keeping the secret out of every log.
//!
//! PVE expects `Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET`; the server splits at the
//! last `=`, so we do the same. The secret lives in [`Secret`], whose `Debug` prints a placeholder.

use std::fmt;
use std::path::Path;

use crate::pve::error::PveError;

/// A string that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the one place that needs it (the Authorization header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `USER@REALM!TOKENID` plus the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiToken {
    /// `user@realm!tokenid` (not secret: PVE shows it in task owners).
    pub id: String,
    pub secret: Secret,
}

impl ApiToken {
    /// Parses `USER@REALM!TOKENID=SECRET`. The error never contains the input.
    pub fn parse(s: &str) -> Result<Self, PveError> {
        let s = s.trim();
        let bad = |why: &str| {
            PveError::Config(format!(
                "API token is not of the form USER@REALM!TOKENID=SECRET ({why})"
            ))
        };
        let (id, secret) = s.rsplit_once('=').ok_or_else(|| bad("no '='"))?;
        let (user_realm, token_name) = id.split_once('!').ok_or_else(|| bad("no '!'"))?;
        let (user, realm) = user_realm.split_once('@').ok_or_else(|| bad("no '@'"))?;
        if user.is_empty() || realm.is_empty() || token_name.is_empty() {
            return Err(bad("empty user, realm or token name"));
        }
        if id.chars().any(char::is_whitespace) {
            return Err(bad("whitespace in the token id"));
        }
        if secret.is_empty() || secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("empty or malformed secret"));
        }
        Ok(Self {
            id: id.to_owned(),
            secret: Secret::new(secret),
        })
    }

    /// Reads a token file, refusing one that group or others can read.
    pub fn from_file(path: &Path) -> Result<Self, PveError> {
        check_private(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| {
            PveError::Config(format!("cannot read token file {}: {e}", path.display()))
        })?;
        Self::parse(&text).map_err(|e| match e {
            PveError::Config(m) => PveError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// The `Authorization` header value.
    pub(crate) fn header_value(&self) -> String {
        format!("PVEAPIToken={}={}", self.id, self.secret.expose())
    }
}

fn check_private(path: &Path) -> Result<(), PveError> {
    match crate::fsutil::exposed_mode(path) {
        Ok(None) => Ok(()),
        Ok(Some(mode)) => Err(PveError::Config(crate::fsutil::exposed_message(
            "token file",
            path,
            mode,
        ))),
        Err(e) => Err(PveError::Config(format!(
            "cannot read token file {}: {e}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "k8s-dr@pve!cli=3f1c2b9a-5d7e-4c1a-9b0e-6a7d8c9e0f12";

    #[test]
    fn parse_and_redact() {
        let t = ApiToken::parse(TOKEN).unwrap();
        assert_eq!(t.id, "k8s-dr@pve!cli");
        assert_eq!(
            t.header_value(),
            "PVEAPIToken=k8s-dr@pve!cli=3f1c2b9a-5d7e-4c1a-9b0e-6a7d8c9e0f12"
        );
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("3f1c2b9a"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }

    #[test]
    fn parse_errors_do_not_leak() {
        for bad in [
            "nosecret",
            "user@pve=abc",
            "user!tok=abc",
            "u@r!t=",
            "u@r!t=a b",
        ] {
            let e = ApiToken::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("abc"), "{e}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn token_file_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pve-token");
        std::fs::write(&p, format!("{TOKEN}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ApiToken::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(ApiToken::from_file(&p).unwrap().id, "k8s-dr@pve!cli");
    }
}
