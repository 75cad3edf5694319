//! The one error type for configuration that cannot work, shared by every crate that
//! owns a configuration section, so start-up names the exact field to fix.

/// A configuration value that cannot work, named by its path in the configuration
/// tree (`profiles.default.avif.quality`, `router.breaker.failure_threshold`).
///
/// A section checks itself with paths relative to the section; whoever composes the
/// tree prefixes them with [`ConfigError::under`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct ConfigError {
    /// Dotted path of the field, from the root of the tree as far as it is known.
    pub path: String,
    /// What is wrong with it, in words a person can act on.
    pub problem: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            problem: problem.into(),
        }
    }

    /// The same fault seen from the section that holds this one.
    pub fn under(self, section: &str) -> ConfigError {
        let path = if self.path.is_empty() {
            section.to_string()
        } else {
            format!("{section}.{}", self.path)
        };
        ConfigError { path, ..self }
    }

    /// The first segment of the path: the top-level field it is about.
    pub fn field(&self) -> &str {
        self.path.split('.').next().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_fault_is_named_from_the_root() {
        let e = ConfigError::new("breaker.failure_threshold", "must be positive").under("router");
        assert_eq!(e.path, "router.breaker.failure_threshold");
        assert_eq!(e.field(), "router");
        assert_eq!(
            e.to_string(),
            "router.breaker.failure_threshold: must be positive"
        );
        assert_eq!(ConfigError::new("", "x").under("a").path, "a");
    }
}
