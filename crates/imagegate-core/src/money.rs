//! Money as integer micro-dollars, so sums over millions of ledger rows are exact.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign};

/// An amount in millionths of a US dollar.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Micros(pub i64);

impl Micros {
    pub const ZERO: Micros = Micros(0);

    /// The largest amount the ledger holds: arithmetic saturates here instead of
    /// wrapping, so absurd usage can never turn a total negative and grant budget.
    pub const MAX: Micros = Micros(i64::MAX);

    /// Rounds half away from zero to the nearest micro-dollar. Amounts beyond
    /// ±[`Micros::MAX`] saturate, and NaN is zero (`as` casts do both).
    pub fn from_usd(usd: f64) -> Micros {
        Micros((usd * 1_000_000.0).round() as i64)
    }

    /// `self + rhs`, or None where the sum would leave the i64 range.
    pub fn checked_add(self, rhs: Micros) -> Option<Micros> {
        self.0.checked_add(rhs.0).map(Micros)
    }

    /// `self - rhs`, saturating at the ends of the range.
    pub fn saturating_sub(self, rhs: Micros) -> Micros {
        Micros(self.0.saturating_sub(rhs.0))
    }

    /// `self × n`, saturating.
    pub fn saturating_mul(self, n: i64) -> Micros {
        Micros(self.0.saturating_mul(n))
    }

    pub fn as_usd(self) -> f64 {
        self.0 as f64 / 1_000_000.0
    }

    /// Price of `cpu_seconds` of one core at `usd_per_core_hour`. Sub-micro-dollar
    /// amounts round to the nearest micro-dollar, so tiny stages may cost zero.
    pub fn for_cpu_seconds(cpu_seconds: f64, usd_per_core_hour: f64) -> Micros {
        Micros::from_usd(cpu_seconds * usd_per_core_hour / 3600.0)
    }

    /// Storage of `bytes` for one month at `usd_per_gb_month` (GB = 10^9 bytes, as
    /// cloud providers bill).
    pub fn for_storage_month(bytes: u64, usd_per_gb_month: f64) -> Micros {
        Micros::from_usd(bytes as f64 / 1e9 * usd_per_gb_month)
    }
}

/// Saturating: money never wraps.
impl Add for Micros {
    type Output = Micros;
    fn add(self, rhs: Micros) -> Micros {
        Micros(self.0.saturating_add(rhs.0))
    }
}

impl AddAssign for Micros {
    fn add_assign(&mut self, rhs: Micros) {
        *self = *self + rhs;
    }
}

impl Sum for Micros {
    fn sum<I: Iterator<Item = Micros>>(iter: I) -> Micros {
        iter.fold(Micros::ZERO, Add::add)
    }
}

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}${}.{:06}", abs / 1_000_000, abs % 1_000_000)
    }
}

/// Serde for amounts written in dollars (`0.05`) and held as [`Micros`]: a negative,
/// infinite or NaN amount is refused where it is read, naming what it got.
pub mod dollars {
    use super::Micros;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(amount: &Micros, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(amount.as_usd())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Micros, D::Error> {
        parse(f64::deserialize(d)?).map_err(D::Error::custom)
    }

    fn parse(usd: f64) -> Result<Micros, String> {
        if usd.is_finite() && usd >= 0.0 {
            Ok(Micros::from_usd(usd))
        } else {
            Err(format!("{usd} is not a non-negative amount of dollars"))
        }
    }

    /// The same for an optional amount.
    pub mod option {
        use super::Micros;
        use serde::{de::Error, Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(amount: &Option<Micros>, s: S) -> Result<S::Ok, S::Error> {
            match amount {
                Some(m) => s.serialize_some(&m.as_usd()),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Micros>, D::Error> {
            Option::<f64>::deserialize(d)?
                .map(super::parse)
                .transpose()
                .map_err(D::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usd_round_trips_at_micro_precision() {
        assert_eq!(Micros::from_usd(0.04), Micros(40_000));
        assert_eq!(Micros::from_usd(0.0000005), Micros(1));
        assert_eq!(Micros(40_213).to_string(), "$0.040213");
        assert_eq!(Micros(-5).to_string(), "-$0.000005");
    }

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        assert_eq!(Micros::MAX + Micros(1), Micros::MAX);
        assert_eq!(Micros(i64::MIN) + Micros(-1), Micros(i64::MIN));
        let total: Micros = [Micros::MAX, Micros::MAX, Micros(5)].into_iter().sum();
        assert_eq!(total, Micros::MAX);
        assert_eq!(Micros::from_usd(1e300), Micros::MAX);
        assert_eq!(Micros::from_usd(f64::NAN), Micros::ZERO);
        assert_eq!(Micros::MAX.checked_add(Micros(1)), None);
        assert_eq!(Micros(3).saturating_mul(i64::MAX), Micros::MAX);
    }

    proptest::proptest! {
        /// Whatever usage a provider reports, a sum of non-negative charges is never
        /// below any of its parts.
        #[test]
        fn sums_of_charges_never_fall(parts in proptest::collection::vec(0..=i64::MAX, 0..8)) {
            let parts: Vec<Micros> = parts.into_iter().map(Micros).collect();
            let total: Micros = parts.iter().copied().sum();
            for p in &parts {
                proptest::prop_assert!(total >= *p);
            }
        }
    }

    #[test]
    fn compute_and_storage_prices() {
        // One core-hour at $0.036 is $0.036; one CPU second is $0.00001.
        assert_eq!(Micros::for_cpu_seconds(3600.0, 0.036), Micros(36_000));
        assert_eq!(Micros::for_cpu_seconds(1.0, 0.036), Micros(10));
        // 1 GB-month at $0.023.
        assert_eq!(
            Micros::for_storage_month(1_000_000_000, 0.023),
            Micros(23_000)
        );
    }

    #[derive(Debug, serde::Deserialize)]
    struct Limits {
        #[serde(with = "super::dollars")]
        reserve: Micros,
        #[serde(default, with = "super::dollars::option")]
        daily: Option<Micros>,
    }

    #[test]
    fn dollar_amounts_are_read_into_micros_and_nonsense_is_refused() {
        let l: Limits = serde_json::from_str(r#"{"reserve": 0.0005, "daily": 2.5}"#).unwrap();
        assert_eq!(l.reserve, Micros(500));
        assert_eq!(l.daily, Some(Micros(2_500_000)));
        let l: Limits = serde_json::from_str(r#"{"reserve": 0}"#).unwrap();
        assert_eq!(l.daily, None);
        let e = serde_json::from_str::<Limits>(r#"{"reserve": -1}"#).unwrap_err();
        assert!(
            e.to_string().contains("-1 is not a non-negative amount"),
            "{e}"
        );
        let e = serde_json::from_str::<Limits>(r#"{"reserve": 1, "daily": -0.5}"#).unwrap_err();
        assert!(e.to_string().contains("-0.5"), "{e}");
    }
}
