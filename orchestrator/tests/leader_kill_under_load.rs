//! kill -9 of the leader server while a client applies and scales services without pause
//! (issue 21's fault): a new leader acts within 3 s, no acknowledged write is lost, and no
//! instance is ever duplicated (two instances of one service in one slot).
//!
//! Three `tugboat server`s on a real etcd on loopback (tests/common/etcd.rs; SKIP without
//! the binary), plain HTTP, no auth, killed by pid at the end. The client is given all three
//! addresses, so it moves on when the server it talks to is the one killed. No agents: the
//! instances stay pending, which is all the controllers' bookkeeping needs. Prints
//! `leader kill under load: new leader acted X.X s after kill -9, N writes acknowledged, F failed`.

#[path = "common/etcd.rs"]
mod etcd;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tugboat::client::ApiClient;

const SERVICES: usize = 4;

fn spec_file(name: &str, replicas: u32) -> tugboat::spec::SpecFile {
    let text = format!("services:\n  {name}:\n    image: app:1\n    replicas: {replicas}\n");
    tugboat::spec::parse_spec_file("load.yaml", &text, &|_| true).unwrap()
}

/// Services and slots held by more than one instance.
fn duplicates(instances: &[tugboat::model::Instance]) -> Vec<(String, u32)> {
    let mut seen = BTreeSet::new();
    instances
        .iter()
        .filter(|i| !seen.insert((i.service.clone(), i.slot)))
        .map(|i| (i.service.clone(), i.slot))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_under_load_loses_nothing_and_duplicates_nothing() {
    let Some((_etcd, _dir, mut servers)) = etcd::three_servers(
        "a_leader_killed_under_load_loses_nothing_and_duplicates_nothing",
        "leader-kill",
    ) else {
        return;
    };
    let (addrs, leader) = tokio::task::block_in_place(|| etcd::addrs_and_leader(&servers));
    let dump = etcd::outputs;
    // The leader first in the client's list: the load starts on the server that dies.
    let mut order = vec![addrs[leader].clone()];
    order.extend((0..3).filter(|i| *i != leader).map(|i| addrs[i].clone()));
    let client = ApiClient::new(&order.join(","), None);
    for n in 0..SERVICES {
        client
            .apply(&spec_file(&format!("svc{n}"), 1))
            .await
            .unwrap();
    }

    // The load: apply and scale in turn, as fast as answers come. The last acknowledged
    // replicas of each service, unless a later write failed (its outcome is unknown).
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<Mutex<BTreeMap<String, Option<u32>>>> = Arc::default();
    let counts = Arc::new(Mutex::new((0usize, 0usize)));
    let load = {
        let (client, stop, acknowledged, counts) = (
            client.clone(),
            stop.clone(),
            acknowledged.clone(),
            counts.clone(),
        );
        tokio::spawn(async move {
            let mut step = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("svc{}", step as usize % SERVICES);
                let replicas = 1 + step % 3;
                let written = if step % 2 == 0 {
                    client.apply(&spec_file(&name, replicas)).await.map(|_| ())
                } else {
                    client.scale(&name, replicas).await.map(|_| ())
                };
                let mut counts = counts.lock().unwrap();
                match written {
                    Ok(()) => {
                        counts.0 += 1;
                        acknowledged.lock().unwrap().insert(name, Some(replicas));
                    }
                    Err(_) => {
                        counts.1 += 1;
                        acknowledged.lock().unwrap().insert(name, None);
                    }
                }
                step += 1;
            }
        })
    };
    // Duplicates are looked for all along, through a server that stays.
    let witness = ApiClient::new(&addrs[(leader + 1) % 3], None);
    let seen_duplicates: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let watcher = {
        let (witness, stop, seen) = (witness.clone(), stop.clone(), seen_duplicates.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(list) = witness.instances(None).await {
                    seen.lock().unwrap().extend(duplicates(&list.items));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = Instant::now();
    servers[leader].child.kill().unwrap();
    servers[leader].child.wait().unwrap();

    // A new leader acts: a service made right after the kill gets its instances.
    let survivor = ApiClient::new(&addrs[(leader + 2) % 3], None);
    survivor
        .apply(&spec_file("probe", 2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let acted = loop {
        let n = survivor
            .instances(Some("probe"))
            .await
            .map(|l| l.items.len())
            .unwrap_or(0);
        if n == 2 {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "no leader acted on `probe` in 10 s:\n{}",
            dump(&servers)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    watcher.await.unwrap();
    let (ok, failed) = *counts.lock().unwrap();
    println!(
        "leader kill under load: new leader acted {:.1} s after kill -9, {ok} writes acknowledged, {failed} failed",
        acted.as_secs_f64()
    );
    assert!(
        acted < Duration::from_secs(3),
        "the new leader acted {acted:?} after the kill:\n{}",
        dump(&servers)
    );
    assert!(ok > 20, "the load made {ok} writes");

    // Every acknowledged write is there, and the controllers converge on it: one instance
    // per replica, each in a slot of its own.
    let acknowledged = acknowledged.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let services = witness.services().await.unwrap().items;
        let instances = witness.instances(None).await.unwrap().items;
        let dups = duplicates(&instances);
        assert!(dups.is_empty(), "instances in one slot twice: {dups:?}");
        let mut settled = true;
        let mut state = vec![];
        for (name, replicas) in &acknowledged {
            let service = services
                .iter()
                .find(|s| &s.name == name)
                .unwrap_or_else(|| panic!("acknowledged service {name} is gone"));
            if let Some(replicas) = replicas {
                assert_eq!(
                    service.spec.replicas, *replicas,
                    "{name}: the last acknowledged write was lost"
                );
            }
            let mut slots: Vec<u32> = instances
                .iter()
                .filter(|i| &i.service == name)
                .map(|i| i.slot)
                .collect();
            slots.sort();
            // One instance per replica (slots may have gaps: a scale-up fills the lowest
            // free ones, a scale-down may take any; duplicates are checked above).
            settled &= slots.len() == service.spec.replicas as usize;
            state.push((name.clone(), service.spec.replicas, slots));
        }
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the instances did not settle on the services' replicas (service, replicas, slots): {state:?}\n{}",
            dump(&servers)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen_duplicates.lock().unwrap().clone();
    assert!(seen.is_empty(), "duplicated instances seen: {seen:?}");
}
