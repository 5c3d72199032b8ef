//! Typed access to the parsed TOML document. Every value keeps the byte span it was read from;
//! a value of the wrong kind is recorded as an error against its line and read as absent, so
//! validation always runs to the end and reports everything at once.

use super::ConfigError;
use super::values;
use crate::config::Rate;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub type Span = Range<usize>;

/// A value and where it was written.
#[derive(Debug, Clone)]
pub struct At<T> {
    pub value: T,
    pub span: Span,
}

/// The errors found so far, each with its line.
pub struct Report {
    /// Byte offset where each line starts; line `n` (1-based) starts at `line_starts[n - 1]`.
    line_starts: Vec<usize>,
    errors: Vec<ConfigError>,
    /// Not wrong, but soon to be (a certificate about to expire): shown, not refused.
    warnings: Vec<ConfigError>,
}

impl Report {
    pub fn new(text: &str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Report {
            line_starts,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn line(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset)
    }

    pub fn error(&mut self, span: &Span, message: impl Into<String>) {
        let line = Some(self.line(span.start));
        self.errors.push(ConfigError {
            line,
            message: message.into(),
        });
    }

    pub fn warning(&mut self, span: &Span, message: impl Into<String>) {
        let line = Some(self.line(span.start));
        self.warnings.push(ConfigError {
            line,
            message: message.into(),
        });
    }

    /// In file order.
    pub fn take_warnings(&mut self) -> Vec<ConfigError> {
        let mut warnings = std::mem::take(&mut self.warnings);
        warnings.sort_by_key(|e| (e.line.is_none(), e.line.unwrap_or(0)));
        warnings
    }

    /// For what is missing from the whole file, and so has no line.
    pub fn error_unlined(&mut self, message: impl Into<String>) {
        self.errors.push(ConfigError {
            line: None,
            message: message.into(),
        });
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// In file order (tables are not read in file order), errors without a line last.
    pub fn into_errors(mut self) -> Vec<ConfigError> {
        self.errors
            .sort_by_key(|e| (e.line.is_none(), e.line.unwrap_or(0)));
        self.errors
    }

    pub fn string<'t>(&mut self, section: &Section<'t, '_>, key: &str) -> Option<At<&'t str>> {
        let value = section.get(key)?;
        match value.get_ref() {
            DeValue::String(text) => Some(At {
                value: text.as_ref(),
                span: value.span(),
            }),
            other => {
                self.wrong_type(section, key, value, "a string", other);
                None
            }
        }
    }

    /// A string that must be present and not blank.
    pub fn required_string<'t>(
        &mut self,
        section: &Section<'t, '_>,
        key: &str,
    ) -> Option<At<&'t str>> {
        if !section.has(key) {
            self.error(
                &section.span,
                format!("{} needs `{key}`", section.header_or_top()),
            );
            return None;
        }
        let at = self.string(section, key)?;
        if at.value.trim().is_empty() {
            self.error(&at.span, format!("`{}` is empty", section.name(key)));
            return None;
        }
        Some(at)
    }

    pub fn integer(&mut self, section: &Section<'_, '_>, key: &str) -> Option<At<i64>> {
        let value = section.get(key)?;
        match value.get_ref() {
            DeValue::Integer(integer) => {
                match i64::from_str_radix(integer.as_str(), integer.radix()) {
                    Ok(n) => Some(At {
                        value: n,
                        span: value.span(),
                    }),
                    Err(_) => {
                        self.error(
                            &value.span(),
                            format!("`{}` is too large", section.name(key)),
                        );
                        None
                    }
                }
            }
            other => {
                self.wrong_type(section, key, value, "an integer", other);
                None
            }
        }
    }

    pub fn boolean(&mut self, section: &Section<'_, '_>, key: &str) -> Option<At<bool>> {
        let value = section.get(key)?;
        match value.get_ref() {
            DeValue::Boolean(b) => Some(At {
                value: *b,
                span: value.span(),
            }),
            other => {
                self.wrong_type(section, key, value, "true or false", other);
                None
            }
        }
    }

    /// An array of strings; elements of another kind are reported and skipped.
    pub fn strings<'t>(
        &mut self,
        section: &Section<'t, '_>,
        key: &str,
    ) -> Option<At<Vec<At<&'t str>>>> {
        let value = section.get(key)?;
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(section, key, value, "an array of strings", value.get_ref());
            return None;
        };
        let mut strings = Vec::new();
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(text) => strings.push(At {
                    value: text.as_ref(),
                    span: item.span(),
                }),
                other => self.error(
                    &item.span(),
                    format!(
                        "`{}` must contain only strings, found {}",
                        section.name(key),
                        other.type_str()
                    ),
                ),
            }
        }
        Some(At {
            value: strings,
            span: value.span(),
        })
    }

    /// A sub-table such as `[route.auth]` (or `auth = { ... }`).
    pub fn table<'t, 'i>(
        &mut self,
        section: &Section<'t, 'i>,
        key: &str,
        header: &'static str,
    ) -> Option<Section<'t, 'i>> {
        let value = section.get(key)?;
        match value.get_ref() {
            DeValue::Table(table) => Some(section.child(key, header, table, value.span())),
            other => {
                self.wrong_type(section, key, value, &format!("a table, {header}"), other);
                None
            }
        }
    }

    /// An array of tables such as `[[listener]]`. A single `[listener]` is reported and then read
    /// as a list of one, so that its contents are checked too. `None` when absent or unusable.
    pub fn tables<'t, 'i>(
        &mut self,
        section: &Section<'t, 'i>,
        key: &str,
        header: &'static str,
    ) -> Option<At<Vec<Section<'t, 'i>>>> {
        let value = section.get(key)?;
        let sections = match value.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .filter_map(|item| match item.get_ref() {
                    DeValue::Table(table) => Some(section.child(key, header, table, item.span())),
                    other => {
                        self.error(
                            &item.span(),
                            format!(
                                "each entry of `{}` must be a table ({header}), found {}",
                                section.name(key),
                                other.type_str()
                            ),
                        );
                        None
                    }
                })
                .collect(),
            DeValue::Table(table) => {
                self.error(
                    &value.span(),
                    format!("write {header} with double brackets: there may be several"),
                );
                vec![section.child(key, header, table, value.span())]
            }
            other => {
                self.wrong_type(section, key, value, &format!("tables, {header}"), other);
                return None;
            }
        };
        Some(At {
            value: sections,
            span: value.span(),
        })
    }

    /// A count that must be at least 1.
    pub fn count(&mut self, section: &Section<'_, '_>, key: &str, default: usize) -> usize {
        match self.integer(section, key) {
            None => default,
            Some(at) if at.value < 1 => {
                self.error(
                    &at.span,
                    format!("`{}` must be at least 1", section.name(key)),
                );
                default
            }
            Some(at) => usize::try_from(at.value).unwrap_or(usize::MAX),
        }
    }

    /// A humantime duration string, greater than zero.
    pub fn duration(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
        default: Duration,
    ) -> Duration {
        self.optional_duration(section, key)
            .map_or(default, |at| at.value)
    }

    /// [`Report::duration`] without a default: `None` when absent or unusable.
    pub fn optional_duration(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
    ) -> Option<At<Duration>> {
        let value = section.get(key)?;
        let DeValue::String(text) = value.get_ref() else {
            self.wrong_type(
                section,
                key,
                value,
                "a duration such as \"30s\" or \"5m\"",
                value.get_ref(),
            );
            return None;
        };
        let duration = self.positive_duration(section, key, text, &value.span())?;
        Some(At {
            value: duration,
            span: value.span(),
        })
    }

    /// A non-empty array of humantime durations, each greater than zero (`retry = ["15m", "30m"]`).
    /// `None` when absent or unusable (the problem is reported).
    pub fn durations(&mut self, section: &Section<'_, '_>, key: &str) -> Option<At<Vec<Duration>>> {
        let value = section.get(key)?;
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(
                section,
                key,
                value,
                "an array of durations such as [\"15m\", \"30m\"]",
                value.get_ref(),
            );
            return None;
        };
        if items.is_empty() {
            self.error(
                &value.span(),
                format!(
                    "`{}` is empty: give at least one duration",
                    section.name(key)
                ),
            );
            return None;
        }
        let mut durations = Vec::new();
        let mut usable = true;
        for item in items.iter() {
            let DeValue::String(text) = item.get_ref() else {
                self.error(
                    &item.span(),
                    format!(
                        "`{}` must contain only durations such as \"15m\", found {}",
                        section.name(key),
                        item.get_ref().type_str()
                    ),
                );
                usable = false;
                continue;
            };
            match self.positive_duration(section, key, text, &item.span()) {
                Some(duration) => durations.push(duration),
                None => usable = false,
            }
        }
        usable.then(|| At {
            value: durations,
            span: value.span(),
        })
    }

    /// A duration greater than zero, or `"never"` (`Some(None)`). `None` when absent or unusable.
    pub fn duration_or_never(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
    ) -> Option<At<Option<Duration>>> {
        let value = section.get(key)?;
        let DeValue::String(text) = value.get_ref() else {
            self.wrong_type(
                section,
                key,
                value,
                "a duration such as \"12h\", or \"never\"",
                value.get_ref(),
            );
            return None;
        };
        let duration = if text.trim().eq_ignore_ascii_case("never") {
            None
        } else {
            Some(self.positive_duration(section, key, text, &value.span())?)
        };
        Some(At {
            value: duration,
            span: value.span(),
        })
    }

    fn positive_duration(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
        text: &str,
        span: &Span,
    ) -> Option<Duration> {
        match values::parse_duration(text) {
            Ok(duration) if duration.is_zero() => {
                self.error(
                    span,
                    format!("`{}` must be longer than zero", section.name(key)),
                );
                None
            }
            Ok(duration) => Some(duration),
            Err(message) => {
                self.error(span, format!("`{}`: {message}", section.name(key)));
                None
            }
        }
    }

    /// A rate such as `"30/1m"`, or `"unlimited"` (`Some(None)`). `None` when absent or unusable.
    pub fn rate(&mut self, section: &Section<'_, '_>, key: &str) -> Option<At<Option<Rate>>> {
        let value = section.get(key)?;
        let DeValue::String(text) = value.get_ref() else {
            self.wrong_type(
                section,
                key,
                value,
                "a rate such as \"30/1m\", or \"unlimited\"",
                value.get_ref(),
            );
            return None;
        };
        match values::parse_rate(text) {
            Ok(rate) => Some(At {
                value: rate,
                span: value.span(),
            }),
            Err(message) => {
                self.error(&value.span(), format!("`{}`: {message}", section.name(key)));
                None
            }
        }
    }

    /// A size in bytes: an integer, or a string with a unit. Greater than zero.
    pub fn size(&mut self, section: &Section<'_, '_>, key: &str, default: u64) -> u64 {
        self.size_checked(section, key, default, false)
    }

    /// A size in bytes where zero is meaningful (e.g. "no check").
    pub fn size_or_zero(&mut self, section: &Section<'_, '_>, key: &str, default: u64) -> u64 {
        self.size_checked(section, key, default, true)
    }

    fn size_checked(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
        default: u64,
        zero_allowed: bool,
    ) -> u64 {
        let Some(value) = section.get(key) else {
            return default;
        };
        let bytes = match value.get_ref() {
            DeValue::String(text) => match values::parse_size(text) {
                Ok(bytes) => bytes,
                Err(message) => {
                    self.error(&value.span(), format!("`{}`: {message}", section.name(key)));
                    return default;
                }
            },
            DeValue::Integer(_) => match self.integer(section, key) {
                // For a size that must be positive, a negative number reads as zero: the same
                // mistake, the same message.
                Some(at) if at.value < 0 && zero_allowed => {
                    self.error(
                        &value.span(),
                        format!("`{}` must not be negative", section.name(key)),
                    );
                    return default;
                }
                Some(at) => u64::try_from(at.value).unwrap_or(0),
                None => return default,
            },
            other => {
                self.wrong_type(section, key, value, "a size such as \"35MiB\"", other);
                return default;
            }
        };
        if bytes == 0 && !zero_allowed {
            self.error(
                &value.span(),
                format!("`{}` must be greater than zero", section.name(key)),
            );
            return default;
        }
        bytes
    }

    fn wrong_type(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
        value: &Spanned<DeValue<'_>>,
        expected: &str,
        found: &DeValue<'_>,
    ) {
        self.error(
            &value.span(),
            format!(
                "`{}` must be {expected}, found {}",
                section.name(key),
                found.type_str()
            ),
        );
    }
}

/// One table of the document, named for messages.
pub struct Section<'t, 'i> {
    /// Dotted path used when naming a key: "" (top level), "limits", "route.auth".
    path: String,
    /// How the table is written in the file: "[limits]", "[[route]]"; "" for the top level.
    pub header: &'static str,
    table: &'t DeTable<'i>,
    /// The table's header line (or its inline `{ ... }`).
    pub span: Span,
}

impl<'t, 'i> Section<'t, 'i> {
    pub fn root(table: &'t DeTable<'i>) -> Self {
        Section {
            path: String::new(),
            header: "",
            table,
            span: 0..0,
        }
    }

    fn child(&self, key: &str, header: &'static str, table: &'t DeTable<'i>, span: Span) -> Self {
        Section {
            path: self.name(key),
            header,
            table,
            span,
        }
    }

    pub fn get(&self, key: &str) -> Option<&'t Spanned<DeValue<'i>>> {
        self.table.get(key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// Where `key` itself is written.
    pub fn key_span(&self, key: &str) -> Option<Span> {
        self.table.get_key_value(key).map(|(k, _)| k.span())
    }

    /// Every key of the table with its span.
    pub fn keys(&self) -> impl Iterator<Item = (&'t str, Span)> + use<'t, 'i> {
        self.table
            .iter()
            .map(|(k, _)| (k.get_ref().as_ref(), k.span()))
    }

    /// `limits.max_recipients`, or `hostname` at the top level.
    pub fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// "in [limits]", or "at the top level".
    pub fn place(&self) -> String {
        if self.header.is_empty() {
            "at the top level".to_string()
        } else {
            format!("in {}", self.header)
        }
    }

    fn header_or_top(&self) -> &'static str {
        if self.header.is_empty() {
            "the file"
        } else {
            self.header
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_based_and_count_crlf_files_too() {
        let report = Report::new("a = 1\r\nb = 2\n\nc = 3");
        assert_eq!(report.line(0), 1);
        assert_eq!(report.line(6), 1);
        assert_eq!(report.line(7), 2);
        assert_eq!(report.line(12), 2);
        assert_eq!(report.line(13), 3);
        assert_eq!(report.line(14), 4);
    }
}
