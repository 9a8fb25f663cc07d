//! Architecture, checked from the source text (in the manner of rust-analyzer's tidy tests):
//!
//! - every import between top-level modules of `src/` follows the layers below, and the graph of
//!   those modules has no cycle;
//! - every `.rs` file under `src/` is named in ARCHITECTURE.md's code map.
//!
//! A small lexer reads the files instead of a parser, so paths inside macro invocations
//! (`tracing::info!(x = %crate::a::f())`, `$crate::a` in `macro_rules!`) are seen like any other;
//! comments, literals and items under `#[cfg(test)]` are not (tests may build fixtures from any
//! layer).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::Path;

/// One layer: its modules may import modules of lower layers only, and each other when
/// `within` allows it.
struct Layer {
    name: &'static str,
    modules: &'static [&'static str],
    /// Whether the modules of this layer may import each other (still without a cycle).
    within: bool,
}

/// The layers, bottom to top. To move a module, move it here and in ARCHITECTURE.md, in the same
/// commit as the code that makes it true.
const LAYERS: &[Layer] = &[
    // Values and small self-contained helpers: the data model, the command model, the
    // allow-list's argv patterns, heartbeats, times, text made safe to print, private files,
    // HTTP clients made one way, backoff, bounded child processes. They
    // know nothing of fleet above them, so everything may use them; they may use each other
    // (the model's names in a command, say) as long as no two need each other.
    Layer {
        name: "values",
        modules: &[
            "model",
            "command",
            "heartbeat",
            "timefmt",
            "termsafe",
            "files",
            "argv_pattern",
            "steward",
            "http_client",
            "backoff",
            "process",
        ],
        within: true,
    },
    // Every mode's configuration, made of values (names, durations, policies); read by all that
    // is built from it, so it sits right above them.
    Layer {
        name: "config",
        modules: &["config"],
        within: false,
    },
    // The wire format: framing and the exact signed bytes, the one definition both ends of every
    // transport (agent and controller, HTTP and NATS) share.
    Layer {
        name: "formats",
        modules: &["wire"],
        within: false,
    },
    // The durable store and the hot ring: they keep values and know nothing of HTTP, framing
    // or signatures.
    Layer {
        name: "stores",
        modules: &["store"],
        within: false,
    },
    // The controller's one path for data (verify, decode, store, commands, heartbeats): above
    // the stores, below every way in, so each way in calls the same rules.
    Layer {
        name: "pipeline",
        modules: &["pipeline"],
        within: false,
    },
    // The edges to the outside world: HTTP (web), the buses, what the agent measures, what runs
    // commands, the client. Each translates between the outside and the layers below, alone:
    // what two of them share goes down a layer, so none is tied to another.
    Layer {
        name: "adapters",
        modules: &["web", "bus", "collectors", "executor", "client"],
        within: false,
    },
    // Runtimes: the agent's (ties the node-side adapters: collectors, executor, bus) and the
    // watched steward inbox's (a loop over a file that hands messages to whoever sends them).
    Layer {
        name: "runtimes",
        modules: &["agent", "inbox_file"],
        within: false,
    },
    // One module per subcommand, wiring only: everything is below it.
    Layer {
        name: "modes",
        modules: &["modes"],
        within: false,
    },
];

/// The crate roots: above every layer, not checked.
const ROOTS: &[&str] = &["src/lib.rs", "src/main.rs"];

#[test]
fn src_follows_the_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = rust_files(&root.join("src"));
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|rel| {
            let path = root.join("src").join(rel);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            (format!("src/{rel}"), text)
        })
        .collect();
    let borrowed: Vec<(&str, &str)> = sources
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    let findings = check(&borrowed);
    assert!(
        findings.is_empty(),
        "{} problem(s) with the layers in tests/it/architecture.rs:\n{}",
        findings.len(),
        findings
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn architecture_md_lists_every_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let markdown = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let files = rust_files(&root.join("src"));
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let missing = unlisted_files(&markdown, &files);
    assert!(
        missing.is_empty(),
        "{} file(s) under src/ not named in ARCHITECTURE.md (by their path under src/, by name \
         in their directory's `## src/<dir>/` section, or by a heading):\n{}",
        missing.len(),
        missing
            .iter()
            .map(|f| format!("src/{f}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Every `.rs` file under `dir`, as paths relative to it with `/` separators, sorted.
fn rust_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .unwrap_or_else(|e| panic!("read {}: {e}", current.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(dir).expect("under src/");
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// The checker.

/// An import of one top-level module by another, as written in a file.
#[derive(Debug, Clone, PartialEq)]
struct Import {
    file: String,
    line: usize,
    /// The importing file's top-level module.
    from: String,
    /// The imported path from the crate root (`web::ui::pages`); its first segment is `to`.
    path: String,
    /// How it is written when that is not `crate::` + `path` (`super::super::web`).
    written: Option<String>,
}

impl Import {
    fn to(&self) -> &str {
        self.path.split("::").next().unwrap_or_default()
    }

    fn shown(&self) -> String {
        match &self.written {
            Some(written) => format!("{} (as {written})", self.path),
            None => self.path.clone(),
        }
    }
}

/// One thing wrong.
#[derive(Debug, Clone, PartialEq)]
enum Finding {
    /// An import of a module in a higher layer, or in the same layer when that layer forbids it.
    Layer(Import),
    /// Imports that close a cycle: each edge of the cycle, in order.
    Cycle { edges: Vec<Import> },
    /// `crate::name` where `name` is not a module: an item of the crate root, which is above
    /// every layer.
    RootItem(Import),
    /// `super::` past the crate root.
    BeyondRoot {
        file: String,
        line: usize,
        written: String,
    },
    /// A top-level module in no layer.
    Unknown { module: String, file: String },
    /// A file the lexer cannot read (an unterminated literal or comment).
    Unreadable {
        file: String,
        line: usize,
        why: String,
    },
}

fn layer_of(module: &str) -> Option<(usize, &'static Layer)> {
    LAYERS
        .iter()
        .enumerate()
        .find(|(_, l)| l.modules.contains(&module))
}

fn described(module: &str) -> String {
    match layer_of(module) {
        Some((n, layer)) => format!("{module} ({}, layer {n})", layer.name),
        None => format!("{module} (in no layer)"),
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Layer(import) => {
                let (from_n, from_layer) = layer_of(&import.from).expect("a known module");
                let (to_n, to_layer) = layer_of(import.to()).expect("a known module");
                write!(
                    f,
                    "{}:{}: {} imports {} — ",
                    import.file,
                    import.line,
                    described(&import.from),
                    import.shown()
                )?;
                if to_n == from_n {
                    write!(
                        f,
                        "{} is in {} too, and {} may not import each other",
                        import.to(),
                        from_layer.name,
                        from_layer.name
                    )
                } else {
                    write!(
                        f,
                        "{} is in {} (layer {to_n}), above layer {from_n}: only lower layers \
                         may be imported",
                        import.to(),
                        to_layer.name
                    )
                }
            }
            Finding::Cycle { edges } => {
                let names: Vec<&str> = edges
                    .iter()
                    .map(|e| e.from.as_str())
                    .chain(edges.first().map(|e| e.from.as_str()))
                    .collect();
                write!(f, "import cycle {}:", names.join(" → "))?;
                for edge in edges {
                    write!(
                        f,
                        "\n    {}:{}: {} imports {}",
                        edge.file,
                        edge.line,
                        edge.from,
                        edge.shown()
                    )?;
                }
                Ok(())
            }
            Finding::RootItem(import) => write!(
                f,
                "{}:{}: {} imports {} from the crate root (src/lib.rs), which is above every \
                 layer: import it from the module that defines it",
                import.file,
                import.line,
                described(&import.from),
                import.shown()
            ),
            Finding::BeyondRoot {
                file,
                line,
                written,
            } => write!(f, "{file}:{line}: {written} goes beyond the crate root"),
            Finding::Unknown { module, file } => write!(
                f,
                "{file}: top-level module {module} is in no layer: add {module} to the layers in \
                 tests/it/architecture.rs and ARCHITECTURE.md"
            ),
            Finding::Unreadable { file, line, why } => {
                write!(f, "{file}:{line}: cannot read: {why}")
            }
        }
    }
}

/// Checks `sources` (`("src/…", text)`, the crate roots among them or not): every import against
/// the layers, the cycles among modules, and that every top-level module is in a layer.
fn check(sources: &[(&str, &str)]) -> Vec<Finding> {
    let mut findings = Vec::new();

    // The top-level modules: declared in lib.rs, or with a file of their own.
    let mut declared: BTreeMap<String, String> = BTreeMap::new();
    for (file, text) in sources {
        if *file == "src/lib.rs" {
            match lex(text) {
                Ok(tokens) => {
                    for module in declared_modules(&without_test_code(&tokens)) {
                        declared.entry(module).or_insert_with(|| file.to_string());
                    }
                }
                Err((line, why)) => findings.push(Finding::Unreadable {
                    file: file.to_string(),
                    line,
                    why,
                }),
            }
        } else if let Some(module) = module_path(file).and_then(|p| p.into_iter().next()) {
            declared.entry(module).or_insert_with(|| file.to_string());
        }
    }
    for (module, file) in &declared {
        if layer_of(module).is_none() {
            findings.push(Finding::Unknown {
                module: module.clone(),
                file: file.clone(),
            });
        }
    }
    let is_module = |name: &str| declared.contains_key(name) || layer_of(name).is_some();

    // Every import, checked against the layers; the edges for the cycles.
    let mut edges: BTreeMap<(String, String), Vec<Import>> = BTreeMap::new();
    for (file, text) in sources {
        let Some(module) = module_path(file) else {
            continue;
        };
        let found = match scan(file, &module, text) {
            Ok(found) => found,
            Err(finding) => {
                findings.push(finding);
                continue;
            }
        };
        for item in found {
            let import = match item {
                Scanned::Import(import) => import,
                Scanned::BeyondRoot { line, written } => {
                    findings.push(Finding::BeyondRoot {
                        file: file.to_string(),
                        line,
                        written,
                    });
                    continue;
                }
            };
            let to = import.to().to_owned();
            if to == import.from {
                continue;
            }
            if !is_module(&to) {
                findings.push(Finding::RootItem(import));
                continue;
            }
            if let (Some((from_n, layer)), Some((to_n, _))) =
                (layer_of(&import.from), layer_of(&to))
                && (to_n > from_n || (to_n == from_n && !layer.within))
            {
                findings.push(Finding::Layer(import.clone()));
            }
            edges
                .entry((import.from.clone(), to))
                .or_default()
                .push(import);
        }
    }

    findings.extend(cycles(&edges));
    findings
}

/// The cycles among modules: for each import between two modules that reach each other, the
/// shortest cycle through it (each cycle once), each edge at its first import.
fn cycles(edges: &BTreeMap<(String, String), Vec<Import>>) -> Vec<Finding> {
    let mut next: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().insert(to);
        next.entry(to).or_default();
    }
    // The shortest way from `from` to `to`, both included.
    let shortest = |from: &str, to: &str| -> Option<Vec<String>> {
        let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([from]);
        while let Some(m) = queue.pop_front() {
            if m == to {
                let mut path = vec![to.to_owned()];
                let mut at = to;
                while at != from {
                    at = came_from[at];
                    path.push(at.to_owned());
                }
                path.reverse();
                return Some(path);
            }
            for &n in &next[m] {
                if n != from && !came_from.contains_key(n) {
                    came_from.insert(n, m);
                    queue.push_back(n);
                }
            }
        }
        None
    };
    let mut found: BTreeSet<(usize, Vec<String>)> = BTreeSet::new();
    for (from, to) in edges.keys() {
        if let Some(back) = shortest(to, from) {
            // from → to → … → (from), starting at its first module by name.
            let mut cycle: Vec<String> = std::iter::once(from.clone())
                .chain(back[..back.len() - 1].iter().cloned())
                .collect();
            let first = (0..cycle.len()).min_by_key(|&i| &cycle[i]).unwrap_or(0);
            cycle.rotate_left(first);
            found.insert((cycle.len(), cycle));
        }
    }
    found
        .into_iter()
        .map(|(_, cycle)| Finding::Cycle {
            edges: (0..cycle.len())
                .map(|i| {
                    let key = (cycle[i].clone(), cycle[(i + 1) % cycle.len()].clone());
                    edges[&key][0].clone()
                })
                .collect(),
        })
        .collect()
}

/// The module path of a file under `src/` (`src/a/b/c.rs` and `src/a/b/c/mod.rs` are
/// `[a, b, c]`); `None` for the crate roots and what is not a `.rs` file under `src/`.
fn module_path(file: &str) -> Option<Vec<String>> {
    if ROOTS.contains(&file) {
        return None;
    }
    let rel = file.strip_prefix("src/")?.strip_suffix(".rs")?;
    let mut path: Vec<String> = rel.split('/').map(str::to_owned).collect();
    if path.last().is_some_and(|l| l == "mod") {
        path.pop();
    }
    (!path.is_empty()).then_some(path)
}

/// The modules a crate root declares (`mod a;`, `pub mod b { … }`).
fn declared_modules(tokens: &[Token]) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    for (i, token) in tokens.iter().enumerate() {
        match &token.tok {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => depth = depth.saturating_sub(1),
            Tok::Ident(word) if word == "mod" && depth == 0 => {
                if let (Some(Tok::Ident(name)), Some(Tok::Punct(';' | '{'))) = (
                    tokens.get(i + 1).map(|t| &t.tok),
                    tokens.get(i + 2).map(|t| &t.tok),
                ) {
                    out.push(name.clone());
                }
            }
            _ => {}
        }
    }
    out
}

/// What a file's scan finds.
#[derive(Debug, Clone, PartialEq)]
enum Scanned {
    /// A path that reaches the crate root and names what follows it.
    Import(Import),
    BeyondRoot {
        line: usize,
        written: String,
    },
}

/// Every path in `text` (the file `file`, module `module`) that starts at the crate root
/// (`crate::`, `$crate::`) or reaches it through `super::`, outside comments, literals and
/// `#[cfg(test)]` items. Paths to the file's own top-level module are included.
fn scan(file: &str, module: &[String], text: &str) -> Result<Vec<Scanned>, Finding> {
    let tokens = lex(text).map_err(|(line, why)| Finding::Unreadable {
        file: file.to_owned(),
        line,
        why,
    })?;
    let tokens = without_test_code(&tokens);
    let top = module[0].clone();
    let mut out = Vec::new();
    // Inline modules (`mod limits { … }`) open at a brace depth: `super` counts them.
    let mut inline: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let ident = |i: usize| match tokens.get(i).map(|t| &t.tok) {
        Some(Tok::Ident(word)) => Some(word.as_str()),
        _ => None,
    };
    let is = |i: usize, tok: &Tok| tokens.get(i).is_some_and(|t| &t.tok == tok);
    let is_word = |i: usize, word: &str| ident(i) == Some(word);
    // The path at `i` follows `pub(in`.
    let visibility = |i: usize| {
        i >= 3 && is_word(i - 1, "in") && is(i - 2, &Tok::Punct('(')) && is_word(i - 3, "pub")
    };
    for i in 0..tokens.len() {
        match &tokens[i].tok {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last() == Some(&depth) {
                    inline.pop();
                }
            }
            Tok::Ident(word)
                if word == "mod" && ident(i + 1).is_some() && is(i + 2, &Tok::Punct('{')) =>
            {
                inline.push(depth);
            }
            Tok::Ident(word) if word == "crate" => {
                // `pub(in crate::a)` is a visibility; `a::crate` is no path.
                if visibility(i) || (i > 0 && is(i - 1, &Tok::PathSep)) {
                    continue;
                }
                if !is(i + 1, &Tok::PathSep) {
                    continue; // `pub(crate)`, `use crate as …`
                }
                let dollar = i > 0 && is(i - 1, &Tok::Punct('$'));
                let prefix = if dollar { "$crate" } else { "crate" };
                for (line, path) in paths_from_root(&tokens, i + 2) {
                    out.push(Scanned::Import(Import {
                        file: file.to_owned(),
                        line,
                        from: top.clone(),
                        written: dollar.then(|| format!("{prefix}::{path}")),
                        path,
                    }));
                }
            }
            Tok::Ident(word) if word == "super" => {
                // The start of a chain only: not `a::super`, but `self::super`.
                if i > 0 && is(i - 1, &Tok::PathSep) {
                    let after_self =
                        i >= 2 && is_word(i - 2, "self") && !(i >= 3 && is(i - 3, &Tok::PathSep));
                    if !after_self {
                        continue;
                    }
                }
                if visibility(i) {
                    continue; // `pub(in super::a)`
                }
                let mut ups = 1;
                let mut j = i + 1;
                while is(j, &Tok::PathSep) && is_word(j + 1, "super") {
                    ups += 1;
                    j += 2;
                }
                let written = vec!["super"; ups].join("::");
                let here = module.len() + inline.len();
                if ups > here {
                    out.push(Scanned::BeyondRoot {
                        line: tokens[i].line,
                        written,
                    });
                    continue;
                }
                if ups < here || !is(j, &Tok::PathSep) {
                    continue; // still inside the file's top-level module
                }
                for (line, path) in paths_from_root(&tokens, j + 1) {
                    out.push(Scanned::Import(Import {
                        file: file.to_owned(),
                        line,
                        from: top.clone(),
                        written: Some(format!("{written}::{path}")),
                        path,
                    }));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The paths that follow a `crate::` ending just before `at`: one (`a::b::c`), or one per
/// element of a group (`{a, b::c, d::{e, f}}`, nested groups too), each with the line of its
/// first segment. `self` (the root itself) and `*` name no module.
fn paths_from_root(tokens: &[Token], at: usize) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    match tokens.get(at).map(|t| &t.tok) {
        Some(Tok::Ident(_)) => {
            if let Some(found) = path_at(tokens, at) {
                out.push(found);
            }
        }
        Some(Tok::Punct('{')) => group(tokens, at, &mut out),
        _ => {}
    }
    out
}

/// The elements of the group opening at `open`, each a path from the root.
fn group(tokens: &[Token], open: usize, out: &mut Vec<(usize, String)>) {
    let mut depth = 0usize;
    let mut element_start = true;
    let mut i = open;
    while let Some(token) = tokens.get(i) {
        match &token.tok {
            Tok::Punct('{') => {
                depth += 1;
                if depth == 2 && element_start {
                    group(tokens, i, out); // `{a, {b, c}}`: the inner ones are from the root too
                }
                element_start = depth == 1;
            }
            Tok::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
            Tok::Punct(',') if depth == 1 => element_start = true,
            Tok::Ident(_) if depth == 1 && element_start => {
                element_start = false;
                if let Some(found) = path_at(tokens, i) {
                    out.push(found);
                }
            }
            _ => {
                if depth == 1 {
                    element_start = false;
                }
            }
        }
        i += 1;
    }
}

/// The path whose first segment is at `at` (`a::b::{…}`), with its line; `None` for `self`.
fn path_at(tokens: &[Token], at: usize) -> Option<(usize, String)> {
    let Tok::Ident(first) = &tokens[at].tok else {
        return None;
    };
    if first == "self" {
        return None;
    }
    let mut path = first.clone();
    let mut i = at + 1;
    while tokens.get(i).is_some_and(|t| t.tok == Tok::PathSep) {
        match tokens.get(i + 1).map(|t| &t.tok) {
            Some(Tok::Ident(segment)) => path = format!("{path}::{segment}"),
            Some(Tok::Punct('{')) => path.push_str("::{…}"),
            Some(Tok::Punct('*')) => path.push_str("::*"),
            _ => {}
        }
        if !matches!(tokens.get(i + 1).map(|t| &t.tok), Some(Tok::Ident(_))) {
            break;
        }
        i += 2;
    }
    Some((tokens[at].line, path))
}

// ---------------------------------------------------------------------------------------------
// The lexer: enough of Rust's to tell code from comments and literals.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `'a`, `'static`, a label.
    Lifetime,
    /// A string, char, byte, raw string or number.
    Literal,
    /// `::`
    PathSep,
    Punct(char),
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    tok: Tok,
    line: usize,
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_continue(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// The tokens of `text`, or the line and reason it cannot be read.
fn lex(text: &str) -> Result<Vec<Token>, (usize, String)> {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = line;
        let push = |out: &mut Vec<Token>, tok: Tok| out.push(Token { tok, line: start });
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            // Block comments nest.
            let mut depth = 0;
            loop {
                if i >= chars.len() {
                    return Err((start, "unterminated block comment".into()));
                }
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == '"' {
            i = string_end(&chars, i + 1, &mut line)
                .ok_or_else(|| (start, "unterminated string".to_owned()))?;
            push(&mut out, Tok::Literal);
        } else if c == '\'' {
            if at(i + 1) == '\\' {
                // An escaped char: `'\n'`, `'\''`, `'\u{9b}'`.
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                if i >= chars.len() {
                    return Err((start, "unterminated char literal".into()));
                }
                i += 1;
                push(&mut out, Tok::Literal);
            } else if at(i + 2) == '\'' && at(i + 1) != '\n' {
                i += 3;
                push(&mut out, Tok::Literal);
            } else {
                i += 1;
                while i < chars.len() && is_ident_continue(chars[i]) {
                    i += 1;
                }
                push(&mut out, Tok::Lifetime);
            }
        } else if c.is_ascii_digit() {
            while i < chars.len()
                && (is_ident_continue(chars[i]) || (chars[i] == '.' && at(i + 1).is_ascii_digit()))
            {
                i += 1;
            }
            push(&mut out, Tok::Literal);
        } else if is_ident_start(c) {
            let begin = i;
            while i < chars.len() && is_ident_continue(chars[i]) {
                i += 1;
            }
            let word: String = chars[begin..i].iter().collect();
            let next = at(i);
            match (word.as_str(), next) {
                ("r" | "br" | "cr", '"' | '#') => {
                    let mut hashes = 0;
                    while at(i + hashes) == '#' {
                        hashes += 1;
                    }
                    if at(i + hashes) == '"' {
                        i = raw_string_end(&chars, i + hashes + 1, hashes, &mut line)
                            .ok_or_else(|| (start, "unterminated raw string".to_owned()))?;
                        push(&mut out, Tok::Literal);
                    } else if word == "r" && hashes == 1 && is_ident_start(at(i + 1)) {
                        // A raw identifier: `r#type`.
                        let begin = i + 1;
                        i += 1;
                        while i < chars.len() && is_ident_continue(chars[i]) {
                            i += 1;
                        }
                        push(&mut out, Tok::Ident(chars[begin..i].iter().collect()));
                    } else {
                        push(&mut out, Tok::Ident(word));
                    }
                }
                ("b" | "c", '"') => {
                    i = string_end(&chars, i + 1, &mut line)
                        .ok_or_else(|| (start, "unterminated string".to_owned()))?;
                    push(&mut out, Tok::Literal);
                }
                ("b", '\'') => {
                    i += 1; // inside the quotes
                    i += if at(i) == '\\' { 2 } else { 1 };
                    while i < chars.len() && chars[i] != '\'' {
                        i += 1;
                    }
                    if i >= chars.len() {
                        return Err((start, "unterminated byte literal".into()));
                    }
                    i += 1;
                    push(&mut out, Tok::Literal);
                }
                _ => push(&mut out, Tok::Ident(word)),
            }
        } else if c == ':' && at(i + 1) == ':' {
            i += 2;
            push(&mut out, Tok::PathSep);
        } else {
            i += 1;
            push(&mut out, Tok::Punct(c));
        }
    }
    Ok(out)
}

/// Past the closing quote of a string whose text starts at `i` (escapes skipped).
fn string_end(chars: &[char], mut i: usize, line: &mut usize) -> Option<usize> {
    while i < chars.len() {
        match chars[i] {
            '"' => return Some(i + 1),
            '\\' => {
                if chars.get(i + 1) == Some(&'\n') {
                    *line += 1;
                }
                i += 2;
            }
            '\n' => {
                *line += 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// Past the `"` and `hashes` `#`s that close a raw string whose text starts at `i`.
fn raw_string_end(chars: &[char], mut i: usize, hashes: usize, line: &mut usize) -> Option<usize> {
    while i < chars.len() {
        if chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#')) {
            return Some(i + 1 + hashes);
        }
        if chars[i] == '\n' {
            *line += 1;
        }
        i += 1;
    }
    None
}

/// The attribute starting at `i` (`#[…]` or `#![…]`): whether it is inner, whether it is
/// `cfg(test)` (or `cfg(all(test, …))`), and the index past its `]`.
fn attribute_at(tokens: &[Token], i: usize) -> Option<(bool, bool, usize)> {
    let tok = |k: usize| tokens.get(k).map(|t| &t.tok);
    if tok(i) != Some(&Tok::Punct('#')) {
        return None;
    }
    let inner = tok(i + 1) == Some(&Tok::Punct('!'));
    let open = if inner { i + 2 } else { i + 1 };
    if tok(open) != Some(&Tok::Punct('[')) {
        return None;
    }
    let mut depth = 0;
    let mut k = open;
    while let Some(t) = tok(k) {
        match t {
            Tok::Punct('[') => depth += 1,
            Tok::Punct(']') => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            _ => {}
        }
        k += 1;
    }
    let content = &tokens[open + 1..k.min(tokens.len())];
    let words: Vec<String> = content
        .iter()
        .map(|t| match &t.tok {
            Tok::Ident(w) => w.clone(),
            Tok::Punct(c) => c.to_string(),
            Tok::PathSep => "::".into(),
            _ => "…".into(),
        })
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let test_only = match words.as_slice() {
        ["cfg", "(", "test", ")"] => true,
        ["cfg", "(", "all", "(", rest @ ..] => {
            // `test` as one of all's own arguments.
            let mut depth = 0;
            let mut found = false;
            for (n, w) in rest.iter().enumerate() {
                match *w {
                    "(" => depth += 1,
                    ")" => depth -= 1,
                    "test" if depth == 0 => {
                        let before = if n == 0 { "," } else { rest[n - 1] };
                        let after = rest.get(n + 1).copied().unwrap_or(")");
                        found |= before == "," && (after == "," || after == ")");
                    }
                    _ => {}
                }
            }
            found
        }
        _ => false,
    };
    Some((inner, test_only, k + 1))
}

/// `tokens` without the items under `#[cfg(test)]` (to their matching `}` or their `;`, or
/// their `,` in a list) and the rest of a scope under `#![cfg(test)]`.
fn without_test_code(tokens: &[Token]) -> Vec<Token> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        match attribute_at(tokens, i) {
            Some((true, true, end)) => i = scope_end(tokens, end),
            Some((false, true, end)) => {
                let mut j = end;
                while let Some((false, _, next)) = attribute_at(tokens, j) {
                    j = next;
                }
                i = item_end(tokens, j);
            }
            _ => {
                out.push(tokens[i].clone());
                i += 1;
            }
        }
    }
    out
}

/// The index of the bracket that closes the scope `i` is in (or the end).
fn scope_end(tokens: &[Token], mut i: usize) -> usize {
    let mut depth = 0usize;
    while let Some(t) = tokens.get(i) {
        match t.tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                if depth == 0 {
                    return i;
                }
                depth -= 1;
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// Past the end of the item (statement, field, match arm) starting at `i`.
fn item_end(tokens: &[Token], mut i: usize) -> usize {
    let statement = matches!(&tokens.get(i).map(|t| &t.tok), Some(Tok::Ident(w)) if w == "let");
    let mut depth = 0usize;
    while let Some(t) = tokens.get(i) {
        match t.tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                if depth == 0 {
                    return i; // the end of the list or block the item is in
                }
                depth -= 1;
                if depth == 0 && t.tok == Tok::Punct('}') && !statement {
                    return i + 1;
                }
            }
            Tok::Punct(';') if depth == 0 => return i + 1,
            Tok::Punct(',') if depth == 0 && !statement => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

// ---------------------------------------------------------------------------------------------
// The code map.

/// The files (paths under `src/`) that `markdown` does not name: by their path under `src/`
/// (`store/hot.rs`, `src/store/hot.rs`, a heading `## src/config.rs`; a file directly in `src/`
/// needs the `src/`, since a bare `name.rs` may be any directory's), or by their path under the
/// directory of a section headed `## src/<dir>/` within that section (`hot.rs` under
/// `## src/store/`, `ui/pages.rs` under `## src/web/`).
fn unlisted_files(markdown: &str, files: &[&str]) -> Vec<String> {
    let mut everywhere: BTreeSet<String> = BTreeSet::new();
    let mut sections: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        let level = line.chars().take_while(|&c| c == '#').count();
        if !fenced && (1..=2).contains(&level) && line[level..].starts_with(' ') {
            let heading = line[level..].trim().trim_matches('`');
            section = heading
                .strip_prefix("src/")
                .and_then(|d| d.strip_suffix('/'))
                .map(str::to_owned);
        }
        for word in line
            .split(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')))
            .map(|w| w.trim_matches('.'))
            .filter(|w| w.ends_with(".rs"))
        {
            everywhere.insert(word.to_owned());
            if let Some(dir) = &section {
                sections
                    .entry(dir.clone())
                    .or_default()
                    .insert(word.to_owned());
            }
        }
    }
    files
        .iter()
        .filter(|file| {
            // A bare `name.rs` is a path under src/ only in the section of src/ itself.
            let by_path = (file.contains('/') && everywhere.contains(**file))
                || everywhere.contains(&format!("src/{file}"));
            let in_section = sections.iter().any(|(dir, words)| {
                let rest = match dir.as_str() {
                    "" => Some(**file),
                    dir => file
                        .strip_prefix(dir)
                        .and_then(|rest| rest.strip_prefix('/')),
                };
                rest.is_some_and(|rest| words.contains(rest))
            });
            !(by_path || in_section)
        })
        .map(|f| f.to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The checker's own tests: planted sources, no files.

mod checker {
    use super::*;

    const LIB: &str = "pub mod model;\npub mod command;\npub mod store;\npub mod web;\n\
                       pub mod bus;\npub mod wire;\n";

    fn run(files: &[(&str, &str)]) -> Vec<Finding> {
        let mut all = vec![("src/lib.rs", LIB)];
        all.extend_from_slice(files);
        check(&all)
    }

    /// The single finding, which must be a layer violation: (file, line, from, path).
    fn one_layer(findings: &[Finding]) -> (String, usize, String, String) {
        match findings {
            [Finding::Layer(i)] => (i.file.clone(), i.line, i.from.clone(), i.path.clone()),
            _ => panic!("expected one layer violation, got {findings:#?}"),
        }
    }

    fn imports_of(file: &str, text: &str) -> Vec<(usize, String)> {
        let module = module_path(file).expect("a module file");
        scan(file, &module, text)
            .expect("readable")
            .into_iter()
            .map(|s| match s {
                Scanned::Import(i) => (i.line, i.path),
                Scanned::BeyondRoot { line, written } => (line, format!("beyond: {written}")),
            })
            .collect()
    }

    #[test]
    fn a_group_is_read_element_by_element() {
        let findings = run(&[(
            "src/wire.rs",
            "//! The format.\n\nuse crate::{store, model::Node, web::x};\n",
        )]);
        assert_eq!(findings.len(), 2, "{findings:#?}");
        let paths: Vec<(usize, &str, &str)> = findings
            .iter()
            .map(|f| match f {
                Finding::Layer(i) => (i.line, i.from.as_str(), i.path.as_str()),
                _ => panic!("{f}"),
            })
            .collect();
        assert_eq!(paths, [(3, "wire", "store"), (3, "wire", "web::x")]);
        let message = findings[1].to_string();
        assert_eq!(
            message,
            "src/wire.rs:3: wire (formats, layer 2) imports web::x — web is in adapters \
             (layer 5), above layer 2: only lower layers may be imported"
        );
    }

    #[test]
    fn nested_groups_name_their_first_segments() {
        assert_eq!(
            imports_of(
                "src/modes/x.rs",
                "use crate::{\n    self,\n    store::{a, b},\n    web::{c::{d, e}, f},\n    \
                 {bus, model::N},\n};\n"
            ),
            [
                (3, "store::{…}".to_owned()),
                (4, "web::{…}".to_owned()),
                (5, "bus".to_owned()),
                (5, "model::N".to_owned()),
            ]
        );
    }

    #[test]
    fn an_inline_path_in_a_body_is_an_import() {
        let findings = run(&[(
            "src/store/mod.rs",
            "pub fn f() -> u32 {\n    let x = 1;\n    crate::web::f(x)\n}\n",
        )]);
        assert_eq!(
            one_layer(&findings),
            (
                "src/store/mod.rs".into(),
                3,
                "store".into(),
                "web::f".into()
            )
        );
    }

    #[test]
    fn a_path_inside_a_macro_invocation_is_an_import() {
        let findings = run(&[(
            "src/store/hot.rs",
            "fn f() {\n    tracing::info!(\n        x = %crate::bus::wire::name(),\n        \
             \"pushed\"\n    );\n}\n",
        )]);
        assert_eq!(
            one_layer(&findings),
            (
                "src/store/hot.rs".into(),
                3,
                "store".into(),
                "bus::wire::name".into()
            )
        );
    }

    #[test]
    fn super_chains_resolve_against_the_file() {
        // src/store/hot/ring.rs is crate::store::hot::ring: three supers are the root.
        let findings = run(&[(
            "src/store/hot/ring.rs",
            "use super::super::model;\nuse super::super::super::web::Router;\n",
        )]);
        assert_eq!(
            one_layer(&findings),
            (
                "src/store/hot/ring.rs".into(),
                2,
                "store".into(),
                "web::Router".into()
            )
        );
        assert!(
            findings[0]
                .to_string()
                .contains("(as super::super::super::web::Router)")
        );
        // src/store/hot.rs is crate::store::hot: two supers are the root, three are past it.
        let findings = run(&[(
            "src/store/hot.rs",
            "use super::ring;\nfn f() {\n    super::super::web::g()\n}\n",
        )]);
        assert_eq!(
            one_layer(&findings),
            (
                "src/store/hot.rs".into(),
                3,
                "store".into(),
                "web::g".into()
            )
        );
        assert_eq!(
            check(&[("src/store/hot.rs", "\nuse super::super::super::web;")]),
            [Finding::BeyondRoot {
                file: "src/store/hot.rs".into(),
                line: 2,
                written: "super::super::super".into()
            }]
        );
        // One super from src/store/mod.rs or src/store.rs is the root.
        assert_eq!(
            imports_of("src/store/mod.rs", "use super::{web, model::N};"),
            [(1, "web".to_owned()), (1, "model::N".to_owned())]
        );
        assert_eq!(
            imports_of("src/store.rs", "use super::web;\nuse self::super::bus;"),
            [(1, "web".to_owned()), (2, "bus".to_owned())]
        );
        // Inside an inline module, one more super is needed.
        assert_eq!(
            imports_of(
                "src/model.rs",
                "pub mod limits {\n    use super::Name;\n    fn f() { super::super::web::g() }\n}\n\
                 use super::command;\n"
            ),
            [(3, "web::g".to_owned()), (5, "command".to_owned())]
        );
    }

    #[test]
    fn dollar_crate_in_macro_rules_is_an_import() {
        let findings = run(&[(
            "src/model.rs",
            "macro_rules! route {\n    ($x:expr) => {\n        $crate::web::route($x)\n    };\n}\n",
        )]);
        assert_eq!(
            one_layer(&findings),
            (
                "src/model.rs".into(),
                3,
                "model".into(),
                "web::route".into()
            )
        );
        assert!(findings[0].to_string().contains("(as $crate::web::route)"));
    }

    #[test]
    fn a_cycle_among_values_is_reported_with_its_edges() {
        let findings = run(&[
            ("src/model.rs", "use crate::command::Kind;\n"),
            (
                "src/command.rs",
                "//! Commands.\n\npub fn f() -> crate::model::Node { todo!() }\n",
            ),
        ]);
        let [Finding::Cycle { edges }] = findings.as_slice() else {
            panic!("expected one cycle, got {findings:#?}");
        };
        let edges: Vec<(&str, usize, &str)> = edges
            .iter()
            .map(|e| (e.file.as_str(), e.line, e.path.as_str()))
            .collect();
        assert_eq!(
            edges,
            [
                ("src/command.rs", 3, "model::Node"),
                ("src/model.rs", 1, "command::Kind")
            ]
        );
        assert_eq!(
            findings[0].to_string(),
            "import cycle command → model → command:\n    \
             src/command.rs:3: command imports model::Node\n    \
             src/model.rs:1: model imports command::Kind"
        );
    }

    #[test]
    fn adapters_may_not_import_each_other() {
        let findings = run(&[(
            "src/bus/nats.rs",
            "use crate::model::Node;\nuse crate::store::Durable;\n\nuse crate::web::error;\n",
        )]);
        assert_eq!(
            one_layer(&findings),
            (
                "src/bus/nats.rs".into(),
                4,
                "bus".into(),
                "web::error".into()
            )
        );
        assert_eq!(
            findings[0].to_string(),
            "src/bus/nats.rs:4: bus (adapters, layer 5) imports web::error — web is in adapters \
             too, and adapters may not import each other"
        );
    }

    #[test]
    fn comments_literals_and_test_code_are_not_imports() {
        let text = r####"
// use crate::web;
/* crate::web /* nested */ crate::web */
/// [`crate::web`]
//! crate::web
const A: &str = "crate::web::f()";
const B: &str = r#"crate::web "quoted" "#;
const C: &[u8] = br##"crate::web"#"##;
const D: char = '"';
const E: u8 = b'\'';
const F: &str = "\"crate::web\"";
fn g<'a>(x: &'a str) -> &'a str { 'outer: loop { break 'outer x; } }
#[cfg(test)]
mod tests {
    use crate::web;
    fn f() { crate::web::x(); }
}
#[cfg(test)]
use crate::web::y;
#[cfg(test)]
#[allow(dead_code)]
fn h() -> [u8; 2] { crate::web::z() }
struct S {
    #[cfg(test)]
    hits: crate::web::Hits,
    kept: crate::model::Kept,
}
pub(crate) fn i() {}
pub(in crate::store) fn j() {}
fn k() { let z = crate::model::after(); }
"####;
        assert_eq!(
            imports_of("src/store/mod.rs", text),
            [
                (26, "model::Kept".to_owned()),
                (30, "model::after".to_owned())
            ]
        );
        assert_eq!(run(&[("src/store/mod.rs", text)]), []);
    }

    #[test]
    fn pub_crate_is_no_import() {
        assert_eq!(
            imports_of(
                "src/web/mod.rs",
                "pub(crate) struct A;\npub(crate) fn b() {}\npub(super) fn c() {}\n\
                 pub(in crate::web) fn d() {}\n"
            ),
            []
        );
    }

    #[test]
    fn an_unknown_top_level_module_is_reported() {
        let findings = check(&[
            ("src/lib.rs", "pub mod model;\npub mod gadgets;\n"),
            ("src/model.rs", ""),
            ("src/gadgets/mod.rs", "use crate::model::Node;\n"),
            ("src/widgets.rs", ""),
        ]);
        assert_eq!(
            findings,
            [
                Finding::Unknown {
                    module: "gadgets".into(),
                    file: "src/lib.rs".into()
                },
                Finding::Unknown {
                    module: "widgets".into(),
                    file: "src/widgets.rs".into()
                },
            ]
        );
        assert_eq!(
            findings[0].to_string(),
            "src/lib.rs: top-level module gadgets is in no layer: add gadgets to the layers in \
             tests/it/architecture.rs and ARCHITECTURE.md"
        );
    }

    #[test]
    fn an_item_of_the_crate_root_is_above_every_layer() {
        let findings = run(&[("src/store/mod.rs", "fn f() { crate::install_crypto(); }\n")]);
        let [Finding::RootItem(import)] = findings.as_slice() else {
            panic!("{findings:#?}");
        };
        assert_eq!((import.line, import.path.as_str()), (1, "install_crypto"));
    }

    #[test]
    fn lower_layers_and_the_own_module_are_fine() {
        let findings = run(&[
            (
                "src/web/ui/pages.rs",
                "use crate::web::error::ApiError;\nuse super::super::auth;\n\
                 use crate::{model::Node, store::Durable, wire};\nuse crate::config::UiConfig;\n",
            ),
            ("src/wire.rs", "use crate::{command, config, model};"),
        ]);
        assert_eq!(findings, []);
    }

    #[test]
    fn the_layers_name_each_module_once() {
        let mut seen = BTreeSet::new();
        for layer in LAYERS {
            for module in layer.modules {
                assert!(seen.insert(*module), "{module} is in two layers");
            }
        }
    }

    #[test]
    fn the_lexer_counts_lines_through_literals_and_comments() {
        let tokens = lex("a\n\"x\ny\"\n/* \n */ r#\"\n\"# b 'c' 'd e\n").expect("readable");
        let idents: Vec<(usize, &str)> = tokens
            .iter()
            .filter_map(|t| match &t.tok {
                Tok::Ident(w) => Some((t.line, w.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(idents, [(1, "a"), (6, "b"), (6, "e")]);
        assert!(lex("\"open").is_err());
        assert!(lex("/* /* */").is_err());
    }

    #[test]
    fn the_code_map_names_every_file() {
        let markdown = "# Architecture\n\n\
            The batch goes from `store/hot.rs` to `web/ui/pages/node.rs`.\n\n\
            ## src/config.rs\n\nEvery mode's configuration.\n\n\
            ## src/store/\n\n`durable.rs`, `events.rs` and the `sessions.rs`.\n\n\
            ## src/web/\n\n`ui/live.rs` for streams; `mod.rs` for the router; `chart.rs`.\n\n\
            ## Elsewhere\n\n`logins.rs` and `api.rs`.\n";
        let files = [
            "config.rs",
            "store/hot.rs",
            "store/durable.rs",
            "store/events.rs",
            "store/sessions.rs",
            "store/logins.rs",
            "store/mod.rs",
            "web/mod.rs",
            "web/api.rs",
            "web/ui/live.rs",
            "web/ui/pages/node.rs",
            "web/ui/chart.rs",
            "model.rs",
            "durable.rs",
        ];
        assert_eq!(
            unlisted_files(markdown, &files),
            [
                "store/logins.rs",
                "store/mod.rs",
                "web/api.rs",
                "web/ui/chart.rs",
                "model.rs",
                "durable.rs",
            ]
        );
    }

    #[test]
    fn a_section_ends_at_the_next_heading() {
        let markdown = "## src/bus/\n\n`wire.rs`\n\n### Details\n\n`spool.rs`\n\n## Other\n\n\
                        `http.rs`\n\n## src/bus/nats/\n\n`subjects.rs`\n";
        assert_eq!(
            unlisted_files(
                markdown,
                &[
                    "bus/wire.rs",
                    "bus/spool.rs",
                    "bus/http.rs",
                    "bus/nats/subjects.rs"
                ]
            ),
            ["bus/http.rs"]
        );
    }
}
