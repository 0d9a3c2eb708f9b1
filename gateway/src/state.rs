//! What the S3 layer and the operations share: the collections, source-file handles, auth and
//! the counters. [`crate::app::App`] holds it with what only the front needs (the operations
//! service, the client-address rules, the request ids), so that the operations depend on this
//! and not on the app that holds them.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::auth::Auth;
use crate::collection::Collection;
use crate::metrics::Metrics;
use crate::source::Sources;

pub struct State {
    pub collections: BTreeMap<String, Arc<Collection>>,
    pub sources: Sources,
    pub auth: Arc<Auth>,
    pub metrics: Metrics,
}
