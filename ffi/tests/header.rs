//! ffi/include/loraforge.h against the Rust definitions in ffi/src/*.rs, so they cannot drift:
//! every `extern "C" fn lf_*` (name, parameter names and C types, return type), every
//! `#[repr(C)]` struct (field order, names, types), every callback typedef, and every `LF_*`
//! constant (name and value) must appear on both sides, identical. Plain text parsing: no
//! bindgen / cbindgen (not available offline), so the header stays hand-written and readable.
//!
//! Type mapping (Rust → C): c_char/c_int/c_void → char/int/void, i32/i64/u64 → int32_t/int64_t/
//! uint64_t, f64 → double, `*const T` → `const T *`, `*mut T` → `T *`, `LfFooBar` → `lf_foo_bar`.

use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, PartialEq, Eq, Clone)]
struct Func {
    ret: String,
    params: Vec<(String, String)>, // (name, normalized C type)
}

#[derive(Default, Debug)]
struct Api {
    funcs: BTreeMap<String, Func>,
    structs: BTreeMap<String, Vec<(String, String)>>,
    callbacks: BTreeMap<String, Func>,
    consts: BTreeMap<String, i64>,
}

/// `const char *` → `const char*`, `char **` → `char**`, whitespace collapsed.
fn norm_c(t: &str) -> String {
    let t = t.split_whitespace().collect::<Vec<_>>().join(" ");
    t.replace(" *", "*").replace("* ", "*")
}

fn snake(camel: &str) -> String {
    let mut s = String::new();
    for (i, ch) in camel.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                s.push('_');
            }
            s.push(ch.to_ascii_lowercase());
        } else {
            s.push(ch);
        }
    }
    s
}

fn c_of_rust(t: &str) -> String {
    let t = t.trim();
    if let Some(rest) = t.strip_prefix("*const ") {
        return format!("const {}*", c_of_rust(rest));
    }
    if let Some(rest) = t.strip_prefix("*mut ") {
        return format!("{}*", c_of_rust(rest));
    }
    match t {
        "" | "()" => "void".into(),
        "c_char" => "char".into(),
        "c_int" => "int".into(),
        "c_void" => "void".into(),
        "i32" => "int32_t".into(),
        "i64" => "int64_t".into(),
        "u64" => "uint64_t".into(),
        "f64" => "double".into(),
        "f32" => "float".into(),
        lf if lf.starts_with("Lf") => snake(lf),
        other => panic!("no C spelling for Rust type `{other}`: add it to c_of_rust"),
    }
}

/// Splits at top-level commas (outside (), <>, {}).
fn split_top(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0i32);
    for ch in s.chars() {
        match ch {
            '(' | '<' | '{' => depth += 1,
            ')' | '>' | '}' => depth -= 1,
            _ => {}
        }
        if ch == ',' && depth == 0 {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(ch);
        }
    }
    out.push(cur);
    out.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// The text between the `(` at `open` and its matching `)`, and the index after it.
fn balanced(s: &str, open: usize) -> (&str, usize) {
    let mut depth = 0;
    for (i, ch) in s[open..].char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return (&s[open + 1..open + i], open + i + 1);
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses after {}", &s[open..open.saturating_add(60).min(s.len())]);
}

fn rust_params(args: &str) -> Vec<(String, String)> {
    split_top(args)
        .iter()
        .map(|a| {
            let (n, t) = a.split_once(':').unwrap_or_else(|| panic!("parameter without a type: {a}"));
            (n.trim().to_string(), norm_c(&c_of_rust(t)))
        })
        .collect()
}

fn rust_ret(after: &str) -> String {
    let t = after.trim();
    norm_c(&c_of_rust(t.strip_prefix("->").unwrap_or(t).trim()))
}

fn parse_rust(src: &str, api: &mut Api) {
    // Functions.
    let mut at = 0;
    while let Some(i) = src[at..].find("extern \"C\" fn lf_") {
        let start = at + i + "extern \"C\" fn ".len();
        let open = start + src[start..].find('(').unwrap();
        let name = src[start..open].trim().to_string();
        let (args, after) = balanced(src, open);
        let body = after + src[after..].find('{').unwrap();
        let f = Func { ret: rust_ret(&src[after..body]), params: rust_params(args) };
        assert!(api.funcs.insert(name.clone(), f).is_none(), "{name} defined twice");
        at = body;
    }
    // Callback aliases: pub type LfXxxCb = Option<unsafe extern "C" fn(args) -> c_int>;
    let mut at = 0;
    while let Some(i) = src[at..].find("pub type Lf") {
        let start = at + i + "pub type ".len();
        let eq = start + src[start..].find('=').unwrap();
        let name = snake(src[start..eq].trim());
        let open = eq + src[eq..].find("fn(").unwrap() + 2;
        let (args, after) = balanced(src, open);
        let end = after + src[after..].find(">;").unwrap();
        api.callbacks.insert(name, Func { ret: rust_ret(&src[after..end]), params: rust_params(args) });
        at = end;
    }
    // #[repr(C)] structs.
    let mut at = 0;
    while let Some(i) = src[at..].find("#[repr(C)]") {
        let s = at + i;
        let kw = s + src[s..].find("pub struct ").unwrap() + "pub struct ".len();
        let brace = kw + src[kw..].find('{').unwrap();
        let name = snake(src[kw..brace].trim());
        let close = brace + src[brace..].find('}').unwrap();
        let fields = src[brace + 1..close]
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("pub "))
            .map(|l| {
                let (n, t) = l.trim_start_matches("pub ").trim_end_matches(',').split_once(':').unwrap();
                (n.trim().to_string(), norm_c(&c_of_rust(t)))
            })
            .collect();
        api.structs.insert(name, fields);
        at = close;
    }
    // Constants.
    for line in src.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("pub const LF_") {
            let (name, val) = rest.split_once(": c_int =").expect("pub const LF_*: c_int = N;");
            let v: i64 = val.trim().trim_end_matches(';').parse().expect("integer constant");
            api.consts.insert(format!("LF_{}", name.trim()), v);
        }
    }
}

fn strip_c_comments(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find("*/").expect("unterminated comment") + i + 2;
        out.push(' ');
        rest = &rest[end..];
    }
    out.push_str(rest);
    out.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n")
}

/// `const char *path` → ("path", "const char*").
fn c_param(p: &str) -> (String, String) {
    let p = p.trim();
    let split = p.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).expect("parameter needs a name");
    (p[split + 1..].to_string(), norm_c(&p[..=split]))
}

fn c_params(args: &str) -> Vec<(String, String)> {
    if args.trim() == "void" {
        return Vec::new();
    }
    split_top(args).iter().map(|a| c_param(a)).collect()
}

fn parse_header(h: &str) -> Api {
    let text = strip_c_comments(h);
    let text = text.replace("extern \"C\" {", "").replace("extern \"C\"", "");
    let mut api = Api::default();
    // Top-level statements end in ';' outside braces.
    let (mut stmts, mut cur, mut depth) = (Vec::new(), String::new(), 0);
    for ch in text.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if ch == ';' && depth == 0 {
            stmts.push(std::mem::take(&mut cur));
        } else {
            cur.push(ch);
        }
    }
    for s in stmts {
        let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
        let s = s.trim_start_matches('}').trim();
        if s.is_empty() {
            continue;
        }
        if let Some(rest) = s.strip_prefix("enum ") {
            let body = &rest[rest.find('{').unwrap() + 1..rest.rfind('}').unwrap()];
            for item in split_top(body) {
                let (n, v) = item.split_once('=').expect("enum values are explicit");
                api.consts.insert(n.trim().to_string(), v.trim().parse().unwrap());
            }
        } else if let Some(rest) = s.strip_prefix("typedef struct ") {
            if let Some(b) = rest.find('{') {
                let name = rest[..b].trim().to_string();
                let close = rest.rfind('}').unwrap();
                assert_eq!(rest[close + 1..].trim(), name, "typedef struct {name} {{..}} {name};");
                let fields = rest[b + 1..close].split(';').filter(|f| !f.trim().is_empty()).map(c_param).collect();
                api.structs.insert(name, fields);
            } // else an opaque handle: `typedef struct lf_model lf_model`
        } else if let Some(rest) = s.strip_prefix("typedef ") {
            // typedef int (*name)(args)
            let open = rest.find("(*").expect("callback typedef");
            let close = rest[open..].find(')').unwrap() + open;
            let name = rest[open + 2..close].trim().to_string();
            let (args, _) = balanced(rest, rest[close..].find('(').unwrap() + close);
            api.callbacks.insert(name, Func { ret: norm_c(&rest[..open]), params: c_params(args) });
        } else {
            let open = s.find('(').unwrap_or_else(|| panic!("unrecognised header statement: {s}"));
            let (name, ret) = c_param(&s[..open]);
            let (args, _) = balanced(s, open);
            api.funcs.insert(name, Func { ret, params: c_params(args) });
        }
    }
    api
}

fn load() -> (Api, Api) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header = std::fs::read_to_string(dir.join("include/loraforge.h")).expect("ffi/include/loraforge.h");
    let mut rust = Api::default();
    let mut files: Vec<_> = std::fs::read_dir(dir.join("src")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "rs")) {
        if f.file_name().unwrap() == "tests.rs" {
            continue;
        }
        parse_rust(&std::fs::read_to_string(f).unwrap(), &mut rust);
    }
    (parse_header(&header), rust)
}

fn compare<T: PartialEq + std::fmt::Debug>(what: &str, c: &BTreeMap<String, T>, rust: &BTreeMap<String, T>) {
    let mut bad = Vec::new();
    for (k, v) in c {
        match rust.get(k) {
            None => bad.push(format!("{what} {k}: in the header, not in ffi/src")),
            Some(r) if r != v => bad.push(format!("{what} {k}:\n  header: {v:?}\n  rust:   {r:?}")),
            _ => {}
        }
    }
    for k in rust.keys().filter(|k| !c.contains_key(*k)) {
        bad.push(format!("{what} {k}: in ffi/src, not in the header"));
    }
    assert!(bad.is_empty(), "loraforge.h and ffi/src disagree:\n{}", bad.join("\n"));
}

#[test]
fn header_matches_rust_definitions() {
    let (c, rust) = load();
    // Guard against a parser that finds nothing (a test that cannot fail).
    assert!(c.funcs.len() >= 20, "header parser found only {:?}", c.funcs.keys());
    assert!(rust.funcs.len() >= 20, "rust parser found only {:?}", rust.funcs.keys());
    compare("function", &c.funcs, &rust.funcs);
    compare("struct", &c.structs, &rust.structs);
    compare("callback", &c.callbacks, &rust.callbacks);
    compare("constant", &c.consts, &rust.consts);
    assert_eq!(c.structs.len(), 2, "lf_train_params and lf_progress");
    assert_eq!(c.callbacks.len(), 2, "lf_token_cb and lf_progress_cb");
}

/// Every call that can fail returns an int status; the exceptions are listed and documented.
#[test]
fn every_fallible_call_returns_a_status() {
    let (c, _) = load();
    let not_status = [
        ("lf_version", "const char*"),
        ("lf_build_features", "const char*"),
        ("lf_last_error", "const char*"),
        ("lf_string_free", "void"),
        ("lf_model_free", "void"),
        ("lf_trainer_free", "void"),
        ("lf_train_default_params", "lf_train_params"),
    ];
    for (name, f) in &c.funcs {
        assert!(name.starts_with("lf_"), "{name}: every symbol is prefixed lf_");
        match not_status.iter().find(|(n, _)| n == name) {
            Some((_, ret)) => assert_eq!(&f.ret, ret, "{name}"),
            None => assert_eq!(f.ret, "int", "{name} must return an lf_status int"),
        }
    }
    // The first function the header declares is lf_version.
    let h = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/loraforge.h")).unwrap();
    let text = strip_c_comments(&h);
    let first = text
        .match_indices("lf_")
        .map(|(i, _)| &text[i..])
        .find(|t| t.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).is_some_and(|e| t[e..].starts_with('(')))
        .map(|t| &t[..t.find('(').unwrap()]);
    assert_eq!(first, Some("lf_version"), "lf_version is declared first");
}

/// The parsers themselves, on a snippet with a deliberate mismatch: the comparison must fail.
#[test]
fn comparison_catches_a_drift() {
    let c =
        parse_header("int lf_x(const char *path, lf_model **out); typedef struct lf_p { int32_t a; double b; } lf_p;");
    let mut r = Api::default();
    parse_rust(
        "pub extern \"C\" fn lf_x(path: *const c_char, out: *mut *mut LfModel) -> c_int {}\n\
         #[repr(C)]\npub struct LfP {\n    pub a: i32,\n    pub b: f32,\n}\n",
        &mut r,
    );
    assert_eq!(c.funcs, r.funcs, "same prototype parses the same");
    assert_eq!(c.funcs["lf_x"].params[1], ("out".to_string(), "lf_model**".to_string()));
    assert_ne!(c.structs["lf_p"], r.structs["lf_p"], "double vs f32 must differ");
}
