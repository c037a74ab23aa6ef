//! A strict reader of the Prometheus text exposition format (0.0.4), the oracle of the metrics
//! tests. Written here rather than taken from crates.io: `prometheus-parse` pulls regex (perf,
//! unicode) and a second itertools into the test build, and it accepts what node_exporter
//! rejects (samples without a TYPE, a family's samples split up, repeated series).

use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone)]
pub struct PromFamily {
    pub name: String,
    /// counter, gauge, histogram, summary or untyped.
    pub kind: String,
    pub help: Option<String>,
    pub samples: Vec<PromSample>,
}

/// Every family in `text`, in order; `Err` names the line number and what is wrong.
pub fn parse(text: &str) -> Result<Vec<PromFamily>, String> {
    let mut families: Vec<PromFamily> = Vec::new();
    let mut closed: HashSet<String> = HashSet::new();
    let mut series: HashSet<String> = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let fail = |what: &str| Err(format!("line {}: {what}: {line:?}", i + 1));
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next());
            if kw != "HELP" && kw != "TYPE" {
                continue;
            }
            if !metric_name(name) {
                return fail("bad metric name");
            }
            let fam = family(&mut families, &mut closed, name).map_err(|e| format!("line {}: {e}", i + 1))?;
            if kw == "HELP" {
                if fam.help.is_some() {
                    return fail("second HELP");
                }
                fam.help = Some(unescape(arg.unwrap_or(""), false).ok_or(format!("line {}: bad escape", i + 1))?);
            } else {
                let kind = arg.unwrap_or("");
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return fail("unknown type");
                }
                if !fam.kind.is_empty() {
                    return fail("second TYPE");
                }
                if !fam.samples.is_empty() {
                    return fail("TYPE after samples");
                }
                fam.kind = kind.to_string();
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = sample_head(line).ok_or(format!("line {}: bad sample: {line:?}", i + 1))?;
        let mut fields = rest.split(' ').filter(|f| !f.is_empty());
        let value = match fields.next() {
            Some("+Inf") => f64::INFINITY,
            Some("-Inf") => f64::NEG_INFINITY,
            Some("NaN") => f64::NAN,
            Some(v) => v.parse::<f64>().map_err(|_| format!("line {}: bad value {v:?}", i + 1))?,
            None => return fail("no value"),
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| format!("line {}: bad timestamp {ts:?}", i + 1))?;
        }
        if fields.next().is_some() {
            return fail("trailing fields");
        }
        if !series.insert(format!("{name}{labels:?}")) {
            return fail("repeated series");
        }
        let fam = family(&mut families, &mut closed, &name).map_err(|e| format!("line {}: {e}", i + 1))?;
        if fam.kind.is_empty() {
            return fail("sample before its TYPE");
        }
        if fam.kind == "counter" && (value.is_nan() || value < 0.0) {
            return fail("negative or NaN counter");
        }
        fam.samples.push(PromSample { labels, value });
    }
    Ok(families)
}

/// The family `name` continues the current one, or starts a new one that never appeared before.
fn family<'a>(
    families: &'a mut Vec<PromFamily>,
    closed: &mut HashSet<String>,
    name: &str,
) -> Result<&'a mut PromFamily, String> {
    let current = families.last().map(|f| f.name.clone());
    if current.as_deref() != Some(name) {
        if let Some(c) = current {
            closed.insert(c);
        }
        if closed.contains(name) {
            return Err(format!("family {name} is split (its lines must be together)"));
        }
        families.push(PromFamily { name: name.to_string(), kind: String::new(), help: None, samples: Vec::new() });
    }
    Ok(families.last_mut().expect("just pushed"))
}

fn metric_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn label_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// `name{labels}` and the rest of the line.
fn sample_head(line: &str) -> Option<(String, BTreeMap<String, String>, &str)> {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..end];
    if !metric_name(name) {
        return None;
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[end..];
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = r.find('=')?;
            let key = &r[..eq];
            if !label_name(key) {
                return None;
            }
            let v = r[eq + 1..].strip_prefix('"')?;
            // The closing quote: the first one not escaped.
            let mut close = None;
            let mut escaped = false;
            for (i, ch) in v.char_indices() {
                match (escaped, ch) {
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        close = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let close = close?;
            if labels.insert(key.to_string(), unescape(&v[..close], true)?).is_some() {
                return None;
            }
            r = &v[close + 1..];
            r = r.strip_prefix(',').unwrap_or(r);
        }
    }
    rest.strip_prefix(' ').map(|r| (name.to_string(), labels, r))
}

/// Label values may escape `\\`, `\"` and `\n`; HELP text only `\\` and `\n`.
fn unescape(s: &str, quotes: bool) -> Option<String> {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next()? {
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            '"' if quotes => out.push('"'),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn accepts_the_format_and_refuses_what_node_exporter_refuses() {
        let ok =
            "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"q\\\"u\",y=\"\"} 3\n# TYPE b gauge\nb +Inf\n";
        let f = parse(ok).unwrap();
        assert_eq!(f[0].samples[0].labels["x"], "q\"u");
        assert!(f[1].samples[0].value.is_infinite());
        for bad in [
            "a 1\n",
            "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na 2\n",
            "# TYPE a gauge\na 1\na 1\n",
            "# TYPE a counter\na -1\n",
            "# TYPE a gauge\na{x=\"1\" 1\n",
            "# TYPE a gauge\na one\n",
            "# TYPE a gauge\n# TYPE a counter\n",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
