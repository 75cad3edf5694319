//! Plain-text tables for the CLI's reports (`report`, `warm`).

/// Aligned columns: the first `text` columns left, numbers right; a rule; the total.
pub(crate) fn with_total(rows: &[Vec<String>], total: &[String], text: usize) -> String {
    let widths: Vec<usize> = (0..total.len())
        .map(|c| {
            rows.iter()
                .map(|r| &r[c])
                .chain([&total[c]])
                .map(|v| v.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let render = |cells: &[String]| {
        let line: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(c, v)| {
                if c < text {
                    format!("{v:<w$}", w = widths[c])
                } else {
                    format!("{v:>w$}", w = widths[c])
                }
            })
            .collect();
        line.join("  ").trim_end().to_string() + "\n"
    };
    let mut out: String = rows.iter().map(|r| render(r)).collect();
    out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1)));
    out.push('\n');
    out.push_str(&render(total));
    out
}
