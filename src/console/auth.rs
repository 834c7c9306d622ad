//! Who may use the console (bearer token, basic auth, or loopback only) and the security headers of every answer.

use super::*;

pub(super) const SECURITY_HEADERS: [(header::HeaderName, &str); 4] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-store"),
];

/// Bearer token or basic auth, when configured. With a token only, the
/// page itself (which holds no data) is public so it can ask for the token.
///
/// Without credentials (loopback only), a request must name a loopback host:
/// a web page the supervisor visits could otherwise rebind its own domain to
/// 127.0.0.1 and read the feed as same-origin (DNS rebinding).
pub(super) async fn auth(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let c = &s.config;
    if c.token.is_none() && s.basic.is_none() {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !is_loopback_host(host) {
            return (
                StatusCode::FORBIDDEN,
                "the console without credentials answers only to a loopback Host (localhost, 127.0.0.1, [::1])\n",
            )
                .into_response();
        }
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let token_ok = c.token.as_ref().is_some_and(|t| {
        given
            .strip_prefix("Bearer ")
            .is_some_and(|g| constant_time_eq(g.as_bytes(), t.0.as_bytes()))
    });
    let basic_ok = s
        .basic
        .as_ref()
        .is_some_and(|b| constant_time_eq(given.as_bytes(), b.as_bytes()));
    let public = s.basic.is_none() && !req.uri().path().starts_with("/api/");
    if token_ok || basic_ok || public {
        return next.run(req).await;
    }
    let mut res = (StatusCode::UNAUTHORIZED, "authentication required\n").into_response();
    if s.basic.is_some() {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"zhijian console\", charset=\"UTF-8\""),
        );
    }
    res
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
pub(super) fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Every response carries the security headers, API answers and errors
/// included: they hold transcripts too.
pub(super) async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    for (k, v) in SECURITY_HEADERS {
        res.headers_mut().insert(k, HeaderValue::from_static(v));
    }
    res
}

/// Equal, in a time that does not depend on where they differ.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(subtle::ConstantTimeEq::ct_eq(a, b))
}

pub(super) fn base64(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}
