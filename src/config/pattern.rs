//! Table selection patterns, `schema.table` with `*` wildcards, as in DMS table mappings:
//! `public.*`, `sales.order_*`, `*.events`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `schema.table` pattern; `*` matches any run of characters (none included) within its part.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TablePattern {
    schema: String,
    table: String,
}

impl TablePattern {
    /// Every table of `schema`.
    pub fn any_in_schema(schema: &str) -> Self {
        TablePattern {
            schema: schema.to_string(),
            table: "*".to_string(),
        }
    }

    /// Parses `"schema.table"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once('.') {
            Some((schema, table))
                if !schema.is_empty() && !table.is_empty() && !table.contains('.') =>
            {
                Ok(TablePattern {
                    schema: schema.to_string(),
                    table: table.to_string(),
                })
            }
            _ => Err(format!(
                "table pattern {text:?} must be \"schema.table\" (use * as a wildcard: \"public.*\")"
            )),
        }
    }

    /// Whether the table `schema.table` matches.
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        glob(&self.schema, schema) && glob(&self.table, table)
    }
}

/// Matches `text` against `pattern` where `*` is any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // no `*` at all: the whole text must equal the pattern
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl fmt::Display for TablePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

impl fmt::Debug for TablePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl<'de> Deserialize<'de> for TablePattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TablePattern::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for TablePattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(text: &str) -> TablePattern {
        TablePattern::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn wildcards_match_like_dms_mappings() {
        assert!(p("public.*").matches("public", "orders"));
        assert!(!p("public.*").matches("sales", "orders"));
        assert!(p("*.orders").matches("sales", "orders"));
        assert!(p("sales.order_*").matches("sales", "order_items"));
        assert!(p("sales.order_*").matches("sales", "order_"));
        assert!(!p("sales.order_*").matches("sales", "orders"));
        assert!(p("s.a*b*c").matches("s", "abc"));
        assert!(p("s.a*b*c").matches("s", "a__b__c"));
        assert!(!p("s.a*b*c").matches("s", "a__c__b"));
        assert!(
            !p("s.ab*ba").matches("s", "aba"),
            "prefix and suffix must not overlap"
        );
        assert!(p("public.orders").matches("public", "orders"));
        assert!(!p("public.orders").matches("public", "orders2"));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in ["orders", ".orders", "public.", "a.b.c"] {
            assert!(TablePattern::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn a_name_matches_itself_and_a_star(schema in "[a-z_]{1,12}", table in "[a-z_0-9]{1,12}") {
            let exact = p(&format!("{schema}.{table}"));
            let whole_schema = p(&format!("{schema}.*"));
            let (head, tail) = table.split_at(table.len() / 2);
            let split = p(&format!("{schema}.{head}*{tail}"));
            prop_assert!(exact.matches(&schema, &table));
            prop_assert!(whole_schema.matches(&schema, &table));
            prop_assert!(p("*.*").matches(&schema, &table));
            prop_assert!(split.matches(&schema, &table));
        }
    }
}
