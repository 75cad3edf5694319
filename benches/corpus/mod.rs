//! Shared by the benches: the PNG corpus of 1024x1024 pictures that lives outside
//! the repository (`/work/shared/corpus`, or `IMAGEGATE_CORPUS`).

use imagegate_imaging::{decode, DecodeLimits, RgbImage};
use std::path::PathBuf;

/// The corpus images, or `None` (after saying why) when the folder is absent, so a
/// checkout without the corpus still runs `cargo bench` cleanly.
pub fn load() -> Option<Vec<(String, RgbImage)>> {
    let dir = std::env::var_os("IMAGEGATE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/corpus"
            ))
        });
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("corpus not found at {}, skipping", dir.display());
        return None;
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        eprintln!("corpus at {} has no PNG files, skipping", dir.display());
        return None;
    }
    let images = paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).expect("corpus file is readable");
            let image = decode(&bytes, &DecodeLimits::default()).expect("corpus file decodes");
            let name = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, image)
        })
        .collect();
    Some(images)
}
