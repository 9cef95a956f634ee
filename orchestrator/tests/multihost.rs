//! Root test of services across hosts: two "hosts" are two network namespaces of the test's
//! own, joined by a veth pair with test addresses (192.168.213.1/24 and .2/24, inside those
//! namespaces only). Host A runs `tugboat server` and agent `a` (subnet 10.88.1.0/24),
//! host B runs agent `b` (10.88.2.0/24). A service pinned to B answers at its virtual
//! address from A's host side and by name from a container on A: A's kernel balances
//! (nftables DNAT) over B's instance, reached through a host-gw route A's agent made from B's registration. A
//! service with an instance on each host is balanced over both, from either host. When B
//! goes, A drops its route and its endpoints. The same again with a VXLAN overlay between
//! the hosts instead of host-gw routes. The machine's root network namespace is never
//! changed.

mod host;

use host::{http_get, instances, run, shop_images, wait_for, TestHost};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;
use tugboat::model::{Instance, InstancePhase, Resources};
use tugboat::wire::NodeRegistration;

const START: Duration = Duration::from_secs(120);
const SERVER: &str = "192.168.213.1:7480";

const SPEC: &str = "\
services:
  catalog:
    image: shop/catalog:1
    replicas: 1
    ports:
      - {container: 80}
    health:
      readiness: {http: {port: 80, path: /healthz}, interval_seconds: 1, failure_threshold: 1}
    stop: {grace_seconds: 1}
    placement:
      constraints:
        - {key: host, operator: In, values: [b]}
  menu:
    image: shop/catalog:1
    replicas: 2
    ports:
      - {container: 80}
    health:
      readiness: {http: {port: 80, path: /healthz}, interval_seconds: 1, failure_threshold: 1}
    stop: {grace_seconds: 1}
    placement:
      anti_affinity: [{service: menu, required: true}]
  shopper:
    image: shop/front:1
    replicas: 1
    stop: {grace_seconds: 1}
    placement:
      constraints:
        - {key: host, operator: In, values: [a]}
";

/// The veth pair between the two hosts' namespaces, made inside them (never in the root
/// namespace). Deleted on drop (deleting one end removes both), before the namespaces go.
struct Wire {
    netns: String,
    name: String,
}

impl Wire {
    fn new(a: &TestHost, b: &TestHost) -> Wire {
        let (end_a, end_b) = (format!("mh{}a", std::process::id()), "mhb".to_string());
        #[rustfmt::skip]
        run(&["ip", "-n", &a.netns, "link", "add", &end_a, "type", "veth",
              "peer", "name", &end_b, "netns", &b.netns]);
        let wire = Wire {
            netns: a.netns.clone(),
            name: end_a.clone(),
        };
        for (ns, dev, addr) in [
            (&a.netns, &end_a, "192.168.213.1/24"),
            (&b.netns, &end_b, "192.168.213.2/24"),
        ] {
            run(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        wire
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", &self.netns, "link", "del", &self.name])
            .status();
    }
}

fn agent_args(
    host: &TestHost,
    node: &str,
    subnet: &str,
    address: &str,
    overlay: &str,
) -> Vec<String> {
    let image = |name: &str| shop_images().join("oci").join(name).display().to_string();
    [
        "agent",
        "--insecure-no-auth",
        "--addr",
        &format!("http://{SERVER}"),
        "--data-dir",
        &host.dir.join("agent").display().to_string(),
        "--node",
        node,
        "--subnet",
        subnet,
        "--address",
        address,
        "--overlay",
        overlay,
        "--api-listen",
        &format!("{address}:7481"),
        "--label",
        &format!("host={node}"),
        "--import",
        &image("shop-front"),
        "--import",
        &image("shop-catalog"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn spawn(host: &mut TestHost, name: &str, args: &[String]) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    host.spawn(name, &args);
}

fn ready_on<'a>(list: &'a [Instance], service: &str, node: &str) -> Option<&'a Instance> {
    list.iter().find(|i| {
        i.service == service
            && i.node.as_deref() == Some(node)
            && i.phase == InstancePhase::Running
            && i.ready
            && i.address.is_some()
    })
}

/// Everything the two hosts said, and the server's instances.
fn show(a: &TestHost, b: &TestHost) -> String {
    let table = tugboat::output::instances_table(&instances(a), tugboat::model::now_ms(), false);
    format!(
        "{table}\n--- routes on A:\n{}--- A said:\n{}--- B said:\n{}",
        routes(a),
        a.output.lock().unwrap(),
        b.output.lock().unwrap()
    )
}

/// The endpoints the host's kernel balances `service` over (tug-netns' record).
fn served(host: &TestHost, service: &str) -> Option<Vec<std::net::Ipv4Addr>> {
    tugboat::agent::services::programmed_endpoints(&host.dir.join("agent"), "tugboat", service)
}

#[test]
fn a_service_on_one_host_answers_from_the_other() {
    skip_unless_possible!("a_service_on_one_host_answers_from_the_other");
    two_hosts("host-gw");
}

#[test]
fn a_service_on_one_host_answers_from_the_other_over_vxlan() {
    skip_unless_possible!("a_service_on_one_host_answers_from_the_other_over_vxlan");
    two_hosts("vxlan");
}

fn two_hosts(overlay: &str) {
    let mut a = TestHost::new();
    let mut b = TestHost::new();
    let _wire = Wire::new(&a, &b);
    let server_dir = a.dir.join("server").display().to_string();
    #[rustfmt::skip]
    a.spawn("server", &["server", "--listen", "0.0.0.0:7480", "--insecure-no-auth",
                        "--insecure-plain-http", "--data-dir", &server_dir]);
    a.wait_for_output("server: tugboat server listening", START);
    let args = agent_args(&a, "a", "10.88.1.0/24", "192.168.213.1", overlay);
    spawn(&mut a, "agent-a", &args);
    let args = agent_args(&b, "b", "10.88.2.0/24", "192.168.213.2", overlay);
    spawn(&mut b, "agent-b", &args);
    wait_for(
        "nodes a and b registered",
        START,
        || a.api(|c| async move { c.nodes().await.map(|l| l.items.len()).unwrap_or(0) }) == 2,
        || show(&a, &b),
    );

    // A second node whose subnet overlaps b's is refused, and told why.
    let refused = a.api(|c| async move {
        let registration = NodeRegistration {
            runtimes: vec![],
            name: "c".into(),
            labels: BTreeMap::new(),
            capacity: Resources::new(1000, 1 << 30, 0),
            address: Some("192.168.213.3".into()),
            subnet: Some("10.88.2.128/25".parse().unwrap()),
            volumes: vec![],
            agent_url: None,
        };
        c.register_node(&registration).await
    });
    let e = refused
        .expect_err("an overlapping subnet is refused")
        .to_string();
    for part in ["node c", "10.88.2.128/25", "node b", "10.88.2.0/24"] {
        assert!(e.contains(part), "no `{part}` in: {e}");
    }

    let spec = tugboat::spec::parse_spec_file("multihost.yaml", SPEC, &|_| false).unwrap();
    a.api(|c| async move { c.apply(&spec).await.map(|_| ()) })
        .expect("apply");
    let mut catalog = None;
    wait_for(
        "catalog ready on b and shopper ready on a",
        START,
        || {
            let list = instances(&a);
            catalog = ready_on(&list, "catalog", "b").cloned();
            catalog.is_some() && ready_on(&list, "shopper", "a").is_some()
        },
        || show(&a, &b),
    );
    let catalog = catalog.unwrap();
    let catalog_address: std::net::Ipv4Addr = catalog.address.as_deref().unwrap().parse().unwrap();
    assert!(
        "10.88.2.0/24"
            .parse::<ipnetwork::Ipv4Network>()
            .unwrap()
            .contains(catalog_address),
        "{catalog_address} is not in b's subnet"
    );
    let shopper = ready_on(&instances(&a), "shopper", "a").unwrap().clone();
    // The catalog's JSON names the instance that answered (the front's pages never do).
    let answer = format!(
        r#""served_by":"{}""#,
        tugboat::agent::bundle::hostname(&catalog.id)
    );

    // (a) A's host side, at the service's virtual address: the server gave it, and both
    // nodes use it.
    let vip = a
        .api(|c| async move { c.services().await })
        .expect("services")
        .items
        .into_iter()
        .find(|s| s.name == "catalog")
        .and_then(|s| s.address)
        .expect("catalog has its virtual address once its instance is ready");
    let saved = |host: &TestHost| {
        std::fs::read(host.dir.join("agent/services.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<BTreeMap<String, std::net::Ipv4Addr>>(&b).ok())
            .and_then(|m| m.get("catalog").copied())
    };
    wait_for(
        &format!("catalog at {vip} on both nodes"),
        START,
        || saved(&a) == Some(vip) && saved(&b) == Some(vip),
        || show(&a, &b),
    );
    let target = format!("{vip}:80");
    let last = std::cell::RefCell::new(String::new());
    wait_for(
        &format!("{answer} from {target} on A's host"),
        START,
        || {
            let target = target.clone();
            let got = a
                .in_netns(move || http_get(&target, "/products"))
                .unwrap_or_else(|e| e);
            *last.borrow_mut() = got;
            last.borrow().contains(&answer)
        },
        || format!("last answer: {}\n{}", last.borrow(), show(&a, &b)),
    );

    // (b) A container on A, by the service's name: the shopper's front page lists the
    // products it fetched from http://catalog/ (the only catalog, on B).
    let page = format!("{}:80", shopper.address.as_deref().unwrap());
    wait_for(
        &format!("the products through the shopper's page at {page} on A"),
        START,
        || {
            let page = page.clone();
            let got = a
                .in_netns(move || http_get(&page, "/"))
                .unwrap_or_else(|e| e);
            *last.borrow_mut() = got;
            last.borrow().contains("Tea") && last.borrow().contains("4.00 EUR")
        },
        || format!("last answer: {}\n{}", last.borrow(), show(&a, &b)),
    );

    // And a command run in that container (busybox wget; its -T segfaults, so none).
    let id = shopper.id.clone();
    let got = a.api(|c| async move {
        let command = ["wget", "-qO-", "http://catalog/products"].map(String::from);
        match c.exec(&id, &command).await {
            Ok(r) => format!("exit {}: {}{}", r.exit_code, r.stdout, r.stderr),
            Err(e) => e.to_string(),
        }
    });
    assert!(
        got.starts_with("exit 0: ") && got.contains(&answer),
        "{got}"
    );

    // (c) A service with an instance on each node: balanced over both, from either host.
    let mut menus = vec![];
    wait_for(
        "a menu instance ready on each node",
        START,
        || {
            let list = instances(&a);
            menus = ["a", "b"]
                .iter()
                .filter_map(|n| ready_on(&list, "menu", n).cloned())
                .collect();
            menus.len() == 2
        },
        || show(&a, &b),
    );
    let menu_vip = a
        .api(|c| async move { c.services().await })
        .expect("services")
        .items
        .into_iter()
        .find(|s| s.name == "menu")
        .and_then(|s| s.address)
        .expect("menu's virtual address");
    for host in [&a, &b] {
        let seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
        let target = format!("{menu_vip}:80");
        wait_for(
            &format!(
                "both menu instances answering at {target} on {}",
                host.netns
            ),
            START,
            || {
                let target = target.clone();
                let got = host
                    .in_netns(move || http_get(&target, "/products"))
                    .unwrap_or_else(|e| e);
                for m in &menus {
                    if got.contains(&format!(
                        r#""served_by":"{}""#,
                        tugboat::agent::bundle::hostname(&m.id)
                    )) {
                        seen.borrow_mut().insert(m.id.clone());
                    }
                }
                *last.borrow_mut() = got;
                seen.borrow().len() == 2
            },
            || {
                format!(
                    "seen {:?}, last answer: {}\n{}",
                    seen.borrow(),
                    last.borrow(),
                    show(&a, &b)
                )
            },
        );
    }

    if overlay == "host-gw" {
        edge_cut_off(&a, &b, &menus, menu_vip);
    }

    // B's instance gone: A's services drop it (the server no longer lists it as ready). (After
    // B was cut off, its catalog instance may have been replaced: the one ready now.)
    let mut catalog_now = None;
    wait_for(
        "a catalog instance on b ready and in A's services",
        START,
        || {
            catalog_now = ready_on(&instances(&a), "catalog", "b")
                .and_then(|i| i.address.as_deref()?.parse::<std::net::Ipv4Addr>().ok());
            catalog_now.is_some() && served(&a, "catalog") == Some(vec![catalog_now.unwrap()])
        },
        || show(&a, &b),
    );
    if overlay != "host-gw" {
        assert_eq!(catalog_now, Some(catalog_address));
    }
    a.api(|c| async move { c.scale("catalog", 0).await.map(|_| ()) })
        .expect("scale catalog to 0");
    wait_for(
        "catalog's endpoint on b gone from A's services",
        START,
        || served(&a, "catalog") == Some(vec![]),
        || show(&a, &b),
    );

    // B goes (its agent stopped, the node deleted): A's route to B's subnet goes, and with
    // it B's menu instance from A's services.
    // host-gw: via B's address; VXLAN: via B's tunnel endpoint (its subnet's first address)
    // on the VXLAN device, whose forwarding entry sends to B's address.
    let route = match overlay {
        "vxlan" => "10.88.2.0/24 via 10.88.2.0 dev tvx",
        _ => "10.88.2.0/24 via 192.168.213.2",
    };
    assert!(
        routes(&a).contains(route),
        "no `{route}` in:\n{}",
        routes(&a)
    );
    if overlay == "vxlan" {
        let fdb = Command::new("bridge")
            .args(["-n", &a.netns, "fdb", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        assert!(fdb.contains("dst 192.168.213.2"), "{fdb}");
    }
    b.stop_spawned();
    a.api(|c| async move {
        c.call::<serde_json::Value>(reqwest::Method::DELETE, "/v1/nodes/b", None)
            .await
            .map(|_| ())
    })
    .expect("delete node b");
    let menu_a = menus
        .iter()
        .find(|m| m.node.as_deref() == Some("a"))
        .unwrap();
    let menu_a: std::net::Ipv4Addr = menu_a.address.as_deref().unwrap().parse().unwrap();
    wait_for(
        "A's route to 10.88.2.0/24 and b's menu endpoint gone",
        START,
        || !routes(&a).contains("10.88.2.0/24") && served(&a, "menu") == Some(vec![menu_a]),
        || format!("routes on A:\n{}\n{}", routes(&a), show(&a, &b)),
    );
}

/// B loses its link (to the server and to A): every request at the menu's address from B
/// answers, at once and once B's probes of A have failed, when B balances over its own
/// instance only (in under a second, not the server's timers): a request whose SYN went to
/// A's unreachable instance meanwhile is balanced again when it is retransmitted (after
/// 1 s), because tug-netns deletes unanswered connections to an endpoint taken out. With the
/// link back, A's instance is an endpoint on B again.
fn edge_cut_off(a: &TestHost, b: &TestHost, menus: &[Instance], menu_vip: std::net::Ipv4Addr) {
    let own: std::net::Ipv4Addr = menus
        .iter()
        .find(|m| m.node.as_deref() == Some("b"))
        .and_then(|m| m.address.as_deref())
        .unwrap()
        .parse()
        .unwrap();
    let both = |eps: Option<Vec<std::net::Ipv4Addr>>| eps.is_some_and(|e| e.len() == 2);
    assert!(both(served(b, "menu")), "{:?}", served(b, "menu"));
    run(&["ip", "-n", &b.netns, "link", "set", "mhb", "down"]);
    // At once, while A's instance is still an endpoint on B.
    let menu_answers = |n: usize| -> Vec<Result<String, String>> {
        (0..n)
            .map(|_| {
                let target = format!("{menu_vip}:80");
                b.in_netns(move || http_get(&target, "/products"))
            })
            .filter(|r| {
                !r.as_ref()
                    .is_ok_and(|t| t.contains(r#""served_by":"menu-"#))
            })
            .collect()
    };
    let failed = menu_answers(10);
    assert!(
        failed.is_empty(),
        "just cut off, B's menu failed: {failed:?}"
    );
    wait_for(
        "B, cut off, to balance over its own menu instance only",
        Duration::from_secs(20),
        || served(b, "menu") == Some(vec![own]),
        || format!("{:?}\n{}", served(b, "menu"), show(a, b)),
    );
    let failed = menu_answers(20);
    assert!(failed.is_empty(), "cut off, B's menu failed: {failed:?}");
    run(&["ip", "-n", &b.netns, "link", "set", "mhb", "up"]);
    wait_for(
        "A's menu instance back among B's endpoints once the link is up",
        START,
        || both(served(b, "menu")),
        || format!("{:?}\n{}", served(b, "menu"), show(a, b)),
    );
}

fn routes(host: &TestHost) -> String {
    Command::new("ip")
        .args(["-n", &host.netns, "route"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
