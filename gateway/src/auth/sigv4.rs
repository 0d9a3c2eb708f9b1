//! AWS Signature Version 4 for S3, header and presigned-query forms (verification only).
//!
//! # Canonical request (S3 flavour)
//! - The URI is the path as sent, each character outside `A-Z a-z 0-9 - _ . ~ /` encoded once
//!   (S3 does not double-encode). We try the path exactly as received first, then its
//!   normalized encoding, so both common client behaviours verify.
//! - The query is every parameter but `X-Amz-Signature`, each name and value encoded the same
//!   way, sorted by name then value.
//! - Headers are the signed ones, lowercased, values trimmed with inner runs of spaces
//!   collapsed, sorted.
//! - The payload hash is `x-amz-content-sha256` (header form) or `UNSIGNED-PAYLOAD` (presigned).

use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

use crate::util::hex;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Longest presigned URL lifetime S3 accepts (7 days).
pub const MAX_PRESIGN_SECONDS: u64 = 7 * 24 * 3600;

const UNRESERVED_AND_SLASH: &AsciiSet =
    &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/');
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// The parts of a signature a request carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub access_key: String,
    /// `YYYYMMDD` of the scope.
    pub date: String,
    pub region: String,
    pub service: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedRequest {
    pub credential: Credential,
    pub signed_headers: Vec<String>,
    pub signature: String,
    /// `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`).
    pub amz_date: String,
    /// Presigned URLs only: lifetime in seconds.
    pub expires: Option<u64>,
}

/// Why a signature could not even be read (S3 answers these with 400).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

fn parse_credential(text: &str) -> Result<Credential, Malformed> {
    let parts: Vec<&str> = text.split('/').collect();
    match parts.as_slice() {
        [key, date, region, service, "aws4_request"] if !key.is_empty() && date.len() == 8 => Ok(Credential {
            access_key: key.to_string(),
            date: date.to_string(),
            region: region.to_string(),
            service: service.to_string(),
        }),
        _ => Err(Malformed(format!("the credential {text:?} is not ACCESS_KEY/YYYYMMDD/REGION/SERVICE/aws4_request"))),
    }
}

/// Reads `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
pub fn parse_authorization(header: &str, amz_date: Option<&str>) -> Result<SignedRequest, Malformed> {
    let rest = header.strip_prefix(ALGORITHM).ok_or_else(|| Malformed(format!("only {ALGORITHM} is supported")))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(parse_credential(v)?);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v.split(';').map(str::to_string).collect::<Vec<_>>());
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v.to_string());
        }
    }
    let missing = |what: &str| Malformed(format!("the Authorization header has no {what}"));
    Ok(SignedRequest {
        credential: credential.ok_or_else(|| missing("Credential"))?,
        signed_headers: signed.ok_or_else(|| missing("SignedHeaders"))?,
        signature: signature.ok_or_else(|| missing("Signature"))?,
        amz_date: amz_date.ok_or_else(|| missing("x-amz-date header"))?.to_string(),
        expires: None,
    })
}

/// Reads the `X-Amz-*` parameters of a presigned URL (`query` already decoded).
pub fn parse_presigned(query: &[(String, String)]) -> Result<SignedRequest, Malformed> {
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| Malformed(format!("the presigned URL has no {name}")))
    };
    if get("X-Amz-Algorithm")? != ALGORITHM {
        return Err(Malformed(format!("only {ALGORITHM} is supported")));
    }
    let expires: u64 =
        get("X-Amz-Expires")?.parse().map_err(|_| Malformed("X-Amz-Expires must be a number of seconds".into()))?;
    if expires > MAX_PRESIGN_SECONDS {
        return Err(Malformed("X-Amz-Expires must be less than a week (604800 seconds)".into()));
    }
    Ok(SignedRequest {
        credential: parse_credential(get("X-Amz-Credential")?)?,
        signed_headers: get("X-Amz-SignedHeaders")?.split(';').map(str::to_string).collect(),
        signature: get("X-Amz-Signature")?.to_string(),
        amz_date: get("X-Amz-Date")?.to_string(),
        expires: Some(expires),
    })
}

/// `path` with every character outside the unreserved set and `/` percent-encoded once.
pub fn canonical_uri(decoded_path: &str) -> String {
    utf8_percent_encode(decoded_path, UNRESERVED_AND_SLASH).to_string()
}

/// The canonical query string of a raw query (as sent), without `X-Amz-Signature`.
///
/// A `+` is read as a space, as the gateway reads the query's arguments: what is signed is what
/// is acted on (otherwise a signed `%2B` could be sent as `+` and read as a space).
pub fn canonical_query(raw_query: &str) -> String {
    let decode = |s: &str| percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
    let mut pairs: Vec<(String, String)> = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .map(|(k, v)| (decode(k), decode(v)))
        .filter(|(k, _)| k != "X-Amz-Signature")
        .map(|(k, v)| {
            (utf8_percent_encode(&k, UNRESERVED).to_string(), utf8_percent_encode(&v, UNRESERVED).to_string())
        })
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// A header value as SigV4 canonicalizes it.
pub fn canonical_header_value(values: &[&str]) -> String {
    values.iter().map(|v| v.split_whitespace().collect::<Vec<_>>().join(" ")).collect::<Vec<_>>().join(",")
}

pub struct Canonical<'a> {
    pub method: &'a str,
    pub uri: &'a str,
    pub query: &'a str,
    /// `(lowercase name, canonical value)` for each signed header, in signed order.
    pub headers: &'a [(String, String)],
    pub payload_hash: &'a str,
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The key derived from a secret for one day, region and service.
pub fn signing_key(secret: &str, credential: &Credential) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), credential.date.as_bytes());
    let k_region = hmac(&k_date, credential.region.as_bytes());
    let k_service = hmac(&k_region, credential.service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// The hex signature of a canonical request.
pub fn signature(secret: &str, signed: &SignedRequest, canonical: &Canonical) -> String {
    signature_with_key(&signing_key(secret, &signed.credential), signed, canonical)
}

/// The hex signature of a canonical request, with a signing key derived beforehand (it is the
/// same for a key all day, so callers may cache it).
pub fn signature_with_key(key: &[u8], signed: &SignedRequest, canonical: &Canonical) -> String {
    let mut request = format!("{}\n{}\n{}\n", canonical.method, canonical.uri, canonical.query);
    for (name, value) in canonical.headers {
        request.push_str(&format!("{name}:{value}\n"));
    }
    request.push_str(&format!("\n{}\n{}", signed.signed_headers.join(";"), canonical.payload_hash));
    let c = &signed.credential;
    let scope = format!("{}/{}/{}/aws4_request", c.date, c.region, c.service);
    let to_sign = format!("{ALGORITHM}\n{}\n{scope}\n{}", signed.amz_date, hex(&Sha256::digest(request.as_bytes())));
    hex(&hmac(key, to_sign.as_bytes()))
}

/// Equality that takes the same time wherever the first difference is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Seconds since the epoch of an `X-Amz-Date` value.
pub fn parse_amz_date(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, s) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The examples of the AWS S3 documentation ("Signature Calculations for the Authorization
    // Header" and "Authenticating Requests: Using Query Parameters").
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn aws_example_get_object_with_range() {
        let auth = "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41";
        let signed = parse_authorization(auth, Some("20130524T000000Z")).unwrap();
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ]);
        let c = Canonical { method: "GET", uri: "/test.txt", query: "", headers: &h, payload_hash: EMPTY_SHA256 };
        assert_eq!(signature(SECRET, &signed, &c), signed.signature);
    }

    #[test]
    fn aws_example_list_objects() {
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ]);
        let auth = "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;x-amz-content-sha256;x-amz-date,Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7";
        let signed = parse_authorization(auth, Some("20130524T000000Z")).unwrap();
        let query = canonical_query("prefix=J&max-keys=2");
        assert_eq!(query, "max-keys=2&prefix=J");
        let c = Canonical { method: "GET", uri: "/", query: &query, headers: &h, payload_hash: EMPTY_SHA256 };
        assert_eq!(signature(SECRET, &signed, &c), signed.signature);
    }

    #[test]
    fn aws_example_presigned_url() {
        let raw = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
        let decoded: Vec<(String, String)> = raw
            .split('&')
            .map(|p| p.split_once('=').unwrap())
            .map(|(k, v)| (k.to_string(), percent_decode_str(v).decode_utf8_lossy().into_owned()))
            .collect();
        let signed = parse_presigned(&decoded).unwrap();
        assert_eq!(signed.expires, Some(86_400));
        let h = headers(&[("host", "examplebucket.s3.amazonaws.com")]);
        let query = canonical_query(raw);
        let c =
            Canonical { method: "GET", uri: "/test.txt", query: &query, headers: &h, payload_hash: "UNSIGNED-PAYLOAD" };
        assert_eq!(signature(SECRET, &signed, &c), signed.signature);
    }

    #[test]
    fn malformed_signatures_are_named() {
        assert!(parse_authorization("AWS4-HMAC-SHA256 Credential=AK/2013/us/s3", Some("x")).is_err());
        assert!(parse_authorization("Basic abc", Some("x")).is_err());
        let q = vec![("X-Amz-Algorithm".to_string(), ALGORITHM.to_string()), ("X-Amz-Expires".into(), "604801".into())];
        assert!(parse_presigned(&q).unwrap_err().0.contains("week"));
    }

    #[test]
    fn helpers() {
        assert_eq!(canonical_uri("/b/a b+c/ü~.nc"), "/b/a%20b%2Bc/%C3%BC~.nc");
        assert_eq!(canonical_header_value(&["  a   b  ", "c"]), "a b,c");
        assert!(
            constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd") && !constant_time_eq(b"a", b"ab")
        );
        assert_eq!(parse_amz_date("20130524T000000Z"), Some(1_369_353_600));
        assert_eq!(parse_amz_date("20130524T000000"), None);
    }

    #[test]
    fn a_plus_is_signed_as_the_space_it_is_read_as() {
        assert_eq!(canonical_query("var=a+b"), canonical_query("var=a%20b"));
        assert_ne!(canonical_query("var=a+b"), canonical_query("var=a%2Bb"));
    }

    proptest::proptest! {
        /// Canonicalising twice changes nothing, and the order of the arguments does not matter:
        /// the string to sign depends only on what the request asks for.
        #[test]
        fn canonical_query_is_stable_and_order_free(
            pairs in proptest::collection::vec(("[a-zA-Z0-9%+ ._~=-]{0,8}", "[a-zA-Z0-9%+/ ._~é-]{0,8}"), 0..6),
            rotate in 0usize..6,
        ) {
            let raw: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let once = canonical_query(&raw.join("&"));
            proptest::prop_assert_eq!(canonical_query(&once), once.clone());
            let mut turned = raw.clone();
            if !turned.is_empty() {
                let n = turned.len();
                turned.rotate_left(rotate % n);
            }
            proptest::prop_assert_eq!(canonical_query(&turned.join("&")), once);
        }

        /// Any path canonicalises to unreserved characters, `/` and `%XX` escapes only.
        #[test]
        fn canonical_uri_is_plain_ascii(path in "\\PC{0,30}") {
            let uri = canonical_uri(&path);
            proptest::prop_assert!(uri.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~/%".contains(&b)), "{}", uri);
        }

        /// Arbitrary Authorization headers and presigned queries are refused or parsed, never
        /// a panic.
        #[test]
        fn credentials_never_panic(header in ".{0,200}", query in proptest::collection::vec((".{0,20}", ".{0,40}"), 0..8)) {
            let _ = parse_authorization(&header, Some("20261207T000000Z"));
            let _ = parse_presigned(&query);
            let _ = parse_amz_date(&header);
        }
    }
}
