//! S3 XML documents: escaping, the error document, and URL encoding of listed keys.

use hyper::StatusCode;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

pub const NAMESPACE: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// Escapes text for an XML element or attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry most control characters, even escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push_str(&format!("&#x{:X};", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// What `encoding-type=url` leaves alone: unreserved characters and `/`. botocore decodes with
/// `unquote_plus`, so `+` must be encoded too.
const KEY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/');

pub fn url_encode(text: &str) -> String {
    utf8_percent_encode(text, KEY_ENCODE).to_string()
}

/// Appends `<name>text</name>`.
pub fn element(out: &mut String, name: &str, text: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    out.push_str(&escape(text));
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// An S3 error: HTTP status, S3 code and a message a person can act on.
#[derive(Debug, Clone)]
pub struct S3Error {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra headers (e.g. `Content-Range` of a 416, `Retry-After` of a 503).
    pub headers: Vec<(&'static str, String)>,
}

impl S3Error {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        S3Error { status, code, message: message.into(), headers: Vec::new() }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn no_such_key() -> Self {
        Self::new(StatusCode::NOT_FOUND, "NoSuchKey", "The specified key does not exist.")
    }

    pub fn no_such_bucket() -> Self {
        Self::new(StatusCode::NOT_FOUND, "NoSuchBucket", "The specified bucket does not exist.")
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidArgument", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", message).with_header("retry-after", "2")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// The XML error document, naming the resource and request.
    pub fn to_xml(&self, resource: &str, request_id: &str) -> String {
        let mut out = String::from(r#"<?xml version="1.0" encoding="UTF-8"?><Error>"#);
        element(&mut out, "Code", self.code);
        element(&mut out, "Message", &self.message);
        element(&mut out, "Resource", resource);
        element(&mut out, "RequestId", request_id);
        out.push_str("</Error>");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_control_characters() {
        assert_eq!(escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(escape("x\u{1}y"), "x&#x1;y");
    }

    #[test]
    fn url_encoding_keeps_slashes_and_encodes_plus_space_percent_and_unicode() {
        assert_eq!(url_encode("a b/c+d%e/ü.nc"), "a%20b/c%2Bd%25e/%C3%BC.nc");
        assert_eq!(url_encode("x.nc/t/0.0"), "x.nc/t/0.0");
    }

    #[test]
    fn error_document_names_code_and_resource() {
        let xml = S3Error::no_such_key().to_xml("/b/k&1", "r1");
        assert!(xml.contains("<Code>NoSuchKey</Code>"));
        assert!(xml.contains("<Resource>/b/k&amp;1</Resource>"));
    }
}
