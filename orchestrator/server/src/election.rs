//! Leader election of several servers on one etcd: an etcd lease and a campaign key.
//!
//! A server campaigns by creating [`LEADER_KEY`] (a transaction: "create only if absent")
//! bound to a lease of `ttl`; the one that creates it leads, and every controller write
//! it makes carries the compare "the leader key is still at the revision I wrote it"
//! ([`crate::controlplane::ControlPlane::commit_as`]), so a deposed leader's late write
//! fails. The leader renews its lease every `ttl / 4`; when no renewal has succeeded for
//! [`GIVE_UP`] of the ttl it stops its controllers and says so. etcd only frees the key
//! when the lease has expired (`ttl` after the last renewal etcd saw, which is after this
//! server sent it), so the old leader has stopped before another can win, with a quarter of
//! the ttl to spare (and etcd's 0.5 s expiry check).
//!
//! It was half the ttl: at 5,000 nodes and 100,000 instances (bench/controlplane) a leader
//! gave up three times in 20 s, each time a renewal took over 1 s behind etcd's backlog of
//! large transactions (etcd renews only once it has applied what it committed), and each
//! change of leader cost a ttl without one. The fence on every controller write, not this
//! margin, is what keeps a deposed leader from acting; the margin only keeps it from trying. Followers watch the key and campaign when it goes (kill -9 of
//! the leader: within `ttl` + etcd's expiry check, 0.5 s). A leader that stops revokes its
//! lease: the next one takes over at once.
//!
//! The new leader seeds every node's heartbeat with "now" when its controllers start
//! (`seed_heartbeats`): heartbeats live in memory, so a change of leader gives every node
//! a fresh grace period, as a restart does.

use crate::controllers::runner::run_controllers;
use crate::controlplane::{ControlPlane, Role};
use crate::store::{Compare, EtcdStore, Revision};
use etcd_client::{Compare as EtcdCompare, CompareOp, PutOptions, Txn, TxnOp, WatchOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The store key of the leader (under the etcd prefix); its value names the leader.
pub const LEADER_KEY: &str = "/leader/controllers";

/// The lease's time to live: a dead leader is replaced within about this (plus etcd's
/// 0.5 s expiry check). etcd raises a ttl below its minimum (1.5 x its election timeout).
pub const DEFAULT_LEADER_TTL: Duration = Duration::from_secs(2);

/// The share of the ttl without a renewal after which a leader stops leading.
const GIVE_UP: (u32, u32) = (3, 4);

/// Why a term ended, in words for the log.
enum TermEnd {
    Shutdown,
    Lost(String),
    /// No renewal came back in time: the lease may still hold ([`still_leading`]).
    Unrenewed(String),
}

/// Campaign, lead while the lease holds, follow otherwise, until `shutdown`. `identity`
/// names this server in the leader key (its API address); `say` prints a line.
pub async fn run(
    store: EtcdStore,
    cp: Arc<ControlPlane>,
    identity: String,
    ttl: Duration,
    compaction: Option<Duration>,
    mut shutdown: watch::Receiver<bool>,
    say: fn(&str),
) {
    // What was last said of our role, so a state is told once, not on every retry.
    let mut told = String::new();
    let mut tell = |line: String| {
        if line != told {
            say(&line);
            told = line;
        }
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        match campaign(&store, &identity, ttl).await {
            Ok(Campaign::Won { lease, revision }) => {
                // The lease was granted just before the campaign: count from then.
                let mut renewed_at = Instant::now();
                let mut again = "";
                loop {
                    cp.set_leadership(
                        Role::Leader,
                        Some(Compare::ModRevision {
                            key: LEADER_KEY.into(),
                            revision,
                        }),
                    );
                    tell(format!(
                        "role leader{again} (lease ttl {} ms, leader key {} at revision {revision}): running the controllers, scheduler and autoscalers",
                        ttl.as_millis(),
                        store.etcd_key(LEADER_KEY)
                    ));
                    let end = lead(
                        &store,
                        &cp,
                        (lease, renewed_at),
                        revision,
                        ttl,
                        compaction,
                        &mut shutdown,
                    )
                    .await;
                    cp.set_leadership(Role::Follower, None);
                    match end {
                        TermEnd::Shutdown => {
                            revoke(&store, lease).await;
                            return;
                        }
                        TermEnd::Lost(why) => {
                            tell(format!(
                                "role follower: stopped leading ({why}); controllers stopped"
                            ));
                            break;
                        }
                        TermEnd::Unrenewed(why) => {
                            tell(format!(
                                "role follower: stopped leading ({why}); controllers stopped"
                            ));
                            match still_leading(&store, lease, revision, ttl).await {
                                Some(at) => {
                                    renewed_at = at;
                                    again = " again: the lease was renewed late, not lost";
                                }
                                None => break,
                            }
                        }
                    }
                }
            }
            Ok(Campaign::Lost { leader, revision }) => {
                cp.set_leadership(Role::Follower, None);
                tell(format!("role follower (leader: {leader})"));
                // Wait for the key to go (or change), at most one ttl: a safety net.
                tokio::select! {
                    _ = leader_key_changes(&store, revision + 1) => {}
                    _ = tokio::time::sleep(ttl) => {}
                    _ = shutdown.changed() => {}
                }
            }
            Err(e) => {
                cp.set_leadership(Role::Follower, None);
                tell(format!(
                    "role follower: cannot campaign, etcd does not answer ({e}); trying again"
                ));
                tokio::select! {
                    _ = tokio::time::sleep(ttl / 2) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

enum Campaign {
    Won { lease: i64, revision: Revision },
    Lost { leader: String, revision: Revision },
}

async fn campaign(
    store: &EtcdStore,
    identity: &str,
    ttl: Duration,
) -> Result<Campaign, etcd_client::Error> {
    // etcd's ttls are whole seconds: rounded up (the leader still gives up by `ttl`).
    let seconds = ttl.as_secs_f64().ceil().max(1.0) as i64;
    let lease = store
        .call(|mut client| async move { client.lease_grant(seconds, None).await })
        .await?
        .id();
    let key = store.etcd_key(LEADER_KEY);
    let txn = Txn::new()
        .when(vec![EtcdCompare::create_revision(
            key.clone(),
            CompareOp::Equal,
            0,
        )])
        .and_then(vec![TxnOp::put(
            key.clone(),
            identity,
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else(vec![TxnOp::get(key.clone(), None)]);
    let response = match store
        .call(|mut client| {
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })
        .await
    {
        Ok(r) => r,
        Err(e) => {
            revoke(store, lease).await;
            return Err(e);
        }
    };
    let revision = response.header().map_or(0, |h| h.revision()) as Revision;
    if response.succeeded() {
        return Ok(Campaign::Won { lease, revision });
    }
    revoke(store, lease).await;
    let leader = response
        .op_responses()
        .into_iter()
        .find_map(|r| match r {
            etcd_client::TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
            _ => None,
        })
        .unwrap_or_else(|| "unknown".into());
    Ok(Campaign::Lost { leader, revision })
}

/// After a leader stopped for want of a renewal: one more renewal of its lease, and whether
/// the leader key is still at its term's revision. Both: the lease never lapsed, so no one
/// else can have led meanwhile, and the same term goes on, fenced by the same revision,
/// with no ttl without a leader and no new leader's first pass. (Under load, etcd answers
/// a renewal only once it has applied what it committed before: a late answer is common
/// and cost a change of leader each time.) Returns when the renewal was sent.
async fn still_leading(
    store: &EtcdStore,
    lease: i64,
    term: Revision,
    ttl: Duration,
) -> Option<Instant> {
    let sent_at = Instant::now();
    let check = async {
        let (member, mut client) = store.stream_client();
        // Sends one renewal and fails unless etcd still has the lease (a ttl above 0).
        if client.lease_keep_alive(lease).await.is_err() {
            store.skip(member);
            return false;
        }
        let key = store.etcd_key(LEADER_KEY);
        let read = store
            .call(|mut client| {
                let key = key.clone();
                async move { client.get(key, None).await }
            })
            .await;
        read.is_ok_and(|r| {
            r.kvs()
                .first()
                .is_some_and(|kv| kv.mod_revision() as Revision == term)
        })
    };
    // Late again: give the term up (what is left of the lease is too little to go on).
    match tokio::time::timeout(ttl / 2, check).await {
        Ok(true) => Some(sent_at),
        _ => None,
    }
}

/// Give a lease back (best effort: unrevoked, it expires after its ttl).
async fn revoke(store: &EtcdStore, lease: i64) {
    let _ = store
        .call(|mut client| async move { client.lease_revoke(lease).await })
        .await;
}

enum KeyWatch {
    Changed,
    Failed,
}

/// Waits until the leader key is deleted or changed after `from`, or the watch fails.
async fn leader_key_changes(store: &EtcdStore, from: Revision) -> KeyWatch {
    let key = store.etcd_key(LEADER_KEY);
    let options = WatchOptions::new().with_start_revision(from as i64);
    let (member, mut client) = store.stream_client();
    let Ok(mut stream) = client.watch(key, Some(options)).await else {
        store.skip(member);
        return KeyWatch::Failed;
    };
    while let Ok(Some(response)) = stream.message().await {
        if !response.events().is_empty() {
            return KeyWatch::Changed;
        }
        if response.canceled() {
            return KeyWatch::Failed;
        }
    }
    store.skip(member);
    KeyWatch::Failed
}

/// The leader's watch of its own key: returns only when the key is no longer the one its
/// campaign wrote at `term`. A watch that fails (a member went away) is opened again on
/// another member, from where it was.
async fn until_leader_key_changes(store: &EtcdStore, term: Revision) {
    let key = store.etcd_key(LEADER_KEY);
    let mut from = term + 1;
    loop {
        if let KeyWatch::Changed = leader_key_changes(store, from).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Read it: gone or rewritten while no watch was open, or watch on from now.
        let read = store
            .call(|mut client| {
                let key = key.clone();
                async move { client.get(key, None).await }
            })
            .await;
        if let Ok(response) = read {
            match response.kvs().first() {
                Some(kv) if kv.mod_revision() as Revision == term => {
                    from = response
                        .header()
                        .map_or(from, |h| h.revision() as Revision + 1);
                }
                _ => return,
            }
        }
    }
}

/// While leading, `--etcd-compaction-interval`: every `every`, compact etcd's history to the
/// revision it had one interval before (as kube-apiserver's compactor does), so a watcher
/// that fell behind has a whole interval to catch up before it is told to list again.
/// A compaction that fails is said and tried at the next tick.
pub async fn compact_history(cp: Arc<ControlPlane>, every: Duration) {
    let mut previous = cp.store().current_revision().await.ok();
    loop {
        tokio::time::sleep(every).await;
        if let Some(revision) = previous {
            match cp.store().compact(revision).await {
                Ok(()) => {
                    eprintln!("tugboat server: compacted etcd's history to revision {revision}")
                }
                Err(e) => eprintln!(
                    "tugboat server: compacting etcd's history to revision {revision}: {e}"
                ),
            }
        }
        previous = cp.store().current_revision().await.ok();
    }
}

/// Run the controllers while the lease is renewed; stop them when it may have lapsed.
async fn lead(
    store: &EtcdStore,
    cp: &Arc<ControlPlane>,
    lease: (i64, Instant),
    revision: Revision,
    ttl: Duration,
    compaction: Option<Duration>,
    shutdown: &mut watch::Receiver<bool>,
) -> TermEnd {
    let (stop_tx, stop_rx) = watch::channel(false);
    let compactor = compaction.map(|every| tokio::spawn(compact_history(cp.clone(), every)));
    // What agents tell the followers, merged as it comes; then the controllers.
    let mut relays = tokio::spawn(crate::liveness::merge(Arc::new(store.clone()), cp.clone()));
    let mut controllers = tokio::spawn(run_controllers(cp.clone(), stop_rx));
    // The leader key removed or replaced (an import with --replace, an operator): every
    // fenced write would fail, so stop leading and campaign again.
    let end = tokio::select! {
        end = keep_lease(store, lease, ttl, shutdown) => end,
        _ = until_leader_key_changes(store, revision) => {
            TermEnd::Lost("the leader key was removed or replaced".into())
        }
    };
    // Stop acting now: a pass half done is dropped (its writes are fenced anyway).
    let _ = stop_tx.send(true);
    controllers.abort();
    relays.abort();
    if let Some(compactor) = compactor {
        compactor.abort();
    }
    let _ = (&mut controllers).await;
    let _ = (&mut relays).await;
    end
}

/// Renew `lease` (last renewed when its `Instant` says) until it lapses or `shutdown`.
async fn keep_lease(
    store: &EtcdStore,
    (lease, mut renewed_at): (i64, Instant),
    ttl: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> TermEnd {
    let give_up_after = ttl * GIVE_UP.0 / GIVE_UP.1;
    let mut stream = None;
    let mut member = 0;
    loop {
        if stream.is_none() {
            // (Again) on the current member; a member that went away is skipped.
            let mut client;
            (member, client) = store.stream_client();
            match client.lease_keep_alive(lease).await {
                Ok(pair) => stream = Some(pair),
                Err(_) => store.skip(member),
            }
        }
        if let Some((keeper, responses)) = stream.as_mut() {
            let sent_at = Instant::now();
            let renewal = async {
                keeper.keep_alive().await?;
                responses.message().await
            };
            let budget = give_up_after.saturating_sub(renewed_at.elapsed());
            tokio::select! {
                _ = shutdown.changed() => return TermEnd::Shutdown,
                answer = tokio::time::timeout(budget, renewal) => match answer {
                    Ok(Ok(Some(response))) if response.ttl() > 0 => renewed_at = sent_at,
                    Ok(Ok(Some(_))) => return TermEnd::Lost("the lease expired".into()),
                    // The member went away, or did not answer in time: try the next one.
                    Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                        stream = None;
                        store.skip(member);
                    }
                },
            }
        }
        if renewed_at.elapsed() >= give_up_after {
            return TermEnd::Unrenewed(format!(
                "no lease renewal for {} ms: cut off from etcd?",
                renewed_at.elapsed().as_millis()
            ));
        }
        let pause = if stream.is_some() {
            ttl / 4
        } else {
            Duration::from_millis(50)
        };
        tokio::select! {
            _ = shutdown.changed() => return TermEnd::Shutdown,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
