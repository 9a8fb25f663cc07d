//! Text that others wrote, made safe to show to a person: what a node's command printed, an
//! event's message, an error a node reported. A terminal obeys control characters in what it
//! is given: `ESC ] 0 ; … BEL` retitles the window, `ESC [ 2 J` clears the screen, a `\r` or
//! `\n` in a one-line field forges a line that seems to come from fleet. A hostile node (or an
//! app writing events) must not be able to drive the operator's terminal, so every place that
//! prints such text to a person goes through [`visible`] (and JSON output through [`json`]).
//!
//! What becomes visible: the C0 controls (U+0000–U+001F) as `\xHH` (`\r` and, in one-line
//! fields, `\n` by their names), DEL as `\x7f`, and the C1 controls (U+0080–U+009F, which some
//! terminals obey like `ESC` sequences) as `\u{HH}`. Tabs stay; newlines stay in multi-line
//! text. Every other character, any script, emoji, a backslash, stays as it is: the point is
//! that the terminal shows the text rather than obeys it, not that it can be decoded back.
//!
//! No I/O here: deciding *whether* to escape (a terminal or a pipe) is the caller's business.

use std::borrow::Cow;
use std::fmt::Write;

/// How the text will be laid out where it is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A field on one line of fleet's own output (an event's message, a summary): a line break
    /// would start a line that seems to be fleet's, so it is shown as `\n`.
    OneLine,
    /// Text shown as a block of its own (a command's output): line breaks are kept.
    MultiLine,
}

/// `text` with every control character but tab (and, for [`Shape::MultiLine`], newline) written
/// out visibly; borrowed unchanged when there is none, the usual case.
pub fn visible(text: &str, shape: Shape) -> Cow<'_, str> {
    let obeyed = |c: char| c.is_control() && c != '\t' && !(c == '\n' && shape == Shape::MultiLine);
    if !text.chars().any(obeyed) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            _ if !obeyed(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\u{80}'..='\u{9f}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            _ => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

/// Serialized JSON with DEL and the C1 controls written as `\u007f` … `\u009f`. serde_json
/// already escapes C0 controls inside strings but passes these through, and outside strings
/// JSON is ASCII, so the result is the same JSON value, only safe on a terminal.
pub fn json(text: String) -> String {
    if !text.chars().any(|c| ('\u{7f}'..='\u{9f}').contains(&c)) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if ('\u{7f}'..='\u{9f}').contains(&c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for text in [
            "",
            "nginx restarted",
            "tab\tseparated",
            "été 東京 🚀 \\x1b C:\\dir",
        ] {
            assert!(matches!(visible(text, Shape::OneLine), Cow::Borrowed(t) if t == text));
        }
        assert!(matches!(
            visible("two\nlines\n", Shape::MultiLine),
            Cow::Borrowed("two\nlines\n")
        ));
    }

    /// Issue 14, point 10: a title change, a screen clear and a forged line.
    #[test]
    fn issue_14_escapes_are_shown_not_obeyed() {
        let hostile = "\x1b]0;pwned\x07\x1b[2Jok\r\n2026-01-01  INFO  forged";
        assert_eq!(
            visible(hostile, Shape::OneLine),
            "\\x1b]0;pwned\\x07\\x1b[2Jok\\r\\n2026-01-01  INFO  forged"
        );
        assert_eq!(
            visible(hostile, Shape::MultiLine),
            "\\x1b]0;pwned\\x07\\x1b[2Jok\\r\n2026-01-01  INFO  forged"
        );
    }

    #[test]
    fn every_control_character_is_made_visible_and_nothing_else() {
        for c in (0u32..=0x10ffff).filter_map(char::from_u32) {
            let text = c.to_string();
            let shown = visible(&text, Shape::OneLine);
            let control = c.is_control() && c != '\t';
            assert_eq!(shown != text, control, "{c:?} became {shown:?}");
            assert!(!shown.chars().any(|c| c.is_control() && c != '\t'), "{c:?}");
        }
        assert_eq!(visible("\0\x7f\u{9b}", Shape::OneLine), "\\x00\\x7f\\u{9b}");
        assert_eq!(visible("a\u{85}b", Shape::MultiLine), "a\\u{85}b");
    }

    #[test]
    fn json_keeps_its_value_and_loses_its_controls() {
        let value = serde_json::json!({"message": "\u{9b}2J \x1b[2J \x7f é"});
        let text = json(serde_json::to_string(&value).unwrap());
        assert!(!text.chars().any(char::is_control), "{text}");
        assert!(text.contains("\\u009b2J") && text.contains("é"), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
    }
}
