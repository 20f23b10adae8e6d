//! Bounds on the shape of policy and schema text, checked by a cheap scan before Cedar parses it.
//!
//! Cedar's parser, validator and evaluator recurse once per level of nesting and once per link
//! of a chained operator (`a + b + …`, `x.f.g…`). A few KB of nested parentheses overflow a
//! thread's stack, and a Rust stack overflow aborts the whole process: it cannot be caught. So a
//! draft is refused with a located error before it reaches Cedar. The bounds sit far above what a
//! readable policy uses and far below what overflows a 2 MiB stack in a debug build (measured:
//! 64 nested parentheses or 10,000 chained `+` abort it; 32 and 5,000 pass).

use super::error::{PolicyError, SourceFile};

/// Most levels of `(`, `[`, `{` and `if … then … else` inside one another.
pub const MAX_DEPTH: usize = 24;
/// Most chaining operators (`+`, `-`, `*`, `.`) in one policy or one schema declaration.
pub const MAX_CHAIN: usize = 2_000;

/// What the text is: a schema also nests with `Set<…>`, a policy with `if`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grammar {
    Policy,
    Schema,
}

/// The first place where `file` exceeds a bound, as an error naming the file and the position.
#[expect(clippy::result_large_err, reason = "cold path, errors are collected")]
pub fn check(file: &SourceFile, grammar: Grammar) -> Result<(), PolicyError> {
    let code = match grammar {
        Grammar::Policy => "policy::too_deep",
        Grammar::Schema => "schema::too_deep",
    };
    let bytes = file.text.as_bytes();
    // Per open bracket, the `if`s opened inside it: an `if`'s `else` runs to the end of the
    // bracket (or statement) it stands in, so that is where its level closes.
    let mut open: Vec<usize> = vec![0];
    let mut depth = 0usize;
    let mut chain = 0usize;
    let mut i = 0;
    let nesting = match grammar {
        Grammar::Policy => "brackets and `if` expressions",
        Grammar::Schema => "records and sets",
    };
    let too_deep = |at: usize| {
        PolicyError::new(
            code,
            file,
            format!("nesting deeper than {MAX_DEPTH} levels ({nesting})"),
        )
        .at(at, 1, "too deep")
        .hint("split the condition into several policies, or flatten it with && and ||")
    };
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'(' | b'[' | b'{' => {
                open.push(0);
                depth += 1;
            }
            b'<' if grammar == Grammar::Schema => {
                open.push(0);
                depth += 1;
            }
            b')' | b']' | b'}' => close(&mut open, &mut depth),
            b'>' if grammar == Grammar::Schema => close(&mut open, &mut depth),
            b';' if open.len() == 1 => {
                // A statement ends: its `if`s close, and the next one counts afresh.
                depth = 0;
                open[0] = 0;
                chain = 0;
            }
            b'+' | b'-' | b'*' | b'.' => {
                chain += 1;
                if chain > MAX_CHAIN {
                    return Err(PolicyError::new(
                        code,
                        file,
                        format!(
                            "more than {MAX_CHAIN} chained operators (`+`, `-`, `*`, `.`) in one statement"
                        ),
                    )
                    .at(i, 1, "too long")
                    .hint("split the statement into several smaller ones"));
                }
            }
            b'i' if grammar == Grammar::Policy
                && bytes.get(i + 1) == Some(&b'f')
                && !bytes.get(i + 2).is_some_and(|c| is_ident(*c))
                && !(i > 0 && is_ident(bytes[i - 1])) =>
            {
                if let Some(ifs) = open.last_mut() {
                    *ifs += 1;
                }
                depth += 1;
            }
            _ => {}
        }
        if depth > MAX_DEPTH {
            return Err(too_deep(i));
        }
        i += 1;
    }
    Ok(())
}

fn close(open: &mut Vec<usize>, depth: &mut usize) {
    // An unbalanced closer is Cedar's to report; the scan only must not underflow.
    if open.len() > 1 {
        let ifs = open.pop().unwrap_or(0);
        *depth = depth.saturating_sub(ifs + 1);
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[expect(clippy::result_large_err, reason = "a test helper")]
    fn policy(text: &str) -> Result<(), PolicyError> {
        check(&SourceFile::new("p.cedar", text), Grammar::Policy)
    }

    #[test]
    fn readable_nesting_passes_and_deep_nesting_is_located() {
        let ok = format!(
            "permit(principal, action, resource) when {{ {}true{} }};",
            "(".repeat(20),
            ")".repeat(20)
        );
        assert!(policy(&ok).is_ok());
        let deep = format!(
            "permit(principal, action, resource)\nwhen {{ {}true{} }};",
            "(".repeat(40),
            ")".repeat(40)
        );
        let e = policy(&deep).unwrap_err();
        assert_eq!(e.code, "policy::too_deep");
        assert_eq!((e.line, e.file.as_str()), (Some(2), "p.cedar"));
    }

    #[test]
    fn if_chains_count_as_levels_until_their_bracket_closes() {
        let chain = |n: usize| {
            format!(
                "permit(principal, action, resource) when {{ {}true{} }};",
                "if true then ".repeat(n),
                " else false".repeat(n)
            )
        };
        assert!(policy(&chain(20)).is_ok());
        assert!(policy(&chain(30)).is_err());
        // Twenty independent `if`s in a list are twenty levels that each close.
        let list: Vec<String> = (0..30).map(|_| "(if true then 1 else 2)".into()).collect();
        assert!(policy(&format!(
            "permit(principal, action, resource) when {{ [{}].isEmpty() }};",
            list.join(",")
        ))
        .is_ok());
        // `if` inside a word or a string is not a keyword.
        let words = format!(
            "permit(principal, action, resource) when {{ {} }};",
            vec!["context.iffy == \"if if\""; 100].join(" && ")
        );
        assert!(policy(&words).is_ok());
    }

    #[test]
    fn strings_and_comments_do_not_count_and_statements_start_afresh() {
        let text = format!(
            "// {}\npermit(principal, action, resource) when {{ \"{}\" == \"\\\"(\" }};",
            "(".repeat(100),
            "[".repeat(100)
        );
        assert!(policy(&text).is_ok());
        let one = format!(
            "permit(principal, action, resource) when {{ {} == 0 }};\n",
            vec!["1"; 1_500].join(" + ")
        );
        assert!(policy(&one.repeat(3)).is_ok());
        let long = format!(
            "permit(principal, action, resource) when {{ {} == 0 }};",
            vec!["1"; 2_200].join(" + ")
        );
        assert!(policy(&long).is_err());
    }

    #[test]
    fn schema_types_nest_with_braces_and_sets() {
        let schema = |n: usize| {
            SourceFile::new(
                "schema.cedarschema",
                format!(
                    "type Deep = {}Long{};",
                    "Set<{ a: ".repeat(n),
                    " }>".repeat(n)
                ),
            )
        };
        assert!(check(&schema(10), Grammar::Schema).is_ok());
        let e = check(&schema(20), Grammar::Schema).unwrap_err();
        assert_eq!(e.code, "schema::too_deep");
    }
}
