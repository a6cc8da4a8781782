//! The layout rule, checked: nothing outside `protocols/` names a protocol module (the
//! registry in `protocols/mod.rs` is the one place that does), and no protocol module
//! names another. `session.rs`, the binary and the core reach protocols only through
//! [`super::Registry`].

use std::path::{Path, PathBuf};

/// The protocol modules: every directory or `.rs` file in `src/protocols/` but the
/// registry's own files.
fn protocol_modules(protocols: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(protocols)
        .expect("src/protocols is readable")
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let path = entry.path();
            let name = path.file_stem()?.to_str()?.to_owned();
            let is_module = path.is_dir() || path.extension().is_some_and(|e| e == "rs");
            (is_module && !matches!(name.as_str(), "mod" | "layout")).then_some(name)
        })
        .collect();
    names.sort();
    names
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir)
        .expect("readable source directory")
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The names `text` reaches through `prefix` (`protocols::` or `super::`):
/// `protocols::mysql::X` and `protocols::{mysql, Registry}` give `mysql` (and
/// `Registry`).
fn names_after(text: &str, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (at, _) in text.match_indices(prefix) {
        // `crate::protocols::`, `super::protocols::`, `protocols::` at a word start.
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &text[at + prefix.len()..];
        let ident = |s: &str| {
            s.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        };
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            names.extend(
                group
                    .split(',')
                    .map(|item| ident(item.trim()))
                    .filter(|name| !name.is_empty()),
            );
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                names.push(name);
            }
        }
    }
    names
}

/// Every place the layout rule is broken, as `FILE: names MODULE`.
fn violations(src: &Path) -> Vec<String> {
    let protocols_dir = src.join("protocols");
    let protocols = protocol_modules(&protocols_dir);
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap_or(&file).to_path_buf();
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let own = relative
            .strip_prefix("protocols")
            .ok()
            .and_then(|inside| inside.components().next())
            .and_then(|first| Path::new(first.as_os_str()).file_stem())
            .and_then(|stem| stem.to_str())
            .map(str::to_owned);
        let is_registry = matches!(own.as_deref(), Some("mod" | "layout"));
        if is_registry {
            continue;
        }
        let mut named = names_after(&text, "protocols::");
        if let Some(own) = &own {
            let protocols = Path::new("protocols");
            let top = [
                protocols.join(own).join("mod.rs"),
                protocols.join(format!("{own}.rs")),
            ];
            if top.contains(&relative) {
                // A protocol's top module reaches its siblings through `super::`.
                named.extend(names_after(&text, "super::"));
            }
        }
        for name in named {
            let is_protocol = protocols.contains(&name);
            let is_own = own.as_deref() == Some(name.as_str());
            if is_protocol && !is_own {
                found.push(format!(
                    "{}: names protocol module `{name}`",
                    relative.display()
                ));
            }
        }
    }
    found
}

#[test]
fn only_the_registry_names_protocol_modules_and_protocols_do_not_name_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let protocols = protocol_modules(&src.join("protocols"));
    assert!(protocols.contains(&"postgres".to_owned()), "{protocols:?}");
    let found = violations(&src);
    assert!(
        found.is_empty(),
        "layout rule broken:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_layout_check_sees_imports_in_every_form() {
    assert_eq!(
        names_after("use crate::protocols::postgres::Handler;", "protocols::"),
        ["postgres"]
    );
    assert_eq!(
        names_after("use crate::protocols::{Registry, mysql};", "protocols::"),
        ["Registry", "mysql"]
    );
    assert_eq!(
        names_after("my_protocols::postgres", "protocols::"),
        Vec::<String>::new()
    );
    assert_eq!(
        names_after("crate::protocols::http::x()", "protocols::"),
        ["http"]
    );
}

#[test]
fn the_layout_check_reports_a_core_module_or_a_protocol_naming_a_protocol() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    let write = |path: &str, text: &str| {
        let path = src.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    write("protocols/mod.rs", "pub mod alpha;\npub mod beta;\n");
    write("protocols/alpha/mod.rs", "use super::beta::Thing;\n");
    write(
        "protocols/alpha/inner.rs",
        "use crate::protocols::alpha::Own;\n",
    );
    write("protocols/beta.rs", "use crate::protocols::Registry;\n");
    write("session.rs", "use crate::protocols::{Registry, beta};\n");
    let mut found = violations(src);
    found.sort();
    assert_eq!(
        found,
        [
            "protocols/alpha/mod.rs: names protocol module `beta`",
            "session.rs: names protocol module `beta`",
        ]
    );
}
