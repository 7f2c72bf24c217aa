//! Who may do what: API keys per tenant (`keys`), stream tokens for EventSource (`token`).
//! HTTP-free; `web::auth` applies it to requests.
use std::fmt;

pub mod keys;
pub mod token;

pub use keys::{Keys, KeysError};
pub use token::{Grant, TokenError, TokenSecrets};

/// A tenant name: 1-64 characters of `[A-Za-z0-9_.:-]`. Every job belongs to one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tenant(String);

impl Tenant {
    /// The tenant of every request when no keys are configured.
    pub const DEFAULT: &'static str = "default";

    /// Checks a tenant name.
    pub fn parse(name: &str) -> Option<Tenant> {
        crate::job::is_name(name, 64).then(|| Tenant(name.to_owned()))
    }

    /// The `default` tenant.
    pub fn default_tenant() -> Tenant {
        Tenant(Tenant::DEFAULT.to_owned())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
