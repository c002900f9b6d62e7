//! The users' HTTP, on every `users` node (the first on `[lockers] http`,
//! the others on a free port; each serves every request):
//!
//! - the seed's UserService API byte for byte: `GET /users_service` with
//!   a form body (`message`, `user_name`), answers as the seed's Flask
//!   wrote them (`{"response": {"message": …, "data": …}}`, Python's JSON
//!   spacing and escapes, its status codes); `GET /users` and the
//!   LockerService's `GET /locker_service` as flask-restful wrote them.
//!   `get_locker_for_user` stays asynchronous as in the seed: it answers
//!   once the request is accepted, and `check_user` shows the locker.
//! - a synchronous JSON API under `/api/v1` (see README, "Lockers").
//! - a page at `/` (server-rendered forms, no JavaScript).

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Json, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::task::TaskTracker;

use super::model::{Done, Locker, LockerError, Op, RequestState, User};
use super::users::Users;
use super::wire::{UsersReply, UsersRequest};
use crate::pyjson::{self, Dict};
use crate::runtime::NodeContext;
use crate::services::StartError;

/// Serves HTTP on `addr` (a free port if it is taken) until shutdown.
pub async fn serve(
    ctx: &NodeContext,
    tasks: &TaskTracker,
    addr: SocketAddr,
    users: Users,
) -> Result<SocketAddr, StartError> {
    let (listener, bound) = crate::runtime::bind_http("lockers.http", addr).await?;
    tracing::info!(http = %bound, "users serving HTTP");
    let app = router(users);
    crate::runtime::spawn_http(ctx, tasks, listener, app, "users");
    Ok(bound)
}

pub fn router(users: Users) -> Router {
    Router::new()
        .route("/users_service", get(seed_users_service))
        .route("/users", get(seed_users))
        .route("/locker_service", get(seed_lockers))
        .route("/api/v1/status", get(api_status))
        .route("/api/v1/users", get(api_users).post(api_add))
        .route("/api/v1/users/{name}", get(api_user).delete(api_delete))
        .route(
            "/api/v1/users/{name}/locker",
            axum::routing::post(|State(u), Path(n), q| api_ask(Op::Take, u, n, q))
                .delete(|State(u), Path(n), q| api_ask(Op::Free, u, n, q)),
        )
        .route("/api/v1/lockers", get(api_lockers))
        .route("/", get(page).post(page_action))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(users)
}

// ---------- the seed's API ----------

/// The seed's `form_response(message, data)`, fields in its order.
#[derive(serde::Serialize)]
struct SeedReply<'a> {
    response: SeedResponse<'a>,
}

#[derive(serde::Serialize)]
struct SeedResponse<'a> {
    message: &'a str,
    data: Option<SeedData<'a>>,
}

#[derive(serde::Serialize)]
struct SeedData<'a> {
    user_name: &'a str,
    locker_id: super::model::LockerId,
}

/// Flask's `make_response(json.dumps(data), code)`: text/html.
fn seed_json(status: u16, message: &str, data: Option<SeedData<'_>>) -> Response {
    let body = pyjson::dumps(&SeedReply {
        response: SeedResponse { message, data },
    });
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// What flask-restful returned from a resource: JSON, indented (debug
/// mode), with a newline.
fn restful(status: StatusCode, value: &impl serde::Serialize) -> Response {
    let body = pyjson::dumps_indented(value) + "\n";
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The seed's `except Exception as e: return "Error {}".format(e), 404`.
fn seed_exception(why: &str) -> Response {
    restful(StatusCode::NOT_FOUND, &format!("Error {why}"))
}

/// The first value of each field, as `request.form.to_dict()` keeps it.
fn form_field(form: &[(String, String)], name: &str) -> Option<String> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

async fn seed_users_service(State(users): State<Users>, body: Bytes) -> Response {
    let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        return seed_exception("the body is not a form (application/x-www-form-urlencoded)");
    };
    // A missing field was a KeyError in the seed; its text is the key's repr.
    let Some(message) = form_field(&form, "message") else {
        return seed_exception("'message'");
    };
    let known = [
        "check_user",
        "get_locker_for_user",
        "free_users_locker",
        "add_user",
        "delete_user",
    ];
    if !known.contains(&message.as_str()) {
        // The seed fell through every branch and returned None.
        return restful(StatusCode::OK, &Value::Null);
    }
    let Some(name) = form_field(&form, "user_name") else {
        return seed_exception("'user_name'");
    };
    // The seed took any name; a bad one here gets the seed's 400 shape
    // with the reason as its message.
    if let Err(e) = super::model::check_name(&name) {
        return seed_json(400, &e.to_string(), None);
    }
    match message.as_str() {
        "check_user" => match users
            .call(UsersRequest::User { name: name.clone() }, false)
            .await
        {
            Ok(UsersReply::User { user }) => seed_check(&user),
            Err(LockerError::UserNotExists(_)) => seed_json(400, "user_not_exists", None),
            Err(e) => seed_exception(&e.to_string()),
            Ok(other) => seed_exception(&format!("unexpected answer {other:?}")),
        },
        "get_locker_for_user" => {
            let take = UsersRequest::ask(Op::Take, name, None, 0);
            match users.call(take, false).await {
                Ok(_) => seed_json(200, "sent rabbit request", None),
                Err(LockerError::UserNotExists(_)) => seed_json(400, "user_not_exists", None),
                Err(e) => seed_exception(&e.to_string()),
            }
        }
        "free_users_locker" => {
            let user = match users
                .call(UsersRequest::User { name: name.clone() }, false)
                .await
            {
                Ok(UsersReply::User { user }) => user,
                Err(LockerError::UserNotExists(_)) => {
                    return seed_json(400, "user_not_exists", None);
                }
                Err(e) => return seed_exception(&e.to_string()),
                Ok(other) => return seed_exception(&format!("unexpected answer {other:?}")),
            };
            if user.locker.is_none() {
                return seed_check(&user);
            }
            let free = UsersRequest::ask(Op::Free, name, None, 0);
            match users.call(free, false).await {
                Ok(_) => seed_json(200, "sent rabbit request", None),
                Err(LockerError::WithoutLocker(_)) => seed_json(400, "user_without_locker", None),
                Err(e) => seed_exception(&e.to_string()),
            }
        }
        "add_user" => match users
            .call(UsersRequest::Add { name: name.clone() }, false)
            .await
        {
            Ok(_) => seed_json(200, "added user to db", None),
            // PostgreSQL's words for the unique name, as the seed passed them on.
            Err(LockerError::Exists(_)) => seed_exception(&format!(
                "duplicate key value violates unique constraint \"users_user_name_key\"\n\
                 DETAIL:  Key (user_name)=({name}) already exists.\n"
            )),
            Err(e) => seed_exception(&e.to_string()),
        },
        _ => match users.call(UsersRequest::Delete { name }, false).await {
            Ok(_) => seed_json(200, "deleted user from db", None),
            Err(e) => seed_exception(&e.to_string()),
        },
    }
}

/// `check_user`'s answer for a user who exists.
fn seed_check(user: &User) -> Response {
    match user.locker {
        Some(locker) => seed_json(
            200,
            "user_with_locker",
            Some(SeedData {
                user_name: &user.name,
                locker_id: locker,
            }),
        ),
        None => seed_json(400, "user_without_locker", None),
    }
}

async fn seed_users(State(users): State<Users>) -> Response {
    match users.call(UsersRequest::Users, false).await {
        Ok(UsersReply::Users { users }) => {
            let dict = Dict(users.into_iter().map(|u| (u.name, u.locker)).collect());
            restful(StatusCode::OK, &Dict(vec![("users".to_owned(), dict)]))
        }
        // The seed's words when its database was away.
        _ => restful(StatusCode::NOT_FOUND, &"Cannot connect to users db"),
    }
}

async fn seed_lockers(State(users): State<Users>) -> Response {
    match users.lockers().await {
        Ok(lockers) => {
            let free = lockers
                .into_iter()
                .map(|l| (l.id.to_string(), l.holder.is_none()));
            restful(
                StatusCode::OK,
                &Dict(vec![("lockers".to_owned(), Dict(free.collect()))]),
            )
        }
        Err(_) => restful(StatusCode::NOT_FOUND, &""),
    }
}

// ---------- the JSON API ----------

/// `{"error": <kind>, "message": <the sentence>}` with the error's status.
fn api_error(e: &LockerError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = serde_json::to_value(e)
        .ok()
        .and_then(|v| v.get("error").cloned())
        .unwrap_or(Value::Null);
    api_json(status, json!({ "error": kind, "message": e.to_string() }))
}

fn api_json(status: StatusCode, value: Value) -> Response {
    (status, Json(value)).into_response()
}

async fn api_status(State(users): State<Users>) -> Response {
    api_json(
        StatusCode::OK,
        json!({ "leader": users.leader(), "raft": users.status() }),
    )
}

async fn api_users(State(users): State<Users>) -> Response {
    match users.call(UsersRequest::Users, false).await {
        Ok(UsersReply::Users { users }) => api_json(StatusCode::OK, json!({ "users": users })),
        Ok(other) => api_error(&LockerError::Storage(format!("unexpected {other:?}"))),
        Err(e) => api_error(&e),
    }
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
}

async fn api_add(
    State(users): State<Users>,
    body: Result<Json<NewUser>, JsonRejection>,
) -> Response {
    let name = match body {
        Ok(Json(NewUser { name })) => name,
        Err(e) => {
            return api_error(&LockerError::BadRequest(format!(
                "send {{\"name\": \"...\"}} as JSON: {}",
                e.body_text()
            )));
        }
    };
    match users.call(UsersRequest::Add { name }, false).await {
        Ok(UsersReply::User { user }) => api_json(StatusCode::CREATED, json!(user)),
        Ok(other) => api_error(&LockerError::Storage(format!("unexpected {other:?}"))),
        Err(e) => api_error(&e),
    }
}

async fn api_user(State(users): State<Users>, Path(name): Path<String>) -> Response {
    match users.call(UsersRequest::User { name }, false).await {
        Ok(UsersReply::User { user }) => api_json(StatusCode::OK, json!(user)),
        Ok(other) => api_error(&LockerError::Storage(format!("unexpected {other:?}"))),
        Err(e) => api_error(&e),
    }
}

async fn api_delete(State(users): State<Users>, Path(name): Path<String>) -> Response {
    match users
        .call(UsersRequest::Delete { name: name.clone() }, false)
        .await
    {
        Ok(UsersReply::Deleted { user: Some(user) }) => {
            api_json(StatusCode::OK, json!({ "deleted": user }))
        }
        Ok(UsersReply::Deleted { user: None }) => api_error(&LockerError::UserNotExists(name)),
        Ok(other) => api_error(&LockerError::Storage(format!("unexpected {other:?}"))),
        Err(e) => api_error(&e),
    }
}

/// `?request=<id>` makes a retried take or free idempotent; `?wait_ms=`
/// waits less than `[lockers] wait_ms` for the answer (0: answer 202 at once).
#[derive(Deserialize, Default)]
struct Retry {
    request: Option<String>,
    wait_ms: Option<u64>,
}

/// `POST` (take) or `DELETE` (free) `/api/v1/users/{name}/locker`.
async fn api_ask(
    op: Op,
    users: Users,
    name: String,
    retry: Result<Query<Retry>, QueryRejection>,
) -> Response {
    let retry = match retry {
        Ok(Query(r)) => r,
        Err(e) => return api_error(&LockerError::BadRequest(e.body_text())),
    };
    let wait_ms = retry.wait_ms.unwrap_or(users.settings().wait_ms);
    let request = UsersRequest::ask(op, name.clone(), retry.request, wait_ms);
    request_answer(&users, &name, request).await
}

/// A take: 201 with the locker, 409 none free; a free: 200 with the locker
/// freed; either 202 while the lockers have not answered yet (ask again
/// with the same `request` to learn the outcome).
async fn request_answer(users: &Users, name: &str, request: UsersRequest) -> Response {
    let state = match users.call(request, false).await {
        Ok(UsersReply::Request { state }) => state,
        Ok(other) => return api_error(&LockerError::Storage(format!("unexpected {other:?}"))),
        Err(e) => return api_error(&e),
    };
    match state {
        RequestState::Pending { request } => api_json(
            StatusCode::ACCEPTED,
            json!({ "user": name, "state": "pending", "request": request }),
        ),
        RequestState::Done { request, done } => match done {
            Done::Granted { locker } => api_json(
                StatusCode::CREATED,
                json!({ "user": name, "locker": locker, "request": request }),
            ),
            Done::NoneFree => api_json(
                StatusCode::CONFLICT,
                json!({ "error": "none_free", "message": "every locker is taken", "request": request }),
            ),
            Done::Freed { locker } => api_json(
                StatusCode::OK,
                json!({ "user": name, "freed": locker, "request": request }),
            ),
        },
    }
}

async fn api_lockers(State(users): State<Users>) -> Response {
    match users.lockers().await {
        Ok(lockers) => api_json(StatusCode::OK, json!({ "lockers": lockers })),
        Err(e) => api_error(&e),
    }
}

// ---------- the page ----------

#[derive(Deserialize)]
struct PageForm {
    action: String,
    #[serde(default)]
    name: String,
}

async fn page(State(users): State<Users>) -> Response {
    render(&users, None).await
}

async fn page_action(State(users): State<Users>, body: Bytes) -> Response {
    let note = match serde_urlencoded::from_bytes::<PageForm>(&body) {
        Ok(form) => act(&users, form).await,
        Err(e) => Err(format!("the form was not understood: {e}")),
    };
    render(&users, Some(note)).await
}

/// Runs one button of the page; the sentence to show.
async fn act(users: &Users, form: PageForm) -> Result<String, String> {
    let name = form.name;
    let wait_ms = users.settings().wait_ms;
    let request = match form.action.as_str() {
        "check" => UsersRequest::User { name: name.clone() },
        "add" => UsersRequest::Add { name: name.clone() },
        "delete" => UsersRequest::Delete { name: name.clone() },
        "take" => UsersRequest::ask(Op::Take, name.clone(), None, wait_ms),
        "free" => UsersRequest::ask(Op::Free, name.clone(), None, wait_ms),
        other => return Err(format!("no such action `{other}`")),
    };
    match users
        .call(request, false)
        .await
        .map_err(|e| e.to_string())?
    {
        UsersReply::User { user } => Ok(match (form.action.as_str(), user.locker) {
            ("add", _) => format!("Added user {name}."),
            (_, Some(l)) => format!("User {name} occupies locker {l}."),
            (_, None) => format!("User {name} holds no locker."),
        }),
        UsersReply::Deleted { user: Some(u) } => Ok(match u.locker {
            Some(l) => format!("Deleted user {name}; locker {l} is free again."),
            None => format!("Deleted user {name}."),
        }),
        UsersReply::Deleted { user: None } => Err(format!("No user named {name}.")),
        UsersReply::Request { state } => Ok(match state {
            RequestState::Pending { .. } => {
                format!("The request for {name} is on its way; check again in a moment.")
            }
            RequestState::Done { done, .. } => match done {
                Done::Granted { locker } => format!("User {name} occupies locker {locker}."),
                Done::NoneFree => "No free lockers found.".to_owned(),
                Done::Freed { locker: Some(l) } => format!("Locker {l} is free again."),
                Done::Freed { locker: None } => format!("User {name} held no locker."),
            },
        }),
        UsersReply::Users { .. } => Err("unexpected answer".into()),
    }
}

/// Escapes text for HTML (names are shown literally, never as markup).
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:60em;color:#222}\
table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.35em .6em;text-align:left}\
td.free{background:#e4f4e4}td.taken{background:#f6dede}.note{padding:.6em;margin:1em 0;border-radius:4px}\
.ok{background:#e4f0fb}.err{background:#fbe4e4}form{margin:.4em 0}input[type=text]{width:18em}";

async fn render(users: &Users, note: Option<Result<String, String>>) -> Response {
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Lockers</title>\
         <style>{STYLE}</style></head><body><h1>Lockers</h1>"
    );
    match note {
        Some(Ok(text)) => html += &format!("<p class=\"note ok\">{}</p>", esc(&text)),
        Some(Err(text)) => html += &format!("<p class=\"note err\">{}</p>", esc(&text)),
        None => {}
    }
    html += "<form method=\"post\" action=\"/\"><label>User name \
             <input type=\"text\" name=\"name\" maxlength=\"64\" required></label> \
             <button name=\"action\" value=\"check\">Look up</button> \
             <button name=\"action\" value=\"add\">Add</button> \
             <button name=\"action\" value=\"take\">Take a locker</button> \
             <button name=\"action\" value=\"free\">Free the locker</button> \
             <button name=\"action\" value=\"delete\">Delete</button></form>";
    html += "<h2>Lockers</h2>";
    match users.lockers().await {
        Ok(lockers) => html += &locker_table(&lockers),
        Err(e) => html += &format!("<p class=\"note err\">{}</p>", esc(&e.to_string())),
    }
    html += "<h2>Users</h2>";
    match users.call(UsersRequest::Users, false).await {
        Ok(UsersReply::Users { users }) if users.is_empty() => html += "<p>No users yet.</p>",
        Ok(UsersReply::Users { users }) => {
            html += "<table><tr><th>User</th><th>Locker</th></tr>";
            for u in users {
                let locker = match (u.locker, &u.pending) {
                    (Some(l), _) => l.to_string(),
                    (None, Some(_)) => "(waiting)".to_owned(),
                    (None, None) => "—".to_owned(),
                };
                html += &format!("<tr><td>{}</td><td>{locker}</td></tr>", esc(&u.name));
            }
            html += "</table>";
        }
        Ok(_) => {}
        Err(e) => html += &format!("<p class=\"note err\">{}</p>", esc(&e.to_string())),
    }
    html += "</body></html>";
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

/// The lockers as a table, five to a row.
fn locker_table(lockers: &[Locker]) -> String {
    let mut html = String::from("<table>");
    for row in lockers.chunks(5) {
        html += "<tr>";
        for l in row {
            html += &match &l.holder {
                Some(h) => format!("<td class=\"taken\"><b>{}</b> {}</td>", l.id, esc(&h.name)),
                None => format!("<td class=\"free\"><b>{}</b> free</td>", l.id),
            };
        }
        html += "</tr>";
    }
    html + "</table>"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_on_the_page() {
        assert_eq!(
            esc("<script>'x'&\"y\""),
            "&lt;script&gt;&#39;x&#39;&amp;&quot;y&quot;"
        );
        let lockers = [Locker {
            id: 1,
            holder: Some(super::super::model::Holder {
                user: 1,
                name: "<b>".into(),
            }),
            changed_ms: 0,
        }];
        assert!(locker_table(&lockers).contains("&lt;b&gt;"));
    }
}
