//! `imagegate report`: what the ledger says was spent (grouped totals and cache
//! economics), and what delivering the stored variants would cost, with what-ifs
//! computed from the bytes actually stored ([`imagegate_ledger::project_delivery`]).
//! Printed as aligned tables, CSV or JSON; the JSON is `GET /v1/costs`'s plus a
//! `delivery` object shaped like `GET /v1/delivery`.

use crate::usd6;
use anyhow::{Context, Result};
use imagegate_ledger::{DeliveryProjection, SavingsByLever, WhatIf};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// A part of the report.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// Totals grouped by --by, and cache economics.
    Costs,
    /// Stored bytes and projected egress per width and format.
    Delivery,
    /// Narrower widths and newer formats compared on the stored bytes.
    WhatIf,
    /// What the cache, deferral and the delivery choices saved, in dollars.
    Savings,
}

#[derive(clap::Args)]
pub struct Args {
    /// Start of the window: a duration ago (7d, 12h) or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// End of the window (exclusive), in the same forms as --since.
    #[arg(long)]
    pub until: Option<String>,
    /// Comma-separated dimensions: stage, provider, model, key, day.
    #[arg(long, default_value = "")]
    pub by: String,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// One section: the cost table, the delivery projection, the what-ifs, or the
    /// savings by lever. Tables and JSON show them all by default; CSV holds one
    /// table, the costs unless this picks another.
    #[arg(long, value_enum)]
    pub only: Option<Section>,
}

pub async fn run(
    config: imagegate_pipeline::PipelineConfig,
    args: Args,
) -> Result<std::process::ExitCode> {
    let now = chrono::Utc::now();
    let instant = |v: Option<String>, flag: &str| {
        v.map(|v| imagegate_ledger::parse_instant(&v, now))
            .transpose()
            .with_context(|| format!("--{flag}"))
    };
    let query = imagegate_ledger::ReportQuery {
        group_by: imagegate_ledger::Dimension::parse_list(&args.by).context("--by")?,
        since: instant(args.since, "since")?,
        until: instant(args.until, "until")?,
        // The operator's tool: every key's spending.
        api_key: None,
    };
    // CSV is one table per output; the other formats hold every section.
    let wanted = |s: Section| match (args.only, args.format) {
        (Some(only), _) => only == s,
        (None, Format::Csv) => s == Section::Costs,
        (None, _) => true,
    };
    // Only the ledger: a report needs no providers, store or classifier.
    let ledger = imagegate_ledger::Ledger::open(&config.ledger).await?;
    let sums = async {
        let report = ledger.report(&query).await?;
        let delivery =
            if wanted(Section::Delivery) || wanted(Section::WhatIf) || wanted(Section::Savings) {
                Some(ledger.delivery(&query).await?)
            } else {
                None
            };
        let deferral = if wanted(Section::Savings) {
            Some(ledger.deferral_savings(&query).await?)
        } else {
            None
        };
        Ok::<_, imagegate_ledger::LedgerError>((report, delivery, deferral))
    }
    .await;
    ledger.close().await;
    let (report, delivery, deferral) = sums?;
    let assume = imagegate_server::delivery_assumptions(&config);
    let projection = delivery.map(|rows| imagegate_ledger::project_delivery(&rows, &assume));
    let savings = deferral.map(|d| SavingsByLever::new(&report.cache, d, projection.as_ref()));
    let mut out = String::new();
    match args.format {
        Format::Json => {
            let mut body = if wanted(Section::Costs) {
                serde_json::to_value(&report)?
            } else {
                serde_json::json!({"since": report.since, "until": report.until})
            };
            if let Some(p) = &projection {
                let mut delivery = serde_json::to_value(p)?;
                if !wanted(Section::Delivery) {
                    delivery.as_object_mut().map(|d| d.remove("variants"));
                }
                if !wanted(Section::WhatIf) {
                    delivery.as_object_mut().map(|d| d.remove("what_if"));
                }
                if wanted(Section::Delivery) || wanted(Section::WhatIf) {
                    body["delivery"] = delivery;
                }
            }
            if let Some(s) = &savings {
                body["savings"] = serde_json::to_value(s)?;
            }
            out = serde_json::to_string_pretty(&body)? + "\n";
        }
        Format::Csv => {
            if wanted(Section::Costs) {
                out = report_csv(&report);
            } else if let Some(p) = &projection {
                out = if wanted(Section::Delivery) {
                    delivery_csv(p)
                } else if wanted(Section::WhatIf) {
                    what_if_csv(p)
                } else {
                    savings.as_ref().map(savings_csv).unwrap_or_default()
                };
            }
        }
        Format::Table => {
            if wanted(Section::Costs) {
                out.push_str(&report_table(&report));
            }
            if let Some(p) = &projection {
                if wanted(Section::Delivery) {
                    out.push_str(&delivery_table(p, !out.is_empty()));
                }
                if wanted(Section::WhatIf) {
                    out.push_str(&what_if_table(p, !out.is_empty()));
                }
            }
            if let Some(s) = &savings {
                out.push_str(&savings_table(s, !out.is_empty()));
            }
        }
    }
    print!("{out}");
    Ok(std::process::ExitCode::SUCCESS)
}

/// The cells of a report row after its dimension values: requests, USD, ms, bytes.
fn report_cells(t: &imagegate_ledger::Totals, usd: String) -> Vec<String> {
    vec![
        t.requests.to_string(),
        usd,
        format!("{:.1}", t.wall_ms),
        format!("{:.1}", t.cpu_ms),
        t.bytes_out.to_string(),
    ]
}

/// Aligned columns (dimensions left, numbers right), a total line, then cache economics.
fn report_table(report: &imagegate_ledger::Report) -> String {
    let dims = report.group_by.len();
    let mut header: Vec<String> = report.group_by.iter().map(|d| d.to_string()).collect();
    header.extend(["requests", "usd", "wall_ms", "cpu_ms", "bytes_out"].map(String::from));
    let mut lines: Vec<Vec<String>> = vec![header];
    for row in &report.rows {
        let mut cells: Vec<String> = row
            .values
            .iter()
            .map(|(_, v)| v.clone().unwrap_or_else(|| "-".into()))
            .collect();
        cells.extend(report_cells(&row.totals, usd6(row.totals.micros)));
        lines.push(cells);
    }
    let mut total: Vec<String> = (0..dims)
        .map(|i| if i == 0 { "TOTAL" } else { "" }.to_string())
        .collect();
    total.extend(report_cells(
        &report.total.totals,
        usd6(report.total.totals.micros),
    ));
    let mut out = crate::table::with_total(&lines, &total, dims);
    let c = &report.cache;
    let ratio = c
        .hit_ratio
        .map(|r| format!("{:.1}%", r * 100.0))
        .unwrap_or_else(|| "-".into());
    out.push_str(&format!(
        "\ncache: {} hits, {} misses, {} bypasses; hit ratio {ratio}\n\
         saved by hits: {} USD (original generation cost of each hit's key)\n",
        c.hits,
        c.misses,
        c.bypasses,
        usd6(c.saved),
    ));
    if c.hits_without_original > 0 {
        out.push_str(&format!(
            "({} hits have no earlier miss in the ledger and are not credited)\n",
            c.hits_without_original
        ));
    }
    out
}

/// One line per group plus a `total` line; the first column says which.
fn report_csv(report: &imagegate_ledger::Report) -> String {
    let mut header = vec!["row".to_string()];
    header.extend(report.group_by.iter().map(|d| d.to_string()));
    header.extend(
        [
            "requests",
            "usd",
            "wall_ms",
            "cpu_ms",
            "bytes_out",
            "micros",
        ]
        .map(String::from),
    );
    let mut out = header.join(",") + "\n";
    let mut line = |kind: &str, values: Vec<String>, t: &imagegate_ledger::Totals| {
        let mut cells = vec![kind.to_string()];
        cells.extend(values.iter().map(|v| csv_field(v)));
        cells.extend(report_cells(t, usd6(t.micros)));
        cells.push(t.micros.0.to_string());
        out.push_str(&(cells.join(",") + "\n"));
    };
    for row in &report.rows {
        let values = row
            .values
            .iter()
            .map(|(_, v)| v.clone().unwrap_or_default())
            .collect();
        line("group", values, &row.totals);
    }
    line(
        "total",
        vec![String::new(); report.group_by.len()],
        &report.total.totals,
    );
    out
}

/// Columns padded to their widest cell; those listed in `left` flush left, the rest
/// (numbers) right. In a row shorter than the first (the header), the last cell is a
/// note: printed as is, and not counted in the widths.
fn columns(rows: &[Vec<String>], left: &[usize]) -> String {
    let n = rows.first().map_or(0, Vec::len);
    let cells = |r: &Vec<String>| if r.len() < n { r.len() - 1 } else { r.len() };
    let widths: Vec<usize> = (0..n)
        .map(|c| {
            rows.iter()
                .filter(|r| c < cells(r))
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line: Vec<String> = row[..cells(row)]
            .iter()
            .enumerate()
            .map(|(c, v)| {
                if left.contains(&c) {
                    format!("{v:<w$}", w = widths[c])
                } else {
                    format!("{v:>w$}", w = widths[c])
                }
            })
            .collect();
        line.extend(row.get(cells(row)).cloned());
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Fractional USD (projections, not charges) to `decimals` places.
fn usd(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    // "-0.000000" says nothing a zero would not.
    if s.trim_start_matches('-')
        .bytes()
        .all(|b| b == b'0' || b == b'.')
    {
        s.trim_start_matches('-').to_string()
    } else {
        s
    }
}

fn delivery_table(p: &DeliveryProjection, gap: bool) -> String {
    let mut out = String::from(if gap { "\n" } else { "" });
    out.push_str(&format!(
        "delivery projection: {} views per image at {} USD/GB egress\n",
        p.expected_views_per_image, p.egress_usd_per_gb
    ));
    if p.variants.is_empty() {
        out.push_str("no stored files in the window\n");
        return out;
    }
    let views = format!("usd_per_image@{}", p.expected_views_per_image);
    let mut rows = vec![[
        "width",
        "format",
        "files",
        "bytes",
        "avg_bytes",
        "usd_per_1000_views",
        &views,
        "usd_all_files",
    ]
    .map(String::from)
    .to_vec()];
    for v in &p.variants {
        rows.push(vec![
            v.width.to_string(),
            v.format.extension().to_string(),
            v.files.to_string(),
            v.bytes.to_string(),
            format!("{:.0}", v.avg_bytes),
            usd(v.usd_per_1000_views, 6),
            usd(v.projected_usd_per_image, 6),
            usd(v.projected_usd_all_files, 6),
        ]);
    }
    out.push_str(&columns(&rows, &[1]));
    out.push_str(
        "(usd_all_files: every stored file of the row served that often; rows are not \
         summed, a view fetches one variant)\n",
    );
    out
}

fn what_if_table(p: &DeliveryProjection, gap: bool) -> String {
    let mut out = String::from(if gap { "\n" } else { "" });
    out.push_str("what if (from the bytes actually stored; negative is a saving)\n");
    if p.what_if.is_empty() {
        out.push_str("nothing to compare: no stored files in the window\n");
        return out;
    }
    let mut rows = vec![[
        "scenario",
        "from_avg_bytes",
        "to_avg_bytes",
        "delta",
        "usd_per_view",
        "usd_per_1000_views",
    ]
    .map(String::from)
    .to_vec()];
    for w in &p.what_if {
        let avg = |v: Option<f64>| v.map(|b| format!("{b:.0}")).unwrap_or_else(|| "-".into());
        let mut row = vec![w.label.clone(), avg(w.from.avg_bytes), avg(w.to.avg_bytes)];
        match (
            w.delta_percent,
            w.delta_usd_per_view,
            w.delta_usd_per_1000_views,
        ) {
            (Some(pct), Some(view), Some(k)) if w.has_data => {
                row.extend([format!("{pct:+.1}%"), usd(view, 9), usd(k, 6)]);
            }
            _ => row.push(w.missing.clone().unwrap_or_else(|| "no data".into())),
        }
        rows.push(row);
    }
    out.push_str(&columns(&rows, &[0]));
    out
}

fn delivery_csv(p: &DeliveryProjection) -> String {
    let mut out = String::from(
        "width,format,files,bytes,avg_bytes,usd_per_view,usd_per_1000_views,\
         projected_usd_per_image,projected_usd_all_files,expected_views_per_image,\
         egress_usd_per_gb\n",
    );
    for v in &p.variants {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            v.width,
            v.format.extension(),
            v.files,
            v.bytes,
            v.avg_bytes,
            v.usd_per_view,
            v.usd_per_1000_views,
            v.projected_usd_per_image,
            v.projected_usd_all_files,
            p.expected_views_per_image,
            p.egress_usd_per_gb,
        ));
    }
    out
}

fn what_if_csv(p: &DeliveryProjection) -> String {
    let mut out = String::from(
        "kind,scenario,from_width,from_format,from_avg_bytes,to_width,to_format,\
         to_avg_bytes,has_data,delta_bytes,delta_percent,delta_usd_per_view,\
         delta_usd_per_1000_views,delta_usd_per_image,missing\n",
    );
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for w in &p.what_if {
        let WhatIf { from, to, .. } = w;
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            w.kind.as_str(),
            csv_field(&w.label),
            from.width,
            from.format.extension(),
            opt(from.avg_bytes),
            to.width,
            to.format.extension(),
            opt(to.avg_bytes),
            w.has_data,
            opt(w.delta_bytes),
            opt(w.delta_percent),
            opt(w.delta_usd_per_view),
            opt(w.delta_usd_per_1000_views),
            opt(w.delta_usd_per_image),
            csv_field(w.missing.as_deref().unwrap_or("")),
        ));
    }
    out
}

fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

/// The savings by lever: recorded money for the cache and deferral, projected
/// egress for the delivery choices.
fn savings_table(s: &SavingsByLever, gap: bool) -> String {
    let mut rows = vec![vec![
        "lever".to_string(),
        "basis".to_string(),
        "count".to_string(),
        "saved_usd".to_string(),
    ]];
    rows.push(vec![
        "cache hits".into(),
        "recorded".into(),
        s.cache_hits.to_string(),
        usd(s.cache_saved_usd, 6),
    ]);
    let d = &s.deferral;
    let mut notes = Vec::new();
    if d.jobs_unpriced > 0 {
        notes.push(format!("{} unpriced, not valued", d.jobs_unpriced));
    }
    if d.jobs_answered_by_cache > 0 {
        notes.push(format!(
            "{} answered by the cache",
            d.jobs_answered_by_cache
        ));
    }
    let unpriced = if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join("; "))
    };
    rows.push(vec![
        format!("deferral{unpriced}"),
        "recorded".into(),
        d.jobs.to_string(),
        usd(d.saved_usd, 6),
    ]);
    for l in &s.delivery {
        rows.push(vec![
            l.label.clone(),
            "projected".into(),
            l.images.to_string(),
            usd(l.saved_usd, 6),
        ]);
    }
    let mut out = String::new();
    if gap {
        out.push('\n');
    }
    out.push_str("savings by lever (count: hits, jobs, or images stored at the served variant)\n");
    out.push_str(&columns(&rows, &[0, 1]));
    out
}

fn savings_csv(s: &SavingsByLever) -> String {
    let mut out = String::from("lever,basis,count,saved_usd\n");
    out.push_str(&format!(
        "cache,recorded,{},{}\n",
        s.cache_hits, s.cache_saved_usd
    ));
    out.push_str(&format!(
        "deferral,recorded,{},{}\n",
        s.deferral.jobs, s.deferral.saved_usd
    ));
    for l in &s.delivery {
        out.push_str(&format!(
            "{},projected,{},{}\n",
            csv_field(&l.label),
            l.images,
            l.saved_usd
        ));
    }
    out
}
