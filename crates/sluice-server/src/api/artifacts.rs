//! `GET /artifacts/{sha256}`: an artifact's archive, streamed from the data directory.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::Response;
use tokio_util::io::ReaderStream;

use crate::auth::Caller;
use crate::{ApiError, ApiResult, AppState};

#[utoipa::path(
    get,
    path = "/artifacts/{sha256}",
    tag = "artifacts",
    params(("sha256" = String, Path, description = "the artifact digest, 64 hex digits")),
    responses((status = 200, description = "the archive", body = Vec<u8>, content_type = "application/gzip"))
)]
pub async fn download(
    State(state): State<AppState>,
    _caller: Caller,
    Path(sha256): Path<String>,
) -> ApiResult<Response> {
    state.ci.layout().artifact(&sha256).map_err(|e| {
        ApiError::bad_request(e.to_string())
            .with_hint("give the 64 hex digits a run's `artifact_sha256` shows")
    })?;
    let artifact = state
        .store
        .artifact(&sha256)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no artifact sha256:{sha256}")))?;
    // Packed by another server sharing the database: fetched from it once.
    let path =
        sluice_ci::artifact::local_copy(&state.store, &state.ci.layout().artifacts(), &sha256)
            .await
            .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        ApiError::internal(format!(
            "artifact {} is recorded but unreadable: {e}",
            path.display()
        ))
    })?;
    Response::builder()
        .header(header::CONTENT_TYPE, "application/gzip")
        .header(header::CONTENT_LENGTH, artifact.size)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{sha256}.tar.gz\""),
        )
        .body(Body::from_stream(ReaderStream::new(file)))
        .map_err(ApiError::internal)
}
