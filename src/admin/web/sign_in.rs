//! Signing in with a token of `[[admin.tokens]]` (rate-limited by client address) and out.

use super::*;

pub(super) fn sign_in_page(state: &AdminState, message: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(message) = message { p.flash.error role="alert" { (message) } }
            @if state.tokens.is_empty() {
                p.flash.error {
                    "No token is configured: add an [[admin.tokens]] entry (orderly admin-token NAME prints one) and restart."
                }
            }
            form.signin method="post" action="/login" {
                label for="token" { "Token" }
                input #token type="password" name="token" autocomplete="off" required autofocus;
                button type="submit" { "Sign in" }
            }
            p.hint { "A token of [[admin.tokens]] (read: look; operate: also act). The session lasts 8 hours." }
        },
    )
}

pub(super) async fn login(
    State(state): State<AdminState>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !same_origin(&headers) {
        return refused(StatusCode::FORBIDDEN, "cross-site request refused");
    }
    let client = api::client_ip(&extensions);
    if let Some(wait) = client.and_then(|ip| state.failed_auth.blocked(ip)) {
        let mut response = page(
            StatusCode::TOO_MANY_REQUESTS,
            sign_in_page(&state, Some("Too many failed sign-ins from this address; wait a minute.")),
        );
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
        return response;
    }
    let token = form.get("token").map(String::as_str).unwrap_or("");
    let Some(identity) = state.tokens.verify(token) else {
        let failures = client.map(|ip| state.failed_auth.failed(ip));
        tracing::warn!(client = ?client, failures = ?failures, "admin web sign-in refused: unknown token");
        return page(StatusCode::UNAUTHORIZED, sign_in_page(&state, Some("That token is not valid.")));
    };
    tracing::info!(token = %identity.name, client = ?client, "admin web sign-in");
    let value = state.sessions.create(identity);
    let secure = headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        auth::SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("cookie is ASCII"));
    response
}

pub(super) async fn logout(State(state): State<AdminState>, SignedForm(signed): SignedForm) -> Response {
    state.sessions.remove(&signed.cookie);
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"))
            .expect("cookie is ASCII"),
    );
    response
}
