//! The allow-list's argv patterns (`[commands] allow`): the grammar, parsed when the config is
//! read, and the match against an argv. A value: it sees only text, never the file system.
//!
//! Each `[commands] allow` entry is split on whitespace into words; an argv is allowed when some
//! entry matches it word for word (the first word matches the program). The agent runs the argv
//! without a shell and never resolves paths, so a pattern is matched against the text exactly as
//! sent. Within a word:
//!
//! - any character but `*` matches itself only (there is no escape, and no `?` or `[…]`);
//! - `*` matches any run of characters, possibly empty, **within one path level**: never `/`;
//! - `**` matches any run of characters, possibly empty, **across path levels**: `/` included.
//!   Three or more `*` in a row are refused when the config is read.
//!
//! Whatever the pattern, a wildcard (`*` or `**`) never matches:
//!
//! - any part of a `.` or `..` path segment (the argument split on `/`), nor an empty segment:
//!   the second `/` of a `//`, a leading `/` (an absolute path), a trailing `/` (the directory
//!   itself). Such a segment is matched only where the pattern itself spells it, letter for
//!   letter, as a segment of its own: `/srv/pub/../log/*` admits `/srv/pub/../log/x`;
//!   `/srv/pub/*` and `/srv/pub/**` refuse `/srv/pub/../../etc/shadow`, `/srv/pub/./x`
//!   (harmless, but write it without `./`), `/srv/pub//x` and `/srv/pub/`; `*/x` refuses `/x`,
//!   and `**` refuses `/etc/shadow` (write `/**` for any absolute path). This is how a pattern
//!   stays inside the directories it names as far as the text can tell; names that merely
//!   contain dots (`a..b`, `.bashrc`) are ordinary names, and `*` matches them.
//! - an argument that begins with `-` or `+`, when the word begins with a wildcard: options are
//!   not file names (`tar -czf /b/x.tgz *` refuses `--checkpoint-action=exec=sh`; `less *` refuses
//!   `+!sh`). A word that begins with `-` itself admits options as written: `--unit=*` matches
//!   `--unit=nginx` (and its `*` still never matches `/`).
//!
//! A last word `...` matches any remaining arguments, or none, **whatever they are**: options,
//! `..`, `/`, anything. It is an explicit "anything" and the rules above do not apply to it;
//! `...` elsewhere, or alone, is refused when the config is read.
//!
//! `"systemctl restart nginx"` allows exactly that; `"systemctl restart *"` one unit;
//! `"cat /srv/pub/*"` a file directly in `/srv/pub`; `"cat /srv/pub/**"` one anywhere below it;
//! `"/usr/bin/uptime ..."` uptime with any flags.
//!
//! No text pattern sees the file system: a symlink inside an allowed directory (or one an allowed
//! command can create) leads wherever it points. Allow only directories nobody untrusted can
//! write to. docs/commands.md says the same for operators.

/// One allow-list entry, compiled once when the config is read.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// One per argument, in order.
    words: Vec<Word>,
    /// The entry ended in `...`: any further arguments are allowed too.
    rest_any: bool,
}

impl Pattern {
    pub fn parse(entry: &str) -> Result<Self, String> {
        let mut words: Vec<&str> = entry.split_whitespace().collect();
        let rest_any = words.last() == Some(&"...");
        if rest_any {
            words.pop();
        }
        if words.is_empty() {
            return Err(if rest_any {
                format!(
                    "{entry:?} would allow any command at all; if that is really wanted, set allow_any = true instead"
                )
            } else {
                "an entry is empty; remove it".to_owned()
            });
        }
        if words.contains(&"...") {
            return Err(format!(
                "in {entry:?}, `...` (any remaining arguments) may only be the last word"
            ));
        }
        let words = words
            .into_iter()
            .map(|w| Word::parse(w).map_err(|e| format!("in {entry:?}, {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { words, rest_any })
    }

    pub fn matches(&self, argv: &[String]) -> bool {
        if argv.len() < self.words.len() || (!self.rest_any && argv.len() != self.words.len()) {
            return false;
        }
        self.words.iter().zip(argv).all(|(w, a)| w.matches(a))
    }
}

/// One word of a pattern: what one argument must be.
#[derive(Debug, Clone)]
struct Word {
    tokens: Vec<Token>,
    /// Per token: the segments it spells that only a pattern may spell (see `special`).
    spelled: Vec<u8>,
    /// Whether any token is a wildcard; without one the word is plain text.
    wildcard: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Byte(u8),
    /// `*`: any bytes but `/`.
    Star,
    /// `**`: any bytes.
    Globstar,
}

impl Word {
    fn parse(word: &str) -> Result<Self, String> {
        if word.contains("***") {
            return Err(format!(
                "{word:?} has three or more `*` in a row; write `*` (within one path level) or `**` (across levels)"
            ));
        }
        let bytes = word.as_bytes();
        let mut tokens = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'*' {
                if bytes.get(i + 1) == Some(&b'*') {
                    tokens.push(Token::Globstar);
                    i += 2;
                } else {
                    tokens.push(Token::Star);
                    i += 1;
                }
            } else {
                tokens.push(Token::Byte(bytes[i]));
                i += 1;
            }
        }
        let wildcard = tokens.iter().any(|t| !matches!(t, Token::Byte(_)));
        Ok(Self {
            spelled: special(&tokens),
            tokens,
            wildcard,
        })
    }

    fn matches(&self, arg: &str) -> bool {
        let text: Vec<Token> = arg.bytes().map(Token::Byte).collect();
        if !self.wildcard {
            return self.tokens == text;
        }
        // An option is not a file name: a wildcard never supplies the leading `-` or `+`
        // (`tar … *` must not admit `--checkpoint-action=…`, nor `less *` admit `+!sh`).
        let option = matches!(text.first(), Some(Token::Byte(b'-' | b'+')));
        if option && matches!(self.tokens.first(), Some(Token::Star | Token::Globstar)) {
            return false;
        }
        // Bytes of `.`/`..` segments and slashes around empty segments: only a literal that
        // spells the same segment in the pattern may match them, never a wildcard (not even in
        // part, nor by matching nothing where the segment is).
        let special = special(&text);
        let n = text.len();
        // `next[j]`: whether the tokens after the current one match `text[j..]`; computed from
        // the last token back, so the whole match is O(tokens × bytes) without backtracking.
        let mut next = vec![false; n + 1];
        next[n] = true;
        let mut row = vec![false; n + 1];
        for (i, token) in self.tokens.iter().enumerate().rev() {
            for j in (0..=n).rev() {
                let free = j < n && special[j] == 0;
                row[j] = match *token {
                    Token::Byte(_) => {
                        j < n
                            && text[j] == *token
                            && special[j] & !self.spelled[i] == 0
                            && next[j + 1]
                    }
                    Token::Star => next[j] || (free && text[j] != Token::Byte(b'/') && row[j + 1]),
                    Token::Globstar => next[j] || (free && row[j + 1]),
                };
            }
            std::mem::swap(&mut row, &mut next);
        }
        next[0]
    }
}

/// Why a byte of a word may be matched only by a literal of the pattern that is there for the
/// same reasons (see `special`).
mod mark {
    /// Part of a `.` or `..` segment.
    pub const DOT: u8 = 1;
    /// The second `/` of `//`: it closes an empty segment.
    pub const DOUBLE: u8 = 2;
    /// A leading `/`: the empty segment before it makes the path absolute.
    pub const LEADING: u8 = 4;
    /// A trailing `/`: the empty segment after it is the directory itself, not an entry.
    pub const TRAILING: u8 = 8;
}

/// Marks what only a pattern's own text may spell: each byte of a `.` or `..` path segment
/// (bounded by `/` or the ends of the word), and each `/` that bounds an empty segment (the
/// second of `//`, a leading one, a trailing one). Used on both sides: a wildcard never matches
/// a marked byte, and a literal matches one only if it carries the same marks. Literals match
/// byte for byte in order (the first token the first byte, the last the last), so the segments
/// then line up exactly, and a wildcard matching nothing cannot stand in for an empty segment.
fn special(tokens: &[Token]) -> Vec<u8> {
    let slash = Token::Byte(b'/');
    let mut marks = vec![0; tokens.len()];
    let mut start = 0;
    for end in 0..=tokens.len() {
        if end < tokens.len() && tokens[end] != slash {
            continue;
        }
        let segment = &tokens[start..end];
        if (1..=2).contains(&segment.len()) && segment.iter().all(|t| *t == Token::Byte(b'.')) {
            marks[start..end].fill(mark::DOT);
        }
        if end < tokens.len() && end > 0 && tokens[end - 1] == slash {
            marks[end] |= mark::DOUBLE;
        }
        start = end + 1;
    }
    if tokens.first() == Some(&slash) {
        marks[0] |= mark::LEADING;
    }
    if tokens.last() == Some(&slash) {
        marks[tokens.len() - 1] |= mark::TRAILING;
    }
    marks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    /// Whether the allow-list entry `p` admits the argv `a` (both split on whitespace).
    fn m(p: &str, a: &str) -> bool {
        Pattern::parse(p).unwrap().matches(&argv(a))
    }

    /// Whether the pattern word `p` matches the one argument `a`.
    fn w(p: &str, a: &str) -> bool {
        Word::parse(p).unwrap().matches(a)
    }

    #[test]
    fn patterns() {
        assert!(m("uname -a", "uname -a"));
        assert!(!m("uname -a", "uname -a -r"));
        assert!(!m("uname -a", "uname"));
        assert!(m("systemctl restart *", "systemctl restart nginx"));
        assert!(!m("systemctl restart *", "systemctl stop nginx"));
        assert!(m(
            "systemctl restart nginx@*.service",
            "systemctl restart nginx@a.service"
        ));
        assert!(!m(
            "systemctl restart nginx@*.service",
            "systemctl restart nginx@a.socket"
        ));
        assert!(m("uptime ...", "uptime"));
        assert!(m("uptime ...", "uptime -p -s"));
        assert!(!m("uptime ...", "uptim -p"));
        assert!(w("a*b*c", "aXXbYYc"));
        assert!(!w("a*b*c", "aXXc"));
        assert!(!w("ab*ba", "aba"));
        assert!(w("*", ""));
        assert!(w("/srv/pub/*", "/srv/pub/été"));
        assert!(w("é*", "éa"));
    }

    /// Issue 14, point 3: `cat /srv/pub/../../../etc/shadow` ran under `cat /srv/pub/*`.
    #[test]
    fn issue_14_a_star_stays_in_its_directory() {
        assert!(m("cat /srv/pub/*", "cat /srv/pub/a"));
        assert!(!m("cat /srv/pub/*", "cat /srv/pub/../../../etc/shadow"));
        assert!(!m("cat /srv/pub/*", "cat /srv/pub/a/b"));
        assert!(m("cat /srv/pub/**", "cat /srv/pub/a/b"));
        assert!(m("cat /srv/pub/**", "cat /srv/pub/a"));
        assert!(!m("cat /srv/pub/**", "cat /srv/pub/../../../etc/shadow"));
        assert!(!m("cat /srv/pub/**", "cat /srv/pub/a/../../../etc/shadow"));
        // A prefix without its `/` does not let a wildcard reach the parent either.
        assert!(!w("/srv/pub*", "/srv/pub/../x"));
        assert!(!w("/srv/pub**", "/srv/pub/../x"));
        assert!(w("/srv/pub*", "/srv/public"));
        assert!(w("/srv/pub**", "/srv/public/x"));
        // `*` crosses no `/` wherever it stands.
        assert!(w("/srv/*/log", "/srv/a/log"));
        assert!(!w("/srv/*/log", "/srv/a/b/log"));
        assert!(w("/srv/**/log", "/srv/a/b/log"));
    }

    #[test]
    fn issue_14_wildcards_never_match_dot_segments_or_empty_ones() {
        for pattern in ["/srv/pub/*", "/srv/pub/**"] {
            for arg in ["/srv/pub/..", "/srv/pub/.", "/srv/pub/../x"] {
                assert!(!w(pattern, arg), "{pattern} {arg}");
            }
        }
        // Harmless ones too: there is no need to send them, and refusing is simpler to trust.
        assert!(!w("/srv/pub/**", "/srv/pub/./x"));
        assert!(!w("/srv/pub/**", "/srv/pub//x"));
        // Nor an empty one at either end: the directory itself, or the root.
        assert!(!w("/srv/pub/*", "/srv/pub/"));
        assert!(!w("/srv/pub/**", "/srv/pub/"));
        assert!(!w("/srv/pub/**", "/srv/pub/x/"));
        assert!(w("/srv/pub/*/", "/srv/pub/x/"));
        assert!(!w("*/x", "/x"));
        assert!(!w("*/*.log", "/a.log"));
        assert!(w("*/*.log", "d/a.log"));
        assert!(!w("*/*.log", "../a.log"));
        assert!(w("**", "a/b"));
        assert!(!w("**", "/etc/shadow"));
        assert!(w("/**", "/etc/shadow"));
        assert!(w("/*", "/etc"));
        assert!(!w("/*", "/"));
        assert!(!w("/**", "/"));
        assert!(w("/srv/pub/**", "/srv/pub/x/y"));
        assert!(!w("/srv/pub/**", "/srv/pub//../etc/shadow"));
        assert!(!w("/srv/*/log", "/srv//log"));
        // Not even in part, nor around a literal dot the pattern did not write as a segment.
        assert!(!w("/srv/*./x", "/srv/../x"));
        assert!(!w("/srv/.*/x", "/srv/../x"));
        assert!(!w("/srv/.*.", "/srv/.."));
        assert!(!w("/srv/*..", "/srv/.."));
        assert!(!w("/srv/..*", "/srv/.."));
        assert!(!w("*", ".."));
        assert!(!w("*", "."));
        assert!(!w("**", "../etc/shadow"));
        // Names that merely contain dots are names.
        for name in ["a..b", ".bashrc", "..x", "x..", "...", "x.tgz"] {
            assert!(w("/srv/pub/*", &format!("/srv/pub/{name}")), "{name}");
        }
        assert!(w("/srv/..*", "/srv/..x"));
    }

    #[test]
    fn issue_14_a_pattern_may_spell_dot_segments_itself() {
        assert!(m("cat /srv/pub/../log/*", "cat /srv/pub/../log/syslog"));
        assert!(!m(
            "cat /srv/pub/../log/*",
            "cat /srv/pub/../log/../../etc/shadow"
        ));
        assert!(m("cat ../*", "cat ../x"));
        assert!(!m("cat ../*", "cat ../../x"));
        assert!(m("cat ./*", "cat ./x"));
        assert!(w("https://example.com/*", "https://example.com/x"));
        assert!(!w("https://example.com/**", "https://example.com//x"));
        assert!(!w("https://*", "https://example.com/x"));
        // Without a wildcard a word is compared as text, dots and all.
        assert!(w("/srv/pub/../x", "/srv/pub/../x"));
    }

    #[test]
    fn issue_14_a_wildcard_never_supplies_an_option() {
        assert!(m("tar -czf /b/x.tgz *", "tar -czf /b/x.tgz data"));
        assert!(!m(
            "tar -czf /b/x.tgz *",
            "tar -czf /b/x.tgz --checkpoint-action=exec=sh"
        ));
        assert!(!m(
            "tar -czf /b/x.tgz **",
            "tar -czf /b/x.tgz --to-command=sh"
        ));
        assert!(!m("systemctl status *", "systemctl status -H"));
        assert!(!m("systemctl restart *", "systemctl restart --now"));
        assert!(!m("tar -czf /b/x.tgz *", "tar -czf /b/x.tgz /etc"));
        assert!(!m("less *", "less +!sh"));
        assert!(!w("*", "-"));
        assert!(!w("*-x", "-x"));
        assert!(!w("**.log", "--x.log"));
        // A word that starts with `-` (or `+`) admits options as written, `*` still within a level.
        assert!(m("journalctl --unit=*", "journalctl --unit=nginx"));
        assert!(!m("journalctl --unit=*", "journalctl --unit=/etc/x"));
        assert!(w("-*", "--checkpoint-action=exec=sh"));
        assert!(m("date +*", "date +%s"));
        // An option-looking text inside a word is not at its start.
        assert!(w("/srv/pub/*", "/srv/pub/-rf"));
    }

    #[test]
    fn issue_14_the_trailing_dots_admit_anything_explicitly() {
        assert!(m("uptime ...", "uptime --since ../.. /etc/shadow"));
        assert!(m("cat /srv/pub/* ...", "cat /srv/pub/a /etc/shadow"));
        assert!(!m("cat /srv/pub/* ...", "cat /etc/shadow /srv/pub/a"));
    }

    #[test]
    fn malformed_entries_are_refused_with_what_to_write() {
        let err = |p: &str| Pattern::parse(p).unwrap_err();
        assert!(err("").contains("empty"));
        assert!(err("   ").contains("empty"));
        assert!(err("...").contains("allow_any"));
        assert!(err("rsync ... /dst").contains("only be the last word"));
        assert!(err("cat /srv/***").contains("`**`"));
        assert!(Pattern::parse("ls ... ").is_ok());
    }

    /// Every short argument over the characters that matter, against every short pattern: the
    /// two promises hold whatever the combination, not only for the examples above.
    #[test]
    fn wildcards_keep_their_promises_exhaustively() {
        fn all(alphabet: &[&str], len: usize) -> Vec<String> {
            let mut out = vec![String::new()];
            let mut last = vec![String::new()];
            for _ in 0..len {
                last = last
                    .iter()
                    .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                    .collect();
                out.extend(last.iter().cloned());
            }
            out
        }
        let args = all(&["a", ".", "/", "-"], 5);
        let patterns = all(&["a", "/", "*", "**", "-"], 4);
        let dot_segment = |a: &str| a.split('/').any(|s| s == "." || s == "..");
        let mut matched = 0;
        for p in patterns
            .iter()
            .filter(|p| p.contains('*') && !p.contains("***"))
        {
            let word = Word::parse(p).unwrap();
            for a in &args {
                if !word.matches(a) {
                    continue;
                }
                matched += 1;
                // The pattern has no dot, so an argument with a dot segment never matches, nor
                // one with `//` unless the pattern wrote `//`.
                assert!(!dot_segment(a), "{p:?} matched {a:?}");
                assert!(!a.contains("//") || p.contains("//"), "{p:?} matched {a:?}");
                // Nor, unless the pattern wrote it, a leading or a trailing `/`.
                assert!(
                    !a.starts_with('/') || p.starts_with('/'),
                    "{p:?} matched {a:?}"
                );
                assert!(!a.ends_with('/') || p.ends_with('/'), "{p:?} matched {a:?}");
                assert!(
                    !a.starts_with('-') || p.starts_with('-'),
                    "{p:?} matched {a:?}"
                );
                if !p.contains("**") {
                    assert_eq!(
                        p.matches('/').count(),
                        a.matches('/').count(),
                        "{p:?} {a:?}"
                    );
                }
            }
        }
        assert!(
            matched > 1000,
            "the search matched too little to mean anything: {matched}"
        );
    }
}
