//! The userspace's layer rule, checked: every `crate::` path in `lb-userspace/src` may only
//! name a layer below its own (docs/ARCHITECTURE.md), some layers may not use some crates,
//! and no two modules import each other, directly or around a circle.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use syn::visit::Visit;

/// Each layer and the layers it may import from. `cli` sits on top: it converts flags into
/// model types and the daemon's configuration, so it may name any layer.
const LAYERS: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("store", &["model"]),
    ("datapath", &["model", "store"]),
    ("control", &["model", "store", "datapath"]),
    ("api", &["model"]),
    ("daemon", &["model", "store", "datapath", "control", "api"]),
    (
        "cli",
        &["model", "store", "datapath", "control", "api", "daemon"],
    ),
];

/// Crates a layer must not use: the model is pure, the API could be its own crate.
const FORBIDDEN_CRATES: &[(&str, &[&str])] = &[
    (
        "model",
        &[
            "aya",
            "aya_log",
            "tokio",
            "tokio_util",
            "clap",
            "libc",
            "rustix",
            "axum",
        ],
    ),
    (
        "store",
        &["aya", "aya_log", "tokio", "tokio_util", "clap", "axum"],
    ),
    ("api", &["aya", "aya_log", "clap", "libc", "tokio", "axum"]),
    ("control", &["clap", "axum"]),
    ("datapath", &["clap", "axum"]),
];

/// A module of the crate: its path below `crate`, e.g. `["datapath", "maps"]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Module(Vec<String>);

impl Module {
    fn layer(&self) -> Option<&str> {
        self.0.first().map(String::as_str)
    }

    /// The file-level module a path names: at most layer and module.
    fn file_level(&self) -> Module {
        Module(self.0.iter().take(2).cloned().collect())
    }
}

impl fmt::Display for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "crate::{}", self.0.join("::"))
    }
}

/// What one file names: crate modules and external crates.
#[derive(Default)]
struct Names {
    modules: BTreeSet<Module>,
    /// Named only by `#[cfg(test)]` code: held to the layer rule, but not an edge of the
    /// module graph (a test module may share fixtures with the module it tests).
    test_modules: BTreeSet<Module>,
    crates: BTreeSet<String>,
}

/// Collects every path of a file, resolving `crate::`, `super::` and `self::` against the
/// module the path sits in (inline modules such as `mod tests` included).
struct Collector {
    /// The module of the item being visited.
    here: Vec<String>,
    /// Inside a `#[cfg(test)]` item.
    in_test: bool,
    names: Names,
}

impl Collector {
    fn record(&mut self, segments: &[String]) {
        let Some(first) = segments.first() else {
            return;
        };
        let resolved = match first.as_str() {
            "crate" => segments[1..].to_vec(),
            "super" | "self" => {
                let mut base = self.here.clone();
                let mut rest = segments;
                while let Some(segment) = rest.first() {
                    match segment.as_str() {
                        "super" => {
                            base.pop();
                        }
                        "self" => {}
                        _ => break,
                    }
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                base
            }
            name if segments.len() > 1 || name.chars().all(|c| c.is_lowercase() || c == '_') => {
                self.names.crates.insert(name.to_owned());
                return;
            }
            _ => return,
        };
        if !resolved.is_empty() {
            let module = Module(resolved).file_level();
            if self.in_test {
                self.names.test_modules.insert(module);
            } else {
                self.names.modules.insert(module);
            }
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.use_tree(prefix, &path.tree);
                prefix.pop();
            }
            syn::UseTree::Name(name) => self.use_leaf(prefix, &name.ident),
            syn::UseTree::Rename(rename) => self.use_leaf(prefix, &rename.ident),
            syn::UseTree::Glob(_) => {
                let full = prefix.clone();
                self.record(&full);
            }
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }

    fn use_leaf(&mut self, prefix: &[String], ident: &syn::Ident) {
        let mut full = prefix.to_vec();
        if ident != "self" {
            full.push(ident.to_string());
        }
        self.record(&full);
    }
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        let was_test = self.in_test;
        self.in_test |= item.attrs.iter().any(is_cfg_test);
        self.here.push(item.ident.to_string());
        syn::visit::visit_item_mod(self, item);
        self.here.pop();
        self.in_test = was_test;
    }

    /// Derive lists are tokens to syn; their paths (`clap::ValueEnum`) count too.
    fn visit_attribute(&mut self, attr: &'ast syn::Attribute) {
        if attr.path().is_ident("derive")
            && let Ok(paths) = attr.parse_args_with(
                syn::punctuated::Punctuated::<syn::Path, syn::Token![,]>::parse_terminated,
            )
        {
            for path in &paths {
                self.visit_path(path);
            }
        }
        syn::visit::visit_attribute(self, attr);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        // Single-segment paths are locals, types in scope or prelude items.
        if path.segments.len() > 1 {
            let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            self.record(&segments);
        }
        syn::visit::visit_path(self, path);
    }
}

fn is_cfg_test(attr: &syn::Attribute) -> bool {
    attr.path().is_ident("cfg")
        && attr
            .parse_args::<syn::Ident>()
            .is_ok_and(|ident| ident == "test")
}

/// The module a source file defines, from its path below `src`.
fn module_of(relative: &Path) -> Option<Module> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop()?;
    let stem = file.strip_suffix(".rs")?;
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    Some(Module(parts))
}

fn names_in(source: &str, module: &Module) -> anyhow::Result<Names> {
    let file = syn::parse_file(source)?;
    let mut collector = Collector {
        here: module.0.clone(),
        in_test: false,
        names: Names::default(),
    };
    collector.visit_file(&file);
    Ok(collector.names)
}

/// Every rule a file breaks.
fn violations(module: &Module, names: &Names) -> Vec<String> {
    let Some(layer) = module.layer() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let Some((_, allowed)) = LAYERS.iter().find(|(name, _)| *name == layer) else {
        return vec![format!(
            "{module}: `{layer}` is not a layer ({})",
            LAYERS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )];
    };
    for target in names.modules.iter().chain(&names.test_modules) {
        let Some(target_layer) = target.layer() else {
            continue;
        };
        if target_layer != layer && !allowed.contains(&target_layer) {
            found.push(format!(
                "{module} imports {target}: `{layer}` may only import from {}",
                if allowed.is_empty() {
                    "no other layer".to_owned()
                } else {
                    allowed.join(", ")
                }
            ));
        }
    }
    if let Some((_, forbidden)) = FORBIDDEN_CRATES.iter().find(|(name, _)| *name == layer) {
        for krate in names
            .crates
            .iter()
            .filter(|c| forbidden.contains(&c.as_str()))
        {
            found.push(format!("{module} uses `{krate}`, which `{layer}` must not"));
        }
    }
    found
}

/// A circle of module imports, if there is one: Tarjan's strongly connected components.
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct Tarjan<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        found: Vec<Vec<Module>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, node: &'a Module) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            self.on_stack.insert(node);
            for next in self.edges.get(node).into_iter().flatten() {
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(member) = self.stack.pop() {
                    self.on_stack.remove(member);
                    component.push(member.clone());
                    if member == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in edges.keys() {
        if !tarjan.index.contains_key(node) {
            tarjan.visit(node);
        }
    }
    tarjan.found
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, found)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
    Ok(())
}

/// Checks `src` (lb-userspace's); the error lists every violation and every circle.
pub(crate) fn check(src: &Path) -> anyhow::Result<usize> {
    let mut files = Vec::new();
    rust_files(src, &mut files)?;
    let mut problems = Vec::new();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for path in &files {
        let relative = path.strip_prefix(src)?;
        // main.rs is the binary: it only calls into the library.
        if relative == Path::new("main.rs") {
            continue;
        }
        let Some(module) = module_of(relative) else {
            continue;
        };
        let source =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let names =
            names_in(&source, &module).with_context(|| format!("parsing {}", path.display()))?;
        problems.extend(violations(&module, &names));
        let from = module.file_level();
        let targets = edges.entry(from.clone()).or_default();
        // A module's own items and its layer's mod.rs are not edges.
        targets.extend(
            names
                .modules
                .into_iter()
                .filter(|t| *t != from && t.0.len() == 2),
        );
    }
    for circle in cycles(&edges) {
        let names: Vec<String> = circle.iter().map(ToString::to_string).collect();
        problems.push(format!("import cycle: {}", names.join(" <-> ")));
    }
    if !problems.is_empty() {
        bail!(
            "the userspace breaks its layer rule (docs/ARCHITECTURE.md):\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(files.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(path: &str) -> Module {
        Module(path.split("::").map(str::to_owned).collect())
    }

    fn problems(path: &str, source: &str) -> Vec<String> {
        let module = module(path);
        violations(&module, &names_in(source, &module).expect("parses"))
    }

    #[test]
    fn imports_downward_pass_and_upward_ones_are_named() {
        assert!(
            problems(
                "daemon::run",
                "use crate::{model::state::State, datapath::maps};"
            )
            .is_empty()
        );
        let upward = problems(
            "datapath::attach",
            "use crate::{cli::args::XdpModeArg, datapath::pins::PinDir};",
        );
        assert_eq!(upward.len(), 1, "{upward:?}");
        assert!(upward[0].contains("crate::cli::args"), "{upward:?}");
        // Inline paths and `super` climbing out of a layer count too.
        assert_eq!(
            problems("model::state", "fn f() { crate::control::map_sync::go(); }").len(),
            1
        );
        assert_eq!(
            problems(
                "api::wire",
                "mod tests { use super::super::super::daemon::run; }"
            )
            .len(),
            1
        );
    }

    #[test]
    fn forbidden_crates_are_named() {
        let found = problems(
            "model::state",
            "#[derive(clap::ValueEnum)] enum Proto { Tcp }",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("`clap`"), "{found:?}");
        assert!(problems("datapath::maps", "use aya::maps::HashMap;").is_empty());
    }

    #[test]
    fn test_modules_obey_the_layers_but_make_no_edges() {
        let module = module("api::wire");
        let names = names_in(
            "#[cfg(test)] mod tests { use crate::api::fixtures; use crate::daemon::run; }",
            &module,
        )
        .expect("parses");
        assert!(names.modules.is_empty());
        assert_eq!(violations(&module, &names).len(), 1);
    }

    #[test]
    fn circles_are_found() {
        let mut edges = BTreeMap::new();
        edges.insert(module("control::map_sync"), [module("model::state")].into());
        edges.insert(module("model::state"), [module("model::health")].into());
        assert!(cycles(&edges).is_empty());
        edges.insert(module("model::health"), [module("model::state")].into());
        let found = cycles(&edges);
        assert_eq!(
            found,
            vec![vec![module("model::health"), module("model::state")]]
        );
    }

    #[test]
    fn files_map_to_modules() {
        assert_eq!(module_of(Path::new("lib.rs")), Some(Module(vec![])));
        assert_eq!(module_of(Path::new("model/mod.rs")), Some(module("model")));
        assert_eq!(
            module_of(Path::new("model/state.rs")),
            Some(module("model::state"))
        );
    }
}
