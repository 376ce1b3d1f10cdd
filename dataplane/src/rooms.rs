//! (tests only) The import rule of `docs/architecture.md`, checked against the code: every
//! module under `src/` belongs to a room of the table "Rooms of `dataplane`", and every
//! `crate::…` or `super::…` path in a room's files names its own room, `config`, `stats`, or a
//! room that the table's "may import" column lists for it. The table is read from the doc, so
//! the doc and the code cannot drift apart silently.

use std::collections::BTreeMap;
use std::path::Path;

/// The header cell that starts the table.
const TABLE_HEADER: &str = "| room | owns | may import";

/// What any room may import.
const ALWAYS_ALLOWED: [&str; 2] = ["config", "stats"];

/// Room → what it may import, as written in the doc's table. `*` in an entry (`filter::*`)
/// stands for any room below that prefix; the word "everything" for every room.
fn allowed_imports(doc: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut lines = doc
        .lines()
        .skip_while(|l| !l.starts_with(TABLE_HEADER))
        .skip(2); // header and its |---| line
    let mut table = BTreeMap::new();
    for line in lines.by_ref().take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
        let [room, _owns, imports] = cells[..] else {
            return Err(format!("a row of the rooms table without 3 cells: {line}"));
        };
        let room = ticked(room)
            .into_iter()
            .next()
            .ok_or_else(|| format!("a row without a `room`: {line}"))?;
        let mut may = ticked(imports);
        if imports.contains("everything") {
            may.push("*".to_string());
        }
        table.insert(room, may);
    }
    if table.is_empty() {
        return Err(format!("no table starting with {TABLE_HEADER:?}"));
    }
    Ok(table)
}

/// The `backticked` words of a cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(|s| s.trim().to_string())
        .collect()
}

/// The module path of a file under `src/`: `filter/dubbo/router.rs` → `filter::dubbo::router`,
/// `filter/mod.rs` → `filter`.
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The room of a module: the longest room name that is the module or one of its ancestors.
fn room_of<'a>(module: &str, rooms: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    rooms
        .filter(|r| module == r.as_str() || module.starts_with(&format!("{r}::")))
        .max_by_key(|r| r.len())
}

/// The modules a file's code names: `crate::a::b…` as `a::b…`, and `super::…` resolved against
/// the file's `module` (or an inline module of it, such as `mod tests {`, from its first line
/// on). Comments are not code.
fn named_paths(source: &str, module: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let mut module = module.to_string();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        if let Some(inline) = code.trim().strip_prefix("mod ") {
            if let Some(name) = inline.strip_suffix('{') {
                module = format!("{module}::{}", name.trim());
            }
        }
        for (at, _) in code
            .match_indices("crate::")
            .chain(code.match_indices("super::"))
        {
            // Part of a longer name (`my_crate::`), or the second `super` of `super::super::`.
            if code[..at].ends_with(ident) {
                continue;
            }
            let path: String = code[at..].chars().take_while(|&c| ident(c)).collect();
            let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            let resolved = if segs[0] == "crate" {
                segs[1..].join("::")
            } else {
                // `super` of module `a::b` (file `a/b.rs` or `a/b/mod.rs`) is `a`.
                let ups = segs.iter().take_while(|s| **s == "super").count();
                let mut base: Vec<&str> = module.split("::").collect();
                base.truncate(base.len().saturating_sub(ups));
                base.extend(&segs[ups..]);
                base.join("::")
            };
            out.push(resolved);
        }
    }
    out
}

/// Whether `room` is in `may`, where `a::*` stands for `a` and every room below it.
fn allows(may: &[String], room: &str) -> bool {
    may.iter().any(|m| {
        m == room
            || m == "*"
            || m.strip_suffix("::*")
                .is_some_and(|p| room == p || room.starts_with(&format!("{p}::")))
    })
}

/// Every import in `files` (path under `src/`, source) that the table forbids, as
/// "file: room imports target".
fn violations(table: &BTreeMap<String, Vec<String>>, files: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, source) in files {
        let path = Path::new(rel);
        let module = module_of(path);
        let Some(room) = room_of(&module, table.keys()) else {
            out.push(format!("{rel}: module {module} is in no room of the table"));
            continue;
        };
        for target in named_paths(source, &module) {
            let first = target.split("::").next().unwrap_or("");
            if ALWAYS_ALLOWED.contains(&first) {
                continue;
            }
            let Some(to) = room_of(&target, table.keys()) else {
                out.push(format!("{rel}: {target} is in no room of the table"));
                continue;
            };
            if to != room && !allows(&table[room], to) {
                out.push(format!("{rel}: {room} imports {to} ({target})"));
            }
        }
    }
    out
}

/// Every `.rs` file under `dir`, as (path relative to `root`, contents).
fn sources(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src/")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            sources(root, &p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p.strip_prefix(root).expect("under src/");
            out.push((
                rel.to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).expect("read a source file"),
            ));
        }
    }
}

#[test]
fn every_room_imports_only_what_the_architecture_table_allows() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(manifest.join("../docs/architecture.md"))
        .expect("read docs/architecture.md");
    let table = allowed_imports(&doc).unwrap();
    let src = manifest.join("src");
    let mut files = Vec::new();
    sources(&src, &src, &mut files);
    // The crate root and this test are no room; `bin/` is another crate (it uses `dataplane::`).
    files.retain(|(rel, _)| !rel.starts_with("bin/") && rel != "lib.rs" && rel != "rooms.rs");
    for room in table.keys() {
        let has = |(rel, _): &(String, String)| {
            room_of(&module_of(Path::new(rel)), table.keys()) == Some(room)
        };
        assert!(files.iter().any(has), "room {room} has no file under src/");
    }
    let bad = violations(&table, &files);
    assert!(
        bad.is_empty(),
        "imports the rooms table forbids:\n{}",
        bad.join("\n")
    );
}

#[test]
fn a_forbidden_import_is_reported() {
    let doc = "x\n| room | owns | may import (besides `config`, `stats`) |\n|---|---|---|\n\
               | `io` | sockets | — |\n| `filter` | shared | — |\n\
               | `filter::dubbo` | Dubbo | `filter`, `io` |\n| `worker` | a shard | `filter::*` |\n\
               | `control` | the rest | everything |\n\nafter\n";
    let table = allowed_imports(doc).unwrap();
    assert_eq!(table.len(), 5);
    let file = |rel: &str, src: &str| (rel.to_string(), src.to_string());
    let files = [
        file(
            "filter/dubbo/router.rs",
            "use super::wire;\nuse super::super::Drain;\nuse crate::io::X; // crate::control::no\n",
        ),
        file(
            "worker/mod.rs",
            "use crate::filter::dubbo::A;\nuse crate::stats::B;",
        ),
        file("control/server.rs", "use crate::worker::C;"),
        file(
            "worker/mod.rs",
            "use crate::filter::Drain;\nmod tests {\n    use super::*;\n}",
        ),
        file(
            "filter/mod.rs",
            "use crate::worker::listener::D;\nuse dubbo::router;",
        ),
        file(
            "filter/dubbo/mod.rs",
            "use super::Drain;\nuse super::super::control::G;",
        ),
        file(
            "io/mod.rs",
            "let x = my_crate::worker::E; use crate::control::F;",
        ),
        file("stray.rs", ""),
    ];
    assert_eq!(
        violations(&table, &files),
        [
            "filter/mod.rs: filter imports worker (worker::listener::D)",
            "filter/dubbo/mod.rs: filter::dubbo imports control (control::G)",
            "io/mod.rs: io imports control (control::F)",
            "stray.rs: module stray is in no room of the table",
        ]
    );
}
