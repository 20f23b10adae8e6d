//! One error type for everything that can be wrong with a policy bundle, with its place in the
//! source: rendered with spans by the CLI (miette), and as JSON by the API.

use std::fmt;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, SourceCode, SourceSpan};
use serde::Serialize;

/// A problem in one file of a policy bundle.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyError {
    /// A stable identifier of the kind of problem, e.g. `policy::missing_id`.
    pub code: &'static str,
    pub file: String,
    /// 1-based, when the problem has a place in the file.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
    #[serde(skip)]
    span: Option<SourceSpan>,
    #[serde(skip)]
    label: Option<String>,
    #[serde(skip)]
    source_text: Arc<str>,
}

impl PolicyError {
    pub fn new(code: &'static str, file: &SourceFile, message: impl Into<String>) -> Self {
        Self {
            code,
            file: file.name.clone(),
            line: None,
            column: None,
            message: message.into(),
            hint: None,
            span: None,
            label: None,
            source_text: file.text.clone(),
        }
    }

    /// A file or directory that could not be read.
    pub fn io(code: &'static str, path: &std::path::Path, message: impl Into<String>) -> Self {
        Self::new(
            code,
            &SourceFile::new(path.display().to_string(), ""),
            message,
        )
    }

    /// Points the error at `len` bytes from `offset` in the file.
    pub fn at(mut self, offset: usize, len: usize, label: impl Into<String>) -> Self {
        let (line, column) = line_and_column(&self.source_text, offset);
        self.line = Some(line);
        self.column = Some(column);
        self.span = Some(SourceSpan::new(offset.into(), len));
        self.label = Some(label.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Wraps a diagnostic from Cedar whose labels point into `file`.
    pub fn from_cedar(code: &'static str, file: &SourceFile, err: &dyn Diagnostic) -> Self {
        let mut message = err.to_string();
        let mut cause = std::error::Error::source(err);
        while let Some(inner) = cause {
            message.push_str(": ");
            message.push_str(&inner.to_string());
            cause = inner.source();
        }
        let mut out = Self::new(code, file, message);
        if let Some(help) = err.help() {
            out = out.hint(help.to_string());
        }
        let first_label = err.labels().and_then(|mut labels| labels.next());
        if let Some(label) = first_label {
            let offset = label.offset().min(file.text.len());
            let len = label.len().min(file.text.len() - offset);
            let text = label.label().unwrap_or("here").to_string();
            out = out.at(offset, len, text);
        }
        out
    }

    /// `file:line:column`, or just the file.
    pub fn location(&self) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{}:{l}:{c}", self.file),
            _ => self.file.clone(),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)
    }
}

impl std::error::Error for PolicyError {}

impl Diagnostic for PolicyError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.hint
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.span.map(|_| self as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.span?;
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            self.label.clone(),
            span,
        ))))
    }
}

impl SourceCode for PolicyError {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let contents =
            (*self.source_text).read_span(span, context_lines_before, context_lines_after)?;
        // Same contents, with the file's name for the report's header.
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.file.clone(),
            contents.data(),
            *contents.span(),
            contents.line(),
            contents.column(),
            contents.line_count(),
        )))
    }
}

/// Every error found in a bundle: loading reports them all, not just the first.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
#[error("the policy bundle has {} error(s)", .errors.len())]
pub struct PolicyErrors {
    pub errors: Vec<PolicyError>,
}

impl Diagnostic for PolicyErrors {
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        Some(Box::new(self.errors.iter().map(|e| e as &dyn Diagnostic)))
    }
}

/// A named text: one file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub name: String,
    pub text: Arc<str>,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            text: text.into(),
        }
    }
}

pub(crate) fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_are_one_based() {
        let text = "ab\ncd\nef";
        assert_eq!(line_and_column(text, 0), (1, 1));
        assert_eq!(line_and_column(text, 4), (2, 2));
        assert_eq!(line_and_column(text, 6), (3, 1));
    }
}
