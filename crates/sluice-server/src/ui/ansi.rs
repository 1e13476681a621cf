//! ANSI colour codes in log lines as HTML: SGR colours and bold become
//! classed spans, everything else is escaped text. (The browser does the
//! same for live lines in sluice.js.)

/// The text of one log line as safe HTML.
pub fn to_html(line: &str) -> String {
    let mut out = String::new();
    let mut open = false;
    let mut rest = line;
    while let Some(start) = rest.find('\u{1b}') {
        escape_into(&mut out, &rest[..start]);
        let after = &rest[start + 1..];
        let Some(body) = after.strip_prefix('[') else {
            rest = after;
            continue;
        };
        let Some(end) = body.find(|c: char| c.is_ascii_alphabetic()) else {
            rest = "";
            break;
        };
        if &body[end..=end] == "m" {
            if open {
                out.push_str("</span>");
                open = false;
            }
            let classes = classes(&body[..end]);
            if !classes.is_empty() {
                out.push_str(&format!("<span class=\"{}\">", classes.join(" ")));
                open = true;
            }
        }
        rest = &body[end + 1..];
    }
    escape_into(&mut out, rest);
    if open {
        out.push_str("</span>");
    }
    out
}

fn classes(codes: &str) -> Vec<String> {
    let mut found = Vec::new();
    for code in codes.split(';').filter_map(|c| c.parse::<u8>().ok()) {
        match code {
            0 => found.clear(),
            1 => found.push("ansi-bold".to_string()),
            30..=37 => found.push(format!("ansi-{}", code - 30)),
            90..=97 => found.push(format!("ansi-{}", code - 90 + 8)),
            _ => {}
        }
    }
    found
}

pub fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::to_html;

    #[test]
    fn colours_become_spans_and_text_is_escaped() {
        assert_eq!(
            to_html("\u{1b}[1;31mFAIL\u{1b}[0m <a>"),
            "<span class=\"ansi-bold ansi-1\">FAIL</span> &lt;a&gt;"
        );
        assert_eq!(to_html("plain & simple"), "plain &amp; simple");
        assert_eq!(to_html("\u{1b}[2Kcleared"), "cleared");
    }
}
