//! The prompt deny-list, checked before anything is generated (and paid for).

use crate::SafetyError;
use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use std::collections::HashMap;
use unicode_normalization::UnicodeNormalization;

/// Compiled-size cap for the deny-list automata: a configuration mistake should fail
/// at start-up, not make every request slow.
const REGEX_SIZE_LIMIT: usize = 16 << 20;

/// Which deny-list rule a prompt matched, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScreenHit {
    /// A deny-listed word or phrase (as written in the configuration).
    Word(String),
    /// A deny-listed regular expression (as written in the configuration).
    Pattern(String),
}

impl ScreenHit {
    /// The configured rule text that matched.
    pub fn rule(&self) -> &str {
        match self {
            ScreenHit::Word(w) | ScreenHit::Pattern(w) => w,
        }
    }
}

/// A configurable deny-list of words and regular expressions.
///
/// Both the prompt and the words are compared after Unicode NFKC normalisation and
/// lowercasing, so "NUDE", "ｎｕｄｅ" and "nude," all match the word "nude"; words
/// match only on word boundaries ("nudes" does not match "nude"). Patterns are regular
/// expressions (Rust `regex` syntax, linear time) run against the same normalised,
/// lowercased prompt; they are compiled case-insensitively. Deliberate obfuscation
/// ("n u d e") is the image classifier's job, not this list's.
#[derive(Debug, Clone)]
pub struct PromptScreen {
    /// One alternation of all words between word boundaries, or None without words.
    words: Option<Regex>,
    /// Normalised word -> word as configured, to report the rule.
    word_rules: HashMap<String, String>,
    patterns: Option<RegexSet>,
    pattern_rules: Vec<String>,
}

impl PromptScreen {
    /// Builds the screen; an empty word or an invalid pattern is an error naming it.
    pub fn new(words: &[String], patterns: &[String]) -> Result<Self, SafetyError> {
        let mut word_rules = HashMap::new();
        let mut alternatives = Vec::new();
        for word in words {
            let normalised = normalise(word.trim());
            if normalised.is_empty() {
                return Err(SafetyError::BadWord {
                    word: word.clone(),
                    reason: "it is empty".into(),
                });
            }
            if word_rules
                .insert(normalised.clone(), word.clone())
                .is_none()
            {
                alternatives.push(regex::escape(&normalised));
            }
        }
        // Longest first, so a phrase wins over a word it starts with.
        alternatives.sort_by_key(|a| std::cmp::Reverse(a.len()));
        let words = if alternatives.is_empty() {
            None
        } else {
            // Half boundaries: the word is not part of a longer word on either side,
            // which also works for words that start or end with punctuation ("c++").
            let source = format!(
                r"\b{{start-half}}(?:{})\b{{end-half}}",
                alternatives.join("|")
            );
            Some(
                RegexBuilder::new(&source)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| SafetyError::BadWord {
                        word: words.join(", "),
                        reason: e.to_string(),
                    })?,
            )
        };

        for pattern in patterns {
            // Compiled one by one first, so the error names the culprit.
            RegexBuilder::new(pattern)
                .case_insensitive(true)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| SafetyError::BadPattern {
                    pattern: pattern.clone(),
                    reason: e.to_string(),
                })?;
        }
        let patterns_set = if patterns.is_empty() {
            None
        } else {
            Some(
                RegexSetBuilder::new(patterns)
                    .case_insensitive(true)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| SafetyError::BadPattern {
                        pattern: patterns.join(" | "),
                        reason: e.to_string(),
                    })?,
            )
        };

        Ok(PromptScreen {
            words,
            word_rules,
            patterns: patterns_set,
            pattern_rules: patterns.to_vec(),
        })
    }

    /// A screen that lets everything through.
    pub fn empty() -> Self {
        PromptScreen {
            words: None,
            word_rules: HashMap::new(),
            patterns: None,
            pattern_rules: Vec::new(),
        }
    }

    /// The first rule the prompt breaks (words before patterns), or None.
    pub fn check(&self, prompt: &str) -> Option<ScreenHit> {
        if self.words.is_none() && self.patterns.is_none() {
            return None;
        }
        let prompt = normalise(prompt);
        if let Some(words) = &self.words {
            if let Some(m) = words.find(&prompt) {
                let rule = self
                    .word_rules
                    .get(m.as_str())
                    .cloned()
                    .unwrap_or_else(|| m.as_str().to_owned());
                return Some(ScreenHit::Word(rule));
            }
        }
        if let Some(patterns) = &self.patterns {
            if let Some(index) = patterns.matches(&prompt).into_iter().next() {
                return Some(ScreenHit::Pattern(self.pattern_rules[index].clone()));
            }
        }
        None
    }
}

fn normalise(text: &str) -> String {
    text.nfkc().collect::<String>().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screen(words: &[&str], patterns: &[&str]) -> PromptScreen {
        let words: Vec<String> = words.iter().map(|s| s.to_string()).collect();
        let patterns: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        PromptScreen::new(&words, &patterns).expect("valid deny-list")
    }

    #[test]
    fn words_match_case_insensitively_on_word_boundaries() {
        let s = screen(&["nude"], &[]);
        for prompt in [
            "nude",
            "a NUDE figure",
            "Nude, on a beach",
            "(nude)",
            "x-nude-y",
        ] {
            assert_eq!(
                s.check(prompt),
                Some(ScreenHit::Word("nude".into())),
                "{prompt}"
            );
        }
        for prompt in ["nudes", "denude the hill", "a landscape", "n u d e"] {
            assert_eq!(s.check(prompt), None, "{prompt}");
        }
    }

    #[test]
    fn nfkc_folds_compatibility_forms() {
        let s = screen(&["nude"], &[]);
        // Fullwidth letters and a ligature-free but compatibility-composed form.
        assert_eq!(
            s.check("ＮＵＤＥ portrait"),
            Some(ScreenHit::Word("nude".into()))
        );
        let s = screen(&["fire"], &[]);
        assert_eq!(s.check("ﬁre"), Some(ScreenHit::Word("fire".into())));
    }

    #[test]
    fn configured_word_is_reported_as_written() {
        let s = screen(&["Gore"], &[]);
        assert_eq!(
            s.check("so much gore"),
            Some(ScreenHit::Word("Gore".into()))
        );
    }

    #[test]
    fn phrases_match_as_a_whole() {
        let s = screen(&["blood bath", "blood"], &[]);
        assert_eq!(
            s.check("a Blood Bath scene"),
            Some(ScreenHit::Word("blood bath".into()))
        );
        assert_eq!(s.check("bloody"), None);
    }

    #[test]
    fn words_with_regex_metacharacters_are_literal() {
        let s = screen(&["c++"], &[]);
        assert_eq!(s.check("c"), None);
        assert_eq!(s.check("cc"), None);
        assert_eq!(s.check("c++"), Some(ScreenHit::Word("c++".into())));
        assert_eq!(
            s.check("in C++, please"),
            Some(ScreenHit::Word("c++".into()))
        );
        assert_eq!(s.check("c++x"), None);
    }

    #[test]
    fn patterns_are_case_insensitive_regexes() {
        let s = screen(&[], &[r"\bkill(ing|ed)?\b", r"\d{3}-\d{2}-\d{4}"]);
        assert_eq!(
            s.check("KILLING spree"),
            Some(ScreenHit::Pattern(r"\bkill(ing|ed)?\b".into()))
        );
        assert_eq!(
            s.check("ssn 123-45-6789"),
            Some(ScreenHit::Pattern(r"\d{3}-\d{2}-\d{4}".into()))
        );
        assert_eq!(s.check("skillful painter"), None);
    }

    #[test]
    fn words_are_checked_before_patterns() {
        let s = screen(&["nude"], &["nu"]);
        assert_eq!(s.check("nude"), Some(ScreenHit::Word("nude".into())));
        assert_eq!(s.check("nuance"), Some(ScreenHit::Pattern("nu".into())));
    }

    #[test]
    fn invalid_pattern_is_an_error_naming_it() {
        let err = PromptScreen::new(&[], &["ok".into(), "(unclosed".into()])
            .expect_err("invalid pattern");
        match &err {
            SafetyError::BadPattern { pattern, .. } => assert_eq!(pattern, "(unclosed"),
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("(unclosed"));
    }

    #[test]
    fn empty_word_is_an_error() {
        let err = PromptScreen::new(&["  ".into()], &[]).expect_err("empty word");
        assert!(matches!(err, SafetyError::BadWord { .. }));
    }

    #[test]
    fn empty_screen_allows_everything() {
        assert_eq!(PromptScreen::empty().check("anything at all"), None);
        assert_eq!(screen(&[], &[]).check("anything at all"), None);
    }
}
