//! `GET /api/v1/openapi.json`: the API's OpenAPI 3.1 description, made by
//! utoipa from the handlers' own attributes and types, with the errors every
//! endpoint may answer and the bearer token it takes added to each.

use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder, SecurityRequirement};

use super::*;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "Change management: CI, CD, environments, A/B experiments, incidents and rules. docs/api.md says what each endpoint is for."
    ),
    servers((url = "/api/v1")),
    paths(
        tokens::whoami, tokens::list, tokens::create, tokens::revoke,
        repos::list, repos::add, repos::show, repos::notify, repos::secret_names,
        repos::set_secret, repos::delete_secret, hooks::receive,
        runs::changes, runs::list, runs::show, runs::cancel, runs::logs, runs::raw_log,
        events::run_logs, events::all, artifacts::download, changelog::list,
        deploy::releases, deploy::status, deploy::deployments, deploy::instance_log,
        deploy::diff, deploy::environment, deploy::rollback, deploy::unpin,
        deploy::promotions, deploy::promote, deploy::promotion, deploy::approve,
        deploy::reject, deploy::override_freeze, deploy::experiments,
        deploy::start_experiment, deploy::experiment, deploy::steer_experiment, deploy::report_goal,
        incidents::list, incidents::open, incidents::show, incidents::postmortem,
        incidents::edit_postmortem, incidents::transition, incidents::rules,
        incidents::add_rule, incidents::rule, incidents::disable_rule, incidents::test_rule,
        channels::list, channels::add, channels::remove, channels::test, channels::messages,
        channels::message, channels::retry,
        agents::list, agents::register, agents::heartbeat, agents::claim, agents::renew,
        agents::log, agents::step, agents::finish, agents::source, agents::artifact,
        agents::instances, agents::instance_files,
    ),
    components(schemas(ErrorBody, ErrorDetail))
)]
struct ApiDoc;

/// What every error answer holds.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ErrorDetail {
    /// Machine-readable: `bad_request`, `not_found`, `forbidden`, …
    code: String,
    message: String,
    /// What to do about it.
    hint: Option<String>,
}

/// The endpoints that take no token.
const ANONYMOUS: [&str; 2] = ["/repos/{name}/notify", "/hooks/{repo}"];

/// The errors any endpoint may answer, each in the [`ErrorBody`] shape.
const ERRORS: [(&str, &str); 9] = [
    (
        "400",
        "the path, query or body is not valid; the message says which and how",
    ),
    ("401", "no token, or one that is not valid"),
    ("403", "the token's role does not allow it"),
    ("404", "no such thing"),
    ("405", "the endpoint takes another method"),
    (
        "409",
        "it conflicts with what is there: a name taken, a run already ended",
    ),
    ("413", "the body is too large"),
    ("415", "the body is not JSON"),
    ("422", "it could not be done; the message says why"),
];

/// The description, as served.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "token",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    for (path, item) in doc.paths.paths.iter_mut() {
        let anonymous = ANONYMOUS.contains(&path.as_str());
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            // Unique across modules (several have a `list`): `runs_list`.
            let tag = operation.tags.as_ref().and_then(|t| t.first()).cloned();
            if let (Some(tag), Some(id)) = (tag, operation.operation_id.as_mut()) {
                *id = format!("{tag}_{id}");
            }
            for (status, why) in ERRORS.iter().chain(&[(
                "429",
                "too many failed authentications from this address; wait",
            )]) {
                let error = ResponseBuilder::new()
                    .description(*why)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build();
                operation
                    .responses
                    .responses
                    .entry(status.to_string())
                    .or_insert(error.into());
            }
            if !anonymous {
                operation.security = Some(vec![SecurityRequirement::new(
                    "token",
                    Vec::<String>::new(),
                )]);
            }
        }
    }
    doc
}

pub async fn serve() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(document())
}
