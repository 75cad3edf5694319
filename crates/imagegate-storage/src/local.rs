//! A directory of files, served by imagegate itself under `/cdn/`. Private objects
//! live under `<root>/.private/`, which `/cdn/` never serves (it serves image files
//! only, and no path starting with a dot); another web server put in front of the
//! root must exclude dot-directories too.

use crate::{
    content_type_for, etag_of, validate_key, Object, ObjectStore, StorageError, StoreKind,
};
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalStoreConfig {
    pub root: PathBuf,
    /// Base of the URLs handed to clients, e.g. `https://img.example.com/cdn`. Unset,
    /// the URLs follow the address imagegate serves its own `/cdn/` on.
    #[serde(default)]
    pub public_base_url: Option<String>,
}

pub struct LocalStore {
    root: PathBuf,
    tmp: PathBuf,
    /// `<root>/.private`: inside the root, so a rename from `tmp` stays on one
    /// filesystem.
    private: PathBuf,
    public_base_url: String,
}

impl LocalStore {
    /// Opens the directory `root`, handing out URLs under `public_base_url` (the
    /// configured one, or the server's own `/cdn/`: the caller resolves it).
    pub async fn open(root: &Path, public_base_url: &str) -> Result<LocalStore, StorageError> {
        let root = root.to_path_buf();
        // Temp files live inside the root so the final rename never crosses a filesystem.
        let tmp = root.join(".tmp");
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(|e| io(&root, "create directory", e))?;
        let private = root.join(".private");
        Ok(LocalStore {
            root,
            tmp,
            private,
            public_base_url: public_base_url.trim_end_matches('/').to_string(),
        })
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn private_path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        Ok(self.private.join(key))
    }

    /// Writes `bytes` to a temp file, fsyncs it and renames it to `dest`.
    async fn write_atomically(&self, dest: PathBuf, bytes: Bytes) -> Result<(), StorageError> {
        let tmp = self.tmp.join(format!("{:016x}", rand::random::<u64>()));
        let root = self.root.clone();
        // Blocking file I/O with fsync: kept off the async workers.
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            use std::io::Write;
            let parent = dest
                .parent()
                .expect("validated keys have a parent under the root");
            std::fs::create_dir_all(parent).map_err(|e| io(&root, "create directory", e))?;
            let mut file =
                std::fs::File::create(&tmp).map_err(|e| io(&root, "create temp file", e))?;
            file.write_all(&bytes).map_err(|e| io(&root, "write", e))?;
            file.sync_all().map_err(|e| io(&root, "fsync", e))?;
            std::fs::rename(&tmp, &dest).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                io(&root, "rename", e)
            })?;
            // The rename itself must survive a crash before the manifest points at it.
            if let Ok(dir) = std::fs::File::open(parent) {
                let _ = dir.sync_all();
            }
            Ok(())
        })
        .await
        .map_err(|e| {
            io(
                &self.root,
                "join writer",
                std::io::Error::other(e.to_string()),
            )
        })?
    }

    async fn read(&self, path: &Path, key: &str) -> Result<Option<Object>, StorageError> {
        match tokio::fs::read(path).await {
            Ok(data) => Ok(Some(Object {
                etag: etag_of(&data),
                content_type: content_type_for(key).to_string(),
                bytes: Bytes::from(data),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            // A directory where a file was asked for is "no such object" too.
            Err(_) if path.is_dir() => Ok(None),
            Err(e) => Err(io(&self.root, "read", e)),
        }
    }
}

fn io(root: &Path, action: &str, source: std::io::Error) -> StorageError {
    StorageError::Io {
        root: root.display().to_string(),
        action: action.to_string(),
        source,
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Local
    }

    async fn put(&self, key: &str, bytes: Bytes, _content_type: &str) -> Result<(), StorageError> {
        let dest = self.path_of(key)?;
        self.write_atomically(dest, bytes).await
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StorageError> {
        let path = self.path_of(key)?;
        self.read(&path, key).await
    }

    async fn put_private(
        &self,
        key: &str,
        bytes: Bytes,
        _content_type: &str,
    ) -> Result<(), StorageError> {
        let dest = self.private_path_of(key)?;
        self.write_atomically(dest, bytes).await
    }

    async fn get_private(&self, key: &str) -> Result<Option<Object>, StorageError> {
        let path = self.private_path_of(key)?;
        match self.read(&path, key).await? {
            Some(object) => Ok(Some(object)),
            // Where releases before private placement wrote it.
            None => self.get(key).await,
        }
    }

    fn public_url(&self, key: &str) -> String {
        format!("{}/{}", self.public_base_url, key)
    }

    async fn check(&self) -> Result<(), StorageError> {
        let probe = self.tmp.join("ready-probe");
        tokio::fs::write(&probe, b"ok")
            .await
            .map_err(|e| io(&self.root, "write probe", e))?;
        tokio::fs::remove_file(&probe)
            .await
            .map_err(|e| io(&self.root, "remove probe", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &Path) -> LocalStore {
        LocalStore::open(dir, "http://cdn.test/cdn/").await.unwrap()
    }

    #[tokio::test]
    async fn put_then_get_round_trips_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        s.put(
            "i/ab/k/768.avif",
            Bytes::from_static(b"avifbytes"),
            "image/avif",
        )
        .await
        .unwrap();
        let o = s.get("i/ab/k/768.avif").await.unwrap().unwrap();
        assert_eq!(&o.bytes[..], b"avifbytes");
        assert_eq!(o.content_type, "image/avif");
        assert_eq!(o.etag, etag_of(b"avifbytes"));
        assert!(s.get("i/ab/k/512.avif").await.unwrap().is_none());
        assert!(s.get("i/ab").await.unwrap().is_none());
        assert_eq!(
            std::fs::read_dir(dir.path().join(".tmp")).unwrap().count(),
            0
        );
        assert_eq!(
            s.public_url("i/ab/k/768.avif"),
            "http://cdn.test/cdn/i/ab/k/768.avif"
        );
    }

    #[tokio::test]
    async fn overwrite_replaces_whole_object() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        s.put("a/b.json", Bytes::from_static(b"old"), "application/json")
            .await
            .unwrap();
        s.put("a/b.json", Bytes::from_static(b"newer"), "application/json")
            .await
            .unwrap();
        assert_eq!(
            &s.get("a/b.json").await.unwrap().unwrap().bytes[..],
            b"newer"
        );
    }

    #[tokio::test]
    async fn private_objects_live_apart_from_published_ones() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        s.put_private(
            "i/ab/k/manifest.json",
            Bytes::from_static(b"{\"cost\":1}"),
            "application/json",
        )
        .await
        .unwrap();
        assert!(dir.path().join(".private/i/ab/k/manifest.json").is_file());
        assert!(!dir.path().join("i/ab/k/manifest.json").exists());
        // Not published: `get` (what `/cdn/` serves) does not see it.
        assert!(s.get("i/ab/k/manifest.json").await.unwrap().is_none());
        let o = s
            .get_private("i/ab/k/manifest.json")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&o.bytes[..], b"{\"cost\":1}");
        assert_eq!(o.content_type, "application/json");
        assert!(s.get_private("i/ab/k/none.json").await.unwrap().is_none());
        assert!(matches!(
            s.put_private("../x", Bytes::from_static(b"x"), "text/plain")
                .await,
            Err(StorageError::BadKey(_))
        ));

        // A manifest an older release published is still found.
        s.put(
            "i/cd/old/manifest.json",
            Bytes::from_static(b"old"),
            "application/json",
        )
        .await
        .unwrap();
        let legacy = s.get_private("i/cd/old/manifest.json").await.unwrap();
        assert_eq!(&legacy.unwrap().bytes[..], b"old");
    }

    #[tokio::test]
    async fn escaping_keys_touch_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        assert!(matches!(
            s.put("../evil", Bytes::from_static(b"x"), "text/plain")
                .await,
            Err(StorageError::BadKey(_))
        ));
        assert!(!dir.path().parent().unwrap().join("evil").exists());
    }
}
