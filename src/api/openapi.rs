//! The OpenAPI 3.1 document: generated from the handlers' annotations, then completed with the
//! answers every operation of a kind can give whatever its handler (a body that is not JSON, a
//! query that does not parse, a database that is down), so that the document declares every
//! status the service returns, each with the RFC 9457 problem schema.

use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{admin, audit, checkpoints, events, ops, params, subjects};

/// An RFC 9457 problem, as every error is reported.
#[derive(serde::Serialize, ToSchema)]
pub struct Problem {
    /// `urn:auditledger:problem:<kind>`: stable, for programs to match on.
    #[serde(rename = "type")]
    pub type_: String,
    /// A short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What is wrong, naming the field; never the client's content.
    pub detail: String,
}

/// The document as served at `/openapi.json`.
#[must_use]
pub fn document() -> Document {
    ApiDoc::openapi()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "auditledger", description = "Tamper-evident, crypto-shredding audit ledger"),
    paths(
        events::append, events::read_stream, events::read_global,
        super::snapshots::put_snapshot, super::snapshots::load_stream, super::subscribe::subscribe,
        super::durable::create_subscription, super::durable::read_subscription, super::durable::poll_subscription, super::durable::ack_subscription,
        super::schemas::register_schema, super::schemas::read_schema,
        super::models::catalogue, super::models::counts,
        subjects::erase, subjects::export, subjects::erasure, subjects::erasures,
        subjects::hold, subjects::release,
        admin::list_tokens, admin::create_token, admin::revoke_token,
        admin::list_policies, admin::set_policy, admin::rotate_key,
        super::reports::report, super::reports::signed_report,
        checkpoints::latest, checkpoints::create, checkpoints::list,
        checkpoints::inclusion, checkpoints::consistency,
        audit::verify, audit::job, audit::export,
        ops::keys, ops::healthz, ops::readyz, ops::metrics,
    ),
    components(schemas(Problem, params::Position, params::BodyPosition, params::Count)),
    modifiers(&CommonAnswers),
    tags(
        (name = "events", description = "Append and read events"),
        (name = "subjects", description = "Erasure and access requests of data subjects"),
        (name = "checkpoints", description = "Signed tree heads and Merkle proofs"),
        (name = "audit", description = "Verification reports and export bundles"),
        (name = "keys", description = "Public signing keys"),
        (name = "operations", description = "Health and readiness"),
        (name = "admin", description = "Tokens, retention policies, signing-key rotation"),
        (name = "reports", description = "Signed compliance reports"),
    )
)]
struct ApiDoc;

/// Adds to each operation the answers of its kind it does not declare itself.
struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from `auditledger token create` or POST /v1/tokens \
                         (`alt1_...`). The scopes listed on each operation are the roles \
                         that may run it; a token needs one of them.",
                    ))
                    .build(),
            ),
        );
        for (path, item) in &mut doc.paths.paths {
            let versioned = path.starts_with("/v1/");
            let operations = [
                (&mut item.get, "GET", false),
                (&mut item.post, "POST", true),
                (&mut item.put, "PUT", true),
                (&mut item.delete, "DELETE", false),
            ];
            for (operation, method, writes) in operations {
                if let Some(op) = operation.as_mut() {
                    complete(op, versioned, writes);
                    if versioned {
                        secure(op, method, path);
                    }
                }
            }
        }
    }
}

/// Declares the bearer scheme and the roles (as scopes) that may run a `/v1` operation, from
/// the one table the service enforces (`access::policy::ROUTES`).
fn secure(op: &mut Operation, method: &str, path: &str) {
    let Some(operation) = crate::access::Operation::route(method, path) else {
        return;
    };
    let roles: Vec<&str> = operation.roles().iter().map(|r| r.as_str()).collect();
    op.security = Some(vec![SecurityRequirement::new("bearer", roles.clone())]);
    let note = format!("\n\nRoles: {}.", roles.join(", "));
    op.description = Some(op.description.take().unwrap_or_default() + &note);
    let mut add = |status: &str, description: &str| {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| problem(description));
    };
    add(
        "401",
        "No valid token (missing, malformed, unknown, revoked or expired)",
    );
    add(
        "403",
        "The token lacks the role, or is limited to other streams",
    );
}

fn complete(op: &mut Operation, versioned: bool, writes: bool) {
    // Problems declared by a handler without a schema get the problem schema.
    for response in op.responses.responses.values_mut() {
        if let RefOr::T(response) = response
            && let Some(content) = response.content.get_mut("application/problem+json")
            && content.schema.is_none()
        {
            content.schema = Some(Ref::from_schema_name("Problem").into());
        }
    }
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let has_body = op.request_body.is_some();
    let mut add = |status: &str, description: &str| {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| problem(description));
    };
    if has_params || has_body {
        add(
            "400",
            "Malformed request: a parameter, the path or the body does not parse",
        );
    }
    if has_body {
        add(
            "408",
            "The body did not arrive within the body deadline; nothing was written",
        );
        add("413", "Over a size limit");
        add(
            "415",
            "The body is not sent as Content-Type: application/json",
        );
        add(
            "422",
            "Well-formed but invalid content; the reply names the field",
        );
    }
    if versioned {
        add(
            "500",
            "Internal error or an integrity failure of the stored ledger (logged)",
        );
        add(
            "503",
            "The database cannot be reached, or the service is shutting down; retry",
        );
    } else if writes {
        add("503", "Unavailable; retry");
    }
}

fn problem(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build(),
    )
}
