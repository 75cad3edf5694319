//! Provenance end to end: a delivered file carries the invisible watermark, which
//! survives a re-encode to a 512 px JPEG q75, and `POST /v1/verify` and
//! `imagegate verify` name the request that made it; unmarked pictures show none.

use crate::support;

use std::process::Command;
use support::{client, small_config, Site};

/// A profile with the delivered 768 px AVIF at the default quality.
const BIG_PROFILE: &str = r#"
[profiles.big]
variants = [768]
formats = ["avif", "jpeg"]
"#;

/// Decodes an AVIF with libavif's own decoder (not ours), then resizes it to
/// 512 px and re-encodes it as JPEG q75, as a platform re-sharing it might.
fn reshared_as_jpeg(avif: &[u8], dir: &std::path::Path) -> Vec<u8> {
    let (a, p) = (dir.join("in.avif"), dir.join("decoded.png"));
    std::fs::write(&a, avif).unwrap();
    let status = Command::new("avifdec")
        .arg(&a)
        .arg(&p)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("avifdec (Debian libavif-bin) is needed: run scripts/setup/test.sh");
    assert!(status.success(), "avifdec could not decode our AVIF");
    let rgb = image::open(&p).unwrap().to_rgb8();
    let h = rgb.height() * 512 / rgb.width();
    let small = image::imageops::resize(&rgb, 512, h, image::imageops::FilterType::Lanczos3);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 75)
        .encode_image(&small)
        .unwrap();
    out
}

async fn verify_upload(
    server: &support::Server,
    bytes: Vec<u8>,
    content_type: &str,
) -> serde_json::Value {
    let res = client()
        .post(server.url("/v1/verify"))
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivered_avif_reshared_as_jpeg_names_the_request_that_made_it() {
    let port = support::free_port();
    let site = Site::new(|dir| {
        let addr = format!("127.0.0.1:{port}");
        small_config(dir, &addr, &addr, BIG_PROFILE)
    });
    let server = site.serve(&[]);
    let res = client()
        .post(server.url("/v1/images"))
        .header("x-request-id", "provenance-test-request")
        .json(&serde_json::json!({"prompt": "a lighthouse at dusk, watercolor", "profile": "big"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let made: serde_json::Value = res.json().await.unwrap();
    let key = made["id"].as_str().unwrap().to_string();
    // Every delivered file is signed (the JPEG too).
    for image in made["images"].as_array().unwrap() {
        let url = image["url"].as_str().unwrap();
        let bytes = client()
            .get(url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let ct = if image["format"] == "avif" {
            "image/avif"
        } else {
            "image/jpeg"
        };
        let report = verify_upload(&server, bytes.to_vec(), ct).await;
        assert_eq!(
            report["content_credentials"]["state"], "valid",
            "{url}: {report:#}"
        );
    }
    let stages: Vec<&str> = made["cost"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert!(stages.contains(&"provenance"), "stages: {stages:?}");
    let avif_url = made["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["format"] == "avif" && i["width"] == 768)
        .expect("a 768 px AVIF")["url"]
        .as_str()
        .unwrap()
        .to_string();
    let avif = client()
        .get(&avif_url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();

    // The delivered file itself, uploaded.
    let report = verify_upload(&server, avif.to_vec(), "image/avif").await;
    assert_eq!(report["format"], "avif");
    assert_eq!(report["watermark"]["found"], true, "{report:#}");
    assert_eq!(report["watermark"]["content_key_prefix"], key[..14]);
    assert_eq!(report["watermark"]["development_key"], true);
    let c2pa = &report["content_credentials"];
    assert_eq!(c2pa["present"], true, "{report:#}");
    assert_eq!(c2pa["state"], "valid", "{report:#}");
    assert_eq!(c2pa["claim_generator"], "imagegate");
    assert_eq!(c2pa["action"], "c2pa.created");
    assert_eq!(
        c2pa["digital_source_type"],
        "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
    );
    assert_eq!(
        c2pa["software_agent"],
        format!(
            "{}/{}",
            made["provider"].as_str().unwrap(),
            made["model"].as_str().unwrap()
        )
    );
    let origin = &report["watermark"]["origin"];
    assert_eq!(origin["content_key"], key.as_str(), "{report:#}");
    assert_eq!(origin["request_id"], "provenance-test-request");
    assert_eq!(origin["provider"], "local");
    assert!(origin["cost_usd"].as_f64().unwrap() > 0.0);

    // By URL, read from the store.
    let report: serde_json::Value = client()
        .post(server.url("/v1/verify"))
        .json(&serde_json::json!({"url": avif_url}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["watermark"]["found"], true, "{report:#}");

    // A URL elsewhere is refused, not fetched.
    let res = client()
        .post(server.url("/v1/verify"))
        .json(&serde_json::json!({"url": "http://example.com/cdn/i/ab/x/768.avif"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);

    // Re-shared: decoded by another decoder, 512 px, JPEG q75.
    let jpeg = reshared_as_jpeg(&avif, site.dir.path());
    let report = verify_upload(&server, jpeg.clone(), "image/jpeg").await;
    assert_eq!(report["watermark"]["found"], true, "{report:#}");
    // A re-encode drops the manifest: the watermark is what survives.
    assert_eq!(report["content_credentials"]["present"], false);
    assert_eq!(report["watermark"]["origin"]["content_key"], key.as_str());

    // The CLI reads the same from a file.
    let path = site.dir.path().join("reshared.jpg");
    std::fs::write(&path, &jpeg).unwrap();
    let out = site.cli(&["verify", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["watermark"]["origin"]["content_key"], key.as_str());
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unmarked_pictures_show_no_watermark() {
    let port = support::free_port();
    let site = Site::new(|dir| {
        let addr = format!("127.0.0.1:{port}");
        small_config(dir, &addr, &addr, BIG_PROFILE)
    });
    let server = site.serve(&[]);
    let mut state = 0x9e37_79b9_u64;
    let picture = image::RgbImage::from_fn(768, 768, |x, y| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = (state >> 60) as u8;
        image::Rgb([(x / 3) as u8 ^ n, (y / 3) as u8, ((x + y) / 6) as u8])
    });
    let mut png = Vec::new();
    picture
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let report = verify_upload(&server, png.clone(), "image/png").await;
    assert_eq!(report["format"], "png");
    assert_eq!(report["watermark"]["found"], false, "{report:#}");
    assert!(report["watermark"]["origin"].is_null());

    let res = client()
        .post(server.url("/v1/verify"))
        .header("content-type", "application/octet-stream")
        .body(b"not an image".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);

    let path = site.dir.path().join("plain.png");
    std::fs::write(&path, &png).unwrap();
    let out = site.cli(&["verify", path.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_development_ca_from_provenance_init_makes_files_trusted_by_its_anchor() {
    let port = support::free_port();
    let site = Site::new(|dir| {
        let addr = format!("127.0.0.1:{port}");
        let pki = dir.join("pki");
        let c2pa = format!(
            "[provenance.c2pa]\ncert_chain_file = \"{p}/chain.pem\"\nprivate_key_file = \"{p}/signer.key\"\ntrust_anchors_file = \"{p}/ca.pem\"\n",
            p = pki.display()
        );
        small_config(dir, &addr, &addr, &c2pa)
    });
    let pki = site.dir.path().join("pki");
    let out = site.cli(&["provenance", "init", "--dir", pki.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("untrusted"), "{said}");
    let key_text = std::fs::read_to_string(pki.join("signer.key")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(pki.join("signer.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
    }
    // A second init does not silently replace the CA.
    assert!(!site
        .cli(&["provenance", "init", "--dir", pki.to_str().unwrap()])
        .status
        .success());

    let server = site.serve(&[]);
    let made = support::post_json(
        server.url("/v1/images"),
        &serde_json::json!({"prompt": "a red bicycle, studio photo"}),
    )
    .await;
    let url = made["images"][0]["url"].as_str().unwrap();
    let bytes = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let report = verify_upload(&server, bytes.to_vec(), "application/octet-stream").await;
    let c2pa = &report["content_credentials"];
    assert_eq!(c2pa["state"], "trusted", "{report:#}");
    assert!(c2pa["trust_anchors"].as_str().unwrap().contains("ca.pem"));
    server.stop();
    let log = std::fs::read_to_string(site.log()).unwrap();
    let secret_line = key_text.lines().nth(1).unwrap();
    assert!(
        !log.contains(secret_line),
        "the signing key reached the log"
    );
}
