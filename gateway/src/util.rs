//! Small helpers shared by the gateway's modules: lowercase hex, I/O errors that name their
//! file, and deleting a file that may already be gone.

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
            eprintln!("zarrgate: cannot delete {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_named_errors() {
        assert_eq!(hex(&[0, 0x0f, 0xa5, 0xff]), "000fa5ff");
        let e = at(Path::new("/x/y"), std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(e.to_string().starts_with("/x/y: "), "{e}");
    }
}
