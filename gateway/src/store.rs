//! The virtual store seam.

use zarrgate_core::refs::{Reference, ReferenceSet};

/// What the S3 layer serves: keys and their bytes (or where to find them).
///
/// # Contract
/// - `get` of a key that does not exist is `None` (Zarr reads that as fill value); it is not an
///   error.
/// - `list` returns keys in ascending byte order, each once.
pub trait VirtualStore: Send + Sync {
    fn get(&self, key: &str) -> Option<&Reference>;
    fn list(&self) -> Vec<&str>;
}

impl VirtualStore for ReferenceSet {
    fn get(&self, key: &str) -> Option<&Reference> {
        self.refs.get(key)
    }

    fn list(&self) -> Vec<&str> {
        self.refs.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_keys_are_none_and_listing_is_sorted() {
        let mut set = ReferenceSet::default();
        set.put_json("b/.zarray", &serde_json::json!({}));
        set.put_json(".zgroup", &serde_json::json!({"zarr_format": 2}));
        assert!(VirtualStore::get(&set, "b/0").is_none());
        assert!(VirtualStore::get(&set, ".zgroup").is_some());
        assert_eq!(VirtualStore::list(&set), vec![".zgroup", "b/.zarray"]);
    }
}
