//! `LAKEWRITER__SECTION__KEY=value` environment overrides, applied to the parsed TOML before it
//! is typed, so they are checked exactly like the file (an unknown key is still an error).

use super::ENV_PREFIX;

/// One override: the variable it came from, the key path it sets, the raw value.
#[derive(Debug)]
pub(super) struct Override {
    pub variable: String,
    path: Vec<String>,
    raw: String,
}

/// The overrides among `env`, sorted by variable name so their order is stable.
pub(super) fn collect(env: impl IntoIterator<Item = (String, String)>) -> Vec<Override> {
    let mut overrides: Vec<Override> = env
        .into_iter()
        .filter_map(|(variable, raw)| {
            let rest = variable.strip_prefix(ENV_PREFIX)?;
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            Some(Override {
                variable,
                path,
                raw,
            })
        })
        .collect();
    overrides.sort_by(|a, b| a.variable.cmp(&b.variable));
    overrides
}

impl Override {
    /// Sets the value in `table`, creating the sections on its path.
    pub fn apply(&self, table: &mut toml::Table) -> Result<(), String> {
        let Some((key, sections)) = self.path.split_last() else {
            return Err(format!("{}: no key after the prefix", self.variable));
        };
        if self.path.iter().any(|s| s.is_empty()) {
            return Err(format!(
                "{}: empty segment: write LAKEWRITER__SECTION__KEY",
                self.variable
            ));
        }
        let mut current = table;
        for section in sections {
            let entry = current
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            current = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(format!(
                        "{}: `{section}` is a value in the file, not a section",
                        self.variable
                    ));
                }
            };
        }
        let value = self.typed_value(current.get(key));
        current.insert(key.clone(), value);
        Ok(())
    }

    /// The raw text as a TOML value: a string where the file has a string; otherwise a number,
    /// boolean or array when it reads as one (quote it, `'"123"'`, to force a string).
    fn typed_value(&self, existing: Option<&toml::Value>) -> toml::Value {
        if matches!(existing, Some(toml::Value::String(_))) {
            return toml::Value::String(self.raw.clone());
        }
        match toml::from_str::<toml::Table>(&format!("v = {}", self.raw)) {
            Ok(mut parsed) => match parsed.remove("v") {
                Some(
                    v @ (toml::Value::Integer(_)
                    | toml::Value::Float(_)
                    | toml::Value::Boolean(_)
                    | toml::Value::Array(_)
                    | toml::Value::String(_)),
                ) => v,
                _ => toml::Value::String(self.raw.clone()),
            },
            Err(_) => toml::Value::String(self.raw.clone()),
        }
    }
}
