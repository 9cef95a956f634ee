//! `pull`: resolve a reference on its registry, choose the platform from an index, and
//! fetch what the store lacks. Layers are fetched in parallel, and each is unpacked while
//! it downloads: the bytes go through one tee into the blob writer (which verifies the
//! blob's digest) and into the unpacker (which hashes the uncompressed stream for the diff
//! id). The unpacked directory is renamed into place only after both digests match.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use tokio::sync::mpsc;

use crate::auth;
use crate::content::{temp_path, BlobWriter};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::oci::{self, Descriptor, Document, Platform};
use crate::progress::{Progress, Sink};
use crate::reference::Reference;
use crate::registry::RegistryClient;
use crate::store::{Image, ImageStore, RemoveOnDrop};
use crate::unpack;

/// Choices for a pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registries (`host` or `host:port`, as in the reference) reached over plain http.
    /// Every other registry is https only.
    pub insecure_registries: Vec<String>,
    /// A `docker login` style auth file. Without one, the first existing of
    /// [`auth::default_auth_files`] is read.
    pub auth_file: Option<PathBuf>,
    /// Platform to choose from an image index; default: this host's.
    pub platform: Option<Platform>,
    pub progress: Progress,
    /// Layers downloaded at once (0: 3).
    pub max_concurrent_downloads: usize,
    /// How often a broken layer download is resumed from where it stopped (with an HTTP
    /// range request) before the pull fails; `None`: 4.
    pub download_retries: Option<u32>,
}

/// A layer download that receives nothing for this long is broken (and resumed).
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn opts_retries(r: Option<u32>) -> u32 {
    r.unwrap_or(4)
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    pub image: Image,
    /// Blobs (configs and layers) downloaded; manifests are not counted.
    pub blobs_fetched: usize,
    pub bytes_fetched: u64,
    /// Layers already unpacked in the store.
    pub layers_present: usize,
}

impl ImageStore {
    /// Pull `reference` from its registry into the store.
    pub async fn pull(&self, reference: &str, opts: &PullOptions) -> Result<Image> {
        Ok(self.pull_with_report(reference, opts).await?.image)
    }

    /// [`ImageStore::pull`], saying what was downloaded.
    pub async fn pull_with_report(
        &self,
        reference: &str,
        opts: &PullOptions,
    ) -> Result<PullReport> {
        let parsed = Reference::parse(reference)?;
        let name = parsed.to_string();
        let lock_path = self.root.join("lock");
        let _lock = tokio::task::spawn_blocking(move || crate::lock::shared(&lock_path))
            .await
            .expect("lock task")?;
        let sink = Arc::new(Sink::new(opts.progress));

        // A digest reference whose manifest is here needs no registry at all.
        if let Some(d) = &parsed.digest {
            if self.content.has(d) && self.load_manifest(d).is_ok() {
                if let Ok(image) = self.commit_image(Some(&parsed), d, None) {
                    return Ok(PullReport {
                        layers_present: image.layers.len(),
                        image,
                        blobs_fetched: 0,
                        bytes_fetched: 0,
                    });
                }
            }
        }

        let credentials = match &opts.auth_file {
            Some(p) => auth::credentials_for(p, &parsed.domain)?,
            None => match auth::default_auth_files().into_iter().find(|p| p.is_file()) {
                Some(p) => auth::credentials_for(&p, &parsed.domain)?,
                None => None,
            },
        };
        let insecure = opts.insecure_registries.iter().any(|r| r == &parsed.domain);
        let client = RegistryClient::new(&parsed, insecure, credentials)?;

        let wanted = parsed
            .digest
            .as_ref()
            .map(|d| d.to_string())
            .or_else(|| parsed.tag.clone())
            .unwrap_or_else(|| "latest".into());
        sink.line(&format!("{name}: resolving"));
        let (data, _media_type) = client.manifest(&wanted).await?;
        let top_digest = match &parsed.digest {
            Some(d) => d.clone(),
            None => Digest::sha256_of(&data),
        };
        let (manifest_digest, manifest, index_digest) =
            match oci::parse_document(&top_digest.to_string(), &data)? {
                Document::Manifest(m) => {
                    self.content.put_verified(&top_digest, None, &data[..])?;
                    (top_digest, m, None)
                }
                Document::Index(index) => {
                    let want = opts.platform.clone().unwrap_or_else(Platform::host);
                    let chosen = oci::choose_platform(&name, &index, &want)?.clone();
                    self.content.put_verified(&top_digest, None, &data[..])?;
                    let (mdata, _) = client.manifest(&chosen.digest.to_string()).await?;
                    let Document::Manifest(m) =
                        oci::parse_document(&chosen.digest.to_string(), &mdata)?
                    else {
                        return Err(Error::InvalidDocument {
                            what: "manifest",
                            name: chosen.digest.to_string(),
                            reason: "an index inside an index".into(),
                        });
                    };
                    self.content
                        .put_verified(&chosen.digest, Some(chosen.size), &mdata[..])?;
                    (chosen.digest, m, Some(top_digest))
                }
            };
        sink.line(&format!("{name}: manifest {manifest_digest}"));
        for l in &manifest.layers {
            if !oci::is_layer_media_type(&l.media_type) {
                return Err(Error::UnsupportedMediaType {
                    digest: l.digest.to_string(),
                    media_type: l.media_type.clone(),
                });
            }
        }

        let mut blobs_fetched = 0;
        let mut bytes_fetched = 0;
        if !self.content.has(&manifest.config.digest) {
            let data = client.small_blob(&manifest.config.digest).await?;
            self.content.put_verified(
                &manifest.config.digest,
                Some(manifest.config.size),
                &data[..],
            )?;
            blobs_fetched += 1;
            bytes_fetched += data.len() as u64;
        }
        let loaded = self.load_manifest(&manifest_digest)?;
        let diff_ids = loaded.config.rootfs.diff_ids.clone();

        let jobs: Vec<(Descriptor, Digest)> = manifest
            .layers
            .iter()
            .cloned()
            .zip(diff_ids.iter().cloned())
            .collect();
        let concurrency = match opts.max_concurrent_downloads {
            0 => 3,
            n => n,
        };
        let client = &client;
        // Every layer runs to its end (done or failed) before an error is returned, so
        // no unpacker is left working in the background.
        let results: Vec<Result<Option<u64>>> = stream::iter(jobs)
            .map(|(desc, diff_id)| {
                let sink = sink.clone();
                let retries = opts.download_retries;
                async move {
                    self.fetch_layer(client, &sink, desc, diff_id, retries)
                        .await
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let outcomes: Vec<Option<u64>> = results.into_iter().collect::<Result<_>>()?;
        let mut layers_present = 0;
        for o in outcomes {
            match o {
                Some(n) => {
                    blobs_fetched += 1;
                    bytes_fetched += n;
                }
                None => layers_present += 1,
            }
        }
        let image = self.commit_image(Some(&parsed), &manifest_digest, index_digest.as_ref())?;
        sink.line(&format!(
            "{name}: pulled {} ({} blobs, {} bytes downloaded)",
            image.digest, blobs_fetched, bytes_fetched
        ));
        Ok(PullReport {
            image,
            blobs_fetched,
            bytes_fetched,
            layers_present,
        })
    }

    /// Make sure one layer is unpacked: `Some(bytes)` if it was downloaded, `None` if it
    /// was already here (unpacked, or as a blob that only needed unpacking).
    async fn fetch_layer(
        &self,
        client: &RegistryClient,
        sink: &Sink,
        desc: Descriptor,
        diff_id: Digest,
        retries: Option<u32>,
    ) -> Result<Option<u64>> {
        let dest = self.layer_path(&diff_id);
        if dest.is_dir() {
            return Ok(None);
        }
        let content = self.content.clone();
        let lock_diff = diff_id.clone();
        let _guard = tokio::task::spawn_blocking(move || content.lock_digest("layer", &lock_diff))
            .await
            .expect("lock task")?;
        if dest.is_dir() {
            return Ok(None);
        }
        let short = desc.digest.hex()[..12].to_string();
        if self.content.has(&desc.digest) {
            let (content, blob, tmp_root, dest2, diff) = (
                self.content.clone(),
                desc.digest.clone(),
                self.content.tmp_dir(),
                dest.clone(),
                diff_id.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let file = content.open_blob(&blob)?;
                unpack_into_place(file, &blob, &diff, &tmp_root, &dest2, None)
            })
            .await
            .expect("unpack task")?;
            return Ok(None);
        }

        let mut progress = sink.layer(&short, desc.size);
        progress.start();
        let mut resp = client.blob(&desc.digest).await?;
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(64);
        let writer = if self.keep_layer_blobs {
            self.content.writer(&desc.digest, Some(desc.size))?
        } else {
            self.content.verifier(&desc.digest, Some(desc.size))
        };
        let (blob, tmp_root, dest2, diff) = (
            desc.digest.clone(),
            self.content.tmp_dir(),
            dest.clone(),
            diff_id.clone(),
        );
        let unpacker = tokio::task::spawn_blocking(move || {
            let reader = ChannelReader {
                rx,
                current: Bytes::new(),
            };
            unpack_into_place(reader, &blob, &diff, &tmp_root, &dest2, Some(writer))
        });
        let mut fetched = 0u64;
        let mut failure = None;
        // Bytes to drop from the front of the current response (a resumed download whose
        // registry ignored the range and sent everything again).
        let mut skip = 0u64;
        let mut resumes = 0;
        let max_resumes = opts_retries(retries);
        loop {
            let next =
                match tokio::time::timeout(IDLE_TIMEOUT, client.chunk(&mut resp, &desc.digest))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(Error::Registry {
                        reference: desc.digest.to_string(),
                        reason: format!("no data for {} s", IDLE_TIMEOUT.as_secs()),
                    }),
                };
            let broken = match next {
                Ok(Some(mut chunk)) => {
                    if skip > 0 {
                        let k = (skip as usize).min(chunk.len());
                        let _ = chunk.split_to(k);
                        skip -= k as u64;
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    fetched += chunk.len() as u64;
                    progress.add(chunk.len() as u64);
                    if fetched > desc.size {
                        failure = Some(Error::SizeMismatch {
                            digest: desc.digest.to_string(),
                            expected: desc.size,
                            actual: fetched,
                        });
                        break;
                    }
                    if tx.send(Ok(chunk)).await.is_err() {
                        break; // the unpacker stopped; its error says why
                    }
                    continue;
                }
                Ok(None) if fetched >= desc.size => break,
                Ok(None) => Error::Registry {
                    reference: desc.digest.to_string(),
                    reason: format!("connection closed after {fetched} of {} bytes", desc.size),
                },
                Err(e) => e,
            };
            // A broken download resumes where it stopped; what was received is already
            // in the unpacker and the blob file.
            if resumes >= max_resumes {
                failure = Some(broken);
                break;
            }
            resumes += 1;
            progress.note(&format!("resuming at byte {fetched} ({broken})"));
            tokio::time::sleep(std::time::Duration::from_millis(250 << resumes)).await;
            match client.blob_from(&desc.digest, fetched).await {
                Ok((r, s)) => {
                    resp = r;
                    skip = s;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = &failure {
            let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
        }
        drop(tx);
        let result = unpacker.await.expect("unpack task");
        if let Some(e) = failure {
            progress.finish("failed");
            return Err(e);
        }
        match result {
            Ok(()) => {
                progress.finish("done");
                Ok(Some(fetched))
            }
            Err(e) => {
                progress.finish("failed");
                Err(e)
            }
        }
    }
}

/// Unpack `reader` into a temp dir and rename it to `dest` once the diff id (and, with a
/// `writer`, the blob written on the way through) check out.
fn unpack_into_place<R: Read>(
    reader: R,
    blob: &Digest,
    diff_id: &Digest,
    tmp_root: &std::path::Path,
    dest: &std::path::Path,
    writer: Option<BlobWriter>,
) -> Result<()> {
    let tmp = temp_path(tmp_root, "layer");
    std::fs::create_dir(&tmp).at(&tmp)?;
    let cleanup = RemoveOnDrop(Some(tmp.clone()));
    let mut tee = Tee {
        inner: reader,
        writer,
    };
    let unpacked = unpack::unpack_layer(&mut tee, &tmp, &format!("layer {blob}"))?;
    io::copy(&mut tee, &mut io::sink()).map_err(|source| Error::TarStream {
        layer: format!("layer {blob}"),
        source,
    })?;
    if let Some(w) = tee.writer.take() {
        w.commit()?;
    }
    if &unpacked.diff_id != diff_id {
        return Err(Error::DigestMismatch {
            what: format!("uncompressed layer {blob} (diff id)"),
            expected: diff_id.to_string(),
            actual: unpacked.diff_id.to_string(),
        });
    }
    unpack::sync_filesystem(&tmp)?;
    std::fs::rename(&tmp, dest).at(dest)?;
    cleanup.disarm();
    Ok(())
}

/// Copies what is read into the blob writer.
struct Tee<R> {
    inner: R,
    writer: Option<BlobWriter>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(w) = &mut self.writer {
            io::Write::write_all(w, &buf[..n])?;
        }
        Ok(n)
    }
}

/// A blocking reader over chunks sent by the download task.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent spawns pulls on a multi-threaded runtime: the future must be `Send`.
    #[allow(dead_code)]
    fn pull_future_is_send(store: &ImageStore, opts: &PullOptions) {
        fn send<T: Send>(_: &T) {}
        let f = store.pull("x", opts);
        send(&f);
        fn sync<T: Send + Sync>() {}
        sync::<ImageStore>();
    }
}
