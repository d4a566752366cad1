//! The OpenAPI 3.1 description of the API, served at `/openapi.json`, generated from the code:
//! each handler's `#[utoipa::path]` attribute (its route, parameters and answers) and the wire
//! types of `sealpost-proto` (their JSON schemas, from the same definitions serde uses). What
//! every operation may answer besides its own outcomes is added here once, by rule (see
//! [`Conventions`]), and so are the links between operations that the HTTP API fuzz
//! (schemathesis) follows in its stateful phase.

use std::sync::OnceLock;

use utoipa::OpenApi;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, Ref, RefOr, ResponseBuilder, schema::ObjectBuilder, schema::Type,
};

/// Octets, not JSON: an MLS message, a file, a sync batch.
pub struct Octets;

impl utoipa::PartialSchema for Octets {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/octet-stream")
            .into()
    }
}

impl utoipa::ToSchema for Octets {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sealpost delivery service",
        version = "1",
        description = "Stores and forwards MLS ciphertext. JSON bodies carry binary fields as standard base64. Authenticated operations take `Authorization: Bearer <token>` from /v1/auth/token. Every error answer is an `ApiError`: `{\"code\": ..., \"message\": ...}`; a 429 also carries `Retry-After` (seconds). Any operation may answer 503 when the server is busy."
    ),
    paths(
        crate::http::healthz,
        crate::http::readyz,
        crate::http::metrics,
        crate::http::register,
        crate::http::challenge,
        crate::http::token,
        crate::http::user,
        crate::http::claim_key_packages,
        crate::http::upload_key_packages,
        crate::http::key_package_stock,
        crate::http::create_group,
        crate::http::post_message,
        crate::http::post_commit,
        crate::http::set_group_expiry,
        crate::uploads::create,
        crate::uploads::offset,
        crate::uploads::append,
        crate::uploads::cancel,
        crate::uploads::fetch,
        crate::uploads::received,
        crate::http::sync,
        crate::http::ack,
        crate::http::websocket,
        crate::http::link_request,
        crate::http::link_pending,
        crate::http::link_approve,
        crate::http::link_approval,
        crate::http::remove_device,
        crate::http::limits,
        crate::http::directory_keys,
        crate::http::directory_latest_root,
        crate::http::directory_root,
        crate::http::directory_lookup,
        crate::http::directory_batch_lookup,
        crate::http::directory_history,
        crate::http::directory_audit,
    ),
    components(schemas(sealpost_proto::ApiError)),
    modifiers(&Conventions)
)]
struct ApiDoc;

/// What holds for every operation, added to the generated document:
/// - authenticated operations (those with a `security` requirement) may answer 401;
/// - operations that take parameters or a body may answer 400 (malformed), and those with a
///   body 413 (too large);
/// - any operation may answer 503 (the server is busy);
/// - the links that name, in one operation's request or answer, what another one takes.
struct Conventions;

/// The shared error answer, in `components.responses`.
const ERROR: &str = "Error";

impl utoipa::Modify for Conventions {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.responses.insert(
            ERROR.to_owned(),
            RefOr::T(
                ResponseBuilder::new()
                    .description("an error")
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ApiError")))
                            .build(),
                    )
                    .build(),
            ),
        );
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.head,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                add_common_answers(op);
                add_links(op);
            }
        }
    }
}

fn add_common_answers(op: &mut Operation) {
    let signed_in = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let takes_input = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let has_body = op.request_body.is_some();
    let responses = &mut op.responses.responses;
    let mut add = |status: &str, when: bool| {
        if when {
            responses
                .entry(status.to_owned())
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name(ERROR)));
        }
    };
    add("400", takes_input || has_body);
    add("401", signed_in);
    add("413", has_body);
    add("503", true);
}

/// A link from an answer to another operation: `parameter` of operation `to` takes `value`, an
/// OpenAPI runtime expression into the request or the answer.
struct Link {
    name: &'static str,
    to: &'static str,
    parameter: &'static str,
    value: &'static str,
}

const fn link(
    name: &'static str,
    to: &'static str,
    parameter: &'static str,
    value: &'static str,
) -> Link {
    Link {
        name,
        to,
        parameter,
        value,
    }
}

/// The links of operation `from`'s answer `status`.
const LINKS: &[(&str, &str, &[Link])] = &[
    (
        "register",
        "201",
        &[
            link("User", "user", "username", "$request.body#/username"),
            link(
                "ClaimKeyPackages",
                "claim_key_packages",
                "username",
                "$request.body#/username",
            ),
            link(
                "Lookup",
                "directory_lookup",
                "username",
                "$request.body#/username",
            ),
            link(
                "History",
                "directory_history",
                "username",
                "$request.body#/username",
            ),
        ],
    ),
    (
        "create_group",
        "201",
        &[
            link(
                "PostMessage",
                "post_message",
                "group",
                "$response.body#/group_id",
            ),
            link(
                "PostCommit",
                "post_commit",
                "group",
                "$response.body#/group_id",
            ),
            link(
                "SetExpiry",
                "set_group_expiry",
                "group",
                "$response.body#/group_id",
            ),
            link("Upload", "create", "group", "$response.body#/group_id"),
        ],
    ),
    (
        "create",
        "201",
        &[
            link("Offset", "offset", "upload", "$response.body#/id"),
            link("Append", "append", "upload", "$response.body#/id"),
            link("Cancel", "cancel", "upload", "$response.body#/id"),
            link("Fetch", "fetch", "blob", "$response.body#/id"),
            link("Received", "received", "blob", "$response.body#/id"),
        ],
    ),
    (
        "append",
        "200",
        &[
            link("Fetch", "fetch", "blob", "$response.body#/id"),
            link("Cancel", "cancel", "upload", "$response.body#/id"),
        ],
    ),
    (
        "link_request",
        "201",
        &[
            link("Pending", "link_pending", "link", "$request.body#/link_id"),
            link("Approve", "link_approve", "link", "$request.body#/link_id"),
            link(
                "Approval",
                "link_approval",
                "link",
                "$request.body#/link_id",
            ),
        ],
    ),
    (
        "directory_latest_root",
        "200",
        &[
            link("Root", "directory_root", "epoch", "$response.body#/epoch"),
            link("Audit", "directory_audit", "from", "$response.body#/epoch"),
        ],
    ),
];

fn add_links(op: &mut Operation) {
    let Some(id) = op.operation_id.as_deref() else {
        return;
    };
    for (_, status, links) in LINKS.iter().filter(|(from, ..)| *from == id) {
        let Some(RefOr::T(response)) = op.responses.responses.get_mut(*status) else {
            continue;
        };
        for l in *links {
            let built = LinkBuilder::new()
                .operation_id(l.to)
                .parameter(l.parameter, l.value)
                .build();
            response.links.insert(l.name.to_owned(), RefOr::T(built));
        }
    }
}

/// The document, as JSON (made once).
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        // Plain data into JSON cannot fail; the tests read the document back.
        ApiDoc::openapi().to_json().unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    fn document() -> serde_json::Value {
        serde_json::from_str(super::document()).unwrap()
    }

    /// Every route the router serves is in the document, with its method, and the document has
    /// no path the router does not serve: the HTTP fuzz (schemathesis) reaches only what is
    /// documented, so a route left out would go untested.
    #[test]
    fn document_lists_every_route_of_the_router() {
        let v = document();
        let documented: BTreeSet<(String, String)> = v["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(|m| (path.clone(), m.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        // The document itself is left out: schemathesis, which reads it, does not test it.
        let served: BTreeSet<(String, String)> = crate::http::routes()
            .iter()
            .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
            .collect();
        assert_eq!(documented, served);
        assert!(served.len() > 25, "the route list was read: {served:?}");
    }

    /// Every link names an operation of the document and one of its parameters.
    #[test]
    fn every_link_leads_to_an_operation_and_its_parameter() {
        let v = document();
        let operations: Vec<&serde_json::Value> = v["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|ops| ops.as_object().unwrap().values())
            .collect();
        let mut links = 0;
        for (from, status, list) in super::LINKS {
            let origin = operations
                .iter()
                .find(|op| op["operationId"] == *from)
                .unwrap_or_else(|| panic!("no operation {from}"));
            for l in *list {
                assert!(
                    origin["responses"][status]["links"][l.name].is_object(),
                    "{from} {status} lacks its link {}",
                    l.name
                );
                let target = operations
                    .iter()
                    .find(|op| op["operationId"] == l.to)
                    .unwrap_or_else(|| panic!("{from} links to {}, which is not there", l.to));
                assert!(
                    target["parameters"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().any(|p| p["name"] == l.parameter)),
                    "{} has no parameter {}",
                    l.to,
                    l.parameter
                );
                links += 1;
            }
        }
        assert!(links > 15);
    }

    /// What the issue found missing in the hand-written document: every success answer that has
    /// a body has its schema, every authenticated operation lists 401, and the required query
    /// parameters are there.
    #[test]
    fn every_answer_with_a_body_has_a_schema_and_every_signed_in_operation_a_401() {
        let v = document();
        let mut checked = 0;
        for (path, ops) in v["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                for (status, response) in responses {
                    // Every 200 and 201 of this API has a body.
                    assert!(
                        !["200", "201"].contains(&status.as_str())
                            || response.get("content").is_some(),
                        "{method} {path} {status} does not say what it answers"
                    );
                    if let Some(content) = response.get("content") {
                        for (kind, media) in content.as_object().unwrap() {
                            assert!(
                                media.get("schema").is_some(),
                                "{method} {path} {status} {kind} has no schema"
                            );
                        }
                    }
                }
                let signed_in = op
                    .get("security")
                    .and_then(|s| s.as_array())
                    .is_some_and(|s| !s.is_empty());
                assert!(
                    !signed_in || responses.contains_key("401"),
                    "{method} {path}: signed in, without a 401"
                );
                assert!(responses.contains_key("503"), "{method} {path}");
                checked += 1;
            }
        }
        assert!(checked > 30);
        let claim = &v["paths"]["/v1/users/{username}/key-packages"]["post"]["parameters"];
        assert!(
            claim
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "ciphersuite" && p["in"] == "query" && p["required"] == true),
            "{claim}"
        );
        // A link the stateful phase follows: from an upload's start to its continuation.
        assert_eq!(
            v["paths"]["/v1/groups/{group}/blobs"]["post"]["responses"]["201"]["links"]["Append"]["parameters"]
                ["upload"],
            "$response.body#/id"
        );
    }
}
