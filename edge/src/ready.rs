//! The `ready` line: `PROGRAM ready key=value key=value ...` on stdout, printed once when a process
//! serves. Values never contain spaces. [`Ready`] prints it and parses it back.

use std::fmt;

/// A ready announcement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ready {
    /// The program, e.g. `ringbridge` or `ringbridge-control`.
    pub program: String,
    /// `key=value` fields in order.
    pub fields: Vec<(String, String)>,
}

impl Ready {
    /// An announcement for `program` with no fields yet.
    pub fn new(program: &str) -> Self {
        Self {
            program: program.into(),
            fields: Vec::new(),
        }
    }

    /// Adds a field (spaces in the value are replaced by `_` so the line stays parseable).
    pub fn field(mut self, key: &str, value: impl fmt::Display) -> Self {
        self.fields.push((
            key.into(),
            value.to_string().replace(char::is_whitespace, "_"),
        ));
        self
    }

    /// Adds a field when `value` is present.
    pub fn field_opt(self, key: &str, value: Option<impl fmt::Display>) -> Self {
        match value {
            Some(v) => self.field(key, v),
            None => self,
        }
    }

    /// Parses a line printed by [`Ready`]'s `Display`; `None` if it is not a ready line.
    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let program = words.next()?;
        if words.next()? != "ready" {
            return None;
        }
        let fields = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Self {
            program: program.into(),
            fields,
        })
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Display for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ready", self.program)?;
        for (k, v) in &self.fields {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_and_parses_back() {
        let r = Ready::new("ringbridge")
            .field("engine", "uring")
            .field("media", "127.0.0.1:10000")
            .field("note", "two words")
            .field_opt("metrics", None::<String>);
        let line = r.to_string();
        assert_eq!(
            line,
            "ringbridge ready engine=uring media=127.0.0.1:10000 note=two_words"
        );
        let p = Ready::parse(&line).unwrap();
        assert_eq!(p, r);
        assert_eq!(p.get("media"), Some("127.0.0.1:10000"));
        assert_eq!(p.get("metrics"), None);
        assert_eq!(Ready::parse("ringbridge starting"), None);
        assert_eq!(Ready::parse(""), None);
    }
}
