//! docs/api.yaml describes exactly the routes the server serves.

mod common;

use std::collections::BTreeSet;
use tugboat::http::routes;

fn documented() -> BTreeSet<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.yaml");
    let text = std::fs::read_to_string(path).expect("docs/api.yaml exists");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("docs/api.yaml is YAML");
    assert_eq!(
        doc["openapi"].as_str().map(|v| v.starts_with("3.")),
        Some(true),
        "an OpenAPI 3 document"
    );
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_mapping().expect("paths").iter() {
        for (method, _) in item.as_mapping().expect("path item").iter() {
            let method = method.as_str().unwrap();
            if ["get", "put", "post", "patch", "delete"].contains(&method) {
                out.insert((method.to_uppercase(), path.as_str().unwrap().to_string()));
            }
        }
    }
    out
}

#[test]
fn the_document_lists_every_route_and_no_other() {
    let served: BTreeSet<(String, String)> = routes()
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let documented = documented();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in docs/api.yaml: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "in docs/api.yaml but not served: {unserved:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_reaches_a_handler_over_http() {
    let cluster = common::TestCluster::start(&[]).await;
    let http = reqwest::Client::new();
    for (method, path) in documented() {
        let concrete = path
            .replace("{kind}", "services")
            .replace("{name}", "nothing")
            .replace("{id}", "nothing-a-b");
        let url = format!("http://{}{concrete}", cluster.server.addr);
        let mut request = http
            .request(method.parse().unwrap(), &url)
            .bearer_auth(cluster.server.token.clone().unwrap());
        if concrete.starts_with("/v1/watch") {
            request = request.query(&[("timeout_seconds", "0")]);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        if concrete == "/metrics" {
            // Text, not JSON.
            assert!(
                status == 200 && text.ends_with("# EOF\n"),
                "{status} {text}"
            );
            continue;
        }
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        // Reaching the handler: any answer but the router's "no such endpoint" or 405.
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            !message.starts_with("no such endpoint") && status != 405,
            "{method} {path}: {status} {body}"
        );
    }
    cluster.stop().await;
}
