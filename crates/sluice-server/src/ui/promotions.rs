//! Promotions: the pending ones with every gate's state and why, approve and
//! reject for those allowed to, and the latest decided ones.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;
use sluice_deploy::PromotionView;
use sluice_store::PromotionStatus;

use super::session::{Viewer, encode};
use super::{Chrome, Done, PageResult, error_page, failed, render};
use crate::AppState;
use crate::access::Operation;

#[derive(Template)]
#[template(path = "promotions.html")]
struct PromotionsPage {
    page: Chrome,
    pending: Vec<PromotionView>,
    decided: Vec<PromotionView>,
    approver: Operation,
}

#[derive(Template)]
#[template(path = "promotion.html")]
struct PromotionPage {
    page: Chrome,
    p: PromotionView,
    approver: Operation,
}

/// One promotion, where an approval-needed message links: its gates, and
/// approve and reject for those allowed to (after signing in).
pub async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Query(q): Query<Done>,
) -> PageResult {
    let p = state.cd.promotion(id).await.map_err(failed)?;
    let mut page = Chrome::new(&viewer, format!("Promotion {id}"), "promotions");
    page.flash = q.done;
    Ok(render(PromotionPage {
        page,
        p,
        approver: Operation::DecidePromotion,
    }))
}

pub async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<Done>,
) -> PageResult {
    let all = state.cd.promotions(None, false).await.map_err(failed)?;
    let (pending, decided): (Vec<_>, Vec<_>) = all.into_iter().partition(|p| {
        matches!(
            p.promotion.status,
            PromotionStatus::Pending | PromotionStatus::Deploying
        )
    });
    let mut page = Chrome::new(&viewer, "Promotions", "promotions");
    page.flash = q.done;
    Ok(render(PromotionsPage {
        page,
        pending,
        decided: decided.into_iter().take(20).collect(),
        approver: Operation::DecidePromotion,
    }))
}

#[derive(Deserialize)]
pub struct Decision {
    csrf: String,
    #[serde(default)]
    reason: String,
}

pub async fn decide(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((id, verb)): Path<(i64, String)>,
    Form(form): Form<Decision>,
) -> PageResult {
    viewer.check_csrf(&form.csrf)?;
    viewer.may(Operation::DecidePromotion)?;
    let actor = viewer.caller.actor();
    let done = match verb.as_str() {
        "approve" => {
            state.cd.approve(id, &actor).await.map_err(failed)?;
            format!("You approved promotion {id}.")
        }
        "reject" => {
            state
                .cd
                .reject(id, &form.reason, &actor)
                .await
                .map_err(failed)?;
            format!("You rejected promotion {id}.")
        }
        other => {
            return Err(error_page(
                StatusCode::NOT_FOUND,
                &format!("A promotion can be approved or rejected, not `{other}`."),
                "",
            ));
        }
    };
    Ok(Redirect::to(&format!("/promotions/{id}?done={}", encode(&done))).into_response())
}
