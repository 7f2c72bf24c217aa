//! The API keys file: one `TENANT KEY` pair per line. Parsed whole or refused whole, with
//! `PATH:N: reason` errors that never print a key; looked up by digest, never compared byte
//! by byte.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::Tenant;

/// Longest key accepted (API.md).
const MAX_KEY: usize = 256;
/// Shortest key accepted: shorter ones are guessable.
const MIN_KEY: usize = 16;

/// Why a keys file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The file cannot be read.
    #[error("{path}: cannot read the API keys file: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line breaks the format.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the key itself).
        reason: String,
    },
}

/// The SHA-256 of a key: what is stored and looked up, so that the time a lookup takes
/// depends on digests only. A timing attack would learn how a digest of its own guess
/// compares with a stored digest, which says nothing usable about the key behind it (that
/// is a preimage search); a byte-by-byte comparison of the keys themselves never happens.
fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Every key of every tenant.
pub struct Keys {
    tenants: HashMap<[u8; 32], Tenant>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} keys, redacted)", self.tenants.len())
    }
}

impl Keys {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Keys, KeysError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeysError::Read {
            path: path.to_owned(),
            source,
        })?;
        Keys::parse(path, &text)
    }

    /// Parses the text of a keys file; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Keys, KeysError> {
        let mut owners: HashMap<&str, (&str, usize)> = HashMap::new();
        let mut tenants = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let error = |reason: &str| KeysError::Line {
                path: path.to_owned(),
                line: number,
                reason: reason.to_owned(),
            };
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = trimmed.split_whitespace().collect();
            let [raw_tenant, key] = fields[..] else {
                return Err(error(&format!(
                    "expected two fields, TENANT KEY, found {}",
                    fields.len()
                )));
            };
            let tenant = Tenant::parse(raw_tenant)
                .ok_or_else(|| error("bad tenant: expected 1-64 characters of [A-Za-z0-9_.:-]"))?;
            if !(MIN_KEY..=MAX_KEY).contains(&key.len())
                || !key.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(error(&format!(
                    "bad key for tenant {tenant}: expected {MIN_KEY}-{MAX_KEY} printable ASCII \
                     characters without spaces (found {} characters)",
                    key.chars().count()
                )));
            }
            if key.to_ascii_lowercase().contains("change-me") {
                return Err(error(&format!(
                    "the key of tenant {tenant} is the example's placeholder: generate one \
                     (e.g. `openssl rand -hex 32`)"
                )));
            }
            if let Some((owner, first)) = owners.insert(key, (raw_tenant, number)) {
                if owner != raw_tenant {
                    return Err(error(&format!(
                        "this key is already the key of tenant {owner} (line {first}); a key \
                         belongs to one tenant"
                    )));
                }
                continue;
            }
            tenants.insert(digest(key), tenant);
        }
        Ok(Keys { tenants })
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    /// The tenants that have a key.
    pub fn tenants(&self) -> std::collections::BTreeSet<&str> {
        self.tenants.values().map(Tenant::as_str).collect()
    }

    /// Whether the file holds no key at all.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// The tenant owning `presented`, found by the digest of it (see [`digest`]).
    pub fn tenant_of(&self, presented: &str) -> Option<&Tenant> {
        if presented.len() > MAX_KEY {
            return None;
        }
        self.tenants.get(&digest(presented))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Keys, KeysError> {
        Keys::parse(Path::new("keys.txt"), text)
    }

    #[test]
    fn comments_blank_lines_and_several_keys_per_tenant() {
        let keys = parse(
            "# comment\n\n  acme  aaaaaaaaaaaaaaaaaaaa\nacme bbbbbbbbbbbbbbbbbbbb\n\tglobex\tcccccccccccccccccccc\n",
        )
        .unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(
            keys.tenant_of("bbbbbbbbbbbbbbbbbbbb").map(Tenant::as_str),
            Some("acme")
        );
        assert_eq!(
            keys.tenant_of("cccccccccccccccccccc").map(Tenant::as_str),
            Some("globex")
        );
        assert!(keys.tenant_of("cccccccccccccccccccd").is_none());
        assert!(keys.tenant_of("").is_none());
        assert!(keys.tenant_of(&"c".repeat(300)).is_none());
    }

    #[test]
    fn errors_name_the_line_and_never_the_key() {
        let secret = "s3cr3t-s3cr3t-s3cr3t";
        for (text, line, reason) in [
            (format!("acme {secret} extra"), 1, "expected two fields"),
            ("\nacme\n".to_owned(), 2, "expected two fields"),
            (format!("a/b {secret}"), 1, "bad tenant"),
            ("acme short".to_owned(), 1, "bad key"),
            (format!("acme {secret}\nglobex {secret}"), 2, "tenant acme"),
        ] {
            let error = parse(&text).unwrap_err().to_string();
            assert!(error.starts_with(&format!("keys.txt:{line}: ")), "{error}");
            assert!(error.contains(reason), "{error}");
            assert!(
                !error.contains(secret) && !error.contains("short"),
                "{error}"
            );
        }
    }

    #[test]
    fn the_placeholder_key_of_the_example_is_refused() {
        let error = parse("acme CHANGE-ME-generate-with-openssl-rand-hex-32\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("placeholder"), "{error}");
        assert!(
            !error.contains("CHANGE-ME-generate"),
            "never prints the key: {error}"
        );
    }
}
