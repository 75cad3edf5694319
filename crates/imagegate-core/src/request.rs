//! What a caller asks for, after parsing and before routing.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A request that does not make sense, whatever the configuration.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("size {0:?} is not WIDTHxHEIGHT (for example \"1024x1024\")")]
    BadSize(String),
    #[error("size {width}x{height} is outside 64..={max} pixels a side")]
    SizeOutOfRange { width: u32, height: u32, max: u32 },
    #[error("model {0:?} is neither a class (draft, standard, premium) nor provider/model")]
    BadModel(String),
    #[error("prompt is empty")]
    EmptyPrompt,
}

impl RequestError {
    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            RequestError::BadSize(_) | RequestError::SizeOutOfRange { .. } => "size",
            RequestError::BadModel(_) => "model",
            RequestError::EmptyPrompt => "prompt",
        }
    }
}

/// Image dimensions in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

impl Size {
    /// Largest side a generation may ask for; providers top out well below this.
    pub const MAX_SIDE: u32 = 4096;
    pub const MIN_SIDE: u32 = 64;

    pub fn new(width: u32, height: u32) -> Result<Size, RequestError> {
        let in_range = |v: u32| (Self::MIN_SIDE..=Self::MAX_SIDE).contains(&v);
        if in_range(width) && in_range(height) {
            Ok(Size { width, height })
        } else {
            Err(RequestError::SizeOutOfRange {
                width,
                height,
                max: Self::MAX_SIDE,
            })
        }
    }

    pub fn pixels(self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

impl FromStr for Size {
    type Err = RequestError;
    fn from_str(s: &str) -> Result<Size, RequestError> {
        let bad = || RequestError::BadSize(s.to_string());
        let (w, h) = s.trim().split_once(['x', 'X']).ok_or_else(bad)?;
        let w = w.trim().parse().map_err(|_| bad())?;
        let h = h.trim().parse().map_err(|_| bad())?;
        Size::new(w, h)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// Quality classes callers ask for instead of naming a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelClass {
    Draft,
    Standard,
    Premium,
}

impl ModelClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelClass::Draft => "draft",
            ModelClass::Standard => "standard",
            ModelClass::Premium => "premium",
        }
    }
}

/// A model class the router may serve from any provider, or one pinned provider model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelChoice {
    Class(ModelClass),
    Pinned { provider: String, model: String },
}

impl ModelChoice {
    /// The provider name that stands for "no provider drew this, the caller supplied
    /// it" (`imagegate process`), in the content key, the manifest and the ledger.
    pub const UPLOAD_PROVIDER: &'static str = "source";
    /// The model name that goes with [`ModelChoice::UPLOAD_PROVIDER`].
    pub const UPLOAD_MODEL: &'static str = "upload";

    /// The pinned model an uploaded image is keyed and recorded under.
    pub fn upload() -> ModelChoice {
        ModelChoice::Pinned {
            provider: Self::UPLOAD_PROVIDER.into(),
            model: Self::UPLOAD_MODEL.into(),
        }
    }
}

impl FromStr for ModelChoice {
    type Err = RequestError;
    fn from_str(s: &str) -> Result<ModelChoice, RequestError> {
        let t = s.trim();
        match t {
            "draft" => Ok(ModelChoice::Class(ModelClass::Draft)),
            "standard" => Ok(ModelChoice::Class(ModelClass::Standard)),
            "premium" => Ok(ModelChoice::Class(ModelClass::Premium)),
            _ => match t.split_once('/') {
                // Model names may hold slashes themselves (Replicate's owner/name).
                Some((p, m))
                    if !p.is_empty()
                        && !m.is_empty()
                        && m.split('/').all(|part| !part.is_empty()) =>
                {
                    Ok(ModelChoice::Pinned {
                        provider: p.to_string(),
                        model: m.to_string(),
                    })
                }
                _ => Err(RequestError::BadModel(s.to_string())),
            },
        }
    }
}

impl fmt::Display for ModelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelChoice::Class(c) => f.write_str(c.as_str()),
            ModelChoice::Pinned { provider, model } => write!(f, "{provider}/{model}"),
        }
    }
}

/// A template reference: which template produced the prompt and with which values.
/// Part of the key because two templates may render the same text differently later.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TemplateRef {
    pub name: String,
    pub vars: BTreeMap<String, String>,
}

/// Everything that decides what the provider is asked to draw.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GenerationRequest {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub model: ModelChoice,
    pub size: Size,
    pub seed: u64,
    pub template: Option<TemplateRef>,
}

impl GenerationRequest {
    /// Builds a request, rejecting prompts that normalize to nothing.
    pub fn new(
        prompt: &str,
        negative_prompt: Option<&str>,
        model: ModelChoice,
        size: Size,
        seed: u64,
    ) -> Result<GenerationRequest, RequestError> {
        if crate::key::normalize_text(prompt).is_empty() {
            return Err(RequestError::EmptyPrompt);
        }
        Ok(GenerationRequest {
            prompt: prompt.to_string(),
            negative_prompt: negative_prompt.map(str::to_string),
            model,
            size,
            seed,
            template: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uploaded images are keyed and recorded as `source/upload`: changing either
    /// name would change every uploaded image's content key and ledger rows.
    #[test]
    fn an_upload_is_recorded_as_source_upload() {
        assert_eq!(ModelChoice::upload().to_string(), "source/upload");
        assert_eq!(
            "source/upload".parse::<ModelChoice>().unwrap(),
            ModelChoice::upload()
        );
    }

    #[test]
    fn sizes_parse_and_refuse() {
        assert_eq!(
            "1024x768".parse::<Size>().unwrap(),
            Size {
                width: 1024,
                height: 768
            }
        );
        assert_eq!(
            " 512X512 ".parse::<Size>().unwrap(),
            Size {
                width: 512,
                height: 512
            }
        );
        assert!(matches!(
            "1024".parse::<Size>(),
            Err(RequestError::BadSize(_))
        ));
        assert!(matches!(
            "10x10".parse::<Size>(),
            Err(RequestError::SizeOutOfRange { .. })
        ));
        assert!(matches!(
            "99999x512".parse::<Size>(),
            Err(RequestError::SizeOutOfRange { .. })
        ));
    }

    #[test]
    fn models_parse() {
        assert_eq!(
            "premium".parse::<ModelChoice>().unwrap(),
            ModelChoice::Class(ModelClass::Premium)
        );
        assert_eq!(
            "openai/gpt-image-1".parse::<ModelChoice>().unwrap(),
            ModelChoice::Pinned {
                provider: "openai".into(),
                model: "gpt-image-1".into()
            }
        );
        assert!("huge".parse::<ModelChoice>().is_err());
        assert_eq!(
            "replicate/black-forest-labs/flux-schnell"
                .parse::<ModelChoice>()
                .unwrap(),
            ModelChoice::Pinned {
                provider: "replicate".into(),
                model: "black-forest-labs/flux-schnell".into()
            }
        );
        assert!("a/b/".parse::<ModelChoice>().is_err());
        assert!("a//b".parse::<ModelChoice>().is_err());
        assert!("/x".parse::<ModelChoice>().is_err());
    }
}
