//! Who may use the page: the session cookie, the same-origin check and form token of every
//! POST, the redirect after an action and the error pages. Handlers take an extractor, as the
//! API's take `Reader`/`Operator`: [`Viewer`] for a page, [`OperatorForm`] for an action,
//! [`SignedForm`] for signing out.

use super::*;

/// The session cookie's value in the request, if any.
pub(super) fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| !v.is_empty())
}

/// A signed-in request: the session and its cookie value.
pub(super) struct Signed {
    pub(super) session: Session,
    pub(super) cookie: String,
    pub(super) flash: Option<Flash>,
}

pub(super) fn signed_in(state: &AdminState, headers: &HeaderMap) -> Option<Signed> {
    let cookie = cookie(headers)?;
    let session = state.sessions.get(&cookie)?;
    let flash = state.sessions.take_flash(&cookie);
    Some(Signed { session, cookie, flash })
}

/// Whether a POST comes from a page of this server: the browser's own `Sec-Fetch-Site`
/// when it sends one, else its `Origin` against the `Host` it was sent to. A request with
/// neither is refused.
pub fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let (Some(origin), Some(host)) = (headers.get(header::ORIGIN), headers.get(header::HOST)) else {
        return false;
    };
    let (Ok(origin), Ok(host)) = (origin.to_str(), host.to_str()) else { return false };
    // The scheme this server is reached by: plain HTTP, or HTTPS behind a proxy that says so.
    let scheme = match headers.get("x-forwarded-proto") {
        Some(proto) if proto.as_bytes().eq_ignore_ascii_case(b"https") => "https",
        _ => "http",
    };
    match origin.split_once("://") {
        Some((origin_scheme, authority)) => {
            origin_scheme.eq_ignore_ascii_case(scheme) && authority.eq_ignore_ascii_case(host)
        }
        None => false,
    }
}

pub(super) fn refused(status: StatusCode, message: &str) -> Response {
    page(
        status,
        layout(
            "Refused",
            None,
            None,
            html! {
                h1 { "Refused" }
                p.flash.error { (message) }
                p { a href="/" { "Back to the overview" } }
            },
        ),
    )
}

/// The checks of every POST but the sign-in: same origin, signed in, the session's form
/// token, and (for actions) the operate scope.
/// A POST refused before it did anything.
pub(super) struct Refusal(pub(super) StatusCode, pub(super) String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        refused(self.0, &self.1)
    }
}

pub(super) fn guard(
    state: &AdminState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Signed, Refusal> {
    if !same_origin(headers) {
        return Err(Refusal(StatusCode::FORBIDDEN, "cross-site request refused".to_owned()));
    }
    let Some(signed) = signed_in(state, headers) else {
        return Err(Refusal(StatusCode::UNAUTHORIZED, "your session has ended: sign in again".to_owned()));
    };
    let given = form.get("csrf").map(String::as_str).unwrap_or("");
    if !auth::same_form_token(given, &signed.session.csrf) {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "this form is stale or not from this session: reload the page".to_owned(),
        ));
    }
    if let Some(flash) = &signed.flash {
        // Not shown by this request: keep it for the next page.
        state.sessions.set_flash(&signed.cookie, flash.clone());
    }
    Ok(signed)
}

pub(super) fn guard_operate(
    state: &AdminState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Signed, Refusal> {
    let signed = guard(state, headers, form)?;
    if signed.session.identity.scope != TokenScope::Operate {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            format!("token `{}` has the read scope; this action needs operate", signed.session.identity.name),
        ));
    }
    Ok(signed)
}

/// Where to go after an action: the form's `back` when it is a path of this server. Parsed
/// as a browser would parse it (tabs and line breaks dropped, `\` read as `/`) against an
/// origin of our own, and kept only when it stays on that origin; what goes into `Location` is
/// the parser's serialization (percent-encoded), never the raw text.
pub(super) fn back(form: &HashMap<String, String>, default: &str) -> String {
    let Ok(base) = url::Url::parse("http://orderly.invalid/") else { return default.to_owned() };
    form.get("back")
        .filter(|path| path.starts_with('/'))
        .and_then(|path| base.join(path).ok())
        .filter(|url| url.origin() == base.origin())
        .map(|url| match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        })
        .unwrap_or_else(|| default.to_owned())
}

/// What an action did, for the next page: its message, or why it was refused (after
/// `refused`, what was not done, when given).
pub(super) fn said(result: Result<String, OpsError>, refused: Option<&str>) -> Flash {
    match result {
        Ok(text) => Flash { ok: true, text },
        Err(e) => Flash {
            ok: false,
            text: match refused {
                Some(what) => format!("{what}: {}", describe(&e)),
                None => describe(&e),
            },
        },
    }
}

/// Records the outcome for the next page and redirects there (POST, then redirect).
pub(super) fn done(state: &AdminState, signed: &Signed, flash: Flash, to: &str) -> Response {
    state.sessions.set_flash(&signed.cookie, flash);
    Redirect::to(to).into_response()
}

pub(super) fn describe(e: &OpsError) -> String {
    match e {
        OpsError::Db(e) => format!("database error: {}", db::describe_error(e)),
        other => other.to_string(),
    }
}

pub(super) fn error_page(signed: &Signed, e: api::ApiError) -> Response {
    page(
        e.status,
        layout(
            "Error",
            Some(&signed.session),
            None,
            html! {
                h1 { "Error" }
                p.flash.error { (e.message) }
                p { a href="/" { "Back to the overview" } }
            },
        ),
    )
}

/// A page for a signed-in operator (every GET but the overview, which shows the sign-in form
/// instead): without a session, a redirect to the sign-in.
pub(super) struct Viewer(pub(super) Signed);

impl axum::extract::FromRequestParts<AdminState> for Viewer {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &AdminState) -> Result<Self, Response> {
        signed_in(state, &parts.headers).map(Viewer).ok_or_else(|| Redirect::to("/").into_response())
    }
}

/// A POST of a form that passed [`guard`]: same origin, signed in, the session's form token.
pub(super) struct SignedForm(pub(super) Signed);

/// A [`SignedForm`] whose token may operate ([`guard_operate`]): every action.
pub(super) struct OperatorForm {
    pub(super) signed: Signed,
    pub(super) form: HashMap<String, String>,
}

/// The form of a POST, or the refusal of a body that is not one.
async fn form_of(
    request: axum::extract::Request,
    state: &AdminState,
) -> Result<(HeaderMap, HashMap<String, String>), Refusal> {
    let headers = request.headers().clone();
    let Form(form) =
        <Form<HashMap<String, String>> as axum::extract::FromRequest<AdminState>>::from_request(request, state)
            .await
            .map_err(|e| Refusal(StatusCode::BAD_REQUEST, format!("not a form: {e}")))?;
    Ok((headers, form))
}

impl axum::extract::FromRequest<AdminState> for SignedForm {
    type Rejection = Refusal;
    async fn from_request(request: axum::extract::Request, state: &AdminState) -> Result<Self, Refusal> {
        let (headers, form) = form_of(request, state).await?;
        Ok(SignedForm(guard(state, &headers, &form)?))
    }
}

impl axum::extract::FromRequest<AdminState> for OperatorForm {
    type Rejection = Refusal;
    async fn from_request(request: axum::extract::Request, state: &AdminState) -> Result<Self, Refusal> {
        let (headers, form) = form_of(request, state).await?;
        let signed = guard_operate(state, &headers, &form)?;
        Ok(OperatorForm { signed, form })
    }
}
