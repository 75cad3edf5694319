//! Provenance end to end: a delivered file carries the invisible watermark, which
//! survives a re-encode to a 512 px JPEG q75, and `POST /v1/verify` and
//! `imagegate verify` name the request that made it; unmarked pictures show none.
//! Every delivered file's Content Credentials validate in c2pa-python too, and a
//! provider output that arrived signed is every variant's parent ingredient.

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

/// Every delivered format, two widths.
const ALL_FORMATS_PROFILE: &str = r#"
[profiles.all]
variants = [128, 256]
formats = ["avif", "jpeg", "webp"]
avif = { quality = 60, speed = 9 }
"#;

const TRAINED_ALGORITHMIC_MEDIA: &str =
    "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia";

/// A PNG as OpenAI's Images API returns it: Content Credentials signed by the
/// vendor's own software (here a throwaway chain), `c2pa.created` by its model.
/// Claim generator and agent are the vendor's, so the test can tell its manifest
/// from ours.
fn vendor_signed_png() -> Vec<u8> {
    use std::io::Cursor;
    let picture = image::RgbImage::from_fn(384, 384, |x, y| {
        image::Rgb([(x / 2) as u8, (y / 2) as u8, ((x + y) / 4) as u8])
    });
    let mut png = Vec::new();
    picture
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let definition = serde_json::json!({
        "claim_generator_info": [{"name": "OpenAI-API", "version": "test"}],
        "title": "image.png",
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [{
            "action": "c2pa.created",
            "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
            "softwareAgent": {"name": "GPT-image"},
        }]}}],
    });
    let context = c2pa::Context::new()
        .with_settings(r#"{"builder": {"thumbnail": {"enabled": false}}}"#)
        .unwrap()
        .into_shared();
    let mut builder = c2pa::Builder::from_shared_context(&context)
        .with_definition(definition.to_string())
        .unwrap();
    let signer = c2pa::EphemeralSigner::new("vendor test signer").unwrap();
    let mut out = Cursor::new(Vec::new());
    builder
        .sign(&signer, "image/png", &mut Cursor::new(png), &mut out)
        .unwrap();
    out.into_inner()
}

/// The OpenAI Images API on its documented wire format
/// (https://platform.openai.com/docs/api-reference/images/create): `data[].b64_json`
/// and token usage, answering every generation with `image`.
async fn openai_answering(image: &[u8]) -> wiremock::MockServer {
    use base64::Engine;
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path("/v1/images/generations"))
        .respond_with(
            wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "created": 1776800000,
                "data": [{"b64_json": base64::engine::general_purpose::STANDARD.encode(image)}],
                "output_format": "png",
                "quality": "medium",
                "size": "1024x1024",
                "usage": {
                    "total_tokens": 1070,
                    "input_tokens": 14,
                    "output_tokens": 1056,
                    "input_tokens_details": {"text_tokens": 14, "image_tokens": 0},
                    "output_tokens_details": {"image_tokens": 1056, "text_tokens": 0}
                }
            })),
        )
        .mount(&server)
        .await;
    server
}

/// The interpreter of the pinned c2pa-python venv; its absence fails the test.
fn python_for_c2pa() -> String {
    let out = Command::new(support::repo_root().join("scripts/python-venv.sh"))
        .arg("c2pa-python")
        .arg(support::repo_root().join("scripts/requirements/c2pa-python.txt"))
        .output()
        .expect("scripts/python-venv.sh runs");
    assert!(
        out.status.success(),
        "could not create the c2pa-python venv (scripts/setup/test.sh makes it; PyPI reachable?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Each file's manifest store as c2pa-python reads it.
fn read_with_c2pa_python(files: &[std::path::PathBuf]) -> Vec<serde_json::Value> {
    let out = Command::new(python_for_c2pa())
        .arg(support::repo_root().join("scripts/c2pa_read.py"))
        .args(files)
        .output()
        .expect("the c2pa-python venv's interpreter runs");
    assert!(
        out.status.success(),
        "c2pa_read.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(read.len(), files.len());
    read
}

/// Downloads every image of an answer into `dir`, named by width and format.
async fn download_all(made: &serde_json::Value, dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut paths = Vec::new();
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
        let ext = match image["format"].as_str().unwrap() {
            "jpeg" => "jpg",
            other => other,
        };
        let path = dir.join(format!("{}.{ext}", image["width"]));
        std::fs::write(&path, &bytes).unwrap();
        paths.push(path);
    }
    paths
}

/// What an independent reader must find in every delivered file: a manifest
/// that validates (the only failure allowed is that nobody trusts the dev
/// signer), claimed by imagegate, generated by `agent`, with the provider's own
/// manifest as parent when `vendor_parent`.
fn assert_independently_valid(read: &serde_json::Value, agent: &str, vendor_parent: bool) {
    let file = read["file"].as_str().unwrap();
    assert!(read["error"].is_null(), "{file}: {read:#}");
    let store = &read["store"];
    let state = store["validation_state"].as_str().unwrap_or_default();
    assert!(
        state == "Valid" || state == "Trusted",
        "{file}: validation state {state}: {store:#}"
    );
    let failures: Vec<&str> = store["validation_results"]["activeManifest"]["failure"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert!(
        failures.iter().all(|c| *c == "signingCredential.untrusted"),
        "{file}: {failures:?}"
    );
    let label = store["active_manifest"]
        .as_str()
        .expect("an active manifest");
    let manifest = &store["manifests"][label];
    assert_eq!(
        manifest["claim_generator_info"][0]["name"], "imagegate",
        "{file}"
    );
    let actions = manifest["assertions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["label"].as_str().unwrap().starts_with("c2pa.actions"))
        .expect("an actions assertion");
    let first = &actions["data"]["actions"][0];
    assert_eq!(
        first["digitalSourceType"], TRAINED_ALGORITHMIC_MEDIA,
        "{file}"
    );
    assert_eq!(first["softwareAgent"]["name"], agent, "{file}");
    let ingredients = manifest["ingredients"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if vendor_parent {
        assert_eq!(first["action"], "c2pa.opened", "{file}");
        assert_eq!(ingredients.len(), 1, "{file}: {ingredients:#?}");
        let parent = &ingredients[0];
        assert_eq!(parent["relationship"], "parentOf", "{file}");
        let vendor_label = parent["active_manifest"]
            .as_str()
            .expect("the vendor's manifest");
        let vendor = &store["manifests"][vendor_label];
        assert_eq!(
            vendor["claim_generator_info"][0]["name"], "OpenAI-API",
            "{file}"
        );
        // The vendor's own claim is intact; only its throwaway signer is untrusted.
        let ingredient_failures: Vec<String> = store["validation_results"]["ingredientDeltas"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|d| {
                d["validationDeltas"]["failure"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|f| f["code"].as_str().unwrap().to_string())
            .collect();
        assert!(
            ingredient_failures
                .iter()
                .all(|c| *c == "signingCredential.untrusted"),
            "{file}: {ingredient_failures:?}"
        );
    } else {
        assert_eq!(first["action"], "c2pa.created", "{file}");
        assert!(ingredients.is_empty(), "{file}: {ingredients:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_delivered_file_validates_in_c2pa_python_and_keeps_a_signed_providers_manifest() {
    // The reader first: a missing reader is a failure, before anything else runs.
    let python = python_for_c2pa();
    assert!(!python.is_empty());
    let vendor = openai_answering(&vendor_signed_png()).await;
    let port = support::free_port();
    let site = Site::new(|dir| {
        let addr = format!("127.0.0.1:{port}");
        let openai = format!(
            "[[providers]]\nkind = \"openai\"\nbase_url = \"{}/v1\"\napi_key_env = \"IMAGEGATE_TEST_OPENAI_KEY\"\ntimeout_secs = 10\n{ALL_FORMATS_PROFILE}",
            vendor.uri()
        );
        small_config(dir, &addr, &addr, &openai)
    });
    let server = site.serve(&[("IMAGEGATE_TEST_OPENAI_KEY", "sk-test-provenance")]);

    // The local provider signs nothing: our manifest stands alone.
    let local = support::post_json(
        server.url("/v1/images"),
        &serde_json::json!({"prompt": "a tin robot, studio photo", "profile": "all"}),
    )
    .await;
    assert_eq!(local["provider"], "local", "{local:#}");
    let local_dir = site.dir.path().join("local");
    std::fs::create_dir(&local_dir).unwrap();
    let local_files = download_all(&local, &local_dir).await;
    assert_eq!(local_files.len(), 6, "{local:#}");

    // OpenAI signed its output: every variant keeps that manifest as its parent.
    let signed = support::post_json(
        server.url("/v1/images"),
        &serde_json::json!({
            "prompt": "a tin robot, studio photo",
            "profile": "all",
            "model": "openai/gpt-image-2",
        }),
    )
    .await;
    assert_eq!(signed["provider"], "openai", "{signed:#}");
    let signed_dir = site.dir.path().join("openai");
    std::fs::create_dir(&signed_dir).unwrap();
    let signed_files = download_all(&signed, &signed_dir).await;
    assert_eq!(signed_files.len(), 6, "{signed:#}");

    let agent = |made: &serde_json::Value| {
        format!(
            "{}/{}",
            made["provider"].as_str().unwrap(),
            made["model"].as_str().unwrap()
        )
    };
    for read in read_with_c2pa_python(&local_files) {
        assert_independently_valid(&read, &agent(&local), false);
    }
    let reads = read_with_c2pa_python(&signed_files);
    for read in &reads {
        assert_independently_valid(read, &agent(&signed), true);
    }
    // Each width and format derives from the same parent: one vendor manifest.
    let parents: std::collections::HashSet<String> = reads
        .iter()
        .map(|r| {
            let store = &r["store"];
            let m = &store["manifests"][store["active_manifest"].as_str().unwrap()];
            m["ingredients"][0]["active_manifest"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(parents.len(), 1, "{parents:?}");

    // Our own verifier shows the same chain, over HTTP and from the CLI.
    let avif = signed_files
        .iter()
        .find(|p| p.extension().unwrap() == "avif")
        .unwrap();
    let report = verify_upload(&server, std::fs::read(avif).unwrap(), "image/avif").await;
    let c2pa = &report["content_credentials"];
    assert_eq!(c2pa["state"], "valid", "{report:#}");
    assert_eq!(c2pa["action"], "c2pa.opened");
    assert_eq!(c2pa["software_agent"], agent(&signed));
    let parent = &c2pa["ingredients"][0];
    assert_eq!(parent["relationship"], "parentOf", "{report:#}");
    assert_eq!(parent["title"], "provider output");
    assert_eq!(parent["claim_generator"], "OpenAI-API");
    assert_eq!(parent["software_agent"], "GPT-image");
    assert_eq!(
        parent["manifest"].as_str(),
        parents.iter().next().map(String::as_str)
    );
    // The CLI reads the same configuration, whose provider needs its key to start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imagegate"))
        .arg("--config")
        .arg(site.config())
        .args(["verify", avif.to_str().unwrap()])
        .env("IMAGEGATE_TEST_OPENAI_KEY", "sk-test-provenance")
        .output()
        .unwrap();
    // Exit 3 says no watermark payload was recovered: the emulated provider's
    // picture is a flat fixture the watermark cannot hide in. The credentials are
    // what this checks.
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        printed["content_credentials"]["ingredients"][0]["claim_generator"],
        "OpenAI-API"
    );
    // The signing, parent included, is priced as the provenance stage.
    let stage = signed["cost"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "provenance" && !s["detail"]["c2pa"].is_null())
        .expect("a C2PA provenance stage");
    assert!(
        stage["detail"]["c2pa"]["parent_manifest"]["bytes"]
            .as_u64()
            .unwrap()
            > 0,
        "{stage:#}"
    );
    server.stop();
}
