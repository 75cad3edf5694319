//! Warm templates: a TOML file of prompt patterns (`"a {style} avatar of a {animal}"`)
//! with value lists per variable, expanded into the cartesian product of values,
//! sizes and seeds. Every mistake is reported at the line and column of the value
//! that causes it, so a person can fix the file without guessing.
//!
//! Entry points: [`parse`] (text to checked templates) and [`Template::expand`].

use imagegate_core::{ModelChoice, Size};
use imagegate_pipeline::{ImageRequest, PipelineConfig};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Range;
use toml::Spanned;

/// The file as written. Spans point into the text it was parsed from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    /// Settings every template inherits unless it sets its own.
    #[serde(default)]
    defaults: Settings,
    #[serde(default, rename = "template")]
    templates: Vec<Spanned<TemplateSpec>>,
}

/// Per-template settings; anything left out falls back to `[defaults]` of the
/// template file, then to `[defaults]` of the imagegate configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    model: Option<Spanned<String>>,
    profile: Option<Spanned<String>>,
    sizes: Option<Spanned<Vec<Spanned<String>>>>,
    seeds: Option<Spanned<Vec<Spanned<u64>>>>,
    negative_prompt: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateSpec {
    name: Spanned<String>,
    prompt: Spanned<String>,
    #[serde(default)]
    vars: BTreeMap<Spanned<String>, Spanned<Vec<Spanned<String>>>>,
    // Not `#[serde(flatten)] Settings`: flatten disables deny_unknown_fields.
    model: Option<Spanned<String>>,
    profile: Option<Spanned<String>>,
    sizes: Option<Spanned<Vec<Spanned<String>>>>,
    seeds: Option<Spanned<Vec<Spanned<u64>>>>,
    negative_prompt: Option<Spanned<String>>,
}

/// A mistake in a template file, at a 1-based line and column (in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// The offending source line, for display.
    source_line: String,
}

impl Diagnostic {
    fn at(text: &str, offset: usize, message: impl Into<String>) -> Diagnostic {
        let offset = offset.min(text.len());
        let offset = (0..=offset)
            .rev()
            .find(|&o| text.is_char_boundary(o))
            .unwrap_or(0);
        let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
        Diagnostic {
            line: text[..offset].matches('\n').count() + 1,
            column: text[line_start..offset].chars().count() + 1,
            message: message.into(),
            source_line: text[line_start..line_end]
                .trim_end_matches('\r')
                .to_string(),
        }
    }
}

/// Every mistake found in one file, in file order, rendered like a compiler would.
#[derive(Debug)]
pub struct Diagnostics {
    pub path: String,
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{} has {n} error{}",
            self.path,
            if n == 1 { "" } else { "s" }
        )?;
        for d in &self.errors {
            write!(
                f,
                "\n{}:{}:{}: {}\n  | {}\n  | {}^",
                self.path,
                d.line,
                d.column,
                d.message,
                d.source_line,
                " ".repeat(d.column.saturating_sub(1))
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// One piece of a prompt pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(String),
}

/// A checked template, ready to expand.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pieces: Vec<Piece>,
    /// Variables in the order they first appear in the prompt; the first varies slowest.
    vars: Vec<(String, Vec<String>)>,
    model: Option<String>,
    profile: Option<String>,
    sizes: Vec<Option<String>>,
    seeds: Vec<Option<u64>>,
    negative_prompt: Option<String>,
    /// Where the template starts (its `name`), for limit errors.
    name_span: Range<usize>,
}

/// One image a template asks for.
#[derive(Debug, Clone)]
pub struct Item {
    pub template: String,
    /// Variable values in prompt order.
    pub vars: Vec<(String, String)>,
    pub request: ImageRequest,
}

impl Template {
    /// How many images this template expands to (saturating: it is compared to a limit).
    pub fn count(&self) -> u64 {
        self.vars
            .iter()
            .map(|(_, v)| v.len() as u64)
            .chain([self.sizes.len() as u64, self.seeds.len() as u64])
            .fold(1u64, u64::saturating_mul)
    }

    /// The cartesian product of values, sizes and seeds, in a stable order.
    pub fn expand(&self) -> Vec<Item> {
        let mut out = Vec::with_capacity(self.count().min(1 << 20) as usize);
        let mut index = vec![0usize; self.vars.len()];
        loop {
            let chosen: Vec<(String, String)> = self
                .vars
                .iter()
                .zip(&index)
                .map(|((name, values), &i)| (name.clone(), values[i].clone()))
                .collect();
            let prompt: String = self
                .pieces
                .iter()
                .map(|p| match p {
                    Piece::Text(t) => t.as_str(),
                    Piece::Var(v) => chosen
                        .iter()
                        .find(|(name, _)| name == v)
                        .map(|(_, value)| value.as_str())
                        .expect("parse checked that every placeholder has values"),
                })
                .collect();
            for size in &self.sizes {
                for seed in &self.seeds {
                    out.push(Item {
                        template: self.name.clone(),
                        vars: chosen.clone(),
                        request: ImageRequest {
                            prompt: prompt.clone(),
                            negative_prompt: self.negative_prompt.clone(),
                            model: self.model.clone(),
                            size: size.clone(),
                            seed: *seed,
                            profile: self.profile.clone(),
                            ..Default::default()
                        },
                    });
                }
            }
            // Odometer over the value lists, last variable fastest.
            let mut pos = index.len();
            loop {
                if pos == 0 {
                    return out;
                }
                pos -= 1;
                index[pos] += 1;
                if index[pos] < self.vars[pos].1.len() {
                    break;
                }
                index[pos] = 0;
            }
        }
    }
}

/// Parses and checks a template file against the configuration it will run with
/// (profiles must exist there). `path` only names the file in messages.
pub fn parse(
    path: &str,
    text: &str,
    config: &PipelineConfig,
) -> Result<Vec<Template>, Diagnostics> {
    let fail = |errors| Diagnostics {
        path: path.to_string(),
        errors,
    };
    let spec: FileSpec = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        fail(vec![Diagnostic::at(text, offset, e.message().trim_end())])
    })?;
    let mut checker = Checker {
        text,
        config,
        errors: Vec::new(),
    };
    let defaults = checker.settings(&spec.defaults);
    if spec.templates.is_empty() {
        checker.error(
            0,
            "no templates: add at least one [[template]] with a name and a prompt",
        );
    }
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for t in &spec.templates {
        let t = t.get_ref();
        if !names.insert(t.name.get_ref().clone()) {
            checker.error(
                t.name.span().start,
                format!("a template named {:?} already exists", t.name.get_ref()),
            );
        }
        if let Some(template) = checker.template(t, &defaults) {
            out.push(template);
        }
    }
    if checker.errors.is_empty() {
        Ok(out)
    } else {
        checker.errors.sort_by_key(|d| (d.line, d.column));
        Err(fail(checker.errors))
    }
}

/// Refuses expansions larger than `max_images`, naming the template that contributes
/// the most, before any memory is spent on them.
pub fn check_limit(
    path: &str,
    text: &str,
    templates: &[Template],
    max_images: u64,
) -> Result<u64, Diagnostics> {
    let total = templates
        .iter()
        .map(Template::count)
        .fold(0u64, u64::saturating_add);
    if total <= max_images {
        return Ok(total);
    }
    let biggest = templates
        .iter()
        .max_by_key(|t| t.count())
        .expect("a total above the limit has at least one template");
    let per: Vec<String> = templates
        .iter()
        .map(|t| format!("{} {}", t.name, t.count()))
        .collect();
    Err(Diagnostics {
        path: path.to_string(),
        errors: vec![Diagnostic::at(
            text,
            biggest.name_span.start,
            format!(
                "the templates expand to {total} images, above the limit of {max_images} \
                 (per template: {}); shorten the value lists or raise --max-images",
                per.join(", ")
            ),
        )],
    })
}

/// Settings after `[defaults]` are applied, each still with its span for messages.
#[derive(Default, Clone)]
struct Resolved {
    model: Option<String>,
    profile: Option<String>,
    sizes: Option<Vec<String>>,
    seeds: Option<Vec<u64>>,
    negative_prompt: Option<String>,
}

struct Checker<'a> {
    text: &'a str,
    config: &'a PipelineConfig,
    errors: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, offset: usize, message: impl Into<String>) {
        self.errors.push(Diagnostic::at(self.text, offset, message));
    }

    /// Checks one group of settings; what fails is left out (its error is recorded).
    fn settings_of(
        &mut self,
        model: &Option<Spanned<String>>,
        profile: &Option<Spanned<String>>,
        sizes: &Option<Spanned<Vec<Spanned<String>>>>,
        seeds: &Option<Spanned<Vec<Spanned<u64>>>>,
        negative_prompt: &Option<Spanned<String>>,
    ) -> Resolved {
        let mut out = Resolved::default();
        if let Some(m) = model {
            match m.get_ref().parse::<ModelChoice>() {
                Ok(_) => out.model = Some(m.get_ref().clone()),
                Err(e) => self.error(m.span().start, e.to_string()),
            }
        }
        if let Some(p) = profile {
            if self.config.profiles.contains_key(p.get_ref()) {
                out.profile = Some(p.get_ref().clone());
            } else {
                let known: Vec<&str> = self.config.profiles.keys().map(String::as_str).collect();
                self.error(
                    p.span().start,
                    format!(
                        "profile {:?} is not configured (configured: {})",
                        p.get_ref(),
                        known.join(", ")
                    ),
                );
            }
        }
        if let Some(list) = sizes {
            if list.get_ref().is_empty() {
                self.error(list.span().start, "sizes is empty: list at least one size, e.g. [\"1024x1024\"], or leave it out for the configured default");
            }
            let mut seen = HashSet::new();
            let mut ok = Vec::new();
            for s in list.get_ref() {
                match s.get_ref().parse::<Size>() {
                    Ok(size) if !seen.insert(size) => self.error(
                        s.span().start,
                        format!("size {} is listed twice", s.get_ref()),
                    ),
                    Ok(_) => ok.push(s.get_ref().clone()),
                    Err(e) => self.error(s.span().start, e.to_string()),
                }
            }
            out.sizes = Some(ok);
        }
        if let Some(list) = seeds {
            if list.get_ref().is_empty() {
                self.error(
                    list.span().start,
                    "seeds is empty: list at least one seed, or leave it out for the configured default",
                );
            }
            let mut seen = HashSet::new();
            for s in list.get_ref() {
                if !seen.insert(*s.get_ref()) {
                    self.error(
                        s.span().start,
                        format!("seed {} is listed twice", s.get_ref()),
                    );
                }
            }
            out.seeds = Some(list.get_ref().iter().map(|s| *s.get_ref()).collect());
        }
        if let Some(n) = negative_prompt {
            out.negative_prompt = Some(n.get_ref().clone());
        }
        out
    }

    fn settings(&mut self, s: &Settings) -> Resolved {
        self.settings_of(&s.model, &s.profile, &s.sizes, &s.seeds, &s.negative_prompt)
    }

    fn template(&mut self, t: &TemplateSpec, defaults: &Resolved) -> Option<Template> {
        let before = self.errors.len();
        let name = t.name.get_ref();
        if name.trim().is_empty() {
            self.error(t.name.span().start, "template name is empty");
        }
        let own = self.settings_of(&t.model, &t.profile, &t.sizes, &t.seeds, &t.negative_prompt);
        let pieces = self.pattern(&t.prompt);
        let used: Vec<&str> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Var(v) => Some(v.as_str()),
                Piece::Text(_) => None,
            })
            .collect();
        let mut vars: Vec<(String, Vec<String>)> = Vec::new();
        for v in &used {
            if vars.iter().any(|(n, _)| n == v) {
                continue;
            }
            match t.vars.iter().find(|(k, _)| k.get_ref().as_str() == *v) {
                Some((_, values)) => vars.push((v.to_string(), values.get_ref().iter().map(|s| s.get_ref().clone()).collect())),
                None => self.error(
                    self.placeholder_offset(&t.prompt, v),
                    format!(
                        "{{{v}}} has no values: add `{v} = [\"...\"]` under [template.vars] of {name:?}"
                    ),
                ),
            }
        }
        for (key, values) in &t.vars {
            if !used.contains(&key.get_ref().as_str()) {
                self.error(
                    key.span().start,
                    format!(
                        "variable {:?} is listed but the prompt never uses {{{}}}",
                        key.get_ref(),
                        key.get_ref()
                    ),
                );
            }
            if values.get_ref().is_empty() {
                self.error(
                    values.span().start,
                    format!(
                        "variable {:?} has no values: list at least one",
                        key.get_ref()
                    ),
                );
            }
            let mut seen = HashSet::new();
            for v in values.get_ref() {
                if v.get_ref().trim().is_empty() {
                    self.error(v.span().start, "a value is empty");
                } else if !seen.insert(v.get_ref().as_str()) {
                    self.error(
                        v.span().start,
                        format!("value {:?} is listed twice", v.get_ref()),
                    );
                }
            }
        }
        if self.errors.len() > before {
            return None;
        }
        let pick = |own: Option<String>, inherited: &Option<String>| own.or(inherited.clone());
        Some(Template {
            name: name.clone(),
            pieces,
            vars,
            model: pick(own.model, &defaults.model),
            profile: pick(own.profile, &defaults.profile),
            sizes: own
                .sizes
                .or(defaults.sizes.clone())
                .map_or(vec![None], |v| v.into_iter().map(Some).collect()),
            seeds: own
                .seeds
                .or(defaults.seeds.clone())
                .map_or(vec![None], |v| v.into_iter().map(Some).collect()),
            negative_prompt: pick(own.negative_prompt, &defaults.negative_prompt),
            name_span: t.name.span(),
        })
    }

    /// Splits a prompt into text and `{name}` placeholders; `{{` and `}}` are literal
    /// braces, as in Rust's and Python's format strings.
    fn pattern(&mut self, prompt: &Spanned<String>) -> Vec<Piece> {
        let s = prompt.get_ref();
        if s.trim().is_empty() {
            self.error(prompt.span().start, "prompt is empty");
            return Vec::new();
        }
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = s.as_str();
        while let Some(i) = rest.find('{') {
            text.push_str(&rest[..i].replace("}}", "}"));
            let after = &rest[i + 1..];
            if let Some(stripped) = after.strip_prefix('{') {
                text.push('{');
                rest = stripped;
                continue;
            }
            let end = after.find('}');
            let name = end.map(|e| &after[..e]);
            let valid = name.is_some_and(|n| {
                !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
            });
            if !valid {
                let at = self.offset_in(prompt, s.len() - rest.len() + i);
                self.error(
                    at,
                    "`{` starts no placeholder: write {name} with letters, digits, _ or -, or {{ for a literal brace",
                );
                return Vec::new();
            }
            let (name, end) = (name.expect("checked above"), end.expect("checked above"));
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Var(name.to_string()));
            rest = &after[end + 1..];
        }
        text.push_str(&rest.replace("}}", "}"));
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        pieces
    }

    fn placeholder_offset(&self, prompt: &Spanned<String>, var: &str) -> usize {
        let needle = format!("{{{var}}}");
        match prompt.get_ref().find(&needle) {
            Some(i) => self.offset_in(prompt, i),
            None => prompt.span().start,
        }
    }

    /// The file offset of byte `i` of a string value, when the source spells the value
    /// verbatim (no escapes); otherwise the value's start.
    fn offset_in(&self, value: &Spanned<String>, i: usize) -> usize {
        let span = value.span();
        let raw = self.text.get(span.clone()).unwrap_or("");
        let v = value.get_ref();
        for quote in ["\"\"\"", "'''", "\"", "'"] {
            if raw.len() == v.len() + 2 * quote.len()
                && raw.starts_with(quote)
                && raw.ends_with(quote)
                && &raw[quote.len()..raw.len() - quote.len()] == v
            {
                return span.start + quote.len() + i;
            }
        }
        span.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PipelineConfig {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/imagegate.toml"
        ))
        .unwrap();
        PipelineConfig::from_toml_sections(&text, &["server"]).unwrap()
    }

    fn errors(text: &str) -> Vec<(usize, usize, String)> {
        parse("t.toml", text, &config())
            .unwrap_err()
            .errors
            .into_iter()
            .map(|d| (d.line, d.column, d.message))
            .collect()
    }

    #[test]
    fn expands_the_cartesian_product_in_prompt_order() {
        let text = r#"
[defaults]
sizes = ["512x512"]

[[template]]
name = "avatars"
prompt = "a {style} avatar of a {animal}, {{literal}}"
seeds = [1, 2]
vars.animal = ["fox", "owl"]
vars.style = ["ink", "clay", "pixel"]
"#;
        let t = parse("t.toml", text, &config()).unwrap();
        assert_eq!(t[0].count(), 12);
        let items = t[0].expand();
        assert_eq!(items.len(), 12);
        assert_eq!(items[0].request.prompt, "a ink avatar of a fox, {literal}");
        assert_eq!(items[0].request.seed, Some(1));
        assert_eq!(items[1].request.seed, Some(2));
        assert_eq!(items[2].request.prompt, "a ink avatar of a owl, {literal}");
        assert_eq!(
            items[11].request.prompt,
            "a pixel avatar of a owl, {literal}"
        );
        assert_eq!(items[0].request.size.as_deref(), Some("512x512"));
        assert_eq!(
            items[0].vars,
            vec![
                ("style".into(), "ink".into()),
                ("animal".into(), "fox".into())
            ]
        );
    }

    #[test]
    fn a_template_without_variables_is_one_image_per_size_and_seed() {
        let t = parse(
            "t.toml",
            "[[template]]\nname = \"x\"\nprompt = \"a lighthouse\"\n",
            &config(),
        )
        .unwrap();
        let items = t[0].expand();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].request.size, None);
        assert_eq!(items[0].request.seed, None);
    }

    #[test]
    fn mistakes_point_at_line_and_column() {
        let text = "[[template]]\nname = \"a\"\nprompt = \"a {colour} {shape}\"\nvars.shape = []\nvars.size = [\"big\"]\nsizes = [\"huge\"]\nprofile = \"nope\"\nmodel = \"gigantic\"\n";
        let e = errors(text);
        let at: Vec<(usize, usize)> = e.iter().map(|(l, c, _)| (*l, *c)).collect();
        assert_eq!(
            at,
            vec![(3, 13), (4, 14), (5, 6), (6, 10), (7, 11), (8, 9)],
            "{e:?}"
        );
        assert!(e[0].2.contains("{colour} has no values"), "{e:?}");
        assert!(e[1].2.contains("\"shape\" has no values"), "{e:?}");
        assert!(e[2].2.contains("never uses {size}"), "{e:?}");
        assert!(e[3].2.contains("WIDTHxHEIGHT"), "{e:?}");
        assert!(
            e[4].2.contains("profile \"nope\" is not configured"),
            "{e:?}"
        );
        assert!(e[5].2.contains("neither a class"), "{e:?}");
    }

    #[test]
    fn toml_errors_keep_their_position() {
        assert_eq!(
            errors("[[template]]\nname = \"a\"\nprompt = \n")[0].0,
            3,
            "a missing value"
        );
        let e = errors("[[template]]\nname = \"a\"\nprompt = \"x\"\nsize = [\"1x1\"]\n");
        assert_eq!((e[0].0, e[0].1), (4, 1), "{e:?}");
        assert!(e[0].2.contains("unknown field `size`"), "{e:?}");
    }

    #[test]
    fn limits_refuse_absurd_products() {
        let text = "[[template]]\nname = \"big\"\nprompt = \"{a}\"\nseeds = [1,2,3,4,5,6,7,8,9,10]\nvars.a = [\"1\",\"2\",\"3\"]\n";
        let t = parse("t.toml", text, &config()).unwrap();
        assert_eq!(check_limit("t.toml", text, &t, 30).unwrap(), 30);
        let e = check_limit("t.toml", text, &t, 29).unwrap_err();
        assert_eq!((e.errors[0].line, e.errors[0].column), (2, 8));
        assert!(e.to_string().contains("30 images, above the limit of 29"));
    }
}
