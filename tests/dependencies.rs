//! Every dependency a workspace crate declares is used by that crate, and every workspace
//! dependency by some crate: an unused one costs build time and hides what a crate really needs.
//!
//! ```text
//! root Cargo.toml ─ [workspace] members + the root package
//!   each crate's Cargo.toml ─ [dependencies], [dev-dependencies], [build-dependencies]
//!     (also under [target.'cfg(..)']) ─ Rust name: the key, dashes → underscores (a rename's key
//!     is its Rust name; `package =` only names the crate fetched)
//!   ─ used in the crate's sources (src/, tests/, examples/, benches/, build.rs; comments
//!     removed) as `name::…`, `::name::…`, `use name` or `extern crate name`,
//!     or listed in ALLOW with a reason
//! [workspace.dependencies] ─ each key inherited (`workspace = true`) by some crate
//! ```
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

/// Dependencies declared but not visible as a path in the sources: (package, dependency key,
/// why).
const ALLOW: &[(&str, &str, &str)] = &[(
    "meridian-distribution",
    "reqwest",
    "distribution/tests/e2e.rs includes proxy/tests/common/mod.rs by #[path], whose HTTP \
     client is reqwest; the scan sees only the crate's own directory",
)];

/// The dependency tables of a manifest, target-specific ones included.
fn dependency_tables(manifest: &Table) -> Vec<&Table> {
    const KINDS: [&str; 3] = ["dependencies", "dev-dependencies", "build-dependencies"];
    let mut tables: Vec<&Table> = KINDS
        .iter()
        .filter_map(|k| manifest.get(*k)?.as_table())
        .collect();
    if let Some(targets) = manifest.get("target").and_then(Value::as_table) {
        for target in targets.values().filter_map(Value::as_table) {
            tables.extend(KINDS.iter().filter_map(|k| target.get(*k)?.as_table()));
        }
    }
    tables
}

/// Every dependency key a manifest declares, sorted, without repeats.
fn dependency_keys(manifest: &Table) -> BTreeSet<String> {
    dependency_tables(manifest)
        .into_iter()
        .flat_map(|t| t.keys().cloned())
        .collect()
}

/// `source` without `//` and `/* */` comments (doc comments included), so a crate named only in
/// prose does not count as used. Naive about comment markers inside string literals: they cut
/// the rest of the line, which can only hide a use, never invent one.
fn strip_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while !rest.is_empty() {
        let line = rest.find("//");
        let block = rest.find("/*");
        match (line, block) {
            (Some(l), b) if b.is_none_or(|b| l < b) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |n| &rest[l + n..]);
            }
            (_, Some(b)) => {
                out.push_str(&rest[..b]);
                // Block comments nest in Rust.
                let mut depth = 0usize;
                let mut i = b;
                let bytes = rest.as_bytes();
                while i < bytes.len() {
                    if bytes[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if bytes[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(' ');
                rest = &rest[i.min(rest.len())..];
            }
            _ => {
                out.push_str(rest);
                rest = "";
            }
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether `source` (comments removed) uses the crate `name` as a path: `name::…` not inside
/// another path (`::name::…` is the crate), `use name…` or `extern crate name`.
fn uses_crate(source: &str, name: &str) -> bool {
    for (at, _) in source.match_indices(name) {
        let before = &source[..at];
        let after = &source[at + name.len()..];
        if after.starts_with(|c: char| is_ident(c)) || before.ends_with(|c: char| is_ident(c)) {
            continue;
        }
        let as_path = after.starts_with("::")
            && match before.strip_suffix("::") {
                // `::name::…` is the crate; `module::name::…` is not.
                Some(b) => !b.ends_with(|c: char| is_ident(c)),
                None => true,
            };
        let keyword = before.trim_end();
        let after_keyword = before.len() > keyword.len();
        let used = keyword.ends_with("use")
            && after_keyword
            && !keyword[..keyword.len() - 3].ends_with(|c: char| is_ident(c));
        let external = keyword.ends_with("extern crate") && after_keyword;
        if as_path || used || external {
            return true;
        }
    }
    false
}

/// The dependency keys of `manifest` (package `package`) that none of `sources` uses and
/// [`ALLOW`]-style `allow` does not list, sorted.
fn unused_dependencies(
    package: &str,
    manifest: &Table,
    sources: &[String],
    allow: &[(&str, &str, &str)],
) -> Vec<String> {
    let sources: Vec<String> = sources.iter().map(|s| strip_comments(s)).collect();
    dependency_keys(manifest)
        .into_iter()
        .filter(|key| {
            !allow
                .iter()
                .any(|(p, k, _)| *p == package && *k == key.as_str())
        })
        .filter(|key| {
            let rust_name = key.replace('-', "_");
            !sources.iter().any(|s| uses_crate(s, &rust_name))
        })
        .collect()
}

/// The `[workspace.dependencies]` keys of `root` that no manifest of `members` inherits.
fn unused_workspace_dependencies(root: &Table, members: &[&Table]) -> Vec<String> {
    let declared = root
        .get("workspace")
        .and_then(|w| w.get("dependencies"))
        .and_then(Value::as_table);
    let inherited: BTreeSet<&str> = members
        .iter()
        .flat_map(|m| dependency_tables(m))
        .flat_map(|t| t.iter())
        .filter(|(_, v)| v.get("workspace").and_then(Value::as_bool) == Some(true))
        .map(|(k, _)| k.as_str())
        .collect();
    declared
        .into_iter()
        .flat_map(|d| d.keys())
        .filter(|k| !inherited.contains(k.as_str()))
        .cloned()
        .collect()
}

fn read_manifest(path: &Path) -> Table {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.parse::<Table>()
        .unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", path.display()))
}

/// The `.rs` files under `dir`, recursively (bounded by the tree).
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The sources of the crate in `dir`: src/, tests/, examples/, benches/ and build.rs.
fn crate_sources(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for sub in ["src", "tests", "examples", "benches"] {
        rust_files(&dir.join(sub), &mut files);
    }
    let build = dir.join("build.rs");
    if build.is_file() {
        files.push(build);
    }
    assert!(!files.is_empty(), "no sources under {}", dir.display());
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect()
}

/// The workspace root's manifest and every crate's (directory, manifest): the members, then the
/// root package.
fn workspace() -> (Table, Vec<(PathBuf, Table)>) {
    let root_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = read_manifest(&root_dir.join("Cargo.toml"));
    let members = root["workspace"]["members"].as_array().unwrap();
    let mut crates: Vec<(PathBuf, Table)> = members
        .iter()
        .map(|m| {
            let m = m.as_str().unwrap();
            assert!(!m.contains('*'), "member globs are not supported here: {m}");
            let dir = root_dir.join(m);
            let manifest = read_manifest(&dir.join("Cargo.toml"));
            (dir, manifest)
        })
        .collect();
    assert!(
        root.contains_key("package"),
        "the root manifest has a package"
    );
    crates.push((root_dir.to_path_buf(), root.clone()));
    (root, crates)
}

fn package_name(manifest: &Table) -> &str {
    manifest["package"]["name"].as_str().unwrap()
}

#[test]
fn every_crate_uses_every_dependency_it_declares() {
    let (_, crates) = workspace();
    let mut problems = Vec::new();
    for (dir, manifest) in &crates {
        let package = package_name(manifest);
        for key in unused_dependencies(package, manifest, &crate_sources(dir), ALLOW) {
            problems.push(format!(
                "{package} ({}) declares `{key}` but no source uses `{}::`",
                dir.join("Cargo.toml").display(),
                key.replace('-', "_")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "unused dependencies:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_workspace_dependency_is_used_by_some_crate() {
    let (root, crates) = workspace();
    let manifests: Vec<&Table> = crates.iter().map(|(_, m)| m).collect();
    let unused = unused_workspace_dependencies(&root, &manifests);
    assert!(
        unused.is_empty(),
        "[workspace.dependencies] no crate inherits: {unused:?}"
    );
}

#[test]
fn allowed_dependencies_are_declared_and_explained() {
    let (_, crates) = workspace();
    for (package, key, why) in ALLOW {
        let (_, manifest) = crates
            .iter()
            .find(|(_, m)| package_name(m) == *package)
            .unwrap_or_else(|| panic!("ALLOW names {package}, which is not a workspace crate"));
        assert!(
            dependency_keys(manifest).contains(*key),
            "ALLOW lists {package} `{key}`, which it does not declare"
        );
        assert!(
            !why.trim().is_empty(),
            "ALLOW {package} `{key}` needs a reason"
        );
    }
}

// The checks themselves, on a small fake workspace.

fn fake_manifest() -> Table {
    r#"
        [package]
        name = "fake"

        [dependencies]
        used-lib = "1"
        renamed = { package = "real-name", version = "1" }
        never-used = "1"
        only-in-comments = "1"
        only-as-module = "1"
        only-in-ident = "1"
        allowed-derive = "1"

        [dev-dependencies]
        dev-used = "1"
        extern-used = "1"

        [target.'cfg(unix)'.dependencies]
        unix-unused = "1"
        unix-used = "1"
    "#
    .parse()
    .unwrap()
}

fn fake_sources() -> Vec<String> {
    vec![
        "use used_lib::Thing;\n\
         //! only_in_comments::doc\n\
         /* only_in_comments::block /* nested */ still a comment */\n\
         fn f() { renamed::go(); crate::only_as_module::x(); my_only_in_ident::y(); \
         ::unix_used::z(); }\n"
            .to_string(),
        "extern crate extern_used;\n#[test] fn t() { dev_used::check!(); } // never_used::x\n"
            .to_string(),
    ]
}

#[test]
fn the_check_reports_exactly_the_dependencies_no_source_uses() {
    let allow = [("fake", "allowed-derive", "derive only")];
    assert_eq!(
        unused_dependencies("fake", &fake_manifest(), &fake_sources(), &allow),
        [
            "never-used",
            "only-as-module",
            "only-in-comments",
            "only-in-ident",
            "unix-unused"
        ]
    );
    // An allow entry of another package does not apply; without it the derive crate is unused.
    let other = [("other", "allowed-derive", "derive only")];
    assert!(
        unused_dependencies("fake", &fake_manifest(), &fake_sources(), &other)
            .contains(&"allowed-derive".to_string())
    );
    // Once a source uses a dependency, it is no longer reported.
    let mut sources = fake_sources();
    sources.push("use never_used;".to_string());
    assert!(
        !unused_dependencies("fake", &fake_manifest(), &sources, &allow)
            .contains(&"never-used".to_string())
    );
}

#[test]
fn the_check_reports_workspace_dependencies_no_crate_inherits() {
    let root: Table = r#"
        [workspace]
        members = ["a"]
        [workspace.dependencies]
        inherited = "1"
        inherited-by-target = "1"
        same-name-but-not-inherited = "1"
        forgotten = "1"
    "#
    .parse()
    .unwrap();
    let member: Table = r#"
        [dependencies]
        inherited = { workspace = true, features = ["x"] }
        same-name-but-not-inherited = "1"
        [target.'cfg(unix)'.dev-dependencies]
        inherited-by-target.workspace = true
    "#
    .parse()
    .unwrap();
    assert_eq!(
        unused_workspace_dependencies(&root, &[&member]),
        ["forgotten", "same-name-but-not-inherited"]
    );
}

#[test]
fn comments_are_removed_and_code_kept() {
    assert_eq!(
        strip_comments("a // b\nc /* d /* e */ f */ g\n/// h\ni"),
        "a \nc   g\n\ni"
    );
    assert!(uses_crate("pub use foo::bar;", "foo"));
    assert!(uses_crate("use  foo as f;", "foo"));
    assert!(!uses_crate("reuse foo;", "foo"));
    assert!(!uses_crate("self::foo::x()", "foo"));
    assert!(!uses_crate("foobar::x()", "foo"));
}
