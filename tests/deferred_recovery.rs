//! Deferred jobs at the edges: a kill -9 in the middle of a job, after its provider
//! was paid and before its files were published (the restarted service's worker
//! takes the job over when the dead one's lease runs out, renders the picture that
//! was paid for, kept in the ledger from the moment it was paid, and publishes it:
//! the provider is paid once, and the first charge stays in the ledger); and two
//! replicas on one PostgreSQL ledger sharing one queue, each job run once.

use crate::deferred::{config, ledger, post_image, until_final};
use crate::support::{get_json, Site};
use imagegate_ledger::RequestStatus;
use imagegate_testkit::postgres::TestSchema;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_killed_after_its_provider_was_paid_is_finished_without_paying_again() {
    let site = Site::new(|dir| {
        // Large, slow AVIF variants: the render after the payment takes seconds,
        // which is the window this test kills the process in.
        config(dir, "").replacen(
            "variants = [64, 128]\nformats = [\"avif\", \"jpeg\"]\navif = { quality = 60, speed = 9 }",
            "variants = [1024, 768, 512]\nformats = [\"avif\"]\navif = { quality = 60, speed = 1 }",
            1,
        )
    });
    let server = site.serve(&[]);
    let (status, job, _) = post_image(
        &server,
        serde_json::json!({"prompt": "a signal box in the snow", "deliver_by": "1h"}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let key: imagegate_core::ContentKey = job["image_id"].as_str().unwrap().parse().unwrap();

    // Kill the moment the paid picture is in the ledger.
    let ledger = ledger(&site).await;
    let started = Instant::now();
    loop {
        if ledger.paid_source(key).await.unwrap().is_some() {
            break;
        }
        let job = get_json(server.url(&format!("/v1/jobs/{id}"))).await;
        assert!(
            matches!(job["status"].as_str(), Some("queued" | "running")),
            "the job ended before it could be killed (the render was too fast): {job}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never paid: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    let rows = ledger.request_rows(&id).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, RequestStatus::InProgress, "{rows:?}");
    assert!(rows[0].micros.0 > 0, "the charge is recorded: {rows:?}");
    assert_eq!(ledger.paid_generations(key).await.unwrap(), 1);

    let server = site.serve(&[]);
    let done = until_final(&server, &id, Duration::from_secs(180)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(
        ledger.paid_generations(key).await.unwrap(),
        1,
        "the retry rendered the kept picture instead of paying again"
    );
    let rows = ledger.request_rows(&id).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1].status, RequestStatus::Ok, "{rows:?}");
    // What the job cost is the first claim's charge plus the second's CPU and
    // storage, never a second provider fee.
    let charged = done["cost"]["charged_usd"].as_f64().unwrap();
    let provider = done["cost"]["provider_usd"].as_f64().unwrap();
    assert!(
        (provider - rows[0].micros.as_usd()).abs() < 1e-9,
        "the provider fee is the first claim's: {done} {rows:?}"
    );
    assert!(charged >= provider, "{done}");
    assert!(
        ledger.paid_source(key).await.unwrap().is_none(),
        "deleted once published"
    );
    let image = &done["image"]["images"][0]["url"];
    let served = crate::support::client()
        .get(image.as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_postgres_ledger_run_each_job_once() {
    let schema = TestSchema::create().await;
    let site = Site::new(|dir| {
        let data = dir.join("data");
        config(dir, "").replacen(
            &format!("url = \"sqlite://{}/ledger.db\"", data.display()),
            &format!("url = \"{}\"", schema.url()),
            1,
        )
    });
    let text = std::fs::read_to_string(site.config()).unwrap();
    assert!(
        text.contains("postgres://"),
        "the ledger is PostgreSQL: {text}"
    );
    // Accepted by a replica that runs none, so the two workers race for all of them.
    let accepting = site.serve(&[("IMAGEGATE_DEFERRED__WORKERS", "0")]);
    let mut jobs = Vec::new();
    for n in 0..12 {
        let (status, job, _) = post_image(
            &accepting,
            serde_json::json!({"prompt": format!("a lock keeper's cottage {n}"), "deliver_by": "1h"}),
        )
        .await;
        assert_eq!(status, 202, "{job}");
        jobs.push(job);
    }
    accepting.stop();
    let a = site.serve(&[("IMAGEGATE_DEFERRED__WORKERS", "3")]);
    let b = site.serve(&[("IMAGEGATE_DEFERRED__WORKERS", "3")]);
    let ledger = imagegate_ledger::Ledger::open(&imagegate_ledger::LedgerConfig {
        url: schema.url().to_string(),
    })
    .await
    .unwrap();
    for (n, job) in jobs.iter().enumerate() {
        // Polled on either replica: they read one queue.
        let server = if n % 2 == 0 { &a } else { &b };
        let done = until_final(
            server,
            job["id"].as_str().unwrap(),
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["attempts"], 1, "claimed once: {done}");
        let key = job["image_id"].as_str().unwrap().parse().unwrap();
        assert_eq!(ledger.paid_generations(key).await.unwrap(), 1, "{done}");
        let rows = ledger
            .request_rows(job["id"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
    }
    a.stop();
    b.stop();
    ledger.close().await;
    schema.drop_schema().await;
}
