//! The cheapest moment before a deadline. Prices change with time only at the
//! edges of the price book's surge windows (discounts hold at every hour), so the
//! candidates are now and every window edge up to the latest start; each is quoted
//! by the router as a call at that instant would be, and the cheapest wins, the
//! earliest of equals (no reason to wait for the same price). An unknown price
//! ranks after every known one.

use chrono::{DateTime, Duration, Utc};
use imagegate_core::Micros;
use imagegate_providers::price_book::SurgeWindow;

/// When to run, and the provider fee quoted for then (None: unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub at: DateTime<Utc>,
    pub quote: Option<Micros>,
}

/// Every instant in `(now, latest]` at which a surge window opens or closes.
pub(crate) fn window_edges(
    surges: &[SurgeWindow],
    now: DateTime<Utc>,
    latest: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let mut edges = Vec::new();
    let mut day = now.date_naive();
    while day <= latest.date_naive() {
        for s in surges.iter().filter(|s| s.start != s.end) {
            for t in [s.start, s.end] {
                let instant = day.and_time(t).and_utc();
                if instant > now && instant <= latest {
                    edges.push(instant);
                }
            }
        }
        day = match day.succ_opt() {
            Some(d) => d,
            None => break,
        };
    }
    edges.sort();
    edges.dedup();
    edges
}

/// The cheapest of `now` and `edges` by `quote`, the earliest of equals.
pub(crate) fn cheapest(
    now: DateTime<Utc>,
    edges: &[DateTime<Utc>],
    quote: impl Fn(DateTime<Utc>) -> Option<Micros>,
) -> Plan {
    let rank = |q: Option<Micros>| q.map_or(i64::MAX, |m| m.0);
    let mut best = Plan {
        at: now,
        quote: quote(now),
    };
    for &at in edges {
        let q = quote(at);
        if rank(q) < rank(best.quote) {
            best = Plan { at, quote: q };
        }
    }
    best
}

/// The latest instant a job may start to meet `deliver_by` with `margin` in hand;
/// never before `now`.
pub(crate) fn latest_start(
    now: DateTime<Utc>,
    deliver_by: DateTime<Utc>,
    margin: Duration,
) -> DateTime<Utc> {
    (deliver_by - margin).max(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagegate_providers::PriceBook;

    fn book(extra: &str) -> PriceBook {
        let text = format!(
            r#"
[[model]]
provider = "local"
model = "procedural-v1"
source = "test"
as_of = 2026-12-01
pricing = {{ type = "per_image", prices = [{{ usd = 0.04 }}] }}
{extra}
"#
        );
        PriceBook::parse(&text, "test").expect("the test book parses")
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn quote_with(book: &PriceBook) -> impl Fn(DateTime<Utc>) -> Option<Micros> + '_ {
        |t| {
            book.quote(
                "local",
                "procedural-v1",
                "1024x1024".parse().unwrap(),
                None,
                t,
            )
            .ok()
            .map(|q| q.micros)
        }
    }

    const SURGE: &str = r#"
[[surge]]
days = ["mon", "tue", "wed", "thu", "fri"]
start = "14:00"
end = "18:00"
multiplier = 2.0
"#;

    #[test]
    fn inside_a_surge_the_job_waits_for_its_end() {
        let book = book(SURGE);
        // Monday 15:00, deliver by Tuesday 15:00.
        let now = at("2026-12-07T15:00:00Z");
        let latest = latest_start(now, at("2026-12-08T15:00:00Z"), Duration::minutes(10));
        let edges = window_edges(book.surges(), now, latest);
        assert_eq!(
            edges,
            vec![at("2026-12-07T18:00:00Z"), at("2026-12-08T14:00:00Z")]
        );
        let plan = cheapest(now, &edges, quote_with(&book));
        assert_eq!(plan.at, at("2026-12-07T18:00:00Z"));
        assert_eq!(plan.quote, Some(Micros(40_000)));
        assert_eq!(quote_with(&book)(now), Some(Micros(80_000)));
    }

    #[test]
    fn outside_a_surge_the_job_runs_now() {
        let book = book(SURGE);
        let now = at("2026-12-07T10:00:00Z");
        let latest = latest_start(now, at("2026-12-08T10:00:00Z"), Duration::minutes(10));
        let edges = window_edges(book.surges(), now, latest);
        let plan = cheapest(now, &edges, quote_with(&book));
        assert_eq!(plan.at, now, "the same price later is no reason to wait");
        assert_eq!(plan.quote, Some(Micros(40_000)));
    }

    #[test]
    fn a_deadline_inside_the_surge_is_met_at_full_price() {
        let book = book(SURGE);
        let now = at("2026-12-07T15:00:00Z");
        // Due 17:00: the surge ends after the deadline.
        let latest = latest_start(now, at("2026-12-07T17:00:00Z"), Duration::minutes(10));
        let edges = window_edges(book.surges(), now, latest);
        assert!(edges.is_empty());
        let plan = cheapest(now, &edges, quote_with(&book));
        assert_eq!(plan.at, now);
        assert_eq!(plan.quote, Some(Micros(80_000)));
        // A deadline closer than the margin starts now too.
        let tight = latest_start(now, now + Duration::minutes(5), Duration::minutes(10));
        assert_eq!(tight, now);
    }

    #[test]
    fn the_weekend_is_cheaper_than_friday_afternoon_and_windows_wrap_midnight() {
        let book = book(
            r#"
[[surge]]
start = "22:00"
end = "02:00"
multiplier = 1.5
"#,
        );
        let now = at("2026-12-07T23:00:00Z");
        let latest = at("2026-12-08T23:30:00Z");
        let edges = window_edges(book.surges(), now, latest);
        assert_eq!(
            edges,
            vec![at("2026-12-08T02:00:00Z"), at("2026-12-08T22:00:00Z")]
        );
        let plan = cheapest(now, &edges, quote_with(&book));
        assert_eq!(plan.at, at("2026-12-08T02:00:00Z"));
        assert_eq!(plan.quote, Some(Micros(40_000)));
    }

    #[test]
    fn an_unknown_price_ranks_after_every_known_one() {
        let now = at("2026-12-07T00:00:00Z");
        let later = at("2026-12-07T06:00:00Z");
        let plan = cheapest(now, &[later], |t| (t == later).then_some(Micros(9)));
        assert_eq!(
            plan,
            Plan {
                at: later,
                quote: Some(Micros(9))
            }
        );
        let none = cheapest(now, &[later], |_| None);
        assert_eq!(
            none,
            Plan {
                at: now,
                quote: None
            }
        );
    }
}
