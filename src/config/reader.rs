//! Reading typed values out of a [`Source`], collecting a problem for each bad one.

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::{Problem, Source};

/// Collects values and problems while reading a [`Source`].
pub(super) struct Reader<'a> {
    pub(super) source: &'a Source,
    pub(super) problems: Vec<Problem>,
}

impl<'a> Reader<'a> {
    pub(super) fn required(&mut self, key: &str) -> Option<String> {
        match self.source.get(key) {
            None => {
                self.problems
                    .push(Problem(format!("Required environment variable '{key}' is not set.")));
                None
            }
            Some(value) if value.trim().is_empty() => {
                self.problems
                    .push(Problem(format!("Required environment variable '{key}' is empty.")));
                None
            }
            Some(value) => Some(value.to_string()),
        }
    }

    pub(super) fn optional(&self, key: &str) -> Option<&'a str> {
        self.source.get(key).filter(|v| !v.trim().is_empty())
    }

    pub(super) fn number<T>(&mut self, key: &str, default: T, range: std::ops::RangeInclusive<T>) -> T
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    {
        let Some(text) = self.optional(key) else {
            return default;
        };
        match text.trim().parse::<T>() {
            Ok(value) if range.contains(&value) => value,
            _ => {
                self.problems.push(Problem(format!(
                    "Environment variable '{key}' must be a whole number from {} to {}, got '{text}'.",
                    range.start(),
                    range.end()
                )));
                default
            }
        }
    }

    pub(super) fn millis(&mut self, key: &str, default: u64, range: std::ops::RangeInclusive<u64>) -> Duration {
        Duration::from_millis(self.number(key, default, range))
    }

    pub(super) fn boolean(&mut self, key: &str, default: bool) -> bool {
        match self.optional(key).map(|v| v.trim().to_ascii_lowercase()) {
            None => default,
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => true,
            Some(v) if matches!(v.as_str(), "false" | "0" | "no") => false,
            Some(v) => {
                self.problems.push(Problem(format!(
                    "Environment variable '{key}' must be true or false, got '{v}'."
                )));
                default
            }
        }
    }

    /// A key sent as `Authorization: Bearer <key>`: printable ASCII without spaces.
    pub(super) fn header_safe(&mut self, key: &str, value: String) -> Option<SecretString> {
        if value.bytes().all(|b| b.is_ascii_graphic()) {
            Some(SecretString::from(value))
        } else {
            self.problems.push(Problem(format!(
                "Environment variable '{key}' must be printable ASCII without spaces (it is sent in an HTTP header)."
            )));
            None
        }
    }

    /// A dependency's base URL: as [`Reader::http_url`], without credentials (the
    /// payment gateway's key has a variable of its own, and no other is sent).
    pub(super) fn dependency_url(&mut self, key: &str, text: Option<String>) -> Option<Url> {
        let url = self.http_url(key, text)?;
        if !url.username().is_empty() || url.password().is_some() {
            self.problems.push(Problem(format!(
                "Environment variable '{key}' must not carry credentials (user:password@)."
            )));
            return None;
        }
        Some(url)
    }

    pub(super) fn http_url(&mut self, key: &str, text: Option<String>) -> Option<Url> {
        let text = text?;
        match Url::parse(text.trim()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
            Ok(_) => {
                self.problems.push(Problem(format!(
                    "Environment variable '{key}' must be an http:// or https:// URL with a host."
                )));
                None
            }
            Err(e) => {
                self.problems.push(Problem(format!(
                    "Environment variable '{key}' is not a valid URL ({e})."
                )));
                None
            }
        }
    }
}
