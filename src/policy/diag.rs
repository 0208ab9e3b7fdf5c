//! Load diagnostics: what is wrong, in which file, at which line, with the offending line quoted.
//!
//! Cedar reports errors as `miette` diagnostics whose labels are byte offsets into the text that was
//! parsed. Each policy file is parsed on its own, so an offset maps straight back to a line of its file.
//! (`Diagnostic` itself is a core type, in `error.rs`.)

use crate::error::Diagnostic;

impl Diagnostic {
    /// Builds a diagnostic from a Cedar error, locating its first label in `source`.
    pub fn from_miette(file: &str, source: Option<&str>, err: &dyn miette::Diagnostic) -> Self {
        let mut message = err.to_string();
        if let Some(help) = err.help() {
            message.push_str(&format!(" (help: {help})"));
        }
        let mut diag = Diagnostic::new(file, message);
        let offset = err.labels().and_then(|mut labels| labels.next()).map(|l| l.offset());
        if let (Some(offset), Some(source)) = (offset, source) {
            let (line, col, text) = locate(source, offset);
            diag.position = Some((line, col));
            diag.snippet = Some(text.to_string());
        }
        diag
    }
}

/// Line (1-based), column (1-based, in characters) and the text of the line holding byte `offset`.
fn locate(source: &str, offset: usize) -> (usize, usize, &str) {
    let offset = floor_char_boundary(source, offset.min(source.len()));
    let line_start = source[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = source[offset..].find('\n').map_or(source.len(), |i| offset + i);
    let line = source[..line_start].matches('\n').count() + 1;
    let col = source[line_start..offset].chars().count() + 1;
    (line, col, source[line_start..line_end].trim_end_matches('\r'))
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_line_and_column() {
        let src = "permit(\n  principal,\n  acton,\n  resource\n);";
        let offset = src.find("acton").unwrap();
        assert_eq!(locate(src, offset), (3, 3, "  acton,"));
        assert_eq!(locate(src, 0), (1, 1, "permit("));
        assert_eq!(locate(src, src.len()), (5, 3, ");"));
    }

    #[test]
    fn cedar_parse_error_points_at_the_bad_token() {
        let src = "permit(principal, action, resource)\nwhen { principal.name == };";
        let err = src.parse::<cedar_policy::PolicySet>().unwrap_err();
        let diag = Diagnostic::from_miette("a.cedar", Some(src), &err);
        let (line, _) = diag.position.unwrap();
        assert_eq!(line, 2, "{diag}");
        assert!(diag.one_line().starts_with("a.cedar:2:"), "{}", diag.one_line());
        assert!(diag.to_string().contains("when { principal.name == };"), "{diag}");
    }
}
