//! The catalog as shipped: every adapter's default `models` are priced by
//! config/pricing.toml and none of them is retired or retiring, so a configuration
//! naming only `kind = "..."` starts and calls today's models.

use chrono::NaiveDate;
use imagegate_providers::price_book::{audit, Offered};
use imagegate_providers::{ModelStatus, PriceBook, ProviderConfig};

fn book() -> PriceBook {
    PriceBook::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/pricing.toml"
    ))
    .expect("config/pricing.toml")
}

#[test]
fn every_default_model_is_priced_and_current() {
    let book = book();
    // The day the catalog was read; a later run of `imagegate prices check` is what
    // tells an operator the world moved on.
    let today = NaiveDate::from_ymd_opt(2026, 12, 5).expect("date");
    let mut offered = Vec::new();
    for kind in [
        "local",
        "openai",
        "google",
        "bfl",
        "fal",
        "replicate",
        "stability",
        "automatic1111",
    ] {
        let config: ProviderConfig =
            serde_json::from_value(serde_json::json!({"kind": kind})).expect("defaults");
        let json = serde_json::to_value(&config).expect("serializes");
        for m in json["models"].as_array().expect("models") {
            let model = m["name"].as_str().expect("name").to_string();
            let entry = book
                .entry(kind, &model)
                .unwrap_or_else(|| panic!("{kind}/{model} has no price-book entry"));
            assert_eq!(
                entry.status_on(today),
                ModelStatus::Current,
                "{kind}/{model} is not current"
            );
            offered.push(Offered {
                provider: kind.into(),
                kind: kind.into(),
                model,
                unpriced: false,
            });
        }
    }
    // No findings but staleness-free: nothing missing, retired or retiring.
    let findings = audit(&book, &offered, today, 90);
    assert!(findings.is_empty(), "{findings:#?}");
}
