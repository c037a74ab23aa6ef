//! `--assert FILE.sql`: queries that must each return true on the restored copy.
//!
//! The file holds SQL statements ended by `;`. Each must return one row with one boolean
//! column, and that value must be true. A `-- comment` line right before a statement names it
//! in the report. Statements run in database `postgres` unless a psql-style `\connect DB`
//! (or `\c DB`) line switches database for the statements after it. Semicolons inside quotes,
//! dollar quotes and comments do not end a statement.

use std::path::Path;

use super::VerifyError;

#[derive(Debug, Clone, PartialEq)]
pub struct Assertion {
    pub name: String,
    pub location: String,
    pub database: String,
    pub sql: String,
}

pub fn load(path: &Path) -> Result<Vec<Assertion>, VerifyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| VerifyError::AssertFile { path: path.display().to_string(), detail: e.to_string() })?;
    let v = parse(&text, &path.display().to_string());
    if v.is_empty() {
        return Err(VerifyError::AssertFile { path: path.display().to_string(), detail: "holds no statement".into() });
    }
    Ok(v)
}

pub fn parse(text: &str, file: &str) -> Vec<Assertion> {
    let mut out = Vec::new();
    let mut db = "postgres".to_string();
    let mut cur = String::new();
    let mut cur_line = 0usize;
    let mut last_comment: Option<String> = None;
    let mut name_for_cur: Option<String> = None;
    // Lexer state carried across lines.
    let mut in_quote: Option<char> = None;
    let mut dollar: Option<String> = None;
    let mut block_comment = 0usize;
    for (lineno, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        let idle = cur.trim().is_empty() && in_quote.is_none() && dollar.is_none() && block_comment == 0;
        if idle {
            if let Some(rest) = trimmed.strip_prefix("\\connect").or_else(|| trimmed.strip_prefix("\\c ")) {
                let name = rest.trim().trim_matches('"').to_string();
                if !name.is_empty() {
                    db = name;
                }
                last_comment = None;
                continue;
            }
            if let Some(c) = trimmed.strip_prefix("--") {
                last_comment = Some(c.trim().to_string());
                continue;
            }
            if trimmed.is_empty() {
                last_comment = None;
                continue;
            }
        }
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if block_comment > 0 {
                if c == '*' && chars.get(i + 1) == Some(&'/') {
                    block_comment -= 1;
                    cur.push_str("*/");
                    i += 2;
                    continue;
                }
                if c == '/' && chars.get(i + 1) == Some(&'*') {
                    block_comment += 1;
                    cur.push_str("/*");
                    i += 2;
                    continue;
                }
                cur.push(c);
                i += 1;
                continue;
            }
            if let Some(tag) = &dollar {
                let t: Vec<char> = tag.chars().collect();
                if chars[i..].starts_with(&t) {
                    cur.push_str(tag);
                    i += t.len();
                    dollar = None;
                    continue;
                }
                cur.push(c);
                i += 1;
                continue;
            }
            if let Some(q) = in_quote {
                cur.push(c);
                if c == q {
                    if chars.get(i + 1) == Some(&q) {
                        cur.push(q);
                        i += 2;
                        continue;
                    }
                    in_quote = None;
                }
                i += 1;
                continue;
            }
            match c {
                '\'' | '"' => {
                    in_quote = Some(c);
                    cur.push(c);
                }
                '-' if chars.get(i + 1) == Some(&'-') => break,
                '/' if chars.get(i + 1) == Some(&'*') => {
                    block_comment = 1;
                    cur.push_str("/*");
                    i += 2;
                    continue;
                }
                '$' => {
                    // $tag$ … $tag$ (a tag is empty or an identifier).
                    let rest: String = chars[i + 1..].iter().collect();
                    if let Some(end) = rest.find('$') {
                        let tag = &rest[..end];
                        if tag.chars().all(|ch| ch.is_alphanumeric() || ch == '_')
                            && !tag.starts_with(|ch: char| ch.is_ascii_digit())
                        {
                            let full = format!("${tag}$");
                            cur.push_str(&full);
                            i += full.chars().count();
                            dollar = Some(full);
                            continue;
                        }
                    }
                    cur.push(c);
                }
                ';' => {
                    let sql = cur.trim().to_string();
                    if !sql.is_empty() {
                        let name = name_for_cur.take().unwrap_or_else(|| short(&sql));
                        out.push(Assertion {
                            name,
                            location: format!("{file}:{}", cur_line + 1),
                            database: db.clone(),
                            sql,
                        });
                    }
                    cur.clear();
                    i += 1;
                    continue;
                }
                _ => {
                    if cur.trim().is_empty() && !c.is_whitespace() {
                        cur_line = lineno;
                        name_for_cur = last_comment.take();
                    }
                    cur.push(c);
                }
            }
            i += 1;
        }
        cur.push('\n');
    }
    let sql = cur.trim().to_string();
    if !sql.is_empty() {
        let name = name_for_cur.take().unwrap_or_else(|| short(&sql));
        out.push(Assertion { name, location: format!("{file}:{}", cur_line + 1), database: db, sql });
    }
    out
}

fn short(sql: &str) -> String {
    let one: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 80 {
        format!("{}…", one.chars().take(79).collect::<String>())
    } else {
        one
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_names_and_databases() {
        let text = "-- rows exist\nSELECT count(*) > 0 FROM t;\n\n\\connect app\nSELECT 'a;b' <> $$x;y$$ -- c;\n  AND true;\n/* block; */ SELECT true;\nSELECT false";
        let v = parse(text, "a.sql");
        assert_eq!(v.len(), 4, "{v:#?}");
        assert_eq!(v[0].name, "rows exist");
        assert_eq!(v[0].database, "postgres");
        assert_eq!(v[0].location, "a.sql:2");
        assert_eq!(v[1].database, "app");
        assert!(v[1].sql.contains("'a;b' <> $$x;y$$"), "{}", v[1].sql);
        assert!(v[1].sql.ends_with("AND true"), "{}", v[1].sql);
        assert_eq!(v[3].sql, "SELECT false");
        assert_eq!(v[3].database, "app");
    }
}
