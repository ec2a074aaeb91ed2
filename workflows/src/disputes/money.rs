//! Money as the card networks send it: an integer count of the currency's minor unit
//! (cents, yen, fils), never a float, with ISO 4217's exponent saying where the
//! decimal point goes when a person reads it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// ISO 4217 codes Waymark accepts, with their exponent (digits after the decimal
/// point). A code missing here is refused at the door rather than formatted wrongly.
const EXPONENTS: &[(&str, u32)] = &[
    // Zero-decimal currencies.
    ("BIF", 0),
    ("CLP", 0),
    ("DJF", 0),
    ("GNF", 0),
    ("ISK", 0),
    ("JPY", 0),
    ("KMF", 0),
    ("KRW", 0),
    ("PYG", 0),
    ("RWF", 0),
    ("UGX", 0),
    ("VND", 0),
    ("VUV", 0),
    ("XAF", 0),
    ("XOF", 0),
    ("XPF", 0),
    // Three-decimal currencies.
    ("BHD", 3),
    ("IQD", 3),
    ("JOD", 3),
    ("KWD", 3),
    ("LYD", 3),
    ("OMR", 3),
    ("TND", 3),
    // Two-decimal currencies.
    ("AED", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("MXN", 2),
    ("MYR", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("PHP", 2),
    ("PLN", 2),
    ("RON", 2),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TRY", 2),
    ("TWD", 2),
    ("USD", 2),
    ("ZAR", 2),
];

/// An ISO 4217 currency Waymark knows, stored upper-case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    exponent: u32,
}

impl Currency {
    /// The currency of `code`, in either case (`usd`, `USD`); `None` for a code not in
    /// the table.
    pub fn parse(code: &str) -> Option<Currency> {
        let upper = code.to_ascii_uppercase();
        EXPONENTS
            .iter()
            .find(|(c, _)| *c == upper)
            .map(|(code, exponent)| Currency {
                code,
                exponent: *exponent,
            })
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Digits after the decimal point: JPY 0, USD 2, KWD 3.
    pub fn exponent(&self) -> u32 {
        self.exponent
    }
}

impl TryFrom<String> for Currency {
    type Error = String;

    fn try_from(code: String) -> Result<Self, Self::Error> {
        Currency::parse(&code).ok_or_else(|| format!("{code:?} is not a known ISO 4217 currency"))
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Currency::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

/// An amount in minor units of a currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Money {
        Money { minor, currency }
    }

    /// For people: `USD 42.00`, `JPY 4200`, `KWD 4.200`, `-USD 0.05`. Exact integer
    /// arithmetic, no rounding.
    pub fn format(&self) -> String {
        let sign = if self.minor < 0 { "-" } else { "" };
        let abs = self.minor.unsigned_abs();
        let exponent = self.currency.exponent;
        if exponent == 0 {
            return format!("{sign}{} {abs}", self.currency.code);
        }
        let unit = 10u64.pow(exponent);
        format!(
            "{sign}{} {}.{:0width$}",
            self.currency.code,
            abs / unit,
            abs % unit,
            width = exponent as usize
        )
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.format())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(minor: i64, code: &str) -> String {
        Money::new(minor, Currency::parse(code).unwrap()).format()
    }

    #[test]
    fn amounts_are_formatted_with_the_currency_exponent() {
        assert_eq!(money(4200, "jpy"), "JPY 4200");
        assert_eq!(money(4200, "usd"), "USD 42.00");
        assert_eq!(money(4200, "KWD"), "KWD 4.200");
        assert_eq!(money(5, "usd"), "USD 0.05");
        assert_eq!(money(1, "kwd"), "KWD 0.001");
        assert_eq!(money(0, "eur"), "EUR 0.00");
        assert_eq!(money(123_456_789, "gbp"), "GBP 1234567.89");
        assert_eq!(money(-5, "usd"), "-USD 0.05");
        assert_eq!(money(i64::MIN, "usd"), "-USD 92233720368547758.08");
    }

    #[test]
    fn currencies_are_known_iso_codes_in_either_case() {
        assert_eq!(Currency::parse("usd").unwrap().exponent(), 2);
        assert_eq!(Currency::parse("JPY").unwrap().exponent(), 0);
        assert_eq!(Currency::parse("kwd").unwrap().exponent(), 3);
        assert_eq!(Currency::parse("Eur").unwrap().code(), "EUR");
        for bad in ["", "us", "usdd", "xxx", "ü$d"] {
            assert!(Currency::parse(bad).is_none(), "{bad}");
        }
        let parsed: Currency = serde_json::from_str("\"gbp\"").unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), "\"GBP\"");
        assert!(serde_json::from_str::<Currency>("\"abc\"").is_err());
    }

    #[test]
    fn the_exponent_table_has_each_code_once() {
        let mut codes: Vec<_> = EXPONENTS.iter().map(|(c, _)| *c).collect();
        codes.sort_unstable();
        let len = codes.len();
        codes.dedup();
        assert_eq!(codes.len(), len);
        assert!(EXPONENTS
            .iter()
            .all(|(c, e)| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) && *e <= 3));
    }
}
