//! API keys: created once (the secret is shown to its creator and never stored),
//! listed, revoked. Kept in the ledger database so every replica sees the same keys.
//!
//! A key reads `ig_<id>_<secret>`: the id is public (ledger rows and budgets name
//! keys by it), the secret is 256 random bits of which only a blake3 hash is kept.
//! Checking a presented key is the server's job ([`ApiKeyRecord::matches`] compares
//! in constant time).
//!
//! Every key has a [`KeyScope`]: a `standard` key sees its own spending; an `admin`
//! key (`imagegate keys create --admin`) sees every key's and may republish.

use crate::backend::with_pool;
use crate::{Ledger, LedgerError};
use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use sqlx::Row;

const PREFIX: &str = "ig_";

/// What a key may see and do. Stored as [`KeyScope::as_str`] in `api_keys.scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyScope {
    /// Its own costs, deliveries and jobs; no republishing.
    #[default]
    Standard,
    /// Everything: every key's costs, and `cache: refresh`.
    Admin,
}

impl KeyScope {
    pub const ALL: [KeyScope; 2] = [KeyScope::Standard, KeyScope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyScope::Standard => "standard",
            KeyScope::Admin => "admin",
        }
    }

    pub fn is_admin(self) -> bool {
        self == KeyScope::Admin
    }

    fn parse(s: &str) -> Option<KeyScope> {
        KeyScope::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for KeyScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored key, without its secret.
#[derive(Debug, Clone, Serialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    /// blake3 of the secret; compared, never shown.
    #[serde(skip)]
    pub secret_hash: blake3::Hash,
    pub requests_per_minute: Option<u32>,
    pub scope: KeyScope,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl ApiKeyRecord {
    /// Does `secret` belong to this key? Constant time in the secret (blake3's
    /// `Hash` equality is).
    pub fn matches(&self, secret: &str) -> bool {
        blake3::hash(secret.as_bytes()) == self.secret_hash
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// A key as presented in `Authorization: Bearer`, split into its parts.
#[derive(Debug, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

impl<'a> PresentedKey<'a> {
    pub fn parse(token: &'a str) -> Option<PresentedKey<'a>> {
        let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        (hex(id, 16) && hex(secret, 64)).then_some(PresentedKey { id, secret })
    }
}

/// A freshly created key: the only time its full text exists.
pub struct NewApiKey {
    pub record: ApiKeyRecord,
    /// `ig_<id>_<secret>`: give it to the client, then forget it.
    pub token: String,
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("record", &self.record)
            .field("token", &"[redacted]")
            .finish()
    }
}

impl Ledger {
    /// Creates a key named `name` (a label for people; need not be unique).
    pub async fn create_api_key(
        &self,
        name: &str,
        requests_per_minute: Option<u32>,
        scope: KeyScope,
    ) -> Result<NewApiKey, LedgerError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 100 {
            return Err(LedgerError::Invalid(
                "a key name must have 1 to 100 characters".into(),
            ));
        }
        if requests_per_minute == Some(0) {
            return Err(LedgerError::Invalid(
                "requests_per_minute must be at least 1".into(),
            ));
        }
        let id = hex::encode(rand::random::<[u8; 8]>());
        let secret = hex::encode(rand::random::<[u8; 32]>());
        let secret_hash = blake3::hash(secret.as_bytes());
        let created_at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        with_pool!(&self.pool, p => {
            sqlx::query(
                "INSERT INTO api_keys \
                 (id, name, secret_blake3, requests_per_minute, scope, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&id)
            .bind(name)
            .bind(secret_hash.to_hex().as_str())
            .bind(requests_per_minute.map(i64::from))
            .bind(scope.as_str())
            .bind(&created_at)
            .execute(p)
            .await
            .map(|_| ())
        })
        .map_err(|e| self.db(e))?;
        Ok(NewApiKey {
            token: format!("{PREFIX}{id}_{secret}"),
            record: ApiKeyRecord {
                id,
                name: name.to_string(),
                secret_hash,
                requests_per_minute,
                scope,
                created_at,
                revoked_at: None,
            },
        })
    }

    /// Every key, revoked ones included, oldest first.
    pub async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, LedgerError> {
        let rows = with_pool!(&self.pool, p => {
            sqlx::query(
                "SELECT id, name, secret_blake3, requests_per_minute, created_at, revoked_at, \
                 scope FROM api_keys ORDER BY created_at, id",
            )
            .fetch_all(p)
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        (
                            r.get::<String, _>(0),
                            r.get::<String, _>(1),
                            r.get::<String, _>(2),
                            r.get::<Option<i64>, _>(3),
                            r.get::<String, _>(4),
                            r.get::<Option<String>, _>(5),
                            r.get::<String, _>(6),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .map_err(|e| self.db(e))?;
        rows.into_iter()
            .map(|(id, name, hash, rpm, created_at, revoked_at, scope)| {
                let secret_hash = blake3::Hash::from_hex(&hash).map_err(|_| {
                    LedgerError::Invalid(format!("api key {id} has a malformed hash"))
                })?;
                // The column's CHECK allows only known scopes; a newer release's
                // scope read by an older one must not pass as more than standard.
                let scope = KeyScope::parse(&scope).unwrap_or_default();
                Ok(ApiKeyRecord {
                    id,
                    name,
                    secret_hash,
                    requests_per_minute: rpm.and_then(|v| u32::try_from(v).ok()),
                    scope,
                    created_at,
                    revoked_at,
                })
            })
            .collect()
    }

    /// Revokes key `id`; false when there is no such live key.
    pub async fn revoke_api_key(&self, id: &str) -> Result<bool, LedgerError> {
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let done = with_pool!(&self.pool, p => {
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(&now)
                .bind(id)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| self.db(e))?;
        Ok(done == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{on_both_backends, TestDb};

    on_both_backends!(created_keys_verify_and_revoke, scopes_are_stored_and_listed);

    async fn created_keys_verify_and_revoke(db: TestDb) {
        let ledger = db.open().await;
        let new = ledger
            .create_api_key("mobile app", Some(120), KeyScope::Standard)
            .await
            .unwrap();
        assert!(!format!("{new:?}").contains(&new.token[20..]));
        let presented = PresentedKey::parse(&new.token).unwrap();
        assert_eq!(presented.id, new.record.id);

        // Another replica sees it; only a hash was stored.
        let other = db.open().await;
        let keys = other.api_keys().await.unwrap();
        assert_eq!(keys.len(), 1);
        let stored = &keys[0];
        assert_eq!(stored.name, "mobile app");
        assert_eq!(stored.requests_per_minute, Some(120));
        assert!(stored.matches(presented.secret));
        assert!(!stored.matches(&"0".repeat(64)));
        assert!(!serde_json::to_string(stored)
            .unwrap()
            .contains(presented.secret));

        assert!(other.revoke_api_key(&stored.id).await.unwrap());
        assert!(!other.revoke_api_key(&stored.id).await.unwrap());
        assert!(ledger.api_keys().await.unwrap()[0].is_revoked());
        assert!(ledger
            .create_api_key(" ", None, KeyScope::Standard)
            .await
            .is_err());
        assert!(ledger
            .create_api_key("x", Some(0), KeyScope::Standard)
            .await
            .is_err());
    }

    async fn scopes_are_stored_and_listed(db: TestDb) {
        let ledger = db.open().await;
        let app = ledger
            .create_api_key("app", None, KeyScope::Standard)
            .await
            .unwrap();
        let ops = ledger
            .create_api_key("ops", None, KeyScope::Admin)
            .await
            .unwrap();
        assert_eq!(ops.record.scope, KeyScope::Admin);
        // Read back by another replica, from the column.
        let listed = db.open().await.api_keys().await.unwrap();
        let scope_of = |id: &str| listed.iter().find(|k| k.id == id).unwrap().scope;
        assert_eq!(scope_of(&app.record.id), KeyScope::Standard);
        assert_eq!(scope_of(&ops.record.id), KeyScope::Admin);
        assert!(scope_of(&ops.record.id).is_admin());
        let ops_listed = listed.iter().find(|k| k.id == ops.record.id).unwrap();
        assert_eq!(
            serde_json::to_value(ops_listed).unwrap()["scope"],
            serde_json::json!("admin")
        );
    }

    #[test]
    fn scopes_spell_their_column_values() {
        for scope in KeyScope::ALL {
            assert_eq!(KeyScope::parse(scope.as_str()), Some(scope));
        }
        assert_eq!(KeyScope::parse("root"), None);
    }

    #[test]
    fn only_well_formed_tokens_parse() {
        let good = format!("ig_{}_{}", "a".repeat(16), "b".repeat(64));
        assert!(PresentedKey::parse(&good).is_some());
        for bad in [
            String::new(),
            "ig_".into(),
            format!("xx_{}_{}", "a".repeat(16), "b".repeat(64)),
            format!("ig_{}_{}", "a".repeat(15), "b".repeat(64)),
            format!("ig_{}_{}", "a".repeat(16), "b".repeat(63)),
            format!("ig_{}_{}", "g".repeat(16), "b".repeat(64)),
            format!("ig_{}_{}_x", "a".repeat(16), "b".repeat(64)),
        ] {
            assert!(PresentedKey::parse(&bad).is_none(), "{bad:?}");
        }
    }
}
