//! Tokens and roles: minting tokens (only a keyed digest of each is
//! stored), checking the bearer token of each request with failures limited
//! per address, and the first admin token.

use std::collections::HashMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordVerifier};
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use sluice_store::{Role, Store};

use crate::AppState;
use crate::access::Operation;
use crate::error::ApiError;

/// How long a verified token is trusted without hashing it again.
const CACHE_FOR: Duration = Duration::from_secs(60);

/// Who is asking, once their token checked out.
#[derive(Clone, Debug)]
pub struct Caller {
    pub token_id: String,
    pub name: String,
    pub role: Role,
    pub groups: Vec<String>,
}

impl Caller {
    /// The caller as the CD engine sees them.
    pub fn actor(&self) -> sluice_deploy::Actor {
        sluice_deploy::Actor {
            name: self.name.clone(),
            groups: self.groups.clone(),
        }
    }

    /// Refuses with 403 unless the caller's role allows `operation`.
    pub fn may(&self, operation: Operation) -> Result<(), ApiError> {
        if operation.allows(self.role) {
            return Ok(());
        }
        Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            operation.refusal(&self.name, self.role),
        )
        .with_hint(format!(
            "{}: `sluice token create --name NAME --role {}`",
            operation.ask(),
            operation.role()
        )))
    }
}

/// Verifies tokens, with a short cache so that a busy client's requests
/// are checked once a minute; failed attempts are limited per address.
pub struct Tokens {
    cache: Mutex<HashMap<[u8; 32], (Caller, Instant)>>,
    pub failures: crate::limit::Attempts,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            cache: Mutex::default(),
            failures: crate::limit::Attempts::new(API_FAILURES, Duration::from_secs(300)),
        }
    }
}

/// Failed API authentications allowed per address in five minutes.
const API_FAILURES: u32 = 30;
/// How a token's digest is stored: `hmac-sha256:HEX`.
const DIGEST_PREFIX: &str = "hmac-sha256:";

/// The stored digest of `token`: HMAC-SHA256 keyed by its id. A token's
/// secret is 256 random bits, so a fast keyed hash is as safe as argon2 is
/// for a password, and costs microseconds instead of milliseconds of CPU
/// and megabytes of memory per guess.
fn digest(id: &str, token: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(id.as_bytes()).expect("HMAC takes any key");
    mac.update(token.as_bytes());
    format!(
        "{DIGEST_PREFIX}{}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Whether `token` matches the stored `hash`, in time that does not depend
/// on where they differ. Tokens minted before digests were argon2 hashes:
/// those are still checked, and replaced by a digest once they match.
fn matches(hash: &str, id: &str, token: &str) -> bool {
    if hash.starts_with(DIGEST_PREFIX) {
        return crate::ui::session::same_secret(hash, &digest(id, token));
    }
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(token.as_bytes(), &parsed)
            .is_ok()
    })
}

impl Tokens {
    /// Makes a new token; returns its id and the secret text, which is shown once.
    pub async fn mint(
        &self,
        store: &Store,
        name: &str,
        role: Role,
        groups: &[String],
        actor: &str,
    ) -> Result<(String, String), ApiError> {
        let id = hex::encode(rand::random::<[u8; 6]>());
        let token = format!("slc_{id}_{}", hex::encode(rand::random::<[u8; 32]>()));
        store
            .insert_token(&id, name, role, groups, &digest(&id, &token), actor)
            .await?;
        Ok((id, token))
    }

    pub async fn verify(&self, store: &Store, token: &str) -> Result<Caller, ApiError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((caller, at)) = self.cache.lock().unwrap().get(&key)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(caller.clone());
        }
        let invalid = || ApiError::unauthorized("the token is not valid");
        let id = token
            .strip_prefix("slc_")
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id)
            .filter(|id| id.len() <= 32)
            .ok_or_else(invalid)?;
        // An unknown id takes the same path, against a digest nothing matches.
        let record = store.token(id).await.ok();
        let hash = record
            .as_ref()
            .map_or_else(|| digest("unknown", ""), |r| r.hash.clone());
        let argon2 = !hash.starts_with(DIGEST_PREFIX);
        let matched = if argon2 {
            let (hash, id, token) = (hash.clone(), id.to_string(), token.to_string());
            tokio::task::spawn_blocking(move || matches(&hash, &id, &token))
                .await
                .unwrap_or(false)
        } else {
            matches(&hash, id, token)
        };
        let Some(record) = record.filter(|_| matched) else {
            return Err(invalid());
        };
        if argon2 {
            let _ = store.set_token_hash(&record.id, &digest(id, token)).await;
        }
        let caller = caller_of(record)?;
        self.cache
            .lock()
            .unwrap()
            .insert(key, (caller.clone(), Instant::now()));
        Ok(caller)
    }

    /// The caller token `id` (already verified, as a session's) stands for,
    /// unless it was revoked meanwhile.
    pub async fn caller_by_id(&self, store: &Store, id: &str) -> Result<Caller, ApiError> {
        let record = store
            .token(id)
            .await
            .map_err(|_| ApiError::unauthorized("the token is not valid"))?;
        caller_of(record)
    }

    /// Forgets cached verifications of a token, so a revocation takes effect at once.
    pub fn forget(&self, token_id: &str) {
        self.cache
            .lock()
            .unwrap()
            .retain(|_, (caller, _)| caller.token_id != token_id);
    }
}

/// The caller a token's record stands for, unless it was revoked.
fn caller_of(record: sluice_store::TokenRecord) -> Result<Caller, ApiError> {
    if record.revoked_at.is_some() {
        return Err(ApiError::unauthorized(format!(
            "token `{}` was revoked",
            record.name
        )));
    }
    Ok(Caller {
        groups: record.groups(),
        token_id: record.id,
        name: record.name,
        role: record.role.0,
    })
}

/// What checking who asks needs: the store (tokens, sessions) and the
/// token cache. A server standing by has this without the engines, so it
/// checks the callers of what it serves itself (live streams).
#[derive(Clone)]
pub struct Gate {
    pub store: Store,
    pub tokens: Arc<Tokens>,
}

impl FromRef<AppState> for Gate {
    fn from_ref(state: &AppState) -> Gate {
        Gate {
            store: state.store.clone(),
            tokens: state.tokens.clone(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller
where
    Gate: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = authenticate(parts, &Gate::from_ref(state)).await?;
        // The route names what it does (`access::needs`); a route that names
        // nothing only reads.
        let operation = parts
            .extensions
            .get::<Operation>()
            .copied()
            .unwrap_or(Operation::Read);
        caller.may(operation)?;
        Ok(caller)
    }
}

/// Who the request's token (or, for reading, its session cookie) says is asking.
async fn authenticate(parts: &mut Parts, state: &Gate) -> Result<Caller, ApiError> {
    {
        let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            // A signed-in browser may read (its pages follow live events),
            // but changes need a token: a cookie alone could be a forged form.
            if parts.method == axum::http::Method::GET
                && let Some((caller, _)) =
                    crate::ui::session::caller_from_cookie(parts, &state.store, &state.tokens).await
            {
                return Ok(caller);
            }
            return Err(ApiError::unauthorized("this needs a token"));
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header is not `Bearer TOKEN`")
            })?;
        let ip = crate::ui::session::client_ip(parts);
        if let Err(wait) = state.tokens.failures.begin(ip) {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                format!("too many failed authentications from {ip}; try again in {wait} s"),
            )
            .with_hint("check the token: `sluice whoami` says whether it is valid"));
        }
        let caller = state.tokens.verify(&state.store, token.trim()).await?;
        state.tokens.failures.succeeded(ip);
        Ok(caller)
    }
}

/// On the first start, makes an admin token and writes it to
/// `DATA_DIR/initial-admin-token` (mode 0600); returns it to be printed once.
pub async fn ensure_initial_admin(
    state: &AppState,
    data_dir: &Path,
) -> Result<Option<String>, ApiError> {
    if state.store.count_tokens().await? > 0 {
        return Ok(None);
    }
    let (_, token) = state
        .tokens
        .mint(&state.store, "initial-admin", Role::Admin, &[], "sluice")
        .await?;
    let path = sluice_spec::Layout::new(data_dir).initial_admin_token();
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes()))
        .and_then(|_| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "could not write the initial admin token");
    }
    Ok(Some(token))
}
