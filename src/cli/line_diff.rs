//! A line diff for the terminal (longest common subsequence): the policy CLI shows what a
//! change does to a policy's text, the schema and the entities line by line, not as two
//! whole texts.

/// The lines of `from` and `to`, each marked ` ` (kept), `-` (removed) or `+` (added).
pub fn line_diff<'a>(from: &'a str, to: &'a str) -> Vec<(char, &'a str)> {
    let a: Vec<&str> = from.lines().collect();
    let b: Vec<&str> = to.lines().collect();
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..]. Bundles' files are
    // small (hundreds of lines), so the quadratic table is cheap.
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            out.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if lcs[i + 1][j] >= lcs[i][j + 1] {
            out.push(('-', a[i]));
            i += 1;
        } else {
            out.push(('+', b[j]));
            j += 1;
        }
    }
    out.extend(a[i..].iter().map(|l| ('-', *l)));
    out.extend(b[j..].iter().map(|l| ('+', *l)));
    out
}

/// Prints the changed lines of a diff with `context` kept lines around each change.
pub fn print(diff: &[(char, &str)], indent: &str, context: usize) {
    let near_change = |k: usize| {
        let lo = k.saturating_sub(context);
        let hi = (k + context + 1).min(diff.len());
        diff[lo..hi].iter().any(|(m, _)| *m != ' ')
    };
    let mut skipped = false;
    for (k, (mark, line)) in diff.iter().enumerate() {
        if *mark != ' ' || near_change(k) {
            if skipped {
                println!("{indent}  …");
                skipped = false;
            }
            println!("{indent}{mark} {line}");
        } else {
            skipped = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_changed_lines_are_marked() {
        let d = line_diff("a\nb\nc\nd", "a\nB\nc\nd\ne");
        assert_eq!(
            d,
            [
                (' ', "a"),
                ('-', "b"),
                ('+', "B"),
                (' ', "c"),
                (' ', "d"),
                ('+', "e")
            ]
        );
        assert!(line_diff("x", "x").iter().all(|(m, _)| *m == ' '));
    }
}
