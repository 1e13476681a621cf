//! Tokens and roles: minting tokens (only their argon2 hash is stored),
//! checking the bearer token of each request, and the first admin token.

use std::collections::HashMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use sluice_store::{Role, Store};

use crate::AppState;
use crate::error::ApiError;

/// How long a verified token is trusted without hashing it again.
const CACHE_FOR: Duration = Duration::from_secs(60);
pub const INITIAL_TOKEN_FILE: &str = "initial-admin-token";

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
            role: self.role,
            groups: self.groups.clone(),
        }
    }

    /// Refuses with 403 unless the caller holds `role` or a higher one.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            return Ok(());
        }
        Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            format!("this needs the {role} role; token `{}` has {}", self.name, self.role),
        )
        .with_hint("ask an admin for a token with that role: `sluice token create --name NAME --role ROLE`"))
    }
}

/// Verifies tokens, with a short cache so each request does not pay for argon2.
#[derive(Default)]
pub struct Tokens {
    cache: Mutex<HashMap<[u8; 32], (Caller, Instant)>>,
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
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let token = format!("slc_{id}_{secret}");
        let hash = tokio::task::spawn_blocking({
            let token = token.clone();
            move || {
                let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())?;
                Argon2::default()
                    .hash_password(token.as_bytes(), &salt)
                    .map(|h| h.to_string())
            }
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
        store
            .insert_token(&id, name, role, groups, &hash, actor)
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
            .ok_or_else(invalid)?;
        let record = store.token(id).await.map_err(|_| invalid())?;
        if record.revoked_at.is_some() {
            return Err(ApiError::unauthorized(format!(
                "token `{}` was revoked",
                record.name
            )));
        }
        let hash = record.hash.clone();
        let candidate = token.to_string();
        let matches = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(candidate.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        if !matches {
            return Err(invalid());
        }
        let caller = Caller {
            groups: record.groups(),
            token_id: record.id,
            name: record.name,
            role: record.role.0,
        };
        self.cache
            .lock()
            .unwrap()
            .insert(key, (caller.clone(), Instant::now()));
        Ok(caller)
    }

    /// Forgets cached verifications of a token, so a revocation takes effect at once.
    pub fn forget(&self, token_id: &str) {
        self.cache
            .lock()
            .unwrap()
            .retain(|_, (caller, _)| caller.token_id != token_id);
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            // A signed-in browser may read (its pages follow live events),
            // but changes need a token: a cookie alone could be a forged form.
            if parts.method == axum::http::Method::GET
                && let Some((caller, _)) =
                    crate::ui::session::caller_from_cookie(parts, state).await
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
        state.tokens.verify(&state.store, token.trim()).await
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
    let path = data_dir.join(INITIAL_TOKEN_FILE);
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
