//! Per-request costs on the gateway's hot path: SigV4 verification, and one listing page over
//! 100,000 keys. Run with `cargo bench --bench gateway`; figures go to docs/benchmarks.md.

use std::collections::BTreeMap;
use std::ops::Bound;

use criterion::{criterion_group, criterion_main, Criterion};
use zarrgate_gateway::auth::sigv4::{self, Canonical};
use zarrgate_gateway::store::list::{list, Item, KeySpace, ListQuery};

struct Keys(BTreeMap<String, u64>);

impl KeySpace for Keys {
    type Entry = u64;
    fn scan<'a>(&'a self, from: Bound<&str>) -> Box<dyn Iterator<Item = Item<u64>> + 'a> {
        Box::new(self.0.range::<str, _>((from, Bound::Unbounded)).map(|(k, v)| Item::Key(k.clone(), *v)))
    }
}

fn bench(c: &mut Criterion) {
    let auth = "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41";
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let headers: Vec<(String, String)> = [
        ("host", "examplebucket.s3.amazonaws.com"),
        ("range", "bytes=0-9"),
        ("x-amz-content-sha256", empty),
        ("x-amz-date", "20130524T000000Z"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    c.bench_function("sigv4_verify_header", |b| {
        b.iter(|| {
            let signed = sigv4::parse_authorization(auth, Some("20130524T000000Z")).unwrap();
            let canonical =
                Canonical { method: "GET", uri: "/test.txt", query: "", headers: &headers, payload_hash: empty };
            let sig = sigv4::signature("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", &signed, &canonical);
            assert!(sigv4::constant_time_eq(sig.as_bytes(), signed.signature.as_bytes()));
        })
    });

    let keys = Keys((0..100_000u64).map(|i| (format!("ds{:02}.nc/tas/{}.0.0", i % 50, i), i)).collect());
    c.bench_function("list_page_1000_of_100k_keys", |b| {
        b.iter(|| {
            let q = ListQuery { prefix: "ds17.nc/".into(), delimiter: None, max_keys: 1000, after: None };
            assert_eq!(list(&keys, &q).contents.len(), 1000);
        })
    });
    c.bench_function("list_root_delimiter_100k_keys", |b| {
        b.iter(|| {
            let q = ListQuery { prefix: String::new(), delimiter: Some("/".into()), max_keys: 1000, after: None };
            assert_eq!(list(&keys, &q).common_prefixes.len(), 50);
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
