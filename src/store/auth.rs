//! Authentication state: the one-time setup token, login attempts and lockout, console
//! sessions and API tokens. Bearer secrets are stored only as SHA-256 digests.

use rusqlite::{params, OptionalExtension, Row};
use time::Duration;

use super::users::{insert_binding_tx, insert_user_tx, principal_of, UserRow};
use super::{from_millis, to_millis, Error, Result, Store};
use crate::model::{new_id, now, ApiToken, NewRoleBinding, Principal, Role, Timestamp, User};
use crate::secrets::{new_bearer_secret, secret_digest};

/// Failed logins allowed before the account is locked.
pub const FREE_ATTEMPTS: i64 = 5;
/// First lock duration; doubles with each further failure, up to `MAX_LOCK`.
const FIRST_LOCK: Duration = Duration::seconds(30);
const MAX_LOCK: Duration = Duration::minutes(15);
/// How long a console session lasts.
pub const SESSION_TTL: Duration = Duration::hours(12);

/// A user's stored credentials, for password verification outside the store.
pub struct LoginCandidate {
    pub user_id: String,
    pub password_hash: String,
    pub disabled: bool,
    pub locked_until: Option<Timestamp>,
}

/// What a login attempt led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Password right; the user may start a session.
    Accepted,
    /// Password wrong (or user unknown or disabled).
    Rejected,
    /// Too many failures: no attempt is checked until this time.
    Locked { until: Timestamp },
}

/// A live console session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub principal: Principal,
    pub csrf_token: String,
    pub expires_at: Timestamp,
}

const TOKEN_COLUMNS: &str = "SELECT id, user_id, name, prefix, expires_at, revoked_at, last_used_at, created_at FROM api_tokens";

fn token_row(r: &Row<'_>) -> rusqlite::Result<ApiToken> {
    Ok(ApiToken {
        id: r.get(0)?,
        user_id: r.get(1)?,
        name: r.get(2)?,
        prefix: r.get(3)?,
        expires_at: from_millis(r.get(4)?),
        revoked_at: r.get::<_, Option<i64>>(5)?.map(from_millis),
        last_used_at: r.get::<_, Option<i64>>(6)?.map(from_millis),
        created_at: from_millis(r.get(7)?),
    })
}

impl Store {
    /// Replace any setup token by a new one; returns the secret to print. Only while no user exists.
    pub async fn new_setup_token(&self) -> Result<Option<String>> {
        self.write(|tx, _| {
            let users: i64 = tx
                .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
                .map_err(Error::sql("count users"))?;
            tx.execute("DELETE FROM setup_tokens", [])
                .map_err(Error::sql("clear setup tokens"))?;
            if users > 0 {
                return Ok(None);
            }
            let secret = new_bearer_secret("setup");
            tx.execute(
                "INSERT INTO setup_tokens (secret_hash, created_at) VALUES (?, ?)",
                params![secret_digest(&secret), to_millis(now())],
            )
            .map_err(Error::sql("store setup token"))?;
            Ok(Some(secret))
        })
        .await
    }

    /// True if `secret` is the current setup token.
    pub async fn setup_token_valid(&self, secret: &str) -> Result<bool> {
        let digest = secret_digest(secret);
        self.read(move |c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM setup_tokens WHERE secret_hash = ?)",
                [digest],
                |r| r.get(0),
            )
            .map_err(Error::sql("check setup token"))
        })
        .await
    }

    /// Use the setup token to create the first system admin; the token is void afterwards.
    /// Returns None when the token is wrong or already used.
    pub async fn complete_setup(
        &self,
        secret: &str,
        username: String,
        password_hash: String,
    ) -> Result<Option<User>> {
        let digest = secret_digest(secret);
        self.write(move |tx, _| {
            let n = tx
                .execute("DELETE FROM setup_tokens WHERE secret_hash = ?", [&digest])
                .map_err(Error::sql("consume setup token"))?;
            if n == 0 {
                return Ok(None);
            }
            let user = insert_user_tx(
                tx,
                &UserRow {
                    username: &username,
                    display_name: "",
                    password_hash: &password_hash,
                    tenant_id: None,
                },
            )?;
            insert_binding_tx(
                tx,
                &NewRoleBinding {
                    user_id: user.id.clone(),
                    role: Role::SystemAdmin,
                    tenant_id: None,
                    project_id: None,
                },
            )?;
            tx.execute("DELETE FROM setup_tokens", [])
                .map_err(Error::sql("clear setup tokens"))?;
            Ok(Some(user))
        })
        .await
    }

    /// The stored credentials of `username`, if such a user exists.
    pub async fn login_candidate(&self, username: &str) -> Result<Option<LoginCandidate>> {
        let name = username.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT id, password_hash, disabled, locked_until FROM users WHERE username = ?",
                [&name],
                |r| {
                    Ok(LoginCandidate {
                        user_id: r.get(0)?,
                        password_hash: r.get(1)?,
                        disabled: r.get(2)?,
                        locked_until: r.get::<_, Option<i64>>(3)?.map(from_millis),
                    })
                },
            )
            .optional()
            .map_err(Error::sql("read credentials"))
        })
        .await
    }

    /// Record a verified login attempt: reset the counter on success, or count the failure
    /// and lock the account after `FREE_ATTEMPTS` failures, for a doubling time.
    pub async fn record_login(&self, user_id: &str, success: bool) -> Result<LoginOutcome> {
        let id = user_id.to_string();
        self.write(move |tx, _| {
            if success {
                tx.execute(
                    "UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = ?",
                    [&id],
                )
                .map_err(Error::sql("reset failed logins"))?;
                return Ok(LoginOutcome::Accepted);
            }
            let failed: i64 = tx
                .query_row(
                    "UPDATE users SET failed_logins = failed_logins + 1 WHERE id = ? RETURNING failed_logins",
                    [&id],
                    |r| r.get(0),
                )
                .map_err(Error::sql("count failed login"))?;
            if failed < FREE_ATTEMPTS {
                return Ok(LoginOutcome::Rejected);
            }
            let doublings = (failed - FREE_ATTEMPTS).min(10) as u32;
            let lock = (FIRST_LOCK * 2i32.pow(doublings)).min(MAX_LOCK);
            let until = now() + lock;
            tx.execute(
                "UPDATE users SET locked_until = ? WHERE id = ?",
                params![to_millis(until), id],
            )
            .map_err(Error::sql("lock account"))?;
            Ok(LoginOutcome::Locked { until })
        })
        .await
    }

    /// Start a console session; returns (session secret, CSRF token).
    pub async fn create_session(&self, user_id: &str) -> Result<(String, String)> {
        let id = user_id.to_string();
        self.write(move |tx, _| {
            let secret = new_bearer_secret("pss");
            let csrf = new_bearer_secret("csrf");
            let t = now();
            // Expired sessions are swept here rather than by a timer: logins are rare.
            tx.execute("DELETE FROM sessions WHERE expires_at < ?", [to_millis(t)])
                .map_err(Error::sql("sweep sessions"))?;
            tx.execute(
                "INSERT INTO sessions (secret_hash, user_id, csrf_token, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                params![secret_digest(&secret), id, csrf, to_millis(t), to_millis(t + SESSION_TTL)],
            )
            .map_err(Error::sql("create session"))?;
            Ok((secret, csrf))
        })
        .await
    }

    /// The live session for a session secret, with its principal.
    pub async fn session(&self, secret: &str) -> Result<Option<SessionInfo>> {
        let digest = secret_digest(secret);
        self.read(move |c| {
            let row: Option<(String, String, i64)> = c
                .query_row(
                    "SELECT user_id, csrf_token, expires_at FROM sessions WHERE secret_hash = ?",
                    [&digest],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(Error::sql("read session"))?;
            let Some((user_id, csrf_token, expires)) = row else {
                return Ok(None);
            };
            let expires_at = from_millis(expires);
            if expires_at < now() {
                return Ok(None);
            }
            Ok(principal_of(c, &user_id)?.map(|principal| SessionInfo {
                principal,
                csrf_token,
                expires_at,
            }))
        })
        .await
    }

    /// End a session (logout).
    pub async fn delete_session(&self, secret: &str) -> Result<()> {
        let digest = secret_digest(secret);
        self.write(move |tx, _| {
            tx.execute("DELETE FROM sessions WHERE secret_hash = ?", [digest])
                .map_err(Error::sql("delete session"))?;
            Ok(())
        })
        .await
    }

    /// Change the password of a user (the caller has verified the current one).
    pub async fn set_password(&self, user_id: &str, password_hash: String) -> Result<()> {
        let id = user_id.to_string();
        self.write(move |tx, _| super::users::set_password_tx(tx, &id, &password_hash))
            .await
    }

    /// Create an API token; returns it with its secret (shown once).
    pub async fn insert_token(
        &self,
        user_id: &str,
        name: String,
        days: u32,
    ) -> Result<(ApiToken, String)> {
        let user_id = user_id.to_string();
        self.write(move |tx, _| {
            let secret = new_bearer_secret("pst");
            let prefix: String = secret.chars().take(10).collect();
            let t = now();
            let token = ApiToken {
                id: new_id(),
                user_id,
                name,
                prefix,
                expires_at: t + Duration::days(days as i64),
                revoked_at: None,
                last_used_at: None,
                created_at: t,
            };
            tx.execute(
                "INSERT INTO api_tokens (id, user_id, name, prefix, secret_hash, expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                params![
                    token.id,
                    token.user_id,
                    token.name,
                    token.prefix,
                    secret_digest(&secret),
                    to_millis(token.expires_at),
                    to_millis(t)
                ],
            )
            .map_err(Error::unique(
                "insert token",
                format!("you already have a token named {:?}: choose another name", token.name),
            ))?;
            Ok((token, secret))
        })
        .await
    }

    /// The principal behind a bearer token secret and the token's expiry, if the token is live
    /// (not expired or revoked).
    pub async fn token_principal(&self, secret: &str) -> Result<Option<(Principal, Timestamp)>> {
        let digest = secret_digest(secret);
        self.read(move |c| {
            let row: Option<(String, String, i64, Option<i64>)> = c
                .query_row(
                    "SELECT id, user_id, expires_at, revoked_at FROM api_tokens WHERE secret_hash = ?",
                    [&digest],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .map_err(Error::sql("read token"))?;
            let Some((token_id, user_id, expires, revoked)) = row else {
                return Ok(None);
            };
            let expires_at = from_millis(expires);
            if revoked.is_some() || expires_at < now() {
                return Ok(None);
            }
            Ok(principal_of(c, &user_id)?.map(|mut p| {
                p.token_id = Some(token_id);
                (p, expires_at)
            }))
        })
        .await
    }

    /// Record that a token was used (called at most once a minute per token).
    pub async fn touch_token(&self, token_id: &str) -> Result<()> {
        let id = token_id.to_string();
        self.write(move |tx, _| {
            tx.execute(
                "UPDATE api_tokens SET last_used_at = ? WHERE id = ?",
                params![to_millis(now()), id],
            )
            .map_err(Error::sql("touch token"))?;
            Ok(())
        })
        .await
    }

    /// One token by id.
    pub async fn token(&self, id: &str) -> Result<ApiToken> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row(&format!("{TOKEN_COLUMNS} WHERE id = ?"), [&id], token_row)
                .optional()
                .map_err(Error::sql("read token"))?
                .ok_or(Error::NotFound { kind: "token" })
        })
        .await
    }

    /// A user's tokens, newest last.
    pub async fn list_tokens(&self, user_id: &str) -> Result<Vec<ApiToken>> {
        let id = user_id.to_string();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!("{TOKEN_COLUMNS} WHERE user_id = ? ORDER BY id"))
                .map_err(Error::sql("list tokens"))?;
            let rows = stmt
                .query_map([&id], token_row)
                .map_err(Error::sql("list tokens"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::sql("list tokens"))?;
            Ok(rows)
        })
        .await
    }

    /// Revoke a token; revoking twice keeps the first time.
    pub async fn revoke_token(&self, id: &str) -> Result<ApiToken> {
        let id = id.to_string();
        self.write(move |tx, _| {
            let n = tx
                .execute(
                    "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?",
                    params![to_millis(now()), id],
                )
                .map_err(Error::sql("revoke token"))?;
            if n == 0 {
                return Err(Error::NotFound { kind: "token" });
            }
            tx.query_row(&format!("{TOKEN_COLUMNS} WHERE id = ?"), [&id], token_row)
                .map_err(Error::sql("read token"))
        })
        .await
    }
}
