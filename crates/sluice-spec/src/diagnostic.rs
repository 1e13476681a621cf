//! Errors in a `sluice.yaml`, each pointing at `file:line:column` with the
//! offending line, a caret under the spot, and what was expected.

use std::fmt;

use serde_saphyr::Spanned;

/// One error at one place in the file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub help: Option<String>,
    /// The text of the line, for rendering the caret without the file at hand.
    source_line: String,
    width: usize,
}

impl Diagnostic {
    /// An error at a 1-based line and column; `len` characters get a caret (at least one).
    pub fn at(
        file: &str,
        text: &str,
        line: usize,
        column: usize,
        len: usize,
        message: &str,
        help: Option<String>,
    ) -> Self {
        let source_line = text
            .lines()
            .nth(line.saturating_sub(1))
            .unwrap_or("")
            .to_string();
        let room = source_line
            .chars()
            .count()
            .saturating_sub(column.saturating_sub(1));
        Diagnostic {
            file: file.to_string(),
            line,
            column,
            message: message.to_string(),
            help,
            source_line,
            width: len.clamp(1, room.max(1)),
        }
    }

    /// An error at the node a spanned value came from.
    pub fn spanned<T>(
        file: &str,
        text: &str,
        node: &Spanned<T>,
        message: &str,
        help: Option<String>,
    ) -> Self {
        let at = node.referenced;
        Self::at(
            file,
            text,
            at.line() as usize,
            at.column() as usize,
            at.span().len() as usize,
            message,
            help,
        )
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let number = self.line.to_string();
        let gutter = " ".repeat(number.len());
        writeln!(f, "error: {}", self.message)?;
        writeln!(f, "{gutter}--> {}:{}:{}", self.file, self.line, self.column)?;
        writeln!(f, "{gutter} |")?;
        writeln!(f, "{number} | {}", self.source_line)?;
        let pad: String = self
            .source_line
            .chars()
            .take(self.column.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        write!(f, "{gutter} | {pad}{}", "^".repeat(self.width))?;
        if let Some(help) = &self.help {
            write!(f, "\n{gutter} = help: {help}")?;
        }
        Ok(())
    }
}

/// Every error found in one file, in the order of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn one(diagnostic: Diagnostic) -> Self {
        Diagnostics(vec![diagnostic])
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_sits_under_the_column() {
        let text = "service: shop\npipeline:\n  jobs: 5\n";
        let d = Diagnostic::at(
            "sluice.yaml",
            text,
            3,
            9,
            1,
            "expected a mapping",
            Some("write `key: value` lines".into()),
        );
        assert_eq!(
            d.to_string(),
            "error: expected a mapping\n --> sluice.yaml:3:9\n  |\n3 |   jobs: 5\n  |         ^\n  = help: write `key: value` lines"
        );
    }

    #[test]
    fn caret_width_stays_on_the_line() {
        let d = Diagnostic::at("f", "ab\n", 1, 2, 40, "m", None);
        assert!(d.to_string().ends_with("|  ^"));
    }
}
