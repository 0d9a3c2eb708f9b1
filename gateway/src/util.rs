//! Small helpers shared by the gateway's modules: lowercase hex, I/O errors that name their
//! file, deleting a file that may already be gone, and percent-decoding URL parts.

use std::path::{Path, PathBuf};

/// Lowercase hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// An I/O error that names the file it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
struct PathError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// `source`, of the same kind, with `path` in its message.
pub fn at(path: &Path, source: std::io::Error) -> std::io::Error {
    std::io::Error::new(source.kind(), PathError { path: path.to_path_buf(), source })
}

/// Deletes a file; one already gone is fine, and other failures are logged, not raised.
pub fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("cannot delete {}: {e}", path.display());
        }
    }
}

/// Percent-decodes a URL component; `plus` also turns `+` into a space (query strings). None
/// if the result is not UTF-8.
pub fn decode_component(text: &str, plus: bool) -> Option<String> {
    let text = if plus { text.replace('+', " ") } else { text.to_string() };
    percent_encoding::percent_decode_str(&text).decode_utf8().ok().map(|s| s.into_owned())
}

/// The pairs of a query string, percent-decoded (`+` is a space); None if one is not UTF-8.
pub fn parse_query(query: Option<&str>) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((decode_component(k, true)?, decode_component(v, true)?));
    }
    Some(out)
}

/// Creates `dir` (and its parents) readable by this user only, and makes it so if it exists.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).map_err(|e| at(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| at(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_plus_and_percent() {
        let q = parse_query(Some("prefix=a+b%2Bc&list-type=2&x")).unwrap();
        assert_eq!(q[0], ("prefix".into(), "a b+c".into()));
        assert_eq!(q[2], ("x".into(), String::new()));
        assert!(parse_query(Some("prefix=%FF")).is_none());
    }

    #[test]
    fn hex_and_named_errors() {
        assert_eq!(hex(&[0, 0x0f, 0xa5, 0xff]), "000fa5ff");
        let e = at(Path::new("/x/y"), std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(e.to_string().starts_with("/x/y: "), "{e}");
    }
}
