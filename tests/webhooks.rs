//! Webhooks of deferred jobs against the real binary: a job's end is POSTed to its
//! webhook signed per Standard Webhooks (checked with the convention's reference
//! library), retried with backoff after a failure with the same `webhook-id`, every
//! attempt recorded and shown on the job; a key's default webhook applies when a
//! request names none; addresses inside the service's network are refused unless
//! allowed; and without a signing secret a webhook is refused, not dropped.

use crate::deferred::{config, ledger, post_image, until_final};
use crate::support::{self, get_json, Site};
use base64::Engine;
use std::time::{Duration, Instant};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn secret() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode([42u8; 32])
    )
}

/// The deferred tests' site with `[server.webhooks]` added.
fn site(webhooks: &str) -> Site {
    Site::new(|dir| {
        let base = config(dir, "");
        // `[server]` is the first table of the deferred config: its sub-table goes
        // right after the listen line.
        base.replacen(
            "listen = \"127.0.0.1:0\"\n",
            &format!("listen = \"127.0.0.1:0\"\n\n[server.webhooks]\n{webhooks}\n"),
            1,
        )
    })
}

/// Waits until the job's webhook is no longer pending; returns the job.
async fn until_webhook_settles(
    server: &support::Server,
    id: &str,
    limit: Duration,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let job = get_json(server.url(&format!("/v1/jobs/{id}"))).await;
        let status = job["webhook"]["status"].as_str().unwrap_or("");
        if status == "delivered" || status == "failed" {
            return job;
        }
        assert!(started.elapsed() < limit, "webhook unsettled: {job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_jobs_end_is_signed_retried_and_recorded() {
    let receiver = MockServer::start().await;
    // The first attempt fails; the retry (after 1 s) is answered.
    Mock::given(method("POST"))
        .and(path("/flaky"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&receiver)
        .await;
    Mock::given(method("POST"))
        .and(path("/flaky"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&receiver)
        .await;
    Mock::given(method("POST"))
        .and(path("/down"))
        .respond_with(ResponseTemplate::new(500).set_body_string("nope"))
        .mount(&receiver)
        .await;
    let site = site("allow_private_networks = true\nretry_delays_secs = [1]\npoll_ms = 100");
    let server = site.serve(&[("IMAGEGATE_WEBHOOK_SECRET", &secret())]);

    // Only with deliver_by.
    let (status, refused, _) = post_image(
        &server,
        serde_json::json!({"prompt": "a kiln", "webhook_url": format!("{}/flaky", receiver.uri())}),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_request", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deliver_by"),
        "{refused}"
    );
    let (status, refused, _) = post_image(
        &server,
        serde_json::json!({"prompt": "a kiln", "deliver_by": "1h", "webhook_url": "ftp://example.com/"}),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_webhook_url", "{refused}");

    let hook = format!("{}/flaky", receiver.uri());
    let (status, job, _) = post_image(
        &server,
        serde_json::json!({"prompt": "a signal box at dawn", "deliver_by": "1h", "webhook_url": hook}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let done = until_final(&server, &id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let settled = until_webhook_settles(&server, &id, Duration::from_secs(30)).await;
    let webhook = &settled["webhook"];
    assert_eq!(webhook["status"], "delivered", "{settled}");
    assert_eq!(webhook["attempts"], 2, "{settled}");
    assert_eq!(webhook["last_status_code"], 204, "{settled}");
    assert_eq!(webhook["url"], hook.as_str());

    let received: Vec<_> = receiver
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path() == "/flaky")
        .collect();
    assert_eq!(received.len(), 2, "one failed attempt, one delivered");
    let verifier = standardwebhooks::Webhook::new(&secret()).unwrap();
    let webhook_id = webhook["id"].as_str().unwrap();
    for r in &received {
        verifier
            .verify(&r.body, &r.headers)
            .expect("signed per Standard Webhooks");
        assert_eq!(
            r.headers["webhook-id"], webhook_id,
            "the same id on a retry"
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["type"], "job.succeeded", "{body}");
        assert_eq!(body["data"]["id"], id.as_str(), "{body}");
        assert_eq!(body["data"]["status"], "succeeded", "{body}");
        let url = body["data"]["image"]["images"][0]["url"]
            .as_str()
            .unwrap_or_else(|| panic!("the image's URLs: {body}"));
        assert!(url.starts_with("http"), "{url}");
    }
    let ledger = ledger(&site).await;
    let attempts = ledger.webhook_attempts(webhook_id).await.unwrap();
    assert_eq!(
        attempts.iter().map(|a| (a.0, a.1)).collect::<Vec<_>>(),
        vec![(1, Some(503)), (2, Some(204))]
    );

    // A receiver that keeps failing: tried once more after 1 s, then given up on.
    let (status, job, _) = post_image(
        &server,
        serde_json::json!({"prompt": "a tram depot", "deliver_by": "1h", "webhook_url": format!("{}/down", receiver.uri())}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap();
    until_final(&server, id, Duration::from_secs(60)).await;
    let settled = until_webhook_settles(&server, id, Duration::from_secs(30)).await;
    assert_eq!(settled["webhook"]["status"], "failed", "{settled}");
    assert_eq!(settled["webhook"]["attempts"], 2, "{settled}");
    assert_eq!(settled["webhook"]["last_status_code"], 500, "{settled}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keys_default_webhook_applies_and_private_addresses_are_refused() {
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    // Private networks not allowed (the default).
    let site = site("poll_ms = 100\nretry_delays_secs = [1]");
    let created = site.cli(&["keys", "create", "--name", "hooks"]);
    assert!(created.status.success(), "{created:?}");
    let token = String::from_utf8(created.stdout)
        .unwrap()
        .trim()
        .to_string();
    let key_id = token.split('_').nth(1).unwrap().to_string();
    // A name that resolves to loopback passes the form check; the delivery is
    // refused once the name is resolved.
    let hook = format!("http://localhost:{}/key-default", receiver.address().port());
    let set = site.cli(&["keys", "webhook", &key_id, &hook]);
    assert!(set.status.success(), "{set:?}");
    let bad = site.cli(&["keys", "webhook", &key_id, "gopher://x"]);
    assert!(!bad.status.success(), "{bad:?}");

    let server = site.serve(&[("IMAGEGATE_WEBHOOK_SECRET", &secret())]);
    let authed = |body: serde_json::Value| {
        support::client()
            .post(server.url("/v1/images"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    // A literal private address is refused at once.
    let refused = authed(serde_json::json!({
        "prompt": "a quay", "deliver_by": "1h", "webhook_url": receiver.uri()
    }))
    .await
    .unwrap();
    assert_eq!(refused.status(), 400);
    let refused: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "invalid_webhook_url", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allow_private_networks"),
        "{refused}"
    );

    // No webhook named: the key's default is the job's.
    let answer = authed(serde_json::json!({"prompt": "a quay", "deliver_by": "1h"}))
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let job: serde_json::Value = answer.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    let job_url = server.url(&format!("/v1/jobs/{id}"));
    let started = Instant::now();
    let settled = loop {
        let job: serde_json::Value = support::client()
            .get(&job_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["webhook"]["status"] == "failed" {
            break job;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(settled["status"], "succeeded", "{settled}");
    assert_eq!(settled["webhook"]["url"], hook.as_str(), "{settled}");
    // Refused before any connection, and not retried: the address will not change
    // into one that may be called.
    assert_eq!(settled["webhook"]["attempts"], 1, "{settled}");
    assert!(
        settled["webhook"]["last_error"]
            .as_str()
            .unwrap()
            .contains("not a public address"),
        "{settled}"
    );
    assert!(receiver.received_requests().await.unwrap().is_empty());
    server.stop();

    // Without a signing secret a webhook is refused, not silently dropped.
    let server = site.serve(&[]);
    let refused = support::client()
        .post(server.url("/v1/images"))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "prompt": "a quay", "deliver_by": "1h", "webhook_url": "https://example.com/hook"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let refused: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "webhooks_disabled", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("IMAGEGATE_WEBHOOK_SECRET"),
        "{refused}"
    );
    server.stop();
}
