//! The crate's shape: its top-level modules use each other without a circle, so a
//! module can be read, and changed, knowing only what lies beneath it; and the map
//! at the top of `lib.rs` names every one of them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// Which top-level module uses which, from the code (comments left out).
fn module_uses() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(Path::new("src"), &mut files);
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix("src").expect("under src");
        let top = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|name| name.trim_end_matches(".rs").to_string())
            .expect("a module name");
        if top == "main" || top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let entry = uses.entry(top.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or_default();
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                if let Some(group) = rest.strip_prefix('{') {
                    let group = group.split('}').next().unwrap_or_default();
                    for item in group.split(',') {
                        let name = item.trim().split("::").next().unwrap_or_default();
                        if !name.is_empty() && name != "self" && name != top {
                            entry.insert(name.to_string());
                        }
                    }
                } else {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != top {
                        entry.insert(name);
                    }
                }
            }
        }
    }
    uses
}

/// A circle of modules, if there is one.
fn find_circle(uses: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        module: &str,
        uses: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut circle = path[at..].to_vec();
            circle.push(module.to_string());
            return Some(circle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_string());
        for next in uses.get(module).into_iter().flatten() {
            if let Some(circle) = visit(next, uses, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(module.to_string());
        None
    }
    let mut done = BTreeSet::new();
    uses.keys()
        .find_map(|module| visit(module, uses, &mut Vec::new(), &mut done))
}

#[test]
fn the_top_level_modules_use_each_other_without_a_circle() {
    let uses = module_uses();
    assert!(uses.len() >= 15, "{uses:?}");
    assert_eq!(find_circle(&uses), None, "{uses:#?}");
}

#[test]
fn a_circle_is_found_when_there_is_one() {
    let uses = BTreeMap::from([
        ("app".to_string(), BTreeSet::from(["http".to_string()])),
        ("http".to_string(), BTreeSet::from(["service".to_string()])),
        ("service".to_string(), BTreeSet::from(["app".to_string()])),
    ]);
    assert_eq!(
        find_circle(&uses),
        Some(vec!["app".into(), "http".into(), "service".into(), "app".into()])
    );
}

#[test]
fn the_crate_map_names_every_top_level_module() {
    let lib = std::fs::read_to_string("src/lib.rs").expect("lib.rs");
    let map: String = lib.lines().filter(|line| line.starts_with("//!")).collect();
    for module in module_uses().keys() {
        assert!(
            map.contains(&format!("[`{module}`]")),
            "the map in lib.rs does not name {module}"
        );
    }
}
