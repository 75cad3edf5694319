//! Delivery bytes: what the stored variant files weigh, per width and format, so a
//! caller can project egress (price × views × bytes). The projection itself is the
//! caller's; this only sums what the upload stages recorded.

use crate::backend::with_pool;
use crate::cost_report::{check_window, rfc3339, WINDOW_ON_STAGES};
use crate::{Ledger, LedgerError, ReportQuery};
use futures::TryStreamExt;
use imagegate_core::{ImageFormat, Stage};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::collections::BTreeMap;

/// The stored files of one (width, format) over a report window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRow {
    pub width: u32,
    pub format: ImageFormat,
    /// Files stored (one per variant per upload).
    pub files: u64,
    /// Their bytes together.
    pub bytes: u64,
}

/// One entry of an upload stage's `detail.files`, as the pipeline writes it.
#[derive(Deserialize)]
struct StoredFile {
    width: u32,
    format: ImageFormat,
    bytes: u64,
}

impl Ledger {
    /// Sums, over upload stages in `query`'s window (of `query.api_key`'s requests
    /// when it names one), the files their `detail.files` lists, per (width, format),
    /// ordered by width then format. Upload rows without `files` (older rows, blocked
    /// results) are skipped, and so are entries that do not parse; `query.group_by`
    /// is ignored.
    ///
    /// The JSON is read here rather than in SQL because the two backends' JSON
    /// functions differ; rows are streamed, so memory stays flat over a long window.
    pub async fn delivery(&self, query: &ReportQuery) -> Result<Vec<DeliveryRow>, LedgerError> {
        check_window(query)?;
        let since = query.since.map(rfc3339);
        let until = query.until.map(rfc3339);
        let sql = format!(
            "SELECT s.detail FROM stages s JOIN requests r ON r.id = s.request \
             WHERE s.stage = $4 AND {WINDOW_ON_STAGES}"
        );
        let mut sums: BTreeMap<(u32, ImageFormat), (u64, u64)> = BTreeMap::new();
        let mut add = |detail: &str| {
            let Ok(detail) = serde_json::from_str::<serde_json::Value>(detail) else {
                return;
            };
            let Some(files) = detail.get("files").and_then(|f| f.as_array()) else {
                return;
            };
            for file in files {
                if let Ok(f) = StoredFile::deserialize(file) {
                    let sum = sums.entry((f.width, f.format)).or_default();
                    sum.0 += 1;
                    sum.1 = sum.1.saturating_add(f.bytes);
                }
            }
        };
        with_pool!(&self.pool, p => async {
            let mut rows = sqlx::query(&sql)
                .bind(&since)
                .bind(&until)
                .bind(&query.api_key)
                .bind(Stage::Upload.as_str())
                .fetch(p);
            while let Some(row) = rows.try_next().await? {
                add(row.try_get::<&str, _>(0)?);
            }
            Ok::<(), sqlx::Error>(())
        }
        .await)
        .map_err(|e| self.db(e))?;
        Ok(sums
            .into_iter()
            .map(|((width, format), (files, bytes))| DeliveryRow {
                width,
                format,
                files,
                bytes,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{on_both_backends, record_at, TestDb};
    use crate::{CacheOutcome, RequestRecord};
    use imagegate_core::{ContentKey, StageCost};
    use serde_json::json;

    on_both_backends!(sums_stored_files_per_width_and_format_in_the_window);

    fn request(n: u8) -> RequestRecord {
        RequestRecord {
            request_id: n.to_string(),
            key: format!("{:02x}", n)
                .repeat(32)
                .parse::<ContentKey>()
                .unwrap(),
            cache: CacheOutcome::Miss,
            status: crate::RequestStatus::Ok,
            provider: Some("local".into()),
            model: None,
            api_key: None,
            profile: "default".into(),
            wall_ms: 1.0,
        }
    }

    fn stage(stage: Stage, detail: serde_json::Value) -> StageCost {
        let mut s = StageCost::new(stage);
        s.detail = detail;
        s
    }

    fn upload(files: serde_json::Value) -> StageCost {
        stage(
            Stage::Upload,
            json!({"store": "local", "objects": 3, "files": files}),
        )
    }

    fn row(width: u32, format: ImageFormat, files: u64, bytes: u64) -> DeliveryRow {
        DeliveryRow {
            width,
            format,
            files,
            bytes,
        }
    }

    async fn sums_stored_files_per_width_and_format_in_the_window(db: TestDb) {
        use ImageFormat::{Avif, Jpeg, Webp};
        let ledger = db.open().await;
        let file = |width: u32, format: &str, bytes: u64| json!({"width": width, "format": format, "bytes": bytes});
        let recorded = [
            (
                "2026-11-01T10:00:00.000Z",
                vec![upload(json!([
                    file(768, "avif", 1_000),
                    file(768, "jpeg", 3_000),
                    file(256, "avif", 200)
                ]))],
            ),
            (
                "2026-11-02T10:00:00.000Z",
                vec![
                    // Only upload stages count.
                    stage(Stage::Encode, json!({"files": [file(768, "avif", 99)]})),
                    upload(json!([file(768, "avif", 1_100), file(256, "webp", 300)])),
                ],
            ),
            // Rows without files (older rows, blocked results) are skipped.
            (
                "2026-11-02T11:00:00.000Z",
                vec![stage(Stage::Upload, json!({"store": "local"}))],
            ),
            (
                "2026-11-02T12:00:00.000Z",
                vec![upload(json!([
                    {"width": "wide", "format": "avif", "bytes": 1},
                    file(1024, "gif", 7),
                    file(1024, "avif", 5_000)
                ]))],
            ),
        ];
        for (n, (at, stages)) in recorded.iter().enumerate() {
            record_at(&ledger, at, &request(n as u8), stages).await;
        }
        let window = |since: Option<&str>, until: Option<&str>| ReportQuery {
            group_by: Vec::new(),
            since: since.map(|s| s.parse().unwrap()),
            until: until.map(|s| s.parse().unwrap()),
            api_key: None,
        };

        let all = ledger.delivery(&window(None, None)).await.unwrap();
        assert_eq!(
            all,
            vec![
                row(256, Avif, 1, 200),
                row(256, Webp, 1, 300),
                row(768, Avif, 2, 2_100),
                row(768, Jpeg, 1, 3_000),
                row(1024, Avif, 1, 5_000),
            ]
        );
        let day2 = ledger
            .delivery(&window(Some("2026-11-02T00:00:00Z"), None))
            .await
            .unwrap();
        assert_eq!(
            day2,
            vec![
                row(256, Webp, 1, 300),
                row(768, Avif, 1, 1_100),
                row(1024, Avif, 1, 5_000),
            ]
        );
        let day1 = ledger
            .delivery(&window(None, Some("2026-11-02T10:00:00Z")))
            .await
            .unwrap();
        assert_eq!(day1.iter().map(|r| r.bytes).sum::<u64>(), 4_200);
        let empty = ledger
            .delivery(&window(Some("2027-01-01T00:00:00Z"), None))
            .await
            .unwrap();
        assert!(empty.is_empty());
        let backwards = ledger
            .delivery(&window(
                Some("2026-11-02T00:00:00Z"),
                Some("2026-11-01T00:00:00Z"),
            ))
            .await
            .unwrap_err();
        assert!(backwards.to_string().contains("after"), "{backwards}");

        // One key's files only.
        let mut own = request(9);
        own.api_key = Some("k9".into());
        record_at(
            &ledger,
            "2026-11-03T10:00:00.000Z",
            &own,
            &[upload(json!([file(512, "webp", 4_000)]))],
        )
        .await;
        let of = |key: &str| ReportQuery {
            api_key: Some(key.into()),
            ..window(None, None)
        };
        assert_eq!(
            ledger.delivery(&of("k9")).await.unwrap(),
            vec![row(512, Webp, 1, 4_000)]
        );
        assert!(ledger.delivery(&of("k8")).await.unwrap().is_empty());
        assert_eq!(ledger.delivery(&window(None, None)).await.unwrap().len(), 6);
    }

    #[test]
    fn rows_serialize_flat() {
        assert_eq!(
            serde_json::to_value(row(768, ImageFormat::Avif, 2, 2_100)).unwrap(),
            json!({"width": 768, "format": "avif", "files": 2, "bytes": 2100})
        );
    }
}
