//! Who may use the dashboard. Every request: the token when one is set (a bearer header, the
//! cookie the first visit with `?token=` sets, or that query), else a loopback `Host` (so a
//! web page elsewhere cannot rebind a name to 127.0.0.1 and read it). Every POST: the
//! page's CSRF token and, when the browser says where the form came from, the same origin.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use cookie::{Cookie, SameSite};
use subtle::ConstantTimeEq;

use super::pages::message_page;
use super::Dashboard;

/// The cookie that carries the token after the first visit.
pub const COOKIE: &str = "ivy_dashboard_token";

/// Compares in time that depends on the lengths only, not on where the bytes differ.
pub fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Refuses, at start, a token that could not travel whole in the cookie: only RFC 6265's
/// cookie-octets (printable ASCII but space, `"`, `,`, `;` and `\`), so a `;` cannot end the
/// value and start an attribute, and nothing needs encoding.
pub fn check_token(token: &str) -> Result<(), String> {
    match token
        .chars()
        .find(|&c| !c.is_ascii_graphic() || matches!(c, '"' | ',' | ';' | '\\'))
    {
        None => Ok(()),
        Some(c) => Err(format!(
            "the dashboard token holds {c:?}, which a cookie cannot carry: use letters, digits \
             and punctuation other than `\"`, `,`, `;` and `\\` (e.g. openssl rand -hex 16)"
        )),
    }
}

fn refused(status: StatusCode, title: &str, text: &str) -> Response {
    (status, Html(message_page(title, text).into_string())).into_response()
}

/// The token a request carries, and whether it came in the query (then a cookie is set).
fn carried(headers: &HeaderMap, query: Option<&str>) -> (Option<String>, bool) {
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return (Some(bearer.trim().to_owned()), false);
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_owned());
    if cookie.is_some() {
        return (cookie, false);
    }
    let from_query = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    (from_query.clone(), from_query.is_some())
}

/// The cookie that keeps the token: Secure when the page was served over HTTPS, which the
/// dashboard knows only from a proxy it was told it sits behind.
fn token_cookie(token: &str, secure: bool) -> Option<HeaderValue> {
    let cookie = Cookie::build((COOKIE, token))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure);
    HeaderValue::from_str(&cookie.to_string()).ok()
}

/// Whether a request came over HTTPS: only through a proxy (`--behind-https-proxy`) that
/// says so. A client that forges the header only makes its own cookie stricter.
fn over_https(behind_https_proxy: bool, headers: &HeaderMap) -> bool {
    behind_https_proxy
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// Whether `host` (a `Host` header) names this machine's loopback.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The middleware in front of every route.
pub async fn check(State(d): State<Arc<Dashboard>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let mut set_cookie = None;
    match &d.token {
        Some(token) => {
            let (given, in_query) = carried(headers, request.uri().query());
            if !given.as_deref().is_some_and(|g| same(g, token)) {
                return refused(
                    StatusCode::UNAUTHORIZED,
                    "Token required",
                    "This dashboard needs its token: open it with ?token=… once (a cookie keeps \
                     it), or send Authorization: Bearer ….",
                );
            }
            if in_query {
                set_cookie = token_cookie(token, over_https(d.behind_https_proxy, headers));
            }
        }
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            if !loopback_host(host) {
                return refused(
                    StatusCode::FORBIDDEN,
                    "Not a loopback address",
                    "Without a token the dashboard answers only to 127.0.0.1, [::1] and localhost.",
                );
            }
        }
    }
    if request.method() == axum::http::Method::POST && !same_origin(request.headers()) {
        return refused(
            StatusCode::FORBIDDEN,
            "Cross-site request refused",
            "Replay and purge are accepted only from the dashboard's own pages.",
        );
    }
    let mut response = next.run(request).await;
    if let Some(cookie) = set_cookie {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    let h = response.headers_mut();
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: with it the browser sends `Origin: null` on the page's own forms.
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             frame-ancestors 'none'; form-action 'self'",
        ),
    );
    response
}

/// A POST's origin, where the browser says it: `Sec-Fetch-Site` same-origin (or none: typed
/// by hand), and `Origin`, when present, naming the `Host` it was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|s| s != "same-origin" && s != "none") {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
        assert!(!same("", "a"));
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1:8080",
            "localhost:1",
            "[::1]:80",
            "127.0.0.1",
            "LOCALHOST",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in ["evil.example:8080", "10.0.0.1:80", "", "[fe80::1]:80"] {
            assert!(!loopback_host(h), "{h}");
        }
    }

    #[test]
    fn the_token_comes_from_header_cookie_or_query() {
        let mut h = HeaderMap::new();
        assert_eq!(carried(&h, Some("token=a%2Bb")), (Some("a+b".into()), true));
        assert_eq!(
            carried(&h, Some("x=1&token=a%3Bb&y")),
            (Some("a;b".into()), true)
        );
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; ivy_dashboard_token=c"),
        );
        assert_eq!(carried(&h, None), (Some("c".into()), false));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer d"));
        assert_eq!(carried(&h, None), (Some("d".into()), false));
    }

    #[test]
    fn tokens_a_cookie_cannot_carry_are_refused() {
        assert!(check_token("0123456789abcdef-_.~+!").is_ok());
        for bad in [
            "abc;Domain=evil",
            "a b",
            "a,b",
            "a\"b",
            "a\\b",
            "tok\u{e9}n",
        ] {
            let why = check_token(bad).unwrap_err();
            assert!(why.contains("cookie"), "{why}");
        }
    }

    #[test]
    fn the_cookie_is_secure_behind_an_https_proxy_only() {
        let mut h = HeaderMap::new();
        assert!(!over_https(true, &h));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(!over_https(false, &h), "the header alone, without the flag");
        assert!(over_https(true, &h));
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        assert!(!over_https(true, &h));

        let cookie = |secure| token_cookie("t0ken", secure).unwrap();
        let plain = cookie(false);
        let plain = plain.to_str().unwrap();
        assert!(plain.starts_with("ivy_dashboard_token=t0ken;"), "{plain}");
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(plain.contains(attribute), "{plain}");
        }
        assert!(!plain.contains("Secure"), "{plain}");
        assert!(cookie(true).to_str().unwrap().contains("; Secure"));
    }

    #[test]
    fn posts_from_elsewhere_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
    }
}
