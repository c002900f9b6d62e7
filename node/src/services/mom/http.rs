//! The MOM over HTTP, served alike by the `mom-gateway` (the address
//! clients use) and by each MOM node:
//!
//! - the seed's REST API ("Chasqui"), as its connector sees it, byte for
//!   byte: header `key`, form fields `topic_name` / `queue_name` /
//!   `message`, HTTP 200 with the seed's sentences (typos included) or
//!   `Request returned error code <code>` with the seed's codes; the creator
//!   of a channel is subscribed to it; lists are the caller's own channels
//!   as a Python list; a publisher must be subscribed and gets no copy of
//!   its own topic message. The differences that remain are listed in the
//!   README ("Compatibility").
//! - a JSON API under `/api/v1` with proper status codes, acks and
//!   redelivery, and `GET /api/v1/status` (who leads).

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{Json, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, get, on, post};
use serde::Deserialize;
use serde_json::json;

use super::gateway::{Gateway, LeaderStatus};
use super::model::{ChannelInfo, Kind, MomError};
use super::service::{BATCH_BYTES, Mom, Reply, Request};
use crate::config::{MAX_WAIT_MS, MomSettings};

/// What the HTTP APIs run requests on: a MOM node's own service (which
/// forwards to the leader when it does not lead), or the gateway.
#[derive(Clone)]
pub enum Front {
    Node(Mom),
    Gateway(Gateway),
}

impl Front {
    pub async fn call(&self, request: Request) -> Result<Reply, MomError> {
        match self {
            Front::Node(mom) => mom.call(request).await,
            Front::Gateway(gateway) => gateway.call(request).await,
        }
    }

    pub fn settings(&self) -> &MomSettings {
        match self {
            Front::Node(mom) => mom.settings(),
            Front::Gateway(gateway) => gateway.settings(),
        }
    }

    fn status(&self) -> LeaderStatus {
        match self {
            Front::Node(mom) => mom.leader_status(),
            Front::Gateway(gateway) => gateway.status(),
        }
    }
}

/// Bodies up to the message (or batch) limit, with room for escaping and
/// the form or JSON around it.
pub fn router(front: Front) -> Router {
    let limit = 2 * front.settings().max_message.max(BATCH_BYTES) + 64 * 1024;
    let seed = |op: SeedOp, kind: Kind| {
        post(
            move |State(front): State<Front>,
                  headers: HeaderMap,
                  body: Result<Bytes, BytesRejection>| async move {
                match seed_form(&headers, body) {
                    Ok(form) => seed_call(&front, &headers, form, op, kind).await,
                    Err(code) => seed_error(code),
                }
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
        .route("/api/v1/status", get(api_status))
        .route("/api/v1/users", post(api_create_user))
        .route("/api/v1/users/me", get(api_who_am_i))
        .route(
            "/api/v1/{kinds}/{name}/private",
            axum::routing::put(api_set_private),
        )
        .route("/api/v1/{kinds}/{name}/grants", post(api_grant))
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
        .with_state(front)
}

// ---------- the seed's API ----------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// The seed answered every call with HTTP 200 and a sentence.
fn seed_text(body: impl Into<String>) -> Response {
    text(StatusCode::OK, body.into())
}

/// The seed's failure sentence, `Request returned error code <code>`.
/// The seed's form fields, as Flask's `request.form` had them (empty for a
/// body that is not a form), except that a field whose bytes are not UTF-8
/// is refused (400) instead of stored with U+FFFD in place of its bytes;
/// 413 for a body over the limit.
fn seed_form(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<SeedForm, u16> {
    let body = body.map_err(|_| 413u16)?;
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Ok(SeedForm::default());
    }
    let utf8 = body
        .split(|b| *b == b'&')
        .flat_map(|pair| pair.splitn(2, |b| *b == b'='))
        .all(|part| {
            let spaced: Vec<u8> = part
                .iter()
                .map(|b| if *b == b'+' { b' ' } else { *b })
                .collect();
            percent_encoding::percent_decode(&spaced)
                .decode_utf8()
                .is_ok()
        });
    if !utf8 {
        return Err(400);
    }
    Ok(serde_urlencoded::from_bytes(&body).unwrap_or_default())
}

fn seed_error(code: u16) -> Response {
    seed_text(format!("Request returned error code {code}"))
}

/// The code the seed's server gave for what went wrong: 500 for an unknown
/// key or channel, a name taken, not the owner (and our storage failures);
/// 400 for not subscribed, nothing to consume, a second subscription.
/// Beyond the seed: 400 for a name the lab refuses, 413 for a message over
/// `[mom] max_message`, 503 while no leader could be reached.
fn seed_code(e: &MomError) -> u16 {
    match e {
        MomError::BadKey
        | MomError::NotFound(_)
        | MomError::Exists(_)
        | MomError::NotOwner(_)
        | MomError::Storage(_) => 500,
        MomError::NotSubscribed(_) | MomError::BadRequest(_) => 400,
        MomError::TooLarge { .. } | MomError::Oversize(_) => 413,
        MomError::NotPrimary(_) => 503,
    }
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

async fn seed_create_user(State(front): State<Front>) -> Response {
    match front.call(Request::CreateUser).await {
        Ok(Reply::Key { key }) => seed_text(key),
        // The seed's sentence has no space before the code here.
        Ok(_) => seed_text("Request returned error code500"),
        Err(e) => seed_text(format!("Request returned error code{}", seed_code(&e))),
    }
}

/// The seed's sentence when a field is missing: `'key' in request.headers
/// and 'topic_name' in request.form` failed.
fn seed_missing(op: SeedOp, kind: Kind) -> Response {
    seed_text(match (op, kind) {
        (SeedOp::List, Kind::Topic) => "Make sure you added your key ",
        (SeedOp::List, Kind::Queue) => "Make sure you added your key",
        (_, Kind::Topic) => "Make sure you added your key and the topic_name",
        (_, Kind::Queue) => "Make sure you added your key and the queue_name",
    })
}

/// The seed's sentence on success.
fn seed_done(op: SeedOp, kind: Kind) -> &'static str {
    match (op, kind) {
        (SeedOp::Create, Kind::Topic) => "Topic created sucesfully 200",
        (SeedOp::Create, Kind::Queue) => "Queue created sucesfully 200",
        (SeedOp::Delete, Kind::Topic) => "Topic deleted sucesfully 200",
        (SeedOp::Delete, Kind::Queue) => "Queue deleted sucesfully 200",
        (SeedOp::Subscribe, Kind::Topic) => "Subcribed to topic sucesfully 200",
        (SeedOp::Subscribe, Kind::Queue) => "Subscribed to queue 200",
        (SeedOp::Publish, Kind::Topic) => "Published to topic sucesfully 200",
        (SeedOp::Publish, Kind::Queue) => "Published to queue 200",
        (SeedOp::List | SeedOp::Consume, _) => "",
    }
}

/// Names as Python printed a list of them (`['q1', 'q2']`, `[]`). Channel
/// names hold no quote or backslash (see `check_name`), so each is `'name'`.
pub fn python_list(names: &[String]) -> String {
    let items: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    format!("[{}]", items.join(", "))
}

/// The caller's own channels, in the order they were created (the seed's
/// dict order).
fn own_names(mut channels: Vec<ChannelInfo>) -> Vec<String> {
    channels.sort_by_key(|c| c.created);
    channels.into_iter().map(|c| c.name).collect()
}

async fn seed_call(
    front: &Front,
    headers: &HeaderMap,
    form: SeedForm,
    op: SeedOp,
    kind: Kind,
) -> Response {
    // The seed asks only that the header be there.
    let Some(key) = headers
        .get("key")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    else {
        return seed_missing(op, kind);
    };
    let ack_key = key.clone();
    let name = match kind {
        Kind::Topic => form.topic_name,
        Kind::Queue => form.queue_name,
    };
    let request = match (op, name) {
        (SeedOp::List, _) => Request::List {
            kind: Some(kind),
            key,
            mine: true,
        },
        (_, None) => return seed_missing(op, kind),
        (SeedOp::Create, Some(name)) => Request::Create {
            kind,
            name,
            key,
            subscribe: true,
        },
        (SeedOp::Delete, Some(name)) => Request::Delete { kind, name, key },
        (SeedOp::Subscribe, Some(name)) => Request::Subscribe { kind, name, key },
        (SeedOp::Publish, Some(name)) => match (kind, form.message) {
            (_, Some(message)) => Request::Publish {
                kind,
                name,
                key,
                message,
                as_subscriber: true,
            },
            // The seed's queue check names the message; its topic call read
            // `request.form['message']` unchecked, which Flask answers 400.
            (Kind::Queue, None) => return seed_missing(op, kind),
            (Kind::Topic, None) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "Bad Request: the form has no `message` field".into(),
                );
            }
        },
        (SeedOp::Consume, Some(name)) => Request::Consume {
            kind,
            name,
            key,
            wait_ms: 0,
        },
    };
    let reply = match front.call(request).await {
        Ok(reply) => reply,
        Err(e) => return seed_error(seed_code(&e)),
    };
    match (op, reply) {
        (SeedOp::List, Reply::Channels { channels }) => {
            seed_text(python_list(&own_names(channels)))
        }
        // A second subscription: the seed's 400.
        (SeedOp::Subscribe, Reply::Changed { changed: false }) => seed_error(400),
        // The seed client knows no acks: hand the message over and ack it.
        (SeedOp::Consume, Reply::Delivery { delivery: Some(d) }) => {
            // Not lost if the ack fails: unacked, it is delivered again
            // after its visibility timeout (at least once).
            if let Err(e) = front
                .call(Request::Ack {
                    key: ack_key,
                    id: d.id,
                })
                .await
            {
                tracing::warn!(error = %e, id = d.id, "seed consume: the auto-ack failed");
            }
            seed_text(d.body)
        }
        // Nothing to consume: the seed's 400.
        (SeedOp::Consume, _) => seed_error(400),
        (SeedOp::List, _) => seed_error(500),
        (op, _) => seed_text(seed_done(op, kind)),
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

async fn run(front: &Front, request: Request, ok: StatusCode) -> Response {
    match front.call(request).await {
        Ok(reply) => (ok, Json(reply)).into_response(),
        Err(e) => api_error(&e),
    }
}

/// `GET /api/v1/status`: who answered and who leads the MOM.
async fn api_status(State(front): State<Front>) -> Response {
    (StatusCode::OK, Json(front.status())).into_response()
}

async fn api_create_user(State(front): State<Front>) -> Response {
    run(&front, Request::CreateUser, StatusCode::CREATED).await
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    mine: bool,
}

async fn api_list(
    State(front): State<Front>,
    Path(kinds): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let kind = match kind_of(&kinds) {
        Ok(k) => k,
        Err(e) => return api_error(&e),
    };
    let Ok(Query(q)) = query else {
        return bad_request("mine must be true or false, e.g. ?mine=true".into());
    };
    let request = Request::List {
        kind: Some(kind),
        key: key_of(&headers),
        mine: q.mine,
    };
    run(&front, request, StatusCode::OK).await
}

#[derive(Deserialize)]
struct NameBody {
    name: String,
    /// Subscribe the creator too.
    #[serde(default)]
    subscribe: bool,
}

async fn api_create(
    State(front): State<Front>,
    Path(kinds): Path<String>,
    headers: HeaderMap,
    body: Result<Json<NameBody>, JsonRejection>,
) -> Response {
    let kind = match kind_of(&kinds) {
        Ok(k) => k,
        Err(e) => return api_error(&e),
    };
    let Ok(Json(body)) = body else {
        return bad_request(
            "send a JSON body like {\"name\": \"orders\"} (and \"subscribe\": true to subscribe too)"
                .into(),
        );
    };
    let request = Request::Create {
        kind,
        name: body.name,
        key: key_of(&headers),
        subscribe: body.subscribe,
    };
    run(&front, request, StatusCode::CREATED).await
}

/// `GET /api/v1/users/me`: `{"id": ...}`, the id an owner grants access to.
async fn api_who_am_i(State(front): State<Front>, headers: HeaderMap) -> Response {
    let request = Request::WhoAmI {
        key: key_of(&headers),
    };
    run(&front, request, StatusCode::OK).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrivateBody {
    private: bool,
}

/// `PUT /api/v1/{kinds}/{name}/private` with `{"private": true}`: only the
/// owner and the users it grants may subscribe (other subscribers are
/// dropped); `false` makes it public again. Owner only.
async fn api_set_private(
    State(front): State<Front>,
    Path(path): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<PrivateBody>, JsonRejection>,
) -> Response {
    let shape = "send a JSON body like {\"private\": true}";
    named_json(&front, path, &headers, body, shape, |kind, name, key, b| {
        Request::SetPrivate {
            kind,
            name,
            key,
            private: b.private,
        }
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    user: String,
}

/// `POST /api/v1/{kinds}/{name}/grants` with `{"user": "<id>"}` (the id
/// from that user's `GET /api/v1/users/me`). Owner only.
async fn api_grant(
    State(front): State<Front>,
    Path(path): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<GrantBody>, JsonRejection>,
) -> Response {
    let shape = "send a JSON body like {\"user\": \"u0123456789abcdef\"} (the id from GET /api/v1/users/me)";
    named_json(&front, path, &headers, body, shape, |kind, name, key, b| {
        Request::Grant {
            kind,
            name,
            key,
            user: b.user,
        }
    })
    .await
}

/// A change to the channel `{kinds}/{name}` with a JSON body (`shape` says
/// what to send when it is not one), answered 204.
async fn named_json<B>(
    front: &Front,
    (kinds, name): (String, String),
    headers: &HeaderMap,
    body: Result<Json<B>, JsonRejection>,
    shape: &str,
    make: impl FnOnce(Kind, String, String, B) -> Request,
) -> Response {
    let kind = match kind_of(&kinds) {
        Ok(k) => k,
        Err(e) => return api_error(&e),
    };
    let Ok(Json(body)) = body else {
        return bad_request(shape.into());
    };
    no_content(front, make(kind, name, key_of(headers), body)).await
}

async fn no_content(front: &Front, request: Request) -> Response {
    match front.call(request).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => api_error(&e),
    }
}

/// The calls on one named topic or queue that answer 204 when done.
type Named = fn(Kind, String, String) -> Request;

async fn api_named(
    front: Front,
    (kinds, name): (String, String),
    headers: HeaderMap,
    make: Named,
) -> Response {
    match kind_of(&kinds) {
        Ok(kind) => no_content(&front, make(kind, name, key_of(&headers))).await,
        Err(e) => api_error(&e),
    }
}

fn named(method: MethodFilter, make: Named) -> MethodRouter<Front> {
    on(
        method,
        move |State(front): State<Front>,
              Path(path): Path<(String, String)>,
              headers: HeaderMap| { api_named(front, path, headers, make) },
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
    State(front): State<Front>,
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
            return api_error(&MomError::Oversize(format!(
                "the request body is too large: a message holds at most {} bytes, a batch {BATCH_BYTES}",
                front.settings().max_message
            )));
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
            as_subscriber: false,
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
    run(&front, request, StatusCode::CREATED).await
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    wait_ms: u64,
    /// Several messages at once: answered as `{"deliveries": [...]}`.
    max: Option<u32>,
}

async fn api_consume(
    State(front): State<Front>,
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
    if q.wait_ms > MAX_WAIT_MS {
        return bad_request(format!(
            "wait_ms = {} is too long; a consume waits 0 to {MAX_WAIT_MS} ms (and at most the MOM's max_wait_ms)",
            q.wait_ms
        ));
    }
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
    match front.call(request).await {
        Ok(Reply::Delivery { delivery: Some(d) }) => (StatusCode::OK, Json(d)).into_response(),
        Ok(Reply::Deliveries { deliveries }) if !deliveries.is_empty() => {
            (StatusCode::OK, Json(json!({ "deliveries": deliveries }))).into_response()
        }
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => api_error(&e),
    }
}

async fn api_ack(
    State(front): State<Front>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return bad_request(format!("`{id}` is not a message id"));
    };
    no_content(
        &front,
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
    State(front): State<Front>,
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
    run(&front, request, StatusCode::OK).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_print_as_python_printed_them() {
        assert_eq!(python_list(&[]), "[]");
        assert_eq!(python_list(&["q1".into()]), "['q1']");
        assert_eq!(python_list(&["q1".into(), "q2".into()]), "['q1', 'q2']");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wait_too_long_or_too_large_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::services::mom::sql::SqlStore::open(&dir.path().join("mom.db")).unwrap();
        let engine = crate::replica::Engine::start_alone(store, "mom")
            .await
            .unwrap();
        let app = router(Front::Node(Mom::new(engine, MomSettings::default())));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut http = crate::http1::Http1::connect(addr).await.unwrap();
        for (wait, needle) in [
            (
                "18446744073709551615",
                "wait_ms = 18446744073709551615 is too long",
            ),
            ("300001", "a consume waits 0 to 300000 ms"),
            ("18446744073709551616", "whole numbers"),
            ("-1", "whole numbers"),
        ] {
            let path = format!("/api/v1/queues/q/messages/next?wait_ms={wait}");
            let (status, body) = http.request("POST", &path, Some("k"), None).await.unwrap();
            assert_eq!(status, 400, "{wait}: {body}");
            assert!(body.contains(needle), "{wait}: {body}");
        }
        // In range: it gets as far as the key check.
        let path = "/api/v1/queues/q/messages/next?wait_ms=300000";
        let (status, body) = http.request("POST", path, Some("k"), None).await.unwrap();
        assert_ne!(status, 400, "{body}");
        server.abort();
    }

    #[test]
    fn a_seed_form_is_read_as_flask_did_but_never_with_bytes_replaced() {
        let form = |body: &'static [u8]| {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONTENT_TYPE,
                "application/x-www-form-urlencoded".parse().unwrap(),
            );
            seed_form(&h, Ok(Bytes::from_static(body)))
        };
        let f = form(b"queue_name=jobs&message=caf%C3%A9+au+lait").unwrap();
        assert_eq!(f.queue_name.as_deref(), Some("jobs"));
        assert_eq!(f.message.as_deref(), Some("caf\u{e9} au lait"));
        // Not UTF-8 (percent-encoded or raw, in a value or a name): 400.
        for bad in [
            &b"queue_name=jobs&message=%FF"[..],
            b"queue_name=jobs&message=\xff",
            b"%C3=x",
        ] {
            assert_eq!(form(bad).unwrap_err(), 400, "{bad:?}");
        }
        // A body that is not a form: the fields are empty, as in Flask.
        let f = seed_form(&HeaderMap::new(), Ok(Bytes::from_static(b"message=x"))).unwrap();
        assert!(f.message.is_none());
    }

    #[test]
    fn a_consume_waits_at_most_the_ceiling() {
        let consume = |wait_ms| Request::Consume {
            kind: Kind::Queue,
            name: "q".into(),
            key: "k".into(),
            wait_ms,
        };
        assert_eq!(consume(u64::MAX).wait_ms(), MAX_WAIT_MS);
        assert_eq!(consume(5000).wait_ms(), 5000);
    }

    #[test]
    fn errors_get_the_seeds_codes() {
        assert_eq!(seed_code(&MomError::BadKey), 500);
        assert_eq!(seed_code(&MomError::Exists("x".into())), 500);
        assert_eq!(seed_code(&MomError::NotOwner("x".into())), 500);
        assert_eq!(seed_code(&MomError::NotFound("x".into())), 500);
        assert_eq!(seed_code(&MomError::NotSubscribed("x".into())), 400);
    }
}
