//! A directory of files, served by imagegate itself under `/cdn/`.

use crate::{content_type_for, etag_of, validate_key, Object, ObjectStore, StorageError};
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
        Ok(LocalStore {
            root,
            tmp,
            public_base_url: public_base_url.trim_end_matches('/').to_string(),
        })
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        Ok(self.root.join(key))
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
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn put(&self, key: &str, bytes: Bytes, _content_type: &str) -> Result<(), StorageError> {
        let dest = self.path_of(key)?;
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

    async fn get(&self, key: &str) -> Result<Option<Object>, StorageError> {
        let path = self.path_of(key)?;
        match tokio::fs::read(&path).await {
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
