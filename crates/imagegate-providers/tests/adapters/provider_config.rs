//! `[[providers]]` tables for the remote adapters: each kind parses with its
//! defaults, typos fail loudly, and a missing key variable is named at start-up.

use imagegate_providers::{ProviderConfig, ProviderError, ProviderSet};

fn parse(json: serde_json::Value) -> Result<ProviderConfig, serde_json::Error> {
    serde_json::from_value(json)
}

#[test]
fn every_remote_kind_parses_with_defaults() {
    for kind in [
        "openai",
        "stability",
        "google",
        "replicate",
        "automatic1111",
        "bfl",
        "fal",
    ] {
        let c = parse(serde_json::json!({"kind": kind})).unwrap_or_else(|e| panic!("{kind}: {e}"));
        let json = serde_json::to_value(&c).expect("serializes");
        assert_eq!(json["kind"], kind);
        assert!(
            json["models"].as_array().is_some_and(|m| !m.is_empty()),
            "{kind}"
        );
    }
}

#[test]
fn unknown_fields_are_refused() {
    for kind in [
        "openai",
        "stability",
        "google",
        "replicate",
        "automatic1111",
        "bfl",
        "fal",
    ] {
        let e = parse(serde_json::json!({"kind": kind, "api_key": "sk-oops"}));
        assert!(e.is_err(), "{kind} accepted an unknown field");
    }
}

#[test]
fn missing_key_variable_fails_the_whole_set_naming_it() {
    let c = parse(serde_json::json!({
        "kind": "stability",
        "api_key_env": "IMAGEGATE_TEST_SURELY_UNSET_KEY"
    }))
    .expect("parses");
    match ProviderSet::from_config(&[c]) {
        Err(ProviderError::Config { provider, message }) => {
            assert_eq!(provider, "stability");
            assert!(
                message.contains("IMAGEGATE_TEST_SURELY_UNSET_KEY"),
                "{message}"
            );
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("built without a key"),
    }
}
