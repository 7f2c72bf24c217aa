//! Stream tokens: HS256 JWTs (RFC 7519) that open one tenant's job streams or firehose and
//! nothing else, because EventSource cannot send an `Authorization` header. Any JWT library
//! holding the secret mints the same tokens.
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::Tenant;

/// Clock skew tolerated on `exp` between the minting host and this one (API.md: at most 60).
const LEEWAY_SECS: u64 = 30;

/// The claims of a stream token (API.md, "Stream tokens").
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    tenant: String,
    /// A NumericDate (RFC 7519: it may have a fraction, as `Date.now() / 1000 + 3600` gives).
    #[serde(deserialize_with = "numeric_date")]
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jobs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    firehose: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tags: Option<std::collections::BTreeMap<String, String>>,
}

/// Seconds since the epoch, whole or not (rounded, as the library's own check of `exp`
/// does); before, a fraction made the token "unexpected claims".
fn numeric_date<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if value.is_finite() && value >= 0.0 {
        Ok(value.round() as u64)
    } else {
        Err(serde::de::Error::custom("exp is not a NumericDate"))
    }
}

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Whose streams.
    pub tenant: Tenant,
    /// The job streams it opens (ids as strings, as the API shows them).
    pub jobs: Vec<String>,
    /// Whether it opens the tenant's firehose.
    pub firehose: bool,
    /// The firehose restricted to this queue.
    pub queue: Option<String>,
    /// The firehose restricted to this kind.
    pub kind: Option<String>,
    /// A tag token: the firehose of the jobs carrying all these tags (a request may add
    /// more tags, never fewer).
    pub tags: Option<std::collections::BTreeMap<String, String>>,
}

/// Why a token was refused. The messages name no token and no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// `exp` is in the past.
    #[error("the stream token has expired")]
    Expired,
    /// Not signed by any configured secret, not HS256, or not a JWT at all.
    #[error("the stream token is not valid: {0}")]
    Invalid(&'static str),
}

/// The token secrets: the first signs, every one verifies (rotation). Never printed.
#[derive(Clone)]
pub struct TokenSecrets(Vec<String>);

impl fmt::Debug for TokenSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenSecrets({} secrets, redacted)", self.0.len())
    }
}

impl FromStr for TokenSecrets {
    type Err = std::convert::Infallible;
    /// Never fails, so that clap never echoes the value in an error: [`TokenSecrets::check`]
    /// judges the list.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(TokenSecrets(
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        ))
    }
}

impl TokenSecrets {
    /// Refuses an empty list. A short secret is allowed (API.md sets no length; before, one
    /// under 16 characters stopped the process): [`TokenSecrets::short`] names it for a
    /// warning.
    pub fn check(&self) -> Result<(), String> {
        if self.0.is_empty() {
            return Err("--token-secret: expected one or more comma-separated secrets".into());
        }
        Ok(())
    }

    /// The position (1-based) of the first secret shorter than 16 characters: easy to guess
    /// offline from any token, so worth a warning.
    pub fn short(&self) -> Option<usize> {
        self.0.iter().position(|s| s.len() < 16).map(|i| i + 1)
    }

    /// A random secret for a process given none: its tokens verify on this process only.
    pub fn random() -> TokenSecrets {
        use rand::distr::{Alphanumeric, SampleString};
        TokenSecrets(vec![Alphanumeric.sample_string(&mut rand::rng(), 48)])
    }

    fn validation() -> Validation {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp"]);
        validation
    }

    /// Signs a token for `grant`, valid for `ttl`; the token and its expiry (seconds since
    /// the epoch).
    pub fn sign(&self, grant: &Grant, ttl: Duration) -> (String, u64) {
        let exp = now_secs() + ttl.as_secs();
        let claims = Claims {
            tenant: grant.tenant.as_str().to_owned(),
            exp,
            jobs: ((!grant.firehose && grant.tags.is_none()) || !grant.jobs.is_empty())
                .then(|| grant.jobs.clone()),
            firehose: grant.firehose.then_some(true),
            queue: grant.queue.clone(),
            kind: grant.kind.clone(),
            tags: grant.tags.clone(),
        };
        let key = EncodingKey::from_secret(self.0[0].as_bytes());
        // Serializing these plain claims with HMAC cannot fail.
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap_or_default();
        (token, exp)
    }

    /// Verifies `token` against every secret.
    pub fn verify(&self, token: &str) -> Result<Grant, TokenError> {
        let validation = Self::validation();
        let mut outcome = Err(TokenError::Invalid("bad signature"));
        for secret in &self.0 {
            let key = DecodingKey::from_secret(secret.as_bytes());
            match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
                Ok(data) => {
                    outcome = Ok(data.claims);
                    break;
                }
                Err(e) => match e.kind() {
                    // Another secret may have signed it.
                    ErrorKind::InvalidSignature => {}
                    ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        return Err(TokenError::Invalid("only HS256 is accepted"))
                    }
                    ErrorKind::MissingRequiredClaim(_) => {
                        return Err(TokenError::Invalid("exp is required"))
                    }
                    ErrorKind::Json(_) => {
                        return Err(TokenError::Invalid("unexpected claims"));
                    }
                    _ => return Err(TokenError::Invalid("malformed token")),
                },
            }
        }
        let claims = outcome?;
        let tenant = Tenant::parse(&claims.tenant)
            .ok_or(TokenError::Invalid("tenant is not a tenant name"))?;
        let firehose = claims.firehose == Some(true);
        if claims.jobs.is_none() && !firehose && claims.tags.is_none() {
            return Err(TokenError::Invalid("holds neither jobs, firehose nor tags"));
        }
        if claims.tags.as_ref().is_some_and(|t| t.is_empty()) {
            return Err(TokenError::Invalid("tags is empty"));
        }
        Ok(Grant {
            tenant,
            jobs: claims.jobs.unwrap_or_default(),
            firehose,
            queue: claims.queue,
            kind: claims.kind,
            tags: claims.tags,
        })
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(jobs: &[&str]) -> Grant {
        Grant {
            tenant: Tenant::parse("acme").unwrap(),
            jobs: jobs.iter().map(|s| s.to_string()).collect(),
            firehose: false,
            queue: None,
            kind: None,
            tags: None,
        }
    }

    #[test]
    fn the_first_secret_signs_and_every_one_verifies() {
        let old: TokenSecrets = "old-secret-old-secret".parse().unwrap();
        let both: TokenSecrets = "new-secret-new-secret,old-secret-old-secret"
            .parse()
            .unwrap();
        let (token, _) = old.sign(&grant(&["7"]), Duration::from_secs(60));
        assert_eq!(both.verify(&token).unwrap(), grant(&["7"]));
        let (token, _) = both.sign(&grant(&["8"]), Duration::from_secs(60));
        assert_eq!(
            old.verify(&token),
            Err(TokenError::Invalid("bad signature"))
        );
    }

    #[test]
    fn alg_none_and_expired_tokens_are_refused() {
        let secrets: TokenSecrets = "a-secret-a-secret-a".parse().unwrap();
        let (token, _) = secrets.sign(&grant(&["1"]), Duration::from_secs(60));
        let payload = token.split('.').nth(1).unwrap();
        // {"alg":"none","typ":"JWT"}
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(secrets.verify(&none).is_err());
        let expired = Claims {
            tenant: "acme".into(),
            exp: now_secs() - 120,
            jobs: Some(vec!["1".into()]),
            firehose: None,
            queue: None,
            kind: None,
            tags: None,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &expired,
            &EncodingKey::from_secret(b"a-secret-a-secret-a"),
        )
        .unwrap();
        assert_eq!(secrets.verify(&token), Err(TokenError::Expired));
    }

    #[test]
    fn an_exp_with_a_fraction_is_a_numeric_date() {
        let secrets: TokenSecrets = "a-secret-a-secret-a".parse().unwrap();
        let mint = |exp: serde_json::Value| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &serde_json::json!({"tenant": "acme", "exp": exp, "jobs": ["1"]}),
                &EncodingKey::from_secret(b"a-secret-a-secret-a"),
            )
            .unwrap()
        };
        // `Date.now() / 1000 + 3600`, unrounded (before: "unexpected claims").
        let later = now_secs() as f64 + 3600.25;
        assert_eq!(secrets.verify(&mint(later.into())), Ok(grant(&["1"])));
        let past = now_secs() as f64 - 120.5;
        assert_eq!(secrets.verify(&mint(past.into())), Err(TokenError::Expired));
        assert!(secrets.verify(&mint("soon".into())).is_err());
    }
}
