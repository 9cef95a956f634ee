//! Calling a pool's provider: `PROVIDER add POOL` (prints the new node's name) and
//! `PROVIDER remove POOL NODE`, with a timeout after which the program is killed. The
//! provider gets the pool's node labels and capacity in its environment:
//! `TUGBOAT_POOL`, `TUGBOAT_POOL_LABELS` (`k=v,k=v`, `tugboat.pool=POOL` among them),
//! `TUGBOAT_POOL_CPU` (millicores), `TUGBOAT_POOL_MEMORY` (bytes), `TUGBOAT_POOL_PIDS`.
//! Whatever it starts in the background must not keep its stdout open (redirect it), or the
//! call lasts until the timeout.

use super::NodePool;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{program} {args}: cannot run: {source}")]
    Spawn {
        program: PathBuf,
        args: String,
        source: std::io::Error,
    },
    #[error("{program} {args}: no answer within {timeout:?} (killed)")]
    Timeout {
        program: PathBuf,
        args: String,
        timeout: Duration,
    },
    #[error("{program} {args}: {status}: {stderr}")]
    Failed {
        program: PathBuf,
        args: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{program} {args}: printed no node name")]
    NoName { program: PathBuf, args: String },
}

/// Runs the provider; its trimmed stdout on success.
pub async fn call(
    pool: &NodePool,
    args: &[&str],
    timeout: Duration,
) -> Result<String, ProviderError> {
    let program = pool.provider.clone();
    let shown = args.join(" ");
    let labels: Vec<String> = pool
        .node_labels()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let capacity = pool.capacity();
    let child = tokio::process::Command::new(&program)
        .args(args)
        .env("TUGBOAT_POOL", &pool.name)
        .env("TUGBOAT_POOL_LABELS", labels.join(","))
        .env("TUGBOAT_POOL_CPU", capacity.cpu_millis.to_string())
        .env("TUGBOAT_POOL_MEMORY", capacity.memory_bytes.to_string())
        .env("TUGBOAT_POOL_PIDS", capacity.pids.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ProviderError::Spawn {
            program: program.clone(),
            args: shown.clone(),
            source,
        })?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(source)) => {
            return Err(ProviderError::Spawn {
                program,
                args: shown,
                source,
            })
        }
        Err(_) => {
            return Err(ProviderError::Timeout {
                program,
                args: shown,
                timeout,
            })
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        // The last lines say the most; keep events short.
        let tail: String = stderr
            .chars()
            .rev()
            .take(400)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(ProviderError::Failed {
            program,
            args: shown,
            status: output.status,
            stderr: tail,
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// `PROVIDER add POOL`: the new node's name (the last line it printed).
pub async fn add(pool: &NodePool, timeout: Duration) -> Result<String, ProviderError> {
    let out = call(pool, &["add", &pool.name], timeout).await?;
    match out.lines().last().map(str::trim).filter(|l| !l.is_empty()) {
        Some(name) => Ok(name.to_string()),
        None => Err(ProviderError::NoName {
            program: pool.provider.clone(),
            args: format!("add {}", pool.name),
        }),
    }
}

/// `PROVIDER remove POOL NODE`.
pub async fn remove(pool: &NodePool, node: &str, timeout: Duration) -> Result<(), ProviderError> {
    call(pool, &["remove", &pool.name, node], timeout)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(script: &str, dir: &std::path::Path) -> NodePool {
        let path = dir.join("provider.sh");
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        NodePool {
            name: "burst".into(),
            min: 0,
            max: 1,
            provider: path,
            labels: Default::default(),
            capacity: super::super::PoolCapacity {
                cpu: tugboat_api::spec::Cpu(1000),
                memory: tugboat_api::spec::Memory(1 << 30),
                pids: 0,
            },
        }
    }

    #[tokio::test]
    async fn add_prints_a_name_failures_and_timeouts_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = pool(
            "#!/bin/sh\ncase $1 in add) echo starting; echo \"$TUGBOAT_POOL-1 $TUGBOAT_POOL_LABELS\";; remove) echo \"no such node $3\" >&2; exit 3;; hang) sleep 30;; esac\n",
            dir.path(),
        );
        let t = Duration::from_secs(5);
        assert_eq!(add(&p, t).await.unwrap(), "burst-1 tugboat.pool=burst");
        let e = remove(&p, "n9", t).await.unwrap_err().to_string();
        assert!(
            e.contains("remove burst n9") && e.contains("no such node n9"),
            "{e}"
        );
        let started = std::time::Instant::now();
        let e = call(&p, &["hang"], Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, ProviderError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
