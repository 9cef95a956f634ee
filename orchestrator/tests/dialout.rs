//! Root test of a node that only dials out (`tugboat agent --dial-out`): two "hosts" (network
//! namespaces of the test's own, joined by a bridge in a third: 192.168.215.0/24 inside those
//! namespaces only). Host a runs `tugboat server`; host e, the edge device, runs an agent
//! that joined with a join token, and an nftables rule in e's namespace drops every
//! connection that is not e's own (as NAT or a carrier network does): the server cannot
//! connect to e at all.
//!
//! Through the agent's tunnel: an instance on e is exec'd into and its log read from a's
//! client, a volume on e is restored from an archive and snapshotted back, a changed
//! template rolls out on e; when the server restarts the tunnel is opened
//! again and exec works again; while the agent is away exec fails with a message that says
//! why. Bad input: a read token cannot open a node's tunnel, another node's certificate
//! cannot either, and an unknown dial id is refused. The machine's root network namespace is
//! never changed.

mod host;

use host::{instances, shop_images, wait_for, Lan, TestHost};
use std::time::Duration;
use tugboat::model::InstancePhase;

const START: Duration = Duration::from_secs(120);

const SPEC: &str = "\
services:
  app:
    image: shop/catalog:1
    replicas: 1
    command: [/bin/sh, -c, \"echo dial-out-marker-$VERSION; exec /bin/httpd -f -p 80 -h /www\"]
    env: {VERSION: \"1\"}
    stop: {grace_seconds: 1}
";

fn exec(a: &TestHost, id: &str, command: &[&str]) -> Result<String, String> {
    let id = id.to_string();
    let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    a.api(|c| async move {
        match c.exec(&id, &command).await {
            Ok(r) if r.exit_code == 0 => Ok(r.stdout),
            Ok(r) => Err(format!("exit {}: {}", r.exit_code, r.stderr)),
            Err(e) => Err(e.to_string()),
        }
    })
}

fn logs(a: &TestHost, id: &str) -> Result<String, String> {
    let id = id.to_string();
    a.api(|c| async move {
        let mut out = Vec::new();
        c.logs(&id, &Default::default(), &mut out)
            .await
            .map(|()| String::from_utf8_lossy(&out).into_owned())
            .map_err(|e| e.to_string())
    })
}

fn show(hosts: &[&TestHost]) -> String {
    let mut out =
        tugboat::output::instances_table(&instances(hosts[0]), tugboat::model::now_ms(), false);
    for h in hosts {
        out.push_str(&format!("--- {}:\n{}", h.netns, h.output.lock().unwrap()));
    }
    out
}

fn running_app(a: &TestHost, version: &str) -> Option<String> {
    instances(a)
        .into_iter()
        .find(|i| {
            i.service == "app"
                && i.phase == InstancePhase::Running
                && i.spec.env.get("VERSION").map(String::as_str) == Some(version)
        })
        .map(|i| i.id)
}

#[test]
fn a_dial_out_node_is_exec_d_logged_and_rolled_out_through_its_tunnel_only() {
    skip_unless_possible!("dialout");
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIP dialout: no nft (Debian's nftables) to make the edge namespace drop inbound connections");
        return;
    }
    let mut a = TestHost::new();
    let mut e = TestHost::new();
    let _lan = Lan::new(&[("a", &a, "192.168.215.1/24"), ("e", &e, "192.168.215.2/24")]);
    // e takes no connection it did not open: established and related traffic only, on
    // every interface but loopback.
    let rules = "table inet edge {\n chain input {\n  type filter hook input priority 0; policy accept;\n  iifname \"eth1\" ct state new drop\n }\n}\n";
    let loaded = e.in_netns(|| {
        use std::io::Write;
        let mut nft = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("run nft");
        nft.stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        nft.wait().unwrap().success()
    });
    assert!(loaded, "nft -f: the edge namespace's rule");

    let server_dir = a.dir.join("server").display().to_string();
    #[rustfmt::skip]
    a.spawn("server", &["server", "--listen", "0.0.0.0:7480", "--data-dir", &server_dir]);
    a.wait_for_output("server: tugboat server listening", START);
    let (token, hash) = host::join_token(&a, "dial-out test");
    let image = shop_images().join("oci/shop-catalog").display().to_string();
    let data = e.dir.join("agent").display().to_string();
    #[rustfmt::skip]
    let agent: Vec<String> = [
        "agent", "--addr", "192.168.215.1:7480", "--join-token", &token, "--ca-hash", &hash,
        "--data-dir", &data, "--node", "e", "--subnet", "10.88.5.0/24",
        "--address", "192.168.215.2", "--dial-out", "--import", &image,
    ].iter().map(|s| s.to_string()).collect();
    let agent: Vec<&str> = agent.iter().map(String::as_str).collect();
    e.spawn("agent-e", &agent);
    wait_for(
        "node e registered, without an agent API address",
        START,
        || {
            a.api(|c| async move { c.nodes().await.map(|l| l.items).unwrap_or_default() })
                .iter()
                .any(|n| n.name == "e" && n.agent_url.is_none())
        },
        || show(&[&a, &e]),
    );
    // The server cannot reach e: nothing listens there, and e drops what it did not open.
    let direct = a.in_netns(|| {
        std::net::TcpStream::connect_timeout(
            &"192.168.215.2:7481".parse().unwrap(),
            Duration::from_secs(1),
        )
    });
    assert!(
        direct.is_err(),
        "a connection from a to e's port 7481 was taken"
    );

    let spec = tugboat::spec::parse_spec_file("dialout.yaml", SPEC, &|_| false).unwrap();
    a.api(|c| async move { c.apply(&spec).await.map(|_| ()) })
        .expect("apply");
    let mut id = String::new();
    wait_for(
        "app running on e",
        START,
        || {
            id = running_app(&a, "1").unwrap_or_default();
            !id.is_empty()
        },
        || show(&[&a, &e]),
    );

    // exec and logs, through the tunnel.
    let out = exec(&a, &id, &["cat", "/www/healthz"]).expect("exec through the tunnel");
    assert_eq!(out.trim(), "ok");
    wait_for(
        "the container's first line in its log, read through the tunnel",
        START,
        || logs(&a, &id).is_ok_and(|l| l.contains("dial-out-marker-1")),
        || format!("logs: {:?}\n{}", logs(&a, &id), show(&[&a, &e])),
    );
    // `tugboat exec` (the streamed exec) from the command line.
    let cli = a.in_netns(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tugboat"))
            .args(["--addr", "127.0.0.1:7480", "--ca"])
            .arg(a.ca())
            .env(
                "TUGBOAT_TOKEN",
                std::fs::read_to_string(a.dir.join("server/token"))
                    .unwrap()
                    .trim(),
            )
            .args(["exec", &id, "--", "sh", "-c", "echo streamed-$((6*7))"])
            .output()
            .expect("run tugboat exec")
    });
    assert!(
        cli.status.success() && String::from_utf8_lossy(&cli.stdout).contains("streamed-42"),
        "tugboat exec: {:?} {} {}",
        cli.status,
        String::from_utf8_lossy(&cli.stdout),
        String::from_utf8_lossy(&cli.stderr)
    );

    // A volume on e, restored and snapshotted through the tunnel: the same file comes back.
    let source = a.dir.join("satchel-src");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("note"), b"through the tunnel\n").unwrap();
    let mut archive = vec![];
    tugboat::agent::volume_archive::pack(&source, &mut archive).unwrap();
    let (restored, snapshot) = a
        .api(|c| async move {
            let config = tugboat::spec::VolumeConfig {
                node: Some("e".into()),
                ..Default::default()
            };
            let name = "satchel".to_string();
            c.create_volume(&tugboat::wire::VolumeRequest { name, config })
                .await?;
            let restored = c
                .restore_volume("satchel", None, false, || {
                    reqwest::Body::from(archive.clone())
                })
                .await?;
            let mut out = vec![];
            c.snapshot_volume("satchel", &mut out).await?;
            Ok::<_, tugboat::client::ClientError>((restored, out))
        })
        .expect("a volume restored and snapshotted through the tunnel");
    assert_eq!((restored.node.as_str(), restored.entries), ("e", 1));
    let back = a.dir.join("satchel-back");
    std::fs::create_dir_all(&back).unwrap();
    tugboat::agent::volume_archive::unpack(&back, &snapshot[..], false).unwrap();
    assert_eq!(
        std::fs::read_to_string(back.join("note")).unwrap(),
        "through the tunnel\n"
    );

    // A rollout: the changed template runs on e, its log read through the tunnel.
    let changed = tugboat::spec::parse_spec_file(
        "dialout.yaml",
        &SPEC.replace("VERSION: \"1\"", "VERSION: \"2\""),
        &|_| false,
    )
    .unwrap();
    a.api(|c| async move { c.apply(&changed).await.map(|_| ()) })
        .expect("apply the changed template");
    wait_for(
        "the new template running on e, the old one gone",
        START,
        || {
            id = running_app(&a, "2").unwrap_or_default();
            !id.is_empty() && instances(&a).iter().filter(|i| i.service == "app").count() == 1
        },
        || show(&[&a, &e]),
    );
    wait_for(
        "the new instance's log through the tunnel",
        START,
        || logs(&a, &id).is_ok_and(|l| l.contains("dial-out-marker-2")),
        || format!("logs: {:?}\n{}", logs(&a, &id), show(&[&a, &e])),
    );

    // Bad input: a read token, and a dial id nobody asked for.
    let read = a
        .api(|c| async move {
            c.create_token(&tugboat::wire::TokenRequest {
                scope: tugboat::wire::TokenScope::Read,
                ttl_seconds: Some(600),
                description: "dial-out test, read".into(),
            })
            .await
        })
        .expect("a read token")
        .token;
    let reader = a.client(Some(read));
    let refused = a.in_netns(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move { reader.open_stream("/v1/nodes/e/tunnel").await.map(|_| ()) })
    });
    let err = refused.expect_err("a read token opened node e's tunnel");
    assert_eq!(err.status(), Some(403), "{err}");
    let unknown = a.api(|c| async move {
        c.upgrade(
            "/v1/nodes/e/tunnel/0123456789abcdef",
            tugboat::wire::TUNNEL_PROTOCOL,
            None,
        )
        .await
        .map(|_| ())
    });
    let err = unknown.expect_err("an unknown dial id was accepted");
    assert_eq!(err.status(), Some(404), "{err}");
    assert!(
        err.to_string().contains("0123456789abcdef"),
        "the refusal names the id: {err}"
    );

    // The server restarts: the agent opens its tunnel again, exec works again.
    a.kill_spawned("server");
    #[rustfmt::skip]
    a.spawn("server", &["server", "--listen", "0.0.0.0:7480", "--data-dir", &server_dir]);
    wait_for(
        "exec through the tunnel after the server's restart",
        START,
        || exec(&a, &id, &["cat", "/www/healthz"]).is_ok_and(|o| o.trim() == "ok"),
        || format!("exec: {:?}\n{}", exec(&a, &id, &["true"]), show(&[&a, &e])),
    );

    // The agent away (its containers run on): exec says why it cannot be done.
    e.kill_spawned("agent-e");
    wait_for(
        "exec refused with a reason while e's agent is away",
        START,
        || exec(&a, &id, &["true"]).is_err_and(|e| e.contains("no tunnel open")),
        || format!("exec: {:?}\n{}", exec(&a, &id, &["true"]), show(&[&a, &e])),
    );
    e.spawn("agent-e", &agent);
    wait_for(
        "exec through the tunnel once the agent is back",
        START,
        || exec(&a, &id, &["cat", "/www/healthz"]).is_ok_and(|o| o.trim() == "ok"),
        || show(&[&a, &e]),
    );
}
