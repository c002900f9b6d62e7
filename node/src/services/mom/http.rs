//! The MOM over HTTP: the seed's REST API, unchanged (header `key`, form
//! fields `topic_name` / `queue_name` / `message`, `text/plain` answers), and
//! a JSON API under `/api/v1` with proper status codes.

use axum::Router;
use axum::extract::rejection::{FormRejection, JsonRejection, QueryRejection};
use axum::extract::{Form, Json, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, get, on, post};
use serde::Deserialize;
use serde_json::json;

use super::model::{Kind, MomError};
use super::service::{BATCH_BYTES, Mom, Reply, Request};

/// Bodies up to the message (or batch) limit, with room for escaping and
/// the form or JSON around it.
pub fn router(mom: Mom) -> Router {
    let limit = 2 * mom.settings().max_message.max(BATCH_BYTES) + 64 * 1024;
    let seed = |op: SeedOp, kind: Kind| {
        post(
            move |State(mom): State<Mom>,
                  headers: HeaderMap,
                  form: Result<Form<SeedForm>, FormRejection>| async move {
                seed_call(&mom, &headers, form, op, kind).await
            },
        )
    };
    Router::new()
        .route("/create_user", get(seed_create_user))
        .route("/create_topic", seed(SeedOp::Create, Kind::Topic))
        .route("/create_queue", seed(SeedOp::Create, Kind::Queue))
        .route("/delete_topic", seed(SeedOp::Delete, Kind::Topic))
        .route("/delete_queue", seed(SeedOp::Delete, Kind::Queue))
        .route("/list_topics", seed(SeedOp::List, Kind::Topic))
        .route("/list_queues", seed(SeedOp::List, Kind::Queue))
        .route("/subscribe_topic", seed(SeedOp::Subscribe, Kind::Topic))
        .route("/subscribe_queue", seed(SeedOp::Subscribe, Kind::Queue))
        .route("/publish_topic", seed(SeedOp::Publish, Kind::Topic))
        .route("/publish_queue", seed(SeedOp::Publish, Kind::Queue))
        .route("/consume_topic", seed(SeedOp::Consume, Kind::Topic))
        .route("/consume_queue", seed(SeedOp::Consume, Kind::Queue))
        .route("/api/v1/users", post(api_create_user))
        .route("/api/v1/{kinds}", get(api_list).post(api_create))
        .route(
            "/api/v1/{kinds}/{name}",
            named(MethodFilter::DELETE, |kind, name, key| Request::Delete {
                kind,
                name,
                key,
            }),
        )
        .route(
            "/api/v1/{kinds}/{name}/subscription",
            named(MethodFilter::POST, |kind, name, key| Request::Subscribe {
                kind,
                name,
                key,
            })
            .merge(named(MethodFilter::DELETE, |kind, name, key| {
                Request::Unsubscribe { kind, name, key }
            })),
        )
        .route("/api/v1/{kinds}/{name}/messages", post(api_publish))
        .route("/api/v1/{kinds}/{name}/messages/next", post(api_consume))
        .route("/api/v1/messages/{id}/ack", post(api_ack))
        .route("/api/v1/messages/ack", post(api_ack_batch))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(mom)
}

// ---------- the seed's API ----------

#[derive(Debug, Clone, Copy)]
enum SeedOp {
    Create,
    Delete,
    List,
    Subscribe,
    Publish,
    Consume,
}

#[derive(Debug, Default, Deserialize)]
struct SeedForm {
    topic_name: Option<String>,
    queue_name: Option<String>,
    message: Option<String>,
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The seed's failure answer: exactly `Request returned error code <code>`.
fn seed_error(code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    text(status, format!("Request returned error code {code}"))
}

/// The caller's key: header `key` (the seed's), or `Authorization: Bearer`.
fn key_of(headers: &HeaderMap) -> String {
    if let Some(k) = headers.get("key").and_then(|v| v.to_str().ok()) {
        return k.trim().to_owned();
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|k| k.trim().to_owned())
        .unwrap_or_default()
}

async fn seed_create_user(State(mom): State<Mom>) -> Response {
    match mom.call(Request::CreateUser).await {
        Ok(Reply::Key { key }) => text(StatusCode::OK, key),
        Ok(_) => seed_error(500),
        Err(e) => seed_error(e.status()),
    }
}

async fn seed_call(
    mom: &Mom,
    headers: &HeaderMap,
    form: Result<Form<SeedForm>, FormRejection>,
    op: SeedOp,
    kind: Kind,
) -> Response {
    let form = match form {
        Ok(Form(f)) => f,
        Err(FormRejection::BytesRejection(_)) => return seed_error(413),
        // Not a form (or a malformed one).
        Err(_) if matches!(op, SeedOp::List) => SeedForm::default(),
        Err(_) => return seed_error(400),
    };
    let key = key_of(headers);
    let name = match kind {
        Kind::Topic => form.topic_name.clone(),
        Kind::Queue => form.queue_name.clone(),
    };
    let named = |name: Option<String>| name.filter(|n| !n.is_empty()).ok_or(());
    let title = match kind {
        Kind::Topic => "Topic",
        Kind::Queue => "Queue",
    };
    let request = match op {
        SeedOp::List => Request::List {
            kind: Some(kind),
            key,
            mine: false,
        },
        _ => {
            let Ok(name) = named(name) else {
                return seed_error(400);
            };
            match op {
                SeedOp::Create => Request::Create { kind, name, key },
                SeedOp::Delete => Request::Delete { kind, name, key },
                SeedOp::Subscribe => Request::Subscribe { kind, name, key },
                SeedOp::Publish => {
                    let Some(message) = form.message.clone() else {
                        return seed_error(400);
                    };
                    Request::Publish {
                        kind,
                        name,
                        key,
                        message,
                    }
                }
                SeedOp::Consume => Request::Consume {
                    kind,
                    name,
                    key,
                    wait_ms: 0,
                },
                SeedOp::List => unreachable!("handled above"),
            }
        }
    };
    let target = match &request {
        Request::Create { name, .. }
        | Request::Delete { name, .. }
        | Request::Subscribe { name, .. }
        | Request::Publish { name, .. }
        | Request::Consume { name, .. } => name.clone(),
        _ => String::new(),
    };
    let reply = match mom.call(request.clone()).await {
        Ok(reply) => reply,
        Err(e) => return seed_error(e.status()),
    };
    match (op, reply) {
        (SeedOp::Create, _) => text(StatusCode::OK, format!("{title} {target} created")),
        (SeedOp::Delete, _) => text(StatusCode::OK, format!("{title} {target} deleted")),
        (SeedOp::Subscribe, _) => text(StatusCode::OK, format!("Subscribed to {} {target}", kind)),
        (SeedOp::Publish, _) => text(
            StatusCode::OK,
            format!("Message published to {} {target}", kind),
        ),
        (SeedOp::List, Reply::Channels { channels }) => {
            let names: Vec<String> = channels.into_iter().map(|c| c.name).collect();
            text(StatusCode::OK, names.join("\n"))
        }
        // The seed client knows no acks: hand the message over and ack it.
        (SeedOp::Consume, Reply::Delivery { delivery: Some(d) }) => {
            // Not lost if the ack fails: unacked, it is delivered again
            // after its visibility timeout (at least once).
            if let Request::Consume { key, .. } = request
                && let Err(e) = mom.call(Request::Ack { key, id: d.id }).await
            {
                tracing::warn!(error = %e, id = d.id, "seed consume: the auto-ack failed");
            }
            text(StatusCode::OK, d.body)
        }
        (SeedOp::Consume, _) => seed_error(400),
        (SeedOp::List, _) => seed_error(500),
    }
}

// ---------- the JSON API ----------

fn api_error(e: &MomError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_value(e).unwrap_or_else(|_| json!({}));
    let error = body.get("error").cloned().unwrap_or(json!("error"));
    (
        status,
        Json(json!({ "error": error, "message": e.to_string() })),
    )
        .into_response()
}

fn bad_request(message: String) -> Response {
    api_error(&MomError::BadRequest(message))
}

fn kind_of(kinds: &str) -> Result<Kind, MomError> {
    match kinds {
        "topics" => Ok(Kind::Topic),
        "queues" => Ok(Kind::Queue),
        other => Err(MomError::NotFound(format!(
            "no such collection `{other}`: use /api/v1/topics or /api/v1/queues"
        ))),
    }
}

async fn run(mom: &Mom, request: Request, ok: StatusCode) -> Response {
    match mom.call(request).await {
        Ok(reply) => (ok, Json(reply)).into_response(),
        Err(e) => api_error(&e),
    }
}

async fn api_create_user(State(mom): State<Mom>) -> Response {
    run(&mom, Request::CreateUser, StatusCode::CREATED).await
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    mine: bool,
}

async fn api_list(
    State(mom): State<Mom>,
    Path(kinds): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let kind = match kind_of(&kinds) {
        Ok(k) => k,
        Err(e) => return api_error(&e),
    };
    let request = Request::List {
        kind: Some(kind),
        key: key_of(&headers),
        mine: q.mine,
    };
    run(&mom, request, StatusCode::OK).await
}

#[derive(Deserialize)]
struct NameBody {
    name: String,
}

async fn api_create(
    State(mom): State<Mom>,
    Path(kinds): Path<String>,
    headers: HeaderMap,
    body: Result<Json<NameBody>, JsonRejection>,
) -> Response {
    let kind = match kind_of(&kinds) {
        Ok(k) => k,
        Err(e) => return api_error(&e),
    };
    let Ok(Json(body)) = body else {
        return bad_request("send a JSON body like {\"name\": \"orders\"}".into());
    };
    let request = Request::Create {
        kind,
        name: body.name,
        key: key_of(&headers),
    };
    run(&mom, request, StatusCode::CREATED).await
}

async fn no_content(mom: &Mom, request: Request) -> Response {
    match mom.call(request).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => api_error(&e),
    }
}

/// The calls on one named topic or queue that answer 204 when done.
type Named = fn(Kind, String, String) -> Request;

async fn api_named(
    mom: Mom,
    (kinds, name): (String, String),
    headers: HeaderMap,
    make: Named,
) -> Response {
    match kind_of(&kinds) {
        Ok(kind) => no_content(&mom, make(kind, name, key_of(&headers))).await,
        Err(e) => api_error(&e),
    }
}

fn named(method: MethodFilter, make: Named) -> MethodRouter<Mom> {
    on(
        method,
        move |State(mom): State<Mom>, Path(path): Path<(String, String)>, headers: HeaderMap| {
            api_named(mom, path, headers, make)
        },
    )
}

/// A publish: one `message`, or a batch of `messages`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    message: Option<String>,
    messages: Option<Vec<String>>,
}

const PUBLISH_SHAPE: &str =
    "send a JSON body like {\"message\": \"hello\"} or {\"messages\": [\"a\", \"b\"]}";

async fn api_publish(
    State(mom): State<Mom>,
    Path((kinds, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<MessageBody>, JsonRejection>,
) -> Response {
    let kind = match kind_of(&kinds) {
        Ok(k) => k,
        Err(e) => return api_error(&e),
    };
    let body = match body {
        Ok(Json(b)) => b,
        Err(JsonRejection::BytesRejection(_)) => {
            return api_error(&MomError::TooLarge {
                size: 0,
                max: mom.settings().max_message,
            });
        }
        Err(_) => return bad_request(PUBLISH_SHAPE.into()),
    };
    let key = key_of(&headers);
    let request = match body {
        MessageBody {
            message: Some(message),
            messages: None,
        } => Request::Publish {
            kind,
            name,
            key,
            message,
        },
        MessageBody {
            message: None,
            messages: Some(messages),
        } => Request::PublishBatch {
            kind,
            name,
            key,
            messages,
        },
        _ => return bad_request(PUBLISH_SHAPE.into()),
    };
    run(&mom, request, StatusCode::CREATED).await
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    wait_ms: u64,
    /// Several messages at once: answered as `{"deliveries": [...]}`.
    max: Option<u32>,
}

async fn api_consume(
    State(mom): State<Mom>,
    Path((kinds, name)): Path<(String, String)>,
    query: Result<Query<WaitQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let kind = match kind_of(&kinds) {
        Ok(k) => k,
        Err(e) => return api_error(&e),
    };
    let Ok(Query(q)) = query else {
        return bad_request(
            "wait_ms and max must be whole numbers, e.g. ?wait_ms=5000&max=100".into(),
        );
    };
    let key = key_of(&headers);
    let request = match q.max {
        None => Request::Consume {
            kind,
            name,
            key,
            wait_ms: q.wait_ms,
        },
        Some(max) => Request::ConsumeBatch {
            kind,
            name,
            key,
            wait_ms: q.wait_ms,
            max,
        },
    };
    match mom.call(request).await {
        Ok(Reply::Delivery { delivery: Some(d) }) => (StatusCode::OK, Json(d)).into_response(),
        Ok(Reply::Deliveries { deliveries }) if !deliveries.is_empty() => {
            (StatusCode::OK, Json(json!({ "deliveries": deliveries }))).into_response()
        }
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => api_error(&e),
    }
}

async fn api_ack(State(mom): State<Mom>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return bad_request(format!("`{id}` is not a message id"));
    };
    no_content(
        &mom,
        Request::Ack {
            key: key_of(&headers),
            id,
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    ids: Vec<u64>,
}

/// Several acks in one request: `{"ids": [...]}` → `{"acked": [...]}` (the
/// ids that were the caller's to ack).
async fn api_ack_batch(
    State(mom): State<Mom>,
    headers: HeaderMap,
    body: Result<Json<AckBody>, JsonRejection>,
) -> Response {
    let Ok(Json(AckBody { ids })) = body else {
        return bad_request("send a JSON body like {\"ids\": [1, 2, 3]}".into());
    };
    let request = Request::AckBatch {
        key: key_of(&headers),
        ids,
    };
    run(&mom, request, StatusCode::OK).await
}
