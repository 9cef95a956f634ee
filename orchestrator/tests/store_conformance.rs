//! One suite, both backends: what the control plane relies on from a [`Store`] holds for the
//! embedded log store and for etcd alike. Each case takes an empty store and says which
//! promise broke. The etcd run starts a real etcd on loopback (tests/common/etcd.rs) and
//! skips, saying why, when there is no etcd binary.

#[path = "common/etcd.rs"]
mod etcd;

use std::sync::Arc;
use std::time::Duration;
use tugboat::store::{
    compare_and_put, delete, put, Compare, EmbeddedStore, EmbeddedStoreOptions, EtcdOptions,
    EtcdStore, EventKind, Operation, Store, StoreError, WatchEvent,
};

type Case = fn(Arc<dyn Store>) -> futures_util::future::BoxFuture<'static, ()>;

const CASES: &[(&str, Case)] = &[
    ("revisions and compare-and-swap", |s| {
        Box::pin(revisions_and_compare_and_swap(s))
    }),
    ("transactions are all or nothing", |s| {
        Box::pin(transactions_are_all_or_nothing(s))
    }),
    ("watch from a revision", |s| {
        Box::pin(watch_from_a_revision(s))
    }),
    ("compaction, then list again", |s| {
        Box::pin(compaction_then_list_again(s))
    }),
    ("large values", |s| Box::pin(large_values(s))),
    ("many keys", |s| Box::pin(many_keys(s))),
];

async fn run_all(backend: &str, mut make: impl FnMut(&str) -> Arc<dyn Store>) {
    for (name, case) in CASES {
        let store = make(name);
        tokio::time::timeout(Duration::from_secs(60), case(store))
            .await
            .unwrap_or_else(|_| panic!("{backend}: `{name}` took over 60 s"));
        eprintln!("{backend}: {name}: ok");
    }
}

#[tokio::test]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    run_all("embedded", |_| {
        n += 1;
        let path = dir.path().join(format!("store-{n}.log"));
        Arc::new(EmbeddedStore::open(&path, EmbeddedStoreOptions::default()).unwrap())
    })
    .await;
}

#[tokio::test]
async fn etcd_store_conforms() {
    let etcd = match etcd::Etcd::start() {
        Ok(etcd) => etcd,
        Err(reason) => {
            println!("SKIP etcd_store_conforms: {reason}");
            return;
        }
    };
    let mut stores = vec![];
    for (name, _) in CASES {
        let options = EtcdOptions::parse(&etcd.endpoint, &etcd::unique_prefix(name)).unwrap();
        stores.push(EtcdStore::connect(&options).await.unwrap());
    }
    let mut stores = stores.into_iter();
    run_all("etcd", |_| Arc::new(stores.next().unwrap())).await;
    drop(etcd);
}

/// The same suite over TLS with a client certificate and etcd's authentication on; a client
/// without its certificate or with a wrong password is refused, and says so.
#[tokio::test]
async fn etcd_store_conforms_over_tls_with_authentication() {
    let etcd = match etcd::Etcd::start_tls() {
        Ok(etcd) => etcd,
        Err(reason) => {
            println!("SKIP etcd_store_conforms_over_tls_with_authentication: {reason}");
            return;
        }
    };
    let files = etcd.tls.clone().unwrap();
    let options = |prefix: &str, cert: bool, password: Option<&str>| {
        let (c, k) = if cert {
            (
                Some(files.client_cert.clone()),
                Some(files.client_key.clone()),
            )
        } else {
            (None, None)
        };
        EtcdOptions::parse(&etcd.endpoint, prefix)
            .unwrap()
            .with_tls(Some(files.ca.clone()), c, k)
            .unwrap()
            .with_user(
                password.map(|_| "root".to_string()),
                password.map(str::to_string),
            )
            .unwrap()
    };
    // Authentication on, as an operator does it: a root user, then `auth enable`.
    {
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(
                std::fs::read(&files.ca).unwrap(),
            ))
            .identity(etcd_client::Identity::from_pem(
                std::fs::read(&files.client_cert).unwrap(),
                std::fs::read(&files.client_key).unwrap(),
            ));
        let mut admin = etcd_client::Client::connect(
            [etcd.endpoint.as_str()],
            Some(etcd_client::ConnectOptions::new().with_tls(tls)),
        )
        .await
        .unwrap();
        admin.user_add("root", "s3cret", None).await.unwrap();
        admin.user_grant_role("root", "root").await.unwrap();
        admin.auth_enable().await.unwrap();
    }

    let mut quick = options("/refused", false, Some("s3cret"));
    quick.request_timeout = Duration::from_secs(2);
    let err = EtcdStore::connect(&quick)
        .await
        .err()
        .expect("no client certificate");
    assert!(matches!(err, StoreError::Etcd { .. }), "{err}");
    let err = EtcdStore::connect(&options("/refused", true, Some("wrong")))
        .await
        .err()
        .expect("a wrong password");
    assert!(err.to_string().contains(&etcd.endpoint), "{err}");
    let err = EtcdStore::connect(&options("/refused", true, None))
        .await
        .err()
        .expect("no user while authentication is on");
    assert!(matches!(err, StoreError::Etcd { .. }), "{err}");

    let mut stores = vec![];
    for (name, _) in CASES {
        let options = options(&etcd::unique_prefix(name), true, Some("s3cret"));
        stores.push(EtcdStore::connect(&options).await.unwrap());
    }
    let mut stores = stores.into_iter();
    run_all("etcd over TLS with authentication", |_| {
        Arc::new(stores.next().unwrap())
    })
    .await;
    drop(etcd);
}

#[tokio::test]
async fn etcd_store_names_an_etcd_it_cannot_reach() {
    // A loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut options = EtcdOptions::parse(&format!("http://127.0.0.1:{port}"), "/t").unwrap();
    options.request_timeout = Duration::from_secs(1);
    let err = EtcdStore::connect(&options)
        .await
        .err()
        .expect("no etcd there");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Etcd { .. }), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
}

fn keys(events: &[WatchEvent]) -> Vec<(EventKind, String)> {
    events.iter().map(|e| (e.kind, e.kv.key.clone())).collect()
}

async fn revisions_and_compare_and_swap(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let r1 = put(s, "/services/web", b"1".to_vec()).await.unwrap();
    let r2 = put(s, "/services/db", b"2".to_vec()).await.unwrap();
    put(s, "/nodes/n1", b"n".to_vec()).await.unwrap();
    assert!(r2 > r1, "revisions rise: {r1} then {r2}");
    let listing = s.list("/services/").await.unwrap();
    assert!(listing.revision > r2, "a list tells the revision it saw");
    let listed: Vec<_> = listing.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        listed,
        ["/services/db", "/services/web"],
        "sorted, prefix only"
    );

    // A stale compare fails, names the key and what it found, and changes nothing.
    let err = compare_and_put(s, "/services/web", 0, b"x".to_vec())
        .await
        .unwrap_err();
    match &err {
        StoreError::Conflict {
            key,
            expected,
            found,
        } => assert_eq!((key.as_str(), *expected, *found), ("/services/web", 0, r1)),
        other => panic!("expected a conflict, got {other}"),
    }
    assert_eq!(s.get("/services/web").await.unwrap().unwrap().value, b"1");

    let r4 = compare_and_put(s, "/services/web", r1, b"3".to_vec())
        .await
        .unwrap();
    let kv = s.get("/services/web").await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.value.as_slice()),
        (r1, r4, b"3".as_slice())
    );
    assert!(s.current_revision().await.unwrap() >= r4);
    // Compare 0 on an absent key: "create only".
    compare_and_put(s, "/services/new", 0, b"n".to_vec())
        .await
        .unwrap();
    assert!(s.get("/services/none").await.unwrap().is_none());
}

async fn transactions_are_all_or_nothing(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let ra = put(s, "/t/a", b"a1".to_vec()).await.unwrap();
    let rb = put(s, "/t/b", b"b1".to_vec()).await.unwrap();
    let op = |key: &str, value: &str| Operation::Put {
        key: key.into(),
        value: value.into(),
    };
    // One stale compare among good ones: nothing of the transaction is applied.
    let err = s
        .commit(
            vec![
                Compare::ModRevision {
                    key: "/t/a".into(),
                    revision: ra,
                },
                Compare::ModRevision {
                    key: "/t/b".into(),
                    revision: ra,
                },
            ],
            vec![
                op("/t/a", "a2"),
                op("/t/c", "c2"),
                Operation::Delete { key: "/t/b".into() },
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { key, expected, found } if key == "/t/b" && *expected == ra && *found == rb),
        "{err}"
    );
    let after: Vec<_> = s
        .list("/t/")
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect();
    assert_eq!(
        after,
        [
            ("/t/a".into(), b"a1".to_vec()),
            ("/t/b".into(), b"b1".to_vec())
        ]
    );

    // All compares hold: every operation lands at one revision.
    let r = s
        .commit(
            vec![
                Compare::ModRevision {
                    key: "/t/a".into(),
                    revision: ra,
                },
                Compare::ModRevision {
                    key: "/t/c".into(),
                    revision: 0,
                },
            ],
            vec![
                op("/t/a", "a2"),
                op("/t/c", "c2"),
                Operation::Delete { key: "/t/b".into() },
            ],
        )
        .await
        .unwrap();
    let listing = s.list("/t/").await.unwrap();
    let after: Vec<_> = listing
        .items
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision))
        .collect();
    assert_eq!(
        after,
        [("/t/a", b"a2".as_slice(), r), ("/t/c", b"c2".as_slice(), r)]
    );
    // A key written twice in one transaction holds the last write.
    s.commit(vec![], vec![op("/t/d", "first"), op("/t/d", "last")])
        .await
        .unwrap();
    assert_eq!(s.get("/t/d").await.unwrap().unwrap().value, b"last");
}

async fn watch_from_a_revision(store: Arc<dyn Store>) {
    let s = store.as_ref();
    put(s, "/i/a", b"1".to_vec()).await.unwrap();
    let listing = s.list("/i/").await.unwrap();
    // Writes between the list and the watch, one outside the prefix.
    let rb = put(s, "/i/b", b"2".to_vec()).await.unwrap();
    put(s, "/other", b"x".to_vec()).await.unwrap();
    let rd = delete(s, "/i/a").await.unwrap();
    let mut watcher = s.watch("/i/", listing.revision + 1).await.unwrap();
    let mut seen = vec![];
    while seen.len() < 2 {
        let events = tokio::time::timeout(Duration::from_secs(5), watcher.next())
            .await
            .expect("the missed events come at once")
            .unwrap();
        seen.extend(events);
    }
    let got: Vec<_> = seen
        .iter()
        .map(|e| (e.kind, e.kv.key.as_str(), e.kv.mod_revision))
        .collect();
    assert_eq!(
        got,
        [
            (EventKind::Put, "/i/b", rb),
            (EventKind::Delete, "/i/a", rd)
        ]
    );
    assert_eq!(seen[0].kv.value, b"2");

    // A watch "from now" sees only later writes; both watchers get the next one.
    let mut from_now = s.watch("/i/", 0).await.unwrap();
    let writer = store.clone();
    let write = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        put(writer.as_ref(), "/i/c", b"3".to_vec()).await.unwrap()
    });
    for w in [&mut watcher, &mut from_now] {
        let events = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("a watcher wakes on a new write")
            .unwrap();
        assert_eq!(keys(&events), [(EventKind::Put, "/i/c".to_string())]);
    }
    write.await.unwrap();
}

async fn compaction_then_list_again(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let first = put(s, "/c/0", b"0".to_vec()).await.unwrap();
    for i in 1..10 {
        put(s, &format!("/c/{i}"), i.to_string().into_bytes())
            .await
            .unwrap();
    }
    let last = put(s, "/c/0", b"again".to_vec()).await.unwrap();
    s.compact(last).await.unwrap();
    // From before the compaction: told so, at the watch or at its first next().
    let outcome = match s.watch("/c/", first + 1).await {
        Err(e) => Err(e),
        Ok(mut w) => tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("a compacted watch fails promptly"),
    };
    match outcome {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!(requested, first + 1);
            assert!(oldest > first + 1, "oldest kept {oldest}");
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    // List again: the values are all there, and a watch from the list misses nothing.
    let listing = s.list("/c/").await.unwrap();
    assert_eq!(listing.items.len(), 10);
    assert_eq!(listing.items[0].value, b"again");
    let mut watcher = s.watch("/c/", listing.revision + 1).await.unwrap();
    let r = put(s, "/c/new", b"n".to_vec()).await.unwrap();
    let events = tokio::time::timeout(Duration::from_secs(5), watcher.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (events[0].kv.key.as_str(), events[0].kv.mod_revision),
        ("/c/new", r)
    );
}

async fn large_values(store: Arc<dyn Store>) {
    let s = store.as_ref();
    // 3 MiB: under the API's 4 MiB body limit, over gRPC's 4 MiB default once listed twice.
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut watcher = s.watch("/big/", 0).await.unwrap();
    put(s, "/big/a", big.clone()).await.unwrap();
    put(s, "/big/b", big.clone()).await.unwrap();
    assert_eq!(s.get("/big/a").await.unwrap().unwrap().value, big);
    let listing = s.list("/big/").await.unwrap();
    assert_eq!(listing.items.len(), 2);
    assert!(listing.items.iter().all(|kv| kv.value == big));
    let mut seen = 0;
    while seen < 2 {
        let events = tokio::time::timeout(Duration::from_secs(10), watcher.next())
            .await
            .unwrap()
            .unwrap();
        assert!(events.iter().all(|e| e.kv.value == big));
        seen += events.len();
    }
}

async fn many_keys(store: Arc<dyn Store>) {
    let s = store.as_ref();
    const KEYS: usize = 5000;
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
        let ops = chunk
            .iter()
            .map(|i| Operation::Put {
                key: format!("/many/{i:05}"),
                value: format!("value {i}").into_bytes(),
            })
            .collect();
        s.commit(vec![], ops).await.unwrap();
    }
    put(s, "/manyother", b"not under /many/".to_vec())
        .await
        .unwrap();
    let listing = s.list("/many/").await.unwrap();
    assert_eq!(listing.items.len(), KEYS);
    for (i, kv) in listing.items.iter().enumerate() {
        assert_eq!(kv.key, format!("/many/{i:05}"));
        assert_eq!(kv.value, format!("value {i}").into_bytes());
    }
    let sub = s.list("/many/0120").await.unwrap();
    assert_eq!(sub.items.len(), 10);
    // Delete them all in one transaction.
    let deletes = listing
        .items
        .iter()
        .map(|kv| Operation::Delete {
            key: kv.key.clone(),
        })
        .collect();
    s.commit(vec![], deletes).await.unwrap();
    assert!(s.list("/many/").await.unwrap().items.is_empty());
    assert!(s.get("/manyother").await.unwrap().is_some());
}
