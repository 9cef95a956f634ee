//! Removing images and collecting what nothing needs any more.
//!
//! Roots are the references in refs.json, the manifest digests a caller says are in use,
//! and every instance rootfs recorded under `<data_dir>/rootfs` (whatever the caller
//! says); everything they reach (manifest, config, layer blobs, unpacked layers, the index
//! a manifest was chosen from) stays, the rest goes, with all of `tmp/`.

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::error::{IoContext, Result};
use crate::rootfs;
use crate::store::{ImageStore, PruneReport};

impl ImageStore {
    /// Remove a reference, then everything no other image or instance rootfs needs. Given
    /// a digest (or a prefix of one) rather than a name, every name of that image goes.
    pub fn remove(&self, reference: &str) -> Result<()> {
        let refs = self.read_refs()?;
        let (name, record) = self.lookup(&refs, reference)?;
        let by_name = refs.images.contains_key(reference)
            || crate::reference::Reference::parse(reference)
                .is_ok_and(|r| refs.images.contains_key(&r.to_string()));
        self.update_refs(|refs| {
            if by_name {
                refs.images.remove(&name);
            } else {
                refs.images.retain(|_, r| r.digest != record.digest);
            }
        })?;
        self.collect_garbage(&HashSet::new())?;
        Ok(())
    }

    /// Remove every image whose manifest digest is neither in `in_use` nor used by an
    /// instance rootfs under `<data_dir>/rootfs`, then every blob and unpacked layer that
    /// no remaining image needs, and incomplete temp files.
    pub fn prune(&self, in_use: &HashSet<String>) -> Result<PruneReport> {
        let mut keep: HashSet<String> = in_use.clone();
        for rec in rootfs::records(&self.data_dir)? {
            keep.insert(rec.manifest.to_string());
        }
        let removed = self.update_refs(|refs| {
            let gone: Vec<String> = refs
                .images
                .iter()
                .filter(|(_, r)| !keep.contains(&r.digest.to_string()))
                .map(|(k, _)| k.clone())
                .collect();
            for k in &gone {
                refs.images.remove(k);
            }
            gone
        })?;
        let mut report = self.collect_garbage(in_use)?;
        report.images = removed;
        Ok(report)
    }

    /// Delete blobs and layers that no reference, instance rootfs or `in_use` manifest
    /// reaches, and everything in `tmp/`. Takes the exclusive store lock, so it waits for
    /// running pulls and imports and none starts meanwhile.
    fn collect_garbage(&self, in_use: &HashSet<String>) -> Result<PruneReport> {
        let _g = self.exclusive_lock()?;
        let refs = self.read_refs()?;
        let mut roots: Vec<Digest> = Vec::new();
        let mut keep_blobs: HashSet<Digest> = HashSet::new();
        let mut keep_layers: HashSet<PathBuf> = HashSet::new();
        for r in refs.images.values() {
            roots.push(r.digest.clone());
            if let Some(i) = &r.index {
                keep_blobs.insert(i.clone());
            }
        }
        for d in in_use {
            if let Ok(d) = d.parse() {
                roots.push(d);
            }
        }
        for rec in rootfs::records(&self.data_dir)? {
            roots.push(rec.manifest.clone());
            keep_layers.extend(rec.layers.iter().cloned());
        }
        for m in roots {
            keep_blobs.insert(m.clone());
            // A manifest whose blobs are damaged keeps what can still be read.
            if let Ok(loaded) = self.load_manifest(&m) {
                keep_blobs.insert(loaded.config_digest.clone());
                for l in &loaded.manifest.layers {
                    keep_blobs.insert(l.digest.clone());
                }
                for d in &loaded.config.rootfs.diff_ids {
                    keep_layers.insert(self.layer_path(d));
                }
            }
        }
        let mut report = PruneReport::default();
        for d in self.content.list()? {
            if !keep_blobs.contains(&d) {
                report.blob_bytes += self.content.remove(&d)?;
                report.blobs += 1;
            }
        }
        for alg in ["sha256", "sha512"] {
            let dir = self.root.join("layers").join(alg);
            for ent in fs::read_dir(&dir).at(&dir)? {
                let p = ent.at(&dir)?.path();
                if !keep_layers.contains(&p) {
                    fs::remove_dir_all(&p).at(&p)?;
                    report.layers += 1;
                }
            }
        }
        // Short links (rootfs.rs) whose layer is gone.
        let links = self.root.join("l");
        if let Ok(rd) = fs::read_dir(&links) {
            for ent in rd {
                let p = ent.at(&links)?.path();
                if fs::metadata(&p).is_err() {
                    fs::remove_file(&p).at(&p)?;
                }
            }
        }
        // Per-digest lock files: every writer takes them under the shared store lock, so
        // with the exclusive one held no one holds or waits on any of them.
        let locks = self.root.join("locks");
        for ent in fs::read_dir(&locks).at(&locks)? {
            let p = ent.at(&locks)?.path();
            fs::remove_file(&p).at(&p)?;
        }
        self.clear_tmp()?;
        Ok(report)
    }
}
