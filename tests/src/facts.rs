//! The lines workloads print: `KIND word ... key=value ...`.
//!
//! `READY pid=12 heap=0x7f00 heap_sum=0xabc`, `PASS counter tick=40`,
//! `FAIL counter heap word at offset 0x10: ...`. The first word is the kind;
//! `key=value` words are facts; other words are kept in order (for FAIL the
//! reason is the text after the workload name).

use std::collections::BTreeMap;

/// What went wrong reading a fact.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FactsError {
    #[error("line `{line}` has no `{key}=` fact")]
    Missing { key: String, line: String },
    #[error("fact `{key}={value}` in line `{line}` is not a decimal or 0x-hex number")]
    NotANumber {
        key: String,
        value: String,
        line: String,
    },
}

/// One parsed protocol line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    line: String,
    kind: String,
    words: Vec<String>,
    values: BTreeMap<String, String>,
}

impl Facts {
    /// Split `line` into its kind, plain words and `key=value` facts. A line
    /// of only spaces gives an empty kind.
    pub fn parse(line: &str) -> Facts {
        let mut parts = line.split_whitespace();
        let kind = parts.next().unwrap_or_default().to_owned();
        let mut words = Vec::new();
        let mut values = BTreeMap::new();
        for part in parts {
            match part.split_once('=') {
                Some((key, value)) if !key.is_empty() => {
                    values.insert(key.to_owned(), value.to_owned());
                }
                _ => words.push(part.to_owned()),
            }
        }
        Facts {
            line: line.to_owned(),
            kind,
            words,
            values,
        }
    }

    /// The whole line as printed.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// The first word: `READY`, `PASS`, `FAIL`, `TICK`, ...
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The words after the kind that are not `key=value`, in order.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// The text after the first `skip` words (for `FAIL counter <reason>`,
    /// `rest(2)` is the reason).
    pub fn rest(&self, skip: usize) -> &str {
        let mut rest = self.line.trim_start();
        for _ in 0..skip {
            rest = match rest.find(char::is_whitespace) {
                Some(end) => rest[end..].trim_start(),
                None => "",
            };
        }
        rest
    }

    /// The value of `key`, if the line has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The value of `key`, or an error naming the key and the line.
    pub fn require(&self, key: &str) -> Result<&str, FactsError> {
        self.get(key).ok_or_else(|| FactsError::Missing {
            key: key.to_owned(),
            line: self.line.clone(),
        })
    }

    /// The value of `key` as a number: decimal, or hexadecimal with `0x`
    /// (as C's `%p` and `0x%lx` print).
    pub fn number(&self, key: &str) -> Result<u64, FactsError> {
        let value = self.require(key)?;
        let parsed = match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => value.parse(),
        };
        parsed.map_err(|_| FactsError::NotANumber {
            key: key.to_owned(),
            value: value.to_owned(),
            line: self.line.clone(),
        })
    }

    /// The `pid=` fact.
    pub fn pid(&self) -> Result<i32, FactsError> {
        let pid = self.number("pid")?;
        i32::try_from(pid).map_err(|_| FactsError::NotANumber {
            key: "pid".to_owned(),
            value: pid.to_string(),
            line: self.line.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kind_words_and_values() {
        let facts = Facts::parse("PASS counter pid=42 heap_sum=0x1f tick=7");
        assert_eq!(facts.kind(), "PASS");
        assert_eq!(facts.words(), ["counter"]);
        assert_eq!(facts.pid(), Ok(42));
        assert_eq!(facts.number("heap_sum"), Ok(0x1f));
        assert_eq!(facts.number("tick"), Ok(7));
        assert!(matches!(
            facts.number("absent"),
            Err(FactsError::Missing { .. })
        ));
    }

    #[test]
    fn rest_gives_the_fail_reason() {
        let facts = Facts::parse("FAIL counter heap word at offset 0x10: x=1");
        assert_eq!(facts.rest(2), "heap word at offset 0x10: x=1");
        assert_eq!(facts.rest(9), "");
    }

    #[test]
    fn rejects_non_numbers() {
        let facts = Facts::parse("READY file=/tmp/x addr=0xzz");
        assert!(matches!(
            facts.number("file"),
            Err(FactsError::NotANumber { .. })
        ));
        assert!(matches!(
            facts.number("addr"),
            Err(FactsError::NotANumber { .. })
        ));
        assert_eq!(facts.get("file"), Some("/tmp/x"));
    }
}
