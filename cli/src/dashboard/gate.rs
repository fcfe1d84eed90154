//! Who may use the console: the browser that opened the printed link, on this host name,
//! submitting forms from the console's own pages.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

const COOKIE: &str = "lifeboat_dashboard";

pub struct Gate {
    /// Handed out once in the printed URL; the browser then carries it as a cookie.
    token: String,
    /// The hidden field of every form (derived from the token, never equal to it).
    csrf: String,
    /// `Host` values the console answers to: 127.0.0.1:PORT and localhost:PORT.
    hosts: [String; 2],
}

impl Gate {
    pub fn new(addr: SocketAddr) -> Result<Gate> {
        let token = hex::encode(lifeboat_core::sign::random_bytes::<32>()?);
        let csrf = blake3::derive_key("lifeboat dashboard form field", token.as_bytes());
        Ok(Gate {
            csrf: hex::encode(csrf),
            hosts: [addr.to_string(), format!("localhost:{}", addr.port())],
            token,
        })
    }

    pub fn entry_url(&self) -> String {
        format!("http://{}/?token={}", self.hosts[0], self.token)
    }

    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Compares in constant time (as hashes) so the answer's timing tells nothing.
    fn is_token(&self, candidate: &str) -> bool {
        blake3::hash(candidate.as_bytes()) == blake3::hash(self.token.as_bytes())
    }

    pub fn is_csrf(&self, candidate: &str) -> bool {
        blake3::hash(candidate.as_bytes()) == blake3::hash(self.csrf.as_bytes())
    }

    fn host_ok(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|h| self.hosts.iter().any(|ok| ok == h))
    }

    /// A form may come only from a page of this console: a browser names the page's origin.
    fn origin_ok(&self, headers: &HeaderMap) -> bool {
        match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
            Some(origin) => self.hosts.iter().any(|h| origin == format!("http://{h}")),
            None => false,
        }
    }

    fn cookie_ok(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .any(|v| self.is_token(v))
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

/// Middleware in front of every route.
pub async fn admit(State(gate): State<Arc<Gate>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    if !gate.host_ok(headers) {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            &format!(
                "the Lifeboat dashboard answers as http://{}/ only",
                gate.hosts[0]
            ),
        );
    }
    // The printed link: trade its token for a cookie, and drop it from the address bar.
    let query = req.uri().query().unwrap_or("");
    if let Some(t) = query.split('&').find_map(|kv| kv.strip_prefix("token=")) {
        if !gate.is_token(t) {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "this link's token is not the dashboard's: open the URL that `lifeboat dashboard` printed",
            );
        }
        let cookie = format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", gate.token);
        let path = req.uri().path().to_string();
        let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, path)]).into_response();
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        return resp;
    }
    if !gate.cookie_ok(headers) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "not signed in: open the URL that `lifeboat dashboard` printed (it carries this session's token)",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD && !gate.origin_ok(headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            "a form was sent from outside the dashboard's own pages; refused",
        );
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not "no-referrer": under it a browser sends `Origin: null` with every form, even
    // the console's own, and the origin check above could not tell them apart.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Gate {
        Gate::new("127.0.0.1:8743".parse().expect("addr")).expect("gate")
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn only_its_own_host_names_are_answered() {
        let g = gate();
        assert!(g.host_ok(&headers(&[(header::HOST, "127.0.0.1:8743")])));
        assert!(g.host_ok(&headers(&[(header::HOST, "localhost:8743")])));
        assert!(!g.host_ok(&headers(&[(header::HOST, "evil.example:8743")])));
        assert!(!g.host_ok(&headers(&[(header::HOST, "127.0.0.1:9999")])));
        assert!(!g.host_ok(&HeaderMap::new()));
    }

    #[test]
    fn the_cookie_must_carry_this_sessions_token() {
        let g = gate();
        let good = format!("a=b; {COOKIE}={}", g.token);
        assert!(g.cookie_ok(&headers(&[(header::COOKIE, &good)])));
        assert!(!g.cookie_ok(&headers(&[(header::COOKIE, &format!("{COOKIE}=00"))])));
        assert!(!g.cookie_ok(&headers(&[(
            header::COOKIE,
            &format!("x{COOKIE}={}", g.token)
        )])));
        assert!(!g.cookie_ok(&HeaderMap::new()));
        // The form field is not the token: a leaked page does not sign anyone in.
        assert_ne!(g.csrf(), g.token);
        assert!(g.is_csrf(&g.csrf.clone()) && !g.is_csrf(&g.token));
    }

    #[test]
    fn forms_only_from_its_own_origin() {
        let g = gate();
        assert!(g.origin_ok(&headers(&[(header::ORIGIN, "http://127.0.0.1:8743")])));
        assert!(!g.origin_ok(&headers(&[(header::ORIGIN, "http://evil.example")])));
        assert!(!g.origin_ok(&headers(&[(header::ORIGIN, "null")])));
        assert!(!g.origin_ok(&HeaderMap::new()));
    }
}
