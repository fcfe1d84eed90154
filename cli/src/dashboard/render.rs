//! The console's frame (head, navigation, who is signed in), its error page and stylesheet,
//! and the small pieces every page shares.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::console::Me;

const STYLESHEET: &str = include_str!("style.css");

pub async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLESHEET,
    )
        .into_response()
}

/// Which navigation entry a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Fleet,
    Plans,
    Drills,
    Audit,
}

/// A whole page. `refresh_s` reloads it while something it shows is running (no script).
pub fn page(
    me: &Me,
    section: Section,
    title: &str,
    refresh_s: Option<u32>,
    body: Markup,
) -> Markup {
    let nav = [
        (Section::Fleet, "/", "Fleet"),
        (Section::Plans, "/plans", "Recovery plans"),
        (Section::Drills, "/drills", "Drills"),
        (Section::Audit, "/audit", "Audit log"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(s) = refresh_s {
                    meta http-equiv="refresh" content=(s);
                }
                title { (title) " · Lifeboat" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                header {
                    span.brand { "Lifeboat" }
                    nav {
                        @for (s, href, label) in nav {
                            a href=(href) class=[(s == section).then_some("here")] { (label) }
                        }
                    }
                    span.who title=(format!("controller {}", me.controller)) {
                        (me.operator) " · " span.role { (me.role) }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
                footer {
                    "Rendered " (crate::output::time(now_ms())) " from " (me.controller)
                    @if let Some(s) = refresh_s { " · refreshes every " (s) " s" }
                }
            }
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A coloured word for a state: passed, failed, running, overdue, ...
pub fn badge(word: &str) -> Markup {
    html! { span class=(format!("badge {}", word.to_ascii_lowercase())) { (word) } }
}

/// Percent-encodes a path segment or query value (names come from agents and operators).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn device_href(name: &str) -> String {
    format!("/devices/{}", encode(name))
}

pub fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// A hidden field that proves a form came from one of the console's own pages.
pub fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// An error shown as a page: what failed and what to do about it.
pub struct PageError {
    pub status: StatusCode,
    pub message: String,
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError {
            status,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for PageError {
    fn from(s: tonic::Status) -> PageError {
        use tonic::Code;
        let status = match s.code() {
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::PermissionDenied | Code::Unauthenticated => StatusCode::FORBIDDEN,
            Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::BAD_GATEWAY,
        };
        PageError::new(status, format!("the controller answered: {}", s.message()))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { "Error · Lifeboat" }
                    link rel="stylesheet" href="/style.css";
                }
                body {
                    main {
                        h1 { "Something went wrong" }
                        p.error { (self.message) }
                        p { a href="/" { "Back to the fleet" } }
                    }
                }
            }
        };
        (self.status, body).into_response()
    }
}
