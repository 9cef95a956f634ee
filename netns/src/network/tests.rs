//! Unit tests of step order and rollback, with the recording fake.
use super::*;
use crate::fake::{Call, Recorder};
use crate::nft::Op;
use crate::Protocol;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Any file on nsfs or procfs passes `Netns::open`; /proc/self/ns/net is one.
fn ns() -> NetnsRef {
    NetnsRef::Path("/proc/self/ns/net".into())
}

fn open(dir: &Path, fake: &Recorder) -> Network<Recorder> {
    let cfg = NetworkConfig::new("n1", "10.9.0.0/24".parse().unwrap(), dir);
    rt().block_on(Network::open_with(fake.clone(), cfg))
        .unwrap()
}

fn web() -> AttachRequest {
    let mut r = AttachRequest::new("web", ns());
    r.ports = vec![PortMapping {
        protocol: Protocol::Tcp,
        host_port: 80,
        container_port: 8080,
    }];
    r
}

#[test]
fn open_creates_bridge_then_address_then_forwarding_then_rules() {
    let d = tempfile::tempdir().unwrap();
    let fake = Recorder::new("host");
    open(d.path(), &fake);
    let calls = fake.calls();
    assert_eq!(calls[0], Call::AddBridge("tug-n1".into()));
    assert_eq!(
        calls[1],
        Call::AddAddress("tug-n1".into(), "10.9.0.1/24".parse().unwrap())
    );
    assert_eq!(calls[2], Call::Sysctl("ipv4/ip_forward".into(), "1".into()));
    assert!(matches!(&calls[4], Call::Nft(b) if b.ops[0] == Op::AddTable("tug-n1".into())));
    // Opening again adopts the bridge instead of creating it.
    fake.clear_log();
    open(d.path(), &fake);
    assert!(!fake.calls().iter().any(|c| matches!(c, Call::AddBridge(_))));
    assert_eq!(fake.calls()[0], Call::SetUp("tug-n1".into()));
}

#[test]
fn attach_orders_veth_then_inside_steps_then_ports() {
    let d = tempfile::tempdir().unwrap();
    let fake = Recorder::new("host");
    let net = open(d.path(), &fake);
    fake.clear_log();
    let a = rt().block_on(net.attach(&web())).unwrap();
    assert_eq!(a.address, "10.9.0.2/24".parse().unwrap());
    let log = fake.log();
    let inside = "/proc/self/ns/net".to_string();
    let kinds: Vec<(String, String)> = log
        .iter()
        .map(|(ns, c)| {
            let k = format!("{c:?}");
            (
                ns.clone(),
                k.split(['(', ' ', '{']).next().unwrap().to_string(),
            )
        })
        .collect();
    let expect = [
        ("host", "AddVeth"),
        ("host", "Enter"),
        (inside.as_str(), "SetUp"),
        (inside.as_str(), "AddAddress"),
        (inside.as_str(), "SetUp"),
        (inside.as_str(), "AddRoute"),
        ("host", "Nft"),
    ];
    let got: Vec<(&str, &str)> = kinds
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(got, expect);
    assert_eq!(log[2].1, Call::SetUp("lo".into()));
    assert_eq!(log[4].1, Call::SetUp("eth0".into()));
    match &log[5].1 {
        Call::AddRoute(r) => {
            assert_eq!(r.gateway, Some(Ipv4Addr::new(10, 9, 0, 1)));
            assert_eq!(r.destination.prefix(), 0);
        }
        c => panic!("{c:?}"),
    }
}

#[test]
fn a_failure_at_any_step_undoes_the_veth_lease_and_ports() {
    for step in ["AddVeth", "Enter", "AddAddress", "AddRoute", "Nft"] {
        let d = tempfile::tempdir().unwrap();
        let fake = Recorder::new("host");
        let net = open(d.path(), &fake);
        fake.clear_log();
        let s = step.to_string();
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f2 = fired.clone();
        fake.fail_when(move |_, c| {
            format!("{c:?}").starts_with(&s) && !f2.swap(true, std::sync::atomic::Ordering::SeqCst)
        });
        let e = rt().block_on(net.attach(&web())).unwrap_err();
        assert!(e.to_string().contains("injected"), "{step}: {e}");
        fake.clear_failure();
        // no veth on the host, none inside
        assert!(
            !fake
                .links()
                .iter()
                .any(|(_, n)| n.starts_with("tv") || n == "eth0"),
            "{step}: {:?}",
            fake.links()
        );
        assert!(net.attachments().unwrap().is_empty(), "{step}: lease kept");
        // the last nft call (if any after the failure) leaves no DNAT rule
        let last_nft = fake.calls().into_iter().rev().find_map(|c| match c {
            Call::Nft(b) => Some(b),
            _ => None,
        });
        if let Some(b) = last_nft {
            if step != "Nft" {
                assert!(
                    !b.ops.iter().any(|o| matches!(o, Op::AddRule(_))),
                    "{step}: {b:?}"
                );
            }
        }
    }
}

#[test]
fn cleanup_failure_is_reported_with_the_cause() {
    let d = tempfile::tempdir().unwrap();
    let fake = Recorder::new("host");
    let net = open(d.path(), &fake);
    fake.fail_when(|_, c| matches!(c, Call::AddRoute(_) | Call::DelLink(_)));
    let e = rt().block_on(net.attach(&web())).unwrap_err();
    match &e {
        NetworkError::CleanupFailed { leftovers, .. } => {
            assert!(leftovers[0].contains("tv"), "{leftovers:?}")
        }
        e => panic!("{e}"),
    }
    assert!(e.to_string().contains("AddRoute"), "{e}");
}

#[test]
fn detach_unpublishes_then_deletes_the_veth_and_is_idempotent() {
    let d = tempfile::tempdir().unwrap();
    let fake = Recorder::new("host");
    let net = open(d.path(), &fake);
    let a = rt().block_on(net.attach(&web())).unwrap();
    fake.clear_log();
    rt().block_on(net.detach("web")).unwrap();
    let calls = fake.calls();
    assert!(matches!(&calls[0], Call::Nft(b) if matches!(b.ops.last(), Some(Op::DelChain { .. }))));
    assert_eq!(calls[1], Call::DelLink(a.host_veth.clone()));
    fake.clear_log();
    rt().block_on(net.detach("web")).unwrap();
    assert_eq!(fake.calls(), vec![Call::DelLink(a.host_veth)]);
}

#[test]
fn bad_requests_touch_nothing() {
    let d = tempfile::tempdir().unwrap();
    let fake = Recorder::new("host");
    let net = open(d.path(), &fake);
    rt().block_on(net.attach(&web())).unwrap();
    fake.clear_log();
    let mut dup = web();
    dup.container_id = "other".into();
    let e = rt().block_on(net.attach(&dup)).unwrap_err();
    assert!(matches!(e, NetworkError::PortInUse { port: 80, .. }), "{e}");
    let mut missing = AttachRequest::new("x", NetnsRef::Path("/nonexistent/ns".into()));
    missing.ip = None;
    let e = rt().block_on(net.attach(&missing)).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/ns"), "{e}");
    let mut outside = AttachRequest::new("x", ns());
    outside.ip = Some(Ipv4Addr::new(10, 10, 0, 2));
    let e = rt().block_on(net.attach(&outside)).unwrap_err();
    assert!(e.to_string().contains("10.10.0.2"), "{e}");
    let mut twice = AttachRequest::new("x", ns());
    twice.ports = vec![web().ports[0], web().ports[0]];
    twice.ports[0].host_port = 81;
    twice.ports[1].host_port = 81;
    assert!(rt().block_on(net.attach(&twice)).is_err());
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    assert_eq!(net.attachments().unwrap().len(), 1);
}

#[test]
fn invalid_configs_are_refused_before_any_call() {
    let d = tempfile::tempdir().unwrap();
    for (subnet, gw, name) in [
        ("10.9.0.0/31", None, "n"),
        ("10.9.0.5/24", None, "n"),
        ("10.9.0.0/24", Some(Ipv4Addr::new(10, 8, 0, 1)), "n"),
        ("10.9.0.0/24", None, "bad/name"),
    ] {
        let fake = Recorder::new("host");
        let mut cfg = NetworkConfig::new(name, subnet.parse().unwrap(), d.path());
        cfg.gateway = gw;
        let e = rt()
            .block_on(Network::open_with(fake.clone(), cfg))
            .err()
            .unwrap();
        assert!(matches!(e, NetworkError::InvalidConfig { .. }), "{e}");
        assert!(fake.calls().is_empty());
    }
}

#[test]
fn names_are_stable_and_fit_ifnamsiz() {
    let a = host_veth_name("n1", "container-with-a-very-long-id-0123456789");
    assert_eq!(a.len(), 14);
    assert_eq!(
        a,
        host_veth_name("n1", "container-with-a-very-long-id-0123456789")
    );
    assert_ne!(
        a,
        host_veth_name("n2", "container-with-a-very-long-id-0123456789")
    );
    assert_eq!(
        mac_for(Ipv4Addr::new(10, 9, 0, 2)),
        [0x0a, 0x58, 10, 9, 0, 2]
    );
}
