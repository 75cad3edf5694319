//! Reading a file's Content Credentials and whether they validate.

use crate::ProvenanceError;
use serde::Serialize;
use std::io::Cursor;

/// What a file's C2PA manifest says and whether it holds.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CredentialsReport {
    /// Whether the file carries a C2PA manifest at all.
    pub present: bool,
    /// `invalid` (broken, tampered or unverifiable), `valid` (intact and
    /// signed, by a certificate none of the trust anchors vouches for) or
    /// `trusted` (valid and chaining to a trust anchor). Absent when no manifest.
    pub state: Option<String>,
    /// The trust anchors validation used.
    pub trust_anchors: String,
    /// The claim generator of the active manifest (imagegate for our files).
    pub claim_generator: Option<String>,
    /// The `softwareAgent` of the first action: the provider and model.
    pub software_agent: Option<String>,
    /// The first action (`c2pa.created` for our files).
    pub action: Option<String>,
    pub digital_source_type: Option<String>,
    /// Validation codes that are failures (empty when the manifest validates).
    pub failures: Vec<String>,
    /// The active manifest's ingredients: for a provider that signed its output,
    /// its manifest as the `parentOf` ingredient.
    pub ingredients: Vec<IngredientReport>,
    /// The manifest store as the c2pa crate reports it.
    #[schema(value_type = Object)]
    pub manifest_store: Option<serde_json::Value>,
}

/// One ingredient of a manifest, and what its own manifest (if any) claims.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct IngredientReport {
    pub title: Option<String>,
    /// `parentOf`, `componentOf` or `inputTo`.
    pub relationship: Option<String>,
    /// The label of the ingredient's own active manifest, when it had one.
    pub manifest: Option<String>,
    /// That manifest's claim generator (the provider's software).
    pub claim_generator: Option<String>,
    /// That manifest's first action and its `softwareAgent`.
    pub action: Option<String>,
    pub software_agent: Option<String>,
    /// The ingredient manifest's validation failures as recorded when it was
    /// added (empty when it validated).
    pub failures: Vec<String>,
}

/// Reads `file`'s manifest (format guessed by the c2pa crate from `mime`),
/// validating signatures against `trust_anchors_pem` (a PEM bundle), described
/// to the reader as `anchors_name`.
pub fn read_credentials(
    file: &[u8],
    mime: &str,
    trust_anchors_pem: Option<&str>,
    anchors_name: &str,
) -> Result<CredentialsReport, ProvenanceError> {
    let mut settings = serde_json::json!({
        "verify": {"ocsp_fetch": false, "remote_manifest_fetch": false, "verify_trust": true},
    });
    if let Some(pem) = trust_anchors_pem {
        settings["trust"] = serde_json::json!({"trust_anchors": pem});
    }
    let context = c2pa::Context::new()
        .with_settings(settings.to_string())
        .map_err(|e| ProvenanceError::C2pa(e.to_string()))?;
    let empty = CredentialsReport {
        present: false,
        state: None,
        trust_anchors: anchors_name.to_string(),
        claim_generator: None,
        software_agent: None,
        action: None,
        digital_source_type: None,
        failures: Vec::new(),
        ingredients: Vec::new(),
        manifest_store: None,
    };
    let reader = match c2pa::Reader::from_context(context).with_stream(mime, Cursor::new(file)) {
        Ok(reader) => reader,
        Err(c2pa::Error::JumbfNotFound) => return Ok(empty),
        Err(e) => {
            return Ok(CredentialsReport {
                present: true,
                state: Some("invalid".into()),
                failures: vec![e.to_string()],
                ..empty
            })
        }
    };
    let state = match reader.validation_state() {
        c2pa::ValidationState::Invalid => "invalid",
        c2pa::ValidationState::Valid => "valid",
        c2pa::ValidationState::Trusted => "trusted",
    };
    let store: serde_json::Value = serde_json::from_str(&reader.json()).unwrap_or_default();
    let active = store["active_manifest"]
        .as_str()
        .and_then(|label| store["manifests"].get(label));
    let first_action = active.and_then(first_action_of);
    let ingredients = active
        .and_then(|m| m["ingredients"].as_array())
        .map(|all| all.iter().map(|i| ingredient_report(&store, i)).collect())
        .unwrap_or_default();
    let failures = reader
        .validation_status()
        .unwrap_or_default()
        .iter()
        .filter(|s| !s.passed())
        .map(|s| match s.explanation() {
            Some(why) => format!("{}: {why}", s.code()),
            None => s.code().to_string(),
        })
        .collect();
    Ok(CredentialsReport {
        present: true,
        state: Some(state.into()),
        trust_anchors: anchors_name.to_string(),
        claim_generator: text(active.and_then(|m| m["claim_generator_info"].get(0)?.get("name"))),
        software_agent: text(first_action.and_then(|a| a["softwareAgent"].get("name"))),
        action: text(first_action.and_then(|a| a.get("action"))),
        digital_source_type: text(first_action.and_then(|a| a.get("digitalSourceType"))),
        failures,
        ingredients,
        manifest_store: Some(store),
    })
}

fn text(v: Option<&serde_json::Value>) -> Option<String> {
    v.and_then(|v| v.as_str()).map(str::to_string)
}

/// The first action of a manifest's first actions assertion.
fn first_action_of(manifest: &serde_json::Value) -> Option<&serde_json::Value> {
    manifest["assertions"].as_array()?.iter().find_map(|a| {
        a["label"]
            .as_str()
            .filter(|l| l.starts_with("c2pa.actions"))
            .and_then(|_| a["data"]["actions"].get(0))
    })
}

/// An ingredient as the c2pa crate's JSON report shows it, with its own active
/// manifest looked up in the same store.
fn ingredient_report(
    store: &serde_json::Value,
    ingredient: &serde_json::Value,
) -> IngredientReport {
    let label = text(ingredient.get("active_manifest"));
    let manifest = label.as_deref().and_then(|l| store["manifests"].get(l));
    let action = manifest.and_then(first_action_of);
    // Ingredient v3 records results per manifest; older ones a flat status list.
    let failures = ingredient["validation_results"]["activeManifest"]["failure"]
        .as_array()
        .or_else(|| ingredient["validation_status"].as_array())
        .map(|codes| codes.iter().filter_map(|c| text(c.get("code"))).collect())
        .unwrap_or_default();
    IngredientReport {
        title: text(ingredient.get("title")),
        relationship: text(ingredient.get("relationship")),
        claim_generator: text(manifest.and_then(|m| m["claim_generator_info"].get(0)?.get("name"))),
        action: text(action.and_then(|a| a.get("action"))),
        software_agent: text(action.and_then(|a| a["softwareAgent"].get("name"))),
        manifest: label,
        failures,
    }
}
