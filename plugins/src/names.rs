//! Names that refer to something (a rule label in `overrides`, a route in `routes`): an
//! unknown one is a mistake that would otherwise change nothing, silently. It is refused
//! with the nearest valid names, so that `SQLi_QUERYARGS` points at `SQLi_QUERYARGUMENTS`.

/// Edit distance (insertions, deletions, substitutions), ignoring ASCII case.
pub fn distance(a: &str, b: &str) -> usize {
    let b: Vec<u8> = b.bytes().map(|c| c.to_ascii_lowercase()).collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().map(|c| c.to_ascii_lowercase()).enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// Up to three of `known` nearest to `name`, nearest first: those within a third of its
/// length in edits (two at least), that one holds the other, or that start with most of it.
pub fn nearest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let reach = (name.len() / 3).max(2);
    let lower = name.to_ascii_lowercase();
    let mut close: Vec<(usize, &str)> = known
        .into_iter()
        .filter_map(|k| {
            let d = distance(name, k);
            let k_lower = k.to_ascii_lowercase();
            let holds = lower.len() >= 4 && (k_lower.contains(&lower) || lower.contains(&k_lower));
            // A shortened name: most of it is the start of the known one.
            let common = lower
                .bytes()
                .zip(k_lower.bytes())
                .take_while(|(a, b)| a == b)
                .count();
            let shortened = common >= 4 && common * 3 >= lower.len() * 2;
            (d <= reach || holds || shortened).then_some((d, k))
        })
        .collect();
    close.sort();
    close.dedup();
    close.into_iter().take(3).map(|(_, k)| k).collect()
}

/// The message for an unknown `name` of `kind`: the nearest valid names, or else (when
/// there are few) all of them.
pub fn unknown<'a>(kind: &str, name: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    let known: Vec<&str> = known.into_iter().collect();
    let near = nearest(name, known.iter().copied());
    if !near.is_empty() {
        return format!("unknown {kind} {name:?}; did you mean {}?", near.join(", "));
    }
    if known.is_empty() {
        return format!("unknown {kind} {name:?}: there are none here");
    }
    if known.len() <= 12 {
        let mut all = known;
        all.sort_unstable();
        return format!("unknown {kind} {name:?}; known: {}", all.join(", "));
    }
    format!("unknown {kind} {name:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("litelm", "litellm"), 1);
        assert_eq!(distance("SQLi_QUERYARGS", "sqli_queryargs"), 0);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn typos_find_their_names() {
        let labels = [
            "SQLi_QUERYARGUMENTS",
            "SQLi_BODY",
            "CrossSiteScripting_QUERYARGUMENTS",
            "SizeRestrictions_BODY",
        ];
        assert_eq!(
            nearest("SQLi_QUERYARGS", labels),
            ["SQLi_QUERYARGUMENTS"],
            "a shortened name"
        );
        assert_eq!(nearest("SQLI_BODY", labels), ["SQLi_BODY"]);
        assert!(nearest("EC2MetaDataSSRF", labels).is_empty());
        let routes = ["litellm", "grafana", "llm"];
        assert_eq!(nearest("litelm", routes), ["litellm"]);
        assert_eq!(
            unknown("route", "litelm", routes),
            "unknown route \"litelm\"; did you mean litellm?"
        );
        assert_eq!(
            unknown("route", "prometheus", routes),
            "unknown route \"prometheus\"; known: grafana, litellm, llm"
        );
        assert_eq!(
            unknown("route", "x", []),
            "unknown route \"x\": there are none here"
        );
    }
}
