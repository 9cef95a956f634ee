//! tugboat-api: what the orchestrator's programs share. The spec-file format and its
//! validation ([`spec`]), the objects of the cluster ([`model`]), the bodies of the HTTP
//! API ([`wire`]), the exec stream's framing and HTTP upgrade ([`execstream`]), and the typed
//! client of the server's API ([`client`]). The server and the agent depend on this crate
//! and never on each other.

pub mod client;
pub mod execstream;
pub mod model;
pub mod spec;
pub mod tls;
pub mod wire;

/// Whether a secret someone sent is the one expected, in time that does not depend on where
/// they differ (subtle's ConstantTimeEq; only the lengths may leak). The one check of bearer
/// tokens for the server and the agent.
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    given.ct_eq(expected).into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_same_secret_is_the_same() {
        assert!(super::same_secret(b"s3cret", b"s3cret"));
        assert!(!super::same_secret(b"s3cres", b"s3cret"));
        assert!(!super::same_secret(b"s3cre", b"s3cret"));
        assert!(!super::same_secret(b"", b"s3cret"));
    }
}
