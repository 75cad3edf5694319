//! The S3 store against a real Garage server, and the bucket read back the way a
//! browser reads the CDN: a plain GET of `public_url(key)` on Garage's web endpoint.

use bytes::Bytes;
use imagegate_storage::{
    etag_of, ObjectStore, S3Store, S3StoreConfig, StorageError, IMMUTABLE_CACHE_CONTROL,
};
use imagegate_testkit::garage::Garage;
use std::time::{Duration, Instant};

/// Outage tests rely on these: every operation gives up within OPERATION_TIMEOUT.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

fn config_for(garage: &Garage) -> S3StoreConfig {
    let (id_var, secret_var) = garage.export_credentials();
    let s3 = garage.settings();
    S3StoreConfig {
        endpoint: Some(s3.endpoint),
        region: s3.region,
        bucket: s3.bucket,
        prefix: None,
        path_style: true,
        access_key_id_env: Some(id_var),
        secret_access_key_env: Some(secret_var),
        public_base_url: s3.web_base_url,
        private_bucket: None,
        private_prefix: None,
        connect_timeout_ms: 1_000,
        attempt_timeout_ms: 2_000,
        operation_timeout_ms: OPERATION_TIMEOUT.as_millis() as u64,
        max_attempts: 3,
    }
}

async fn store_for(garage: &Garage) -> S3Store {
    S3Store::open(&config_for(garage)).await.unwrap()
}

/// ~30 KB that do not compress to nothing.
fn sample(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn put_then_get_round_trips_and_a_missing_key_is_none() {
    let garage = Garage::start();
    let store = store_for(&garage).await;
    assert_eq!(store.kind().as_str(), "s3");
    store.check().await.unwrap();

    let bytes = sample(30_000, 1);
    store
        .put("i/ab/key1/768.avif", bytes.clone(), "image/avif")
        .await
        .unwrap();
    let got = store.get("i/ab/key1/768.avif").await.unwrap().unwrap();
    assert_eq!(got.bytes, bytes);
    assert_eq!(got.content_type, "image/avif");
    assert_eq!(got.etag, etag_of(&bytes), "same ETag as the local store");

    assert!(store.get("i/ab/key1/512.avif").await.unwrap().is_none());
    assert!(store.get("i/ab").await.unwrap().is_none());
    assert!(matches!(
        store
            .put("../evil", Bytes::from_static(b"x"), "text/plain")
            .await,
        Err(StorageError::BadKey(_))
    ));
}

#[tokio::test]
async fn the_cdn_serves_the_bytes_with_type_and_immutable_caching() {
    let garage = Garage::start();
    let store = store_for(&garage).await;
    let bytes = sample(30_000, 2);
    store
        .put("i/cd/key2/manifest.json", bytes.clone(), "application/json")
        .await
        .unwrap();

    let url = store.public_url("i/cd/key2/manifest.json");
    assert_eq!(
        url,
        format!("{}/i/cd/key2/manifest.json", garage.web_base_url())
    );
    // A plain GET as a browser sends it: Host is whatever the URL says.
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200, "GET {url}: {:?}", resp.headers());
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    assert_eq!(
        header("cache-control").as_deref(),
        Some(IMMUTABLE_CACHE_CONTROL),
        "Garage's web endpoint returns the Cache-Control stored with the object"
    );
    assert_eq!(resp.bytes().await.unwrap(), bytes);

    let missing = reqwest::get(store.public_url("i/cd/key2/none.avif"))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn a_prefix_lands_in_object_keys_and_public_urls() {
    let garage = Garage::start();
    let mut config = config_for(&garage);
    config.prefix = Some("tenant-a/v1/".into());
    config.public_base_url = format!("{}/", garage.web_base_url());
    let prefixed = S3Store::open(&config).await.unwrap();
    let plain = store_for(&garage).await;

    let bytes = sample(1_000, 3);
    prefixed
        .put("i/ef/k/256.webp", bytes.clone(), "image/webp")
        .await
        .unwrap();
    let url = prefixed.public_url("i/ef/k/256.webp");
    assert_eq!(
        url,
        format!("{}/tenant-a/v1/i/ef/k/256.webp", garage.web_base_url()),
        "one slash between base, prefix and key"
    );
    assert_eq!(
        plain
            .get("tenant-a/v1/i/ef/k/256.webp")
            .await
            .unwrap()
            .unwrap()
            .bytes,
        bytes
    );
    assert!(plain.get("i/ef/k/256.webp").await.unwrap().is_none());
    assert_eq!(
        prefixed
            .get("i/ef/k/256.webp")
            .await
            .unwrap()
            .unwrap()
            .bytes,
        bytes
    );
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), bytes);
}

/// A second bucket the test key may write, which (unlike the first) the web
/// endpoint does not serve.
fn private_bucket(garage: &Garage, name: &str) {
    garage.cli(&["bucket", "create", name]);
    garage.cli(&[
        "bucket",
        "allow",
        "--read",
        "--write",
        "--key",
        garage.access_key_id(),
        name,
    ]);
}

/// A GET of `url` on Garage's web endpoint, optionally naming the bucket by Host.
async fn web_get(url: &str, host: Option<&str>) -> (u16, bytes::Bytes) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(host) = host {
        request = request.header("host", host);
    }
    let resp = request.send().await.unwrap();
    (resp.status().as_u16(), resp.bytes().await.unwrap())
}

#[tokio::test]
async fn private_objects_in_a_bucket_of_their_own_are_not_on_the_cdn() {
    let garage = Garage::start();
    private_bucket(&garage, "imagegate-private");
    let mut config = config_for(&garage);
    config.prefix = Some("imagegate".into());
    config.private_bucket = Some("imagegate-private".into());
    let store = S3Store::open(&config).await.unwrap();
    store.check().await.unwrap();

    let manifest = Bytes::from_static(br#"{"cost_micros":42000,"stages":[]}"#);
    let key = "i/ab/k/manifest.json";
    store
        .put_private(key, manifest.clone(), "application/json")
        .await
        .unwrap();
    let got = store.get_private(key).await.unwrap().unwrap();
    assert_eq!(got.bytes, manifest);
    assert_eq!(got.content_type, "application/json");
    // Not among the published objects, at the prefix or anywhere else.
    assert!(store.get(key).await.unwrap().is_none());
    let plain = store_for(&garage).await;
    assert!(plain
        .get("imagegate/i/ab/k/manifest.json")
        .await
        .unwrap()
        .is_none());

    // The CDN (Garage's web endpoint) has no way to it: not at its public URL, not
    // under the private bucket's own name, not at the key's raw path.
    for (url, host) in [
        (store.public_url(key), None),
        (format!("{}/{key}", garage.web_base_url()), None),
        (
            format!("{}/{key}", garage.web_base_url()),
            Some("imagegate-private"),
        ),
    ] {
        let (status, body) = web_get(&url, host).await;
        assert_eq!(status, 404, "GET {url} (Host {host:?}) answered {status}");
        assert_ne!(body, manifest);
    }
    // Published files stay served, so the 404s above are about placement.
    store
        .put("i/ab/k/256.avif", sample(1_000, 9), "image/avif")
        .await
        .unwrap();
    let (status, _) = web_get(&store.public_url("i/ab/k/256.avif"), None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn private_objects_default_to_a_prefix_of_their_own_and_old_manifests_are_read() {
    let garage = Garage::start();
    let mut config = config_for(&garage);
    config.prefix = Some("imagegate".into());
    let store = S3Store::open(&config).await.unwrap();
    let plain = store_for(&garage).await;
    let key = "i/cd/k/manifest.json";
    store
        .put_private(key, Bytes::from_static(b"new"), "application/json")
        .await
        .unwrap();
    // `private/<key>`, outside `imagegate/`: what a CDN path rule must refuse.
    assert_eq!(
        &plain
            .get(&format!("private/{key}"))
            .await
            .unwrap()
            .unwrap()
            .bytes[..],
        b"new"
    );
    assert!(store.get(key).await.unwrap().is_none());

    // A manifest published by a release before private placement is still read.
    let old = "i/ef/k/manifest.json";
    store
        .put(old, Bytes::from_static(b"old"), "application/json")
        .await
        .unwrap();
    assert_eq!(
        &store.get_private(old).await.unwrap().unwrap().bytes[..],
        b"old"
    );
    assert!(store
        .get_private("i/ef/none/manifest.json")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn s3_down_is_unavailable_within_the_timeout_and_the_same_store_recovers() {
    let mut garage = Garage::start();
    let store = store_for(&garage).await;
    let before = sample(5_000, 4);
    store
        .put("i/00/before.avif", before.clone(), "image/avif")
        .await
        .unwrap();

    garage.stop();
    let started = Instant::now();
    let err = store
        .put("i/00/during.avif", sample(30_000, 5), "image/avif")
        .await
        .unwrap_err();
    let put_took = started.elapsed();
    assert!(err.is_unavailable(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(garage.bucket()), "{msg}");
    assert!(msg.contains(garage.s3_endpoint()), "{msg}");
    assert!(msg.contains("put"), "{msg}");

    let started = Instant::now();
    let err = store.get("i/00/before.avif").await.unwrap_err();
    let get_took = started.elapsed();
    assert!(err.is_unavailable(), "{err}");
    let err = store.check().await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    for took in [put_took, get_took] {
        assert!(took < OPERATION_TIMEOUT, "gave up after {took:?}");
    }

    garage.start_again();
    // Same store instance: no rebuild, the client reconnects by itself.
    store.check().await.unwrap();
    assert_eq!(
        store.get("i/00/before.avif").await.unwrap().unwrap().bytes,
        before
    );
    assert!(
        store.get("i/00/during.avif").await.unwrap().is_none(),
        "a failed put leaves nothing behind"
    );
    store
        .put(
            "i/00/after.avif",
            Bytes::from_static(b"after"),
            "image/avif",
        )
        .await
        .unwrap();
    assert_eq!(
        &store.get("i/00/after.avif").await.unwrap().unwrap().bytes[..],
        b"after"
    );
}

#[tokio::test]
async fn a_hung_s3_is_unavailable_once_the_operation_timeout_passes() {
    let mut garage = Garage::start();
    let mut config = config_for(&garage);
    config.attempt_timeout_ms = 400;
    config.operation_timeout_ms = 1_000;
    let store = S3Store::open(&config).await.unwrap();
    store.check().await.unwrap();

    // Connections are accepted by the kernel and never answered.
    garage.pause();
    let started = Instant::now();
    let err = store
        .put("i/22/hung.avif", sample(30_000, 7), "image/avif")
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(err.is_unavailable(), "{err}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2_500),
        "gave up after {took:?}, operation timeout is 1 s"
    );
    let started = Instant::now();
    let err = store.get("i/22/hung.avif").await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(started.elapsed() < Duration::from_millis(2_500));

    garage.resume();
    store.check().await.unwrap();
    // The server may still act on a request the client gave up on, as with any S3:
    // then the object is whole, never partial.
    if let Some(late) = store.get("i/22/hung.avif").await.unwrap() {
        assert_eq!(late.bytes, sample(30_000, 7));
    }
}

#[tokio::test]
async fn refusals_are_permanent_errors_that_never_show_the_secret() {
    let garage = Garage::start();
    let secret = garage.secret_access_key().to_string();

    // Right key id, wrong secret: the server answers 403, retrying will not help.
    let mut config = config_for(&garage);
    let wrong_secret = format!("{}x", &secret[..secret.len() - 1]);
    let wrong_var = format!(
        "IMAGEGATE_TEST_WRONG_SECRET_{}",
        garage.bucket().replace('-', "_")
    );
    std::env::set_var(&wrong_var, &wrong_secret);
    config.secret_access_key_env = Some(wrong_var);
    let store = S3Store::open(&config).await.unwrap();
    let err = store
        .put("i/11/x.avif", Bytes::from_static(b"x"), "image/avif")
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Rejected { .. }), "{err:?}");
    assert!(!err.is_unavailable());
    for text in [err.to_string(), format!("{err:?}"), format!("{store:?}")] {
        assert!(!text.contains(&secret), "{text}");
        assert!(!text.contains(&wrong_secret), "{text}");
    }
    assert!(err.to_string().contains(garage.bucket()), "{err}");

    // A bucket that does not exist is an error, not a missing object.
    let mut config = config_for(&garage);
    config.bucket = "no-such-bucket".into();
    let store = S3Store::open(&config).await.unwrap();
    let err = store.get("i/11/x.avif").await.unwrap_err();
    assert!(matches!(err, StorageError::Rejected { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-bucket"), "{err}");
    let err = store.check().await.unwrap_err();
    assert!(matches!(err, StorageError::Rejected { .. }), "{err:?}");
    for text in [err.to_string(), format!("{err:?}"), format!("{store:?}")] {
        assert!(!text.contains(&secret), "{text}");
    }
}

/// The only test that touches the process-wide AWS_* variables (the others name
/// their own credential variables, which bypasses the chain).
#[tokio::test]
async fn without_named_variables_the_standard_aws_chain_supplies_credentials() {
    let garage = Garage::start();
    // Hermetic chain: no profile files, and never the EC2 metadata address (only
    // loopback traffic from tests).
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    std::env::set_var("AWS_CONFIG_FILE", garage.dir().join("no-aws-config"));
    std::env::set_var(
        "AWS_SHARED_CREDENTIALS_FILE",
        garage.dir().join("no-aws-creds"),
    );
    std::env::remove_var("AWS_ACCESS_KEY_ID");
    std::env::remove_var("AWS_SECRET_ACCESS_KEY");
    let mut config = config_for(&garage);
    config.access_key_id_env = None;
    config.secret_access_key_env = None;

    // Nothing in the chain: a permanent error, not an outage.
    let store = S3Store::open(&config).await.unwrap();
    let err = store
        .put("i/33/x.avif", Bytes::from_static(b"x"), "image/avif")
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Rejected { .. }), "{err:?}");
    assert!(err.to_string().contains("credentials"), "{err}");

    std::env::set_var("AWS_ACCESS_KEY_ID", garage.access_key_id());
    std::env::set_var("AWS_SECRET_ACCESS_KEY", garage.secret_access_key());
    let store = S3Store::open(&config).await.unwrap();
    store
        .put("i/33/x.avif", Bytes::from_static(b"x"), "image/avif")
        .await
        .unwrap();
    assert_eq!(
        &store.get("i/33/x.avif").await.unwrap().unwrap().bytes[..],
        b"x"
    );
    std::env::remove_var("AWS_ACCESS_KEY_ID");
    std::env::remove_var("AWS_SECRET_ACCESS_KEY");
}
