//! Where configuration comes from: the environment, over a TOML file named by
//! `CHECKOUT_CONFIG` (keys are the variables in lower case; the environment wins),
//! and the problems found reading them.

use std::collections::HashMap;
use std::fmt;

use super::variables::{VARIABLES, is_known, unknown_variables};

/// The variable that names an optional TOML configuration file.
pub const CONFIG_FILE_VAR: &str = "CHECKOUT_CONFIG";

/// One configuration problem; its text follows `STARTUP_FAILURE: `.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem(pub String);

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Raw configuration values by variable name.
#[derive(Clone, Debug, Default)]
pub struct Source {
    values: HashMap<String, String>,
}

impl Source {
    /// Reads the process environment, over the file named by `CHECKOUT_CONFIG` if
    /// any; a variable that looks meant for the service but is not one it reads
    /// is a problem.
    pub fn from_env() -> (Source, Vec<Problem>) {
        let env = |key: &str| std::env::var(key).ok();
        let (source, mut problems) = Self::from_lookup(env);
        let names: Vec<String> = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .collect();
        problems.extend(unknown_variables(names.iter().map(String::as_str)));
        (source, problems)
    }

    /// Like [`Source::from_env`], but reads variables through `lookup` (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> (Source, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut values = HashMap::new();
        if let Some(path) = lookup(CONFIG_FILE_VAR).filter(|p| !p.is_empty()) {
            match read_config_file(&path) {
                Ok(file_values) => values.extend(file_values),
                Err(problem) => problems.push(problem),
            }
        }
        for variable in VARIABLES {
            if let Some(value) = lookup(variable.name) {
                values.insert(variable.name.to_string(), value);
            }
        }
        (Source { values }, problems)
    }

    /// A source holding exactly `pairs`.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Source {
        Source {
            values: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        }
    }

    /// Sets `key`, replacing any earlier value.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.values.insert(key.to_string(), value.into());
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}

fn read_config_file(path: &str) -> Result<HashMap<String, String>, Problem> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Problem(if e.kind() == std::io::ErrorKind::NotFound {
            format!("Configuration file '{path}' named by {CONFIG_FILE_VAR} does not exist.")
        } else {
            format!("Configuration file '{path}' named by {CONFIG_FILE_VAR} cannot be read: {e}.")
        })
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        Problem(format!(
            "Configuration file '{path}' named by {CONFIG_FILE_VAR} is not valid TOML: {}",
            e.message()
        ))
    })?;
    let mut values = HashMap::new();
    for (key, value) in table {
        let upper = key.to_ascii_uppercase();
        if !is_known(&upper) || key != key.to_ascii_lowercase() {
            return Err(Problem(format!(
                "Configuration file '{path}' sets unknown key '{key}' (keys are the variable names in lower case)."
            )));
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => {
                return Err(Problem(format!(
                    "Configuration file '{path}' sets '{key}' to a value that is not a string, integer or boolean."
                )));
            }
        };
        values.insert(upper, text);
    }
    Ok(values)
}
