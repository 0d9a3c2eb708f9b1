//! The STS interface: `AssumeRoleWithWebIdentity` turns an OpenID token into temporary S3
//! credentials ([`crate::auth::session`]), as AWS STS does, so boto3's web-identity support
//! (`AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`) and s3fs work unchanged.
//!
//! Requests are `POST /` with a form body, unsigned (`GET /?Action=…` is refused: a token in a
//! URL ends up in logs); answers and errors are STS's XML documents (errors: `ErrorResponse`,
//! mapped here and nowhere else).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::{Method, Request, StatusCode};

use crate::app::App;
use crate::body::HttpResponse;
use crate::dates::unix_now;
use crate::s3;
use crate::s3::xml::escape;

const NS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
/// Shortest session AWS grants.
const MIN_DURATION: u64 = 900;
/// Largest form body read.
const MAX_BODY: usize = 64 << 10;

/// Whether a request is for STS: `POST /` with a form, or `GET /` with an `Action`.
pub fn is_sts(method: &Method, path: &str, content_type: Option<&str>, query: &[(String, String)]) -> bool {
    path == "/"
        && match *method {
            Method::POST => content_type.is_some_and(|c| c.starts_with("application/x-www-form-urlencoded")),
            Method::GET => query.iter().any(|(k, _)| k == "Action"),
            _ => false,
        }
}

struct StsError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn sender(code: &'static str, message: impl Into<String>) -> StsError {
    StsError { status: StatusCode::BAD_REQUEST, code, message: message.into() }
}

/// Answers an STS request.
pub async fn handle(
    app: Arc<App>,
    req: Request<hyper::body::Incoming>,
    query: Vec<(String, String)>,
    request_id: &str,
) -> HttpResponse {
    let (status, body) = match answer(&app, req, query, request_id).await {
        Ok(xml) => (StatusCode::OK, xml),
        Err(e) => (
            e.status,
            format!(
                r#"<?xml version="1.0" encoding="UTF-8"?>
<ErrorResponse xmlns="{NS}"><Error><Type>Sender</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>
"#,
                e.code,
                escape(&e.message),
                escape(request_id)
            ),
        ),
    };
    s3::text_response(status, "text/xml", Bytes::from(body), request_id)
}

async fn answer(
    app: &App,
    req: Request<hyper::body::Incoming>,
    mut params: Vec<(String, String)>,
    request_id: &str,
) -> Result<String, StsError> {
    if req.method() != Method::POST {
        // A token in a URL ends up in access logs and proxies' logs.
        return Err(sender("InvalidRequest", "send AssumeRoleWithWebIdentity with POST and a form body, not in a URL"));
    }
    {
        let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
        let body = limited.collect().await.map_err(|_| sender("InvalidParameterValue", "the form is too large"))?;
        params.extend(url::form_urlencoded::parse(&body.to_bytes()).into_owned());
    }
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let required = |name: &'static str| {
        param(name).filter(|v| !v.is_empty()).ok_or_else(|| sender("MissingParameter", format!("{name} is required")))
    };
    match param("Action") {
        Some("AssumeRoleWithWebIdentity") => {}
        Some(other) => {
            return Err(sender(
                "InvalidAction",
                format!("{other} is not an action of this gateway (AssumeRoleWithWebIdentity is)"),
            ))
        }
        None => return Err(sender("MissingAction", "Action is required")),
    }
    let role = required("RoleArn")?.to_string();
    let session_name = required("RoleSessionName")?.to_string();
    let token = required("WebIdentityToken")?.to_string();
    let logins = &app.auth.logins;
    if logins.oidc.is_empty() {
        return Err(sender("InvalidIdentityToken", "this gateway accepts no OpenID tokens (no [[oidc]] issuer)"));
    }
    let max = logins.sessions.max_duration;
    let duration = match param("DurationSeconds") {
        None => 3600.min(max),
        Some(d) => match d.parse::<u64>() {
            Ok(n) if (MIN_DURATION..=max.max(MIN_DURATION)).contains(&n) => n,
            _ => {
                return Err(sender(
                    "ValidationError",
                    format!("DurationSeconds must be between {MIN_DURATION} and {max}"),
                ))
            }
        },
    };
    logins.oidc.prepare_token(&token).await;
    let now = unix_now();
    let who = logins.oidc.identify(&token, now).map_err(|e| {
        if e.is_expiry() {
            sender("ExpiredTokenException", e.0)
        } else {
            sender("InvalidIdentityToken", e.0)
        }
    })?;
    // A session never outlives the login it comes from.
    let expires = who.expires.map_or(now + duration as i64, |e| e.min(now + duration as i64));
    let creds = logins.sessions.mint(&who, now, expires).map_err(|e| StsError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "InternalFailure",
        message: e,
    })?;
    let role_name = role.rsplit('/').next().unwrap_or(&role);
    let arn = format!("arn:aws:sts::000000000000:assumed-role/{role_name}/{session_name}");
    Ok(format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<AssumeRoleWithWebIdentityResponse xmlns="{NS}">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>{sub}</SubjectFromWebIdentityToken>
    <AssumedRoleUser><Arn>{arn}</Arn><AssumedRoleId>{id}:{session}</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <AccessKeyId>{id}</AccessKeyId>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <SessionToken>{token}</SessionToken>
      <Expiration>{expiration}</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>
"#,
        sub = escape(&who.owner),
        arn = escape(&arn),
        id = creds.access_key_id,
        session = escape(&session_name),
        secret = creds.secret_access_key,
        token = creds.session_token,
        expiration = crate::dates::iso8601(creds.expires),
        request_id = escape(request_id),
    ))
}
