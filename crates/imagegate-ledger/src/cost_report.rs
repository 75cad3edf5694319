//! Cost reports over the ledger: totals grouped by any combination of stage,
//! provider, model, API key and day, plus cache economics. Money stays integer
//! micro-dollars all the way, so totals equal the sum of ledger rows exactly.

use crate::backend::with_pool;
use crate::{Ledger, LedgerError};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use imagegate_core::Micros;
use serde::{Serialize, Serializer};
use sqlx::Row;
use std::fmt;
use std::str::FromStr;

/// A column a report can be grouped by; a closed set, so the SQL built from it never
/// contains user input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Stage,
    Provider,
    Model,
    /// The API key id (never the secret).
    Key,
    /// The UTC calendar day, `YYYY-MM-DD`.
    Day,
    /// What became of the request (`ok`, `blocked`, `failed`, `in_progress`,
    /// `abandoned`): paid work that delivered nothing is a cost too.
    Status,
}

impl Dimension {
    pub const ALL: [Dimension; 6] = [
        Dimension::Stage,
        Dimension::Provider,
        Dimension::Model,
        Dimension::Key,
        Dimension::Day,
        Dimension::Status,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Stage => "stage",
            Dimension::Provider => "provider",
            Dimension::Model => "model",
            Dimension::Key => "key",
            Dimension::Day => "day",
            Dimension::Status => "status",
        }
    }

    /// The SQL expression over `requests r LEFT JOIN stages s`.
    fn column(self) -> &'static str {
        match self {
            Dimension::Stage => "s.stage",
            Dimension::Provider => "r.provider",
            Dimension::Model => "r.model",
            Dimension::Key => "r.api_key",
            // created_at is RFC 3339 UTC, so its first ten characters are the day.
            Dimension::Day => "substr(r.created_at, 1, 10)",
            Dimension::Status => "r.status",
        }
    }

    /// A comma-separated list such as `stage,provider`; empty parts are ignored and a
    /// dimension may appear once.
    pub fn parse_list(list: &str) -> Result<Vec<Dimension>, LedgerError> {
        let mut out = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let d: Dimension = part.parse()?;
            if out.contains(&d) {
                return Err(LedgerError::BadReport(format!(
                    "dimension {part:?} is listed twice"
                )));
            }
            out.push(d);
        }
        Ok(out)
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Dimension {
    type Err = LedgerError;

    fn from_str(s: &str) -> Result<Dimension, LedgerError> {
        Dimension::ALL
            .into_iter()
            .find(|d| d.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let allowed: Vec<&str> = Dimension::ALL.iter().map(|d| d.as_str()).collect();
                LedgerError::BadReport(format!(
                    "unknown dimension {s:?}: expected one of {}",
                    allowed.join(", ")
                ))
            })
    }
}

/// What to report: grouping, a time window (`since` inclusive, `until` exclusive)
/// and, optionally, one API key's requests only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportQuery {
    pub group_by: Vec<Dimension>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Only requests made with this key id; None: every request.
    pub api_key: Option<String>,
}

/// Parses a report bound: a duration before `now` (`7d`, `36h`, `1h 30m`), an RFC 3339
/// instant, or a UTC day (`2026-11-01`, its midnight).
pub fn parse_instant(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, LedgerError> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(day) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    let ago = humantime::parse_duration(s).map_err(|e| {
        LedgerError::BadReport(format!(
            "time {s:?} is neither a duration like 7d or 12h ({e}) nor an RFC 3339 time \
             like 2026-11-01T00:00:00Z"
        ))
    })?;
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| LedgerError::BadReport(format!("duration {s:?} is too long")))
}

/// Sums over some ledger rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Distinct requests.
    pub requests: i64,
    pub micros: Micros,
    pub wall_ms: f64,
    pub cpu_ms: f64,
    pub bytes_out: i64,
    /// Stage rows paid at a price nobody knows: `micros` leaves them out, so a
    /// non-zero count means the total is a lower bound.
    pub unpriced_stages: i64,
}

/// One group: its dimension values (in `group_by` order; None where the ledger has
/// none, e.g. an anonymous key) and its totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(into = "ReportRowView")]
pub struct ReportRow {
    pub values: Vec<(Dimension, Option<String>)>,
    pub totals: Totals,
}

/// A row as API.md shows it, flat: the grouped dimensions' values (null where the
/// ledger has none, e.g. an anonymous key), then the sums. Only the dimensions the
/// report is grouped by appear.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ReportRow)]
struct ReportRowView {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    stage: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    provider: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    model: Option<Option<String>>,
    /// The API key id (never the secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    key: Option<Option<String>>,
    /// UTC day, `YYYY-MM-DD`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    day: Option<Option<String>>,
    /// `ok`, `blocked`, `failed`, `in_progress` or `abandoned`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    status: Option<Option<String>>,
    /// Distinct requests.
    requests: i64,
    micros: i64,
    usd: f64,
    wall_ms: f64,
    cpu_ms: f64,
    bytes_out: i64,
    /// Stage rows paid at a price nobody knows: `micros` leaves them out, so a
    /// non-zero count means the total is a lower bound.
    unpriced_stages: i64,
}

impl From<ReportRow> for ReportRowView {
    fn from(row: ReportRow) -> ReportRowView {
        let t = &row.totals;
        let mut view = ReportRowView {
            stage: None,
            provider: None,
            model: None,
            key: None,
            day: None,
            status: None,
            requests: t.requests,
            micros: t.micros.0,
            usd: t.micros.as_usd(),
            wall_ms: round1(t.wall_ms),
            cpu_ms: round1(t.cpu_ms),
            bytes_out: t.bytes_out,
            unpriced_stages: t.unpriced_stages,
        };
        for (dimension, value) in row.values {
            let slot = match dimension {
                Dimension::Stage => &mut view.stage,
                Dimension::Provider => &mut view.provider,
                Dimension::Model => &mut view.model,
                Dimension::Key => &mut view.key,
                Dimension::Day => &mut view.day,
                Dimension::Status => &mut view.status,
            };
            *slot = Some(value);
        }
        view
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// How much the cache saved in the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(into = "CacheEconomicsView")]
pub struct CacheEconomics {
    pub hits: i64,
    pub misses: i64,
    pub bypasses: i64,
    /// hits / (hits + misses); None before any.
    pub hit_ratio: Option<f64>,
    /// Σ over hits of the original generation cost of their key: the most recent
    /// miss of that key recorded before the hit, even if it lies before `since`.
    pub saved: Micros,
    /// Hits whose key has no earlier miss in the ledger (nothing to credit them).
    pub hits_without_original: i64,
}

/// How much the cache saved, as the API shows it: micro-dollars and dollars.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = CacheEconomics)]
struct CacheEconomicsView {
    hits: i64,
    misses: i64,
    bypasses: i64,
    /// hits / (hits + misses); null before any.
    #[schema(required = true)]
    hit_ratio: Option<f64>,
    saved_micros: i64,
    saved_usd: f64,
    /// Hits whose key has no earlier miss in the ledger (nothing to credit them).
    hits_without_original: i64,
}

impl From<CacheEconomics> for CacheEconomicsView {
    fn from(c: CacheEconomics) -> CacheEconomicsView {
        CacheEconomicsView {
            hits: c.hits,
            misses: c.misses,
            bypasses: c.bypasses,
            hit_ratio: c.hit_ratio,
            saved_micros: c.saved.0,
            saved_usd: c.saved.as_usd(),
            hits_without_original: c.hits_without_original,
        }
    }
}

/// A report (`GET /v1/costs`, `imagegate report --json`): grouped rows, the total
/// over the window, and cache economics.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub group_by: Vec<Dimension>,
    /// RFC 3339; null when unbounded.
    #[serde(serialize_with = "serialize_time")]
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    pub since: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_time")]
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    pub until: Option<DateTime<Utc>>,
    #[schema(value_type = Vec<ReportRowView>)]
    pub rows: Vec<ReportRow>,
    #[schema(value_type = ReportRowView)]
    pub total: ReportRow,
    #[schema(value_type = CacheEconomicsView)]
    pub cache: CacheEconomics,
}

fn serialize_time<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    t.map(rfc3339).serialize(s)
}

/// The ledger's own time format, so text comparison orders correctly.
pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `r.created_at` within the window and the request made with the key asked for;
/// `$1` is since, `$2` until (NULL: unbounded), `$3` the key id (NULL: any).
const WINDOW: &str = "($1 IS NULL OR r.created_at >= $1) AND ($2 IS NULL OR r.created_at < $2) \
                      AND ($3 IS NULL OR r.api_key = $3)";
/// The same window over stage rows (stamped with their request's time), joined to
/// their request `r` for the key.
pub(crate) const WINDOW_ON_STAGES: &str =
    "($1 IS NULL OR s.created_at >= $1) AND ($2 IS NULL OR s.created_at < $2) \
     AND ($3 IS NULL OR r.api_key = $3)";

/// Refuses a window whose start lies after its end.
pub(crate) fn check_window(query: &ReportQuery) -> Result<(), LedgerError> {
    if let (Some(since), Some(until)) = (query.since, query.until) {
        if since > until {
            return Err(LedgerError::BadReport(format!(
                "since ({}) is after until ({})",
                rfc3339(since),
                rfc3339(until)
            )));
        }
    }
    Ok(())
}

/// Reads the six sums of `SUMS` starting at column `at`.
macro_rules! totals_at {
    ($row:expr, $at:expr) => {
        Totals {
            requests: $row.try_get($at)?,
            micros: Micros($row.try_get($at + 1)?),
            wall_ms: $row.try_get($at + 2)?,
            cpu_ms: $row.try_get($at + 3)?,
            bytes_out: $row.try_get($at + 4)?,
            unpriced_stages: $row.try_get($at + 5)?,
        }
    };
}

/// Sums over `requests r LEFT JOIN stages s`; BIGINT casts because PostgreSQL sums
/// BIGINT into NUMERIC.
const SUMS: &str = "COUNT(DISTINCT r.id), CAST(COALESCE(SUM(s.micros), 0) AS BIGINT), \
                    COALESCE(SUM(s.wall_ms), 0.0), COALESCE(SUM(s.cpu_ms), 0.0), \
                    CAST(COALESCE(SUM(s.bytes_out), 0) AS BIGINT), \
                    CAST(COALESCE(SUM(s.unpriced), 0) AS BIGINT)";

impl Ledger {
    /// Totals grouped by `query.group_by` over `query`'s window. Sums always run over
    /// stage rows (a request's cost is the sum of its stages), so a report grouped by
    /// stage and one grouped by provider have the same total.
    pub async fn report(&self, query: &ReportQuery) -> Result<Report, LedgerError> {
        check_window(query)?;
        let since = query.since.map(rfc3339);
        let until = query.until.map(rfc3339);
        let from = "FROM requests r LEFT JOIN stages s ON s.request = r.id";
        let dims = &query.group_by;

        let mut sql = String::from("SELECT ");
        for d in dims {
            sql.push_str(d.column());
            sql.push_str(", ");
        }
        sql.push_str(SUMS);
        sql.push(' ');
        sql.push_str(from);
        sql.push_str(" WHERE ");
        sql.push_str(WINDOW);
        if !dims.is_empty() {
            let positions: Vec<String> = (1..=dims.len()).map(|i| i.to_string()).collect();
            // NULLS FIRST: the backends' defaults differ (SQLite first, PostgreSQL last).
            let order: Vec<String> = positions
                .iter()
                .map(|p| format!("{p} NULLS FIRST"))
                .collect();
            sql.push_str(&format!(
                " GROUP BY {} ORDER BY {}",
                positions.join(", "),
                order.join(", ")
            ));
        }
        let total_sql = format!("SELECT {SUMS} {from} WHERE {WINDOW}");
        let (mut rows, total) = with_pool!(&self.pool, p => async {
            let mut rows = Vec::new();
            for r in sqlx::query(&sql)
                .bind(&since)
                .bind(&until)
                .bind(&query.api_key)
                .fetch_all(p)
                .await?
            {
                let mut values = Vec::with_capacity(dims.len());
                for (i, d) in dims.iter().enumerate() {
                    values.push((*d, r.try_get::<Option<String>, _>(i)?));
                }
                rows.push(ReportRow {
                    values,
                    totals: totals_at!(r, dims.len()),
                });
            }
            let r = sqlx::query(&total_sql)
                .bind(&since)
                .bind(&until)
                .bind(&query.api_key)
                .fetch_one(p)
                .await?;
            let total = ReportRow {
                values: Vec::new(),
                totals: totals_at!(r, 0),
            };
            Ok::<_, sqlx::Error>((rows, total))
        }
        .await)
        .map_err(|e| self.db(e))?;
        // Without grouping the one row is the total; an empty window has no rows.
        rows.retain(|r| r.totals.requests > 0);
        let cache = self.cache_economics(&since, &until, &query.api_key).await?;
        Ok(Report {
            group_by: dims.clone(),
            since: query.since,
            until: query.until,
            rows,
            total,
            cache,
        })
    }

    async fn cache_economics(
        &self,
        since: &Option<String>,
        until: &Option<String>,
        api_key: &Option<String>,
    ) -> Result<CacheEconomics, LedgerError> {
        let count = |cond: &str| {
            format!("CAST(COALESCE(SUM(CASE WHEN {cond} THEN 1 ELSE 0 END), 0) AS BIGINT)")
        };
        let sql = format!(
            "SELECT {}, {}, {}, \
               CAST(COALESCE(SUM(CASE WHEN r.cache = 'hit' THEN o.micros END), 0) AS BIGINT), \
               {} \
             FROM requests r LEFT JOIN requests o ON o.id = ( \
               SELECT m.id FROM requests m \
               WHERE r.cache = 'hit' AND m.content_key = r.content_key \
                 AND m.cache = 'miss' AND m.status IN ('ok', 'blocked') AND m.id < r.id \
               ORDER BY m.id DESC LIMIT 1) \
             WHERE {WINDOW}",
            count("r.cache = 'hit'"),
            count("r.cache = 'miss'"),
            count("r.cache = 'bypass'"),
            count("r.cache = 'hit' AND o.micros IS NULL"),
        );
        let [hits, misses, bypasses, saved, hits_without_original] =
            with_pool!(&self.pool, p => async {
                let row = sqlx::query(&sql)
                    .bind(since)
                    .bind(until)
                    .bind(api_key)
                    .fetch_one(p)
                    .await?;
                let mut out = [0i64; 5];
                for (i, v) in out.iter_mut().enumerate() {
                    *v = row.try_get(i)?;
                }
                Ok::<_, sqlx::Error>(out)
            }
            .await)
            .map_err(|e| self.db(e))?;
        Ok(CacheEconomics {
            hits,
            misses,
            bypasses,
            hit_ratio: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
            saved: Micros(saved),
            hits_without_original,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{on_both_backends, record_at, TestDb};
    use crate::{CacheOutcome, RequestRecord};
    use imagegate_core::{ContentKey, Stage, StageCost};
    use proptest::prelude::*;

    fn key(n: u8) -> ContentKey {
        format!("{:02x}", n).repeat(32).parse().unwrap()
    }

    fn stage(stage: Stage, micros: i64, bytes_out: u64) -> StageCost {
        let mut s = StageCost::new(stage);
        s.micros = Micros(micros);
        s.wall_ms = 2.0;
        s.cpu_ms = 1.0;
        s.bytes_out = bytes_out;
        s
    }

    fn request(
        id: &str,
        k: u8,
        cache: CacheOutcome,
        provider: &str,
        api_key: Option<&str>,
    ) -> RequestRecord {
        RequestRecord {
            request_id: id.into(),
            key: key(k),
            cache,
            status: crate::RequestStatus::Ok,
            provider: Some(provider.into()),
            model: Some(format!("{provider}-model")),
            api_key: api_key.map(str::to_string),
            profile: "default".into(),
            wall_ms: 5.0,
        }
    }

    on_both_backends!(
        every_grouping_has_the_same_exact_total,
        groups_by_stage_provider_key_and_day,
        since_is_inclusive_and_until_exclusive,
        hits_are_credited_with_the_original_generation_cost,
        one_key_reads_only_its_own_requests,
    );

    /// Two days, two providers, two keys, a miss and two hits of one key.
    async fn fixture(db: &TestDb) -> Ledger {
        let ledger = db.open().await;
        let gen = |m| {
            vec![
                stage(Stage::Generate, m, 0),
                stage(Stage::Encode, 12, 4_000),
                stage(Stage::Upload, 7, 0),
            ]
        };
        let rows: [(&str, RequestRecord, Vec<StageCost>); 5] = [
            (
                "2026-11-01T10:00:00.000Z",
                request("a", 1, CacheOutcome::Miss, "local", None),
                gen(40_000),
            ),
            (
                "2026-11-01T11:00:00.000Z",
                request("b", 1, CacheOutcome::Hit, "local", Some("k1")),
                vec![stage(Stage::Cache, 1, 0)],
            ),
            (
                "2026-11-02T09:00:00.000Z",
                request("c", 2, CacheOutcome::Miss, "openai", Some("k1")),
                gen(170_000),
            ),
            (
                "2026-11-02T10:00:00.000Z",
                request("d", 1, CacheOutcome::Hit, "local", Some("k2")),
                vec![stage(Stage::Cache, 0, 0)],
            ),
            (
                "2026-11-02T12:00:00.000Z",
                request("e", 3, CacheOutcome::Bypass, "openai", None),
                gen(170_001),
            ),
        ];
        for (at, rec, stages) in &rows {
            record_at(&ledger, at, rec, stages).await;
        }
        ledger
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn value(row: &ReportRow, d: Dimension) -> Option<&str> {
        row.values
            .iter()
            .find(|(x, _)| *x == d)
            .and_then(|(_, v)| v.as_deref())
    }

    const ALL_MICROS: i64 = 40_019 + 1 + 170_019 + 170_020;

    async fn every_grouping_has_the_same_exact_total(db: TestDb) {
        let ledger = fixture(&db).await;
        // Every subset of dimensions, in order.
        for mask in 0u32..(1 << Dimension::ALL.len()) {
            let group_by: Vec<Dimension> = Dimension::ALL
                .into_iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, d)| d)
                .collect();
            let report = ledger
                .report(&ReportQuery {
                    group_by: group_by.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(
                report.total.totals.micros,
                Micros(ALL_MICROS),
                "{group_by:?}"
            );
            assert_eq!(report.total.totals.requests, 5);
            let sum: Micros = report.rows.iter().map(|r| r.totals.micros).sum();
            assert_eq!(sum, Micros(ALL_MICROS), "{group_by:?}");
            let bytes: i64 = report.rows.iter().map(|r| r.totals.bytes_out).sum();
            assert_eq!(bytes, 12_000);
            for row in &report.rows {
                let dims: Vec<Dimension> = row.values.iter().map(|(d, _)| *d).collect();
                assert_eq!(dims, group_by);
            }
        }
    }

    async fn groups_by_stage_provider_key_and_day(db: TestDb) {
        let ledger = fixture(&db).await;
        let q = |group_by: Vec<Dimension>| ReportQuery {
            group_by,
            ..Default::default()
        };
        let by_stage = ledger.report(&q(vec![Dimension::Stage])).await.unwrap();
        let stages: Vec<(&str, i64, i64)> = by_stage
            .rows
            .iter()
            .map(|r| {
                (
                    value(r, Dimension::Stage).unwrap(),
                    r.totals.requests,
                    r.totals.micros.0,
                )
            })
            .collect();
        assert_eq!(
            stages,
            vec![
                ("cache", 2, 1),
                ("encode", 3, 36),
                ("generate", 3, 380_001),
                ("upload", 3, 21),
            ]
        );

        let by_provider_day = ledger
            .report(&q(vec![Dimension::Provider, Dimension::Day]))
            .await
            .unwrap();
        let got: Vec<(&str, &str, i64, i64)> = by_provider_day
            .rows
            .iter()
            .map(|r| {
                (
                    value(r, Dimension::Provider).unwrap(),
                    value(r, Dimension::Day).unwrap(),
                    r.totals.requests,
                    r.totals.micros.0,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("local", "2026-11-01", 2, 40_020),
                ("local", "2026-11-02", 1, 0),
                ("openai", "2026-11-02", 2, 340_039),
            ]
        );

        let by_key = ledger.report(&q(vec![Dimension::Key])).await.unwrap();
        let got: Vec<(Option<&str>, i64)> = by_key
            .rows
            .iter()
            .map(|r| (value(r, Dimension::Key), r.totals.micros.0))
            .collect();
        assert_eq!(
            got,
            vec![
                (None, 40_019 + 170_020),
                (Some("k1"), 170_020),
                (Some("k2"), 0)
            ]
        );

        let by_model_stage = ledger
            .report(&q(vec![Dimension::Model, Dimension::Stage]))
            .await
            .unwrap();
        let openai_generate = by_model_stage
            .rows
            .iter()
            .find(|r| {
                value(r, Dimension::Model) == Some("openai-model")
                    && value(r, Dimension::Stage) == Some("generate")
            })
            .unwrap();
        assert_eq!(openai_generate.totals.micros, Micros(340_001));
        assert_eq!(openai_generate.totals.requests, 2);
    }

    async fn since_is_inclusive_and_until_exclusive(db: TestDb) {
        let ledger = fixture(&db).await;
        let report = |since: Option<&str>, until: Option<&str>| {
            let ledger = ledger.clone();
            let query = ReportQuery {
                group_by: vec![Dimension::Day],
                since: since.map(at),
                until: until.map(at),
                api_key: None,
            };
            async move { ledger.report(&query).await.unwrap() }
        };
        let day2 = report(Some("2026-11-02T00:00:00Z"), None).await;
        assert_eq!(day2.total.totals.requests, 3);
        assert_eq!(day2.total.totals.micros, Micros(170_019 + 170_020));
        assert_eq!(day2.rows.len(), 1);

        let exact = report(Some("2026-11-01T11:00:00Z"), Some("2026-11-02T09:00:00Z")).await;
        assert_eq!(exact.total.totals.requests, 1);
        assert_eq!(exact.total.totals.micros, Micros(1));

        let empty = report(Some("2027-01-01T00:00:00Z"), None).await;
        assert!(empty.rows.is_empty());
        assert_eq!(empty.total.totals, Totals::default());
        assert_eq!(empty.cache.hit_ratio, None);

        let backwards = ledger
            .report(&ReportQuery {
                group_by: vec![],
                since: Some(at("2026-11-02T00:00:00Z")),
                until: Some(at("2026-11-01T00:00:00Z")),
                api_key: None,
            })
            .await
            .unwrap_err();
        assert!(backwards.to_string().contains("after"), "{backwards}");
    }

    async fn one_key_reads_only_its_own_requests(db: TestDb) {
        let ledger = fixture(&db).await;
        let of = |key: &str, by: Vec<Dimension>| ReportQuery {
            group_by: by,
            api_key: Some(key.to_string()),
            ..Default::default()
        };
        let k1 = ledger
            .report(&of("k1", vec![Dimension::Key, Dimension::Stage]))
            .await
            .unwrap();
        assert_eq!(k1.total.totals.requests, 2);
        assert_eq!(k1.total.totals.micros, Micros(1 + 170_019));
        assert!(
            k1.rows
                .iter()
                .all(|r| value(r, Dimension::Key) == Some("k1")),
            "{:?}",
            k1.rows
        );
        // Its hit of key 1 is credited with the original miss, whoever paid for it.
        assert_eq!((k1.cache.hits, k1.cache.misses), (1, 1));
        assert_eq!(k1.cache.saved, Micros(40_019));

        let k2 = ledger.report(&of("k2", vec![])).await.unwrap();
        assert_eq!(k2.total.totals.requests, 1);
        assert_eq!((k2.cache.hits, k2.cache.misses), (1, 0));
        let nobody = ledger
            .report(&of("k3", vec![Dimension::Day]))
            .await
            .unwrap();
        assert!(nobody.rows.is_empty());
        assert_eq!(nobody.total.totals, Totals::default());
        assert_eq!(nobody.cache.hits, 0);
    }

    async fn hits_are_credited_with_the_original_generation_cost(db: TestDb) {
        let ledger = fixture(&db).await;
        let all = ledger.report(&ReportQuery::default()).await.unwrap();
        assert_eq!(all.cache.hits, 2);
        assert_eq!(all.cache.misses, 2);
        assert_eq!(all.cache.bypasses, 1);
        assert_eq!(all.cache.hit_ratio, Some(0.5));
        // Both hits are of key 1, whose miss cost 40_019.
        assert_eq!(all.cache.saved, Micros(2 * 40_019));
        assert_eq!(all.cache.hits_without_original, 0);

        // The window holds the second hit but not the miss: still credited.
        let day2 = ledger
            .report(&ReportQuery {
                since: Some(at("2026-11-02T00:00:00Z")),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(day2.cache.hits, 1);
        assert_eq!(day2.cache.misses, 1);
        assert_eq!(day2.cache.saved, Micros(40_019));

        // A refresh (a second miss) re-prices later hits.
        record_at(
            &ledger,
            "2026-11-03T00:00:00.000Z",
            &request("f", 1, CacheOutcome::Miss, "local", None),
            &[stage(Stage::Generate, 50_000, 0)],
        )
        .await;
        record_at(
            &ledger,
            "2026-11-03T01:00:00.000Z",
            &request("g", 1, CacheOutcome::Hit, "local", None),
            &[stage(Stage::Cache, 0, 0)],
        )
        .await;
        record_at(
            &ledger,
            "2026-11-03T02:00:00.000Z",
            &request("h", 9, CacheOutcome::Hit, "local", None),
            &[stage(Stage::Cache, 0, 0)],
        )
        .await;
        let all = ledger.report(&ReportQuery::default()).await.unwrap();
        assert_eq!(all.cache.saved, Micros(2 * 40_019 + 50_000));
        assert_eq!(all.cache.hits_without_original, 1);
    }

    #[test]
    fn dimensions_parse_and_name_the_allowed_ones() {
        assert_eq!(
            Dimension::parse_list("stage, Provider,,day").unwrap(),
            vec![Dimension::Stage, Dimension::Provider, Dimension::Day]
        );
        assert_eq!(Dimension::parse_list("").unwrap(), vec![]);
        let err = Dimension::parse_list("stage,color")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"color\"") && err.contains("stage, provider, model, key, day"),
            "{err}"
        );
        let err = Dimension::parse_list("day,day").unwrap_err().to_string();
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn instants_parse_as_durations_times_or_days() {
        let now = at("2026-11-24T08:00:00Z");
        assert_eq!(
            parse_instant("7d", now).unwrap(),
            at("2026-11-17T08:00:00Z")
        );
        assert_eq!(
            parse_instant("1h 30m", now).unwrap(),
            at("2026-11-24T06:30:00Z")
        );
        assert_eq!(
            parse_instant("2026-11-01T02:00:00+02:00", now).unwrap(),
            at("2026-11-01T00:00:00Z")
        );
        assert_eq!(
            parse_instant("2026-11-01", now).unwrap(),
            at("2026-11-01T00:00:00Z")
        );
        let err = parse_instant("last tuesday", now).unwrap_err().to_string();
        assert!(err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn report_json_rows_are_flat() {
        let row = ReportRow {
            values: vec![
                (Dimension::Stage, Some("generate".into())),
                (Dimension::Key, None),
            ],
            totals: Totals {
                requests: 2,
                micros: Micros(40_213),
                wall_ms: 1.25,
                cpu_ms: 0.0,
                bytes_out: 9,
                unpriced_stages: 1,
            },
        };
        assert_eq!(
            serde_json::to_value(&row).unwrap(),
            serde_json::json!({
                "stage": "generate", "key": null, "requests": 2, "micros": 40213,
                "usd": 0.040213, "wall_ms": 1.3, "cpu_ms": 0.0, "bytes_out": 9,
                "unpriced_stages": 1
            })
        );
    }

    /// One generated request: key number, cache outcome index, (stage index, micros).
    type Recorded = (u8, usize, Vec<(usize, i64)>);

    /// Records `requests` and checks that the report grouped by the dimensions in
    /// `mask` sums to exactly what was recorded.
    fn check_totals(
        db: impl std::future::Future<Output = TestDb>,
        requests: &[Recorded],
        mask: u32,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let db = db.await;
            let ledger = db.open().await;
            let mut expected = 0i64;
            for (i, (k, cache, stages)) in requests.iter().enumerate() {
                let cache = [CacheOutcome::Miss, CacheOutcome::Hit, CacheOutcome::Bypass][*cache];
                let provider = ["local", "openai"][i % 2];
                let stages: Vec<StageCost> = stages
                    .iter()
                    .map(|(s, m)| stage(Stage::ALL[*s], *m, 1))
                    .collect();
                expected += stages.iter().map(|s| s.micros.0).sum::<i64>();
                ledger
                    .record(&request(&i.to_string(), *k, cache, provider, None), &stages)
                    .await
                    .unwrap();
            }
            let group_by: Vec<Dimension> = Dimension::ALL
                .into_iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, d)| d)
                .collect();
            let report = ledger
                .report(&ReportQuery {
                    group_by,
                    ..Default::default()
                })
                .await
                .unwrap();
            let rows: i64 = report.rows.iter().map(|r| r.totals.micros.0).sum();
            assert_eq!(report.total.totals.micros.0, expected);
            assert_eq!(rows, expected);
            assert_eq!(report.total.totals.requests, requests.len() as i64);
            ledger.close().await;
        });
    }

    fn recorded_requests() -> impl Strategy<Value = Vec<Recorded>> {
        prop::collection::vec(
            (
                0u8..4,
                0usize..3,
                prop::collection::vec((0usize..9, 0i64..5_000_000_000), 0..5),
            ),
            1..12,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        /// Whatever is recorded, every grouping's rows and total sum to exactly what was
        /// recorded.
        #[test]
        fn totals_equal_the_sum_of_recorded_stages_on_sqlite(
            requests in recorded_requests(),
            mask in 0u32..32,
        ) {
            check_totals(TestDb::sqlite(), &requests, mask);
        }

        #[test]
        fn totals_equal_the_sum_of_recorded_stages_on_postgres(
            requests in recorded_requests(),
            mask in 0u32..32,
        ) {
            check_totals(TestDb::postgres(), &requests, mask);
        }
    }
}
