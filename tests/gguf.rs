//! GGUF reader/writer tests: fixture blocks decoded bit-exactly against gguf-py's dequantization,
//! writer -> reader round trips of every value type, malformed files that must error without
//! panicking, and (when python's `gguf` package is installed) a written file read by gguf-py.
//! Spec: src/io/gguf.rs, src/quant/ggml.rs.

#[path = "common/mod.rs"]
mod common;

use loraforge::io::gguf::{GgufArray, GgufFile, GgufValue, GgufWriter, TensorInfo};
use loraforge::quant::ggml::{quantize, GgmlType};
use loraforge::quant::DequantRows;
use loraforge::rng::Rng;
use loraforge::Error;
use std::path::PathBuf;

fn quant_dir() -> PathBuf {
    common::fixtures_dir().join("quant")
}

/// A fresh scratch directory for this test (under target/, removed at the start of each run).
fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gguf_tests").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---- fixture: blocks.gguf vs dequant.safetensors (gguf-py dequantization)

#[test]
fn fixture_dequantizes_bit_exactly() {
    let dir = quant_dir();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let g = GgufFile::open(dir.join("blocks.gguf")).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    assert_eq!(g.data_offset() % 32, 0);
    assert_eq!(g.get_str("general.architecture").unwrap(), "loraforge-fixture");

    let st_bytes = std::fs::read(dir.join("dequant.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let cases = manifest["cases"].as_array().unwrap();
    assert_eq!(cases.len(), g.tensors().len(), "manifest lists every tensor");
    let mut types_seen = std::collections::BTreeSet::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (rows, cols) = (case["rows"].as_u64().unwrap() as usize, case["cols"].as_u64().unwrap() as usize);
        let info = g.tensor(name).unwrap();
        assert_eq!(info.ty, GgmlType::from_name(case["type"].as_str().unwrap()).unwrap(), "{name}");
        assert_eq!(info.shape, vec![rows, cols], "{name}: row-major shape");
        assert_eq!(info.ne, vec![cols as u64, rows as u64], "{name}: ggml order");
        types_seen.insert(info.ty.name());

        let want_view = st.tensor(name).unwrap();
        assert_eq!(want_view.dtype(), safetensors::Dtype::F32);
        assert_eq!(want_view.shape(), &[rows, cols]);
        let want: Vec<f32> =
            want_view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();

        let got = g.dequantize_tensor(name).unwrap();
        let bad = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(bad, 0, "{name} ({}): {bad} of {} values differ bitwise", info.ty, want.len());
        let max_abs = got.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert_eq!(max_abs as f64, case["max_abs"].as_f64().unwrap(), "{name}: max_abs");

        // The zero-copy matrix view decodes the same rows.
        let m = g.matrix(name).unwrap();
        assert!(m.data().is_mmap(), "{name}: matrix should borrow the mapping");
        assert_eq!((m.rows(), m.cols()), (rows, cols));
        assert_eq!(m.storage_bytes(), info.n_bytes);
        let mut row = vec![0.0f32; cols];
        for r in 0..rows {
            m.dequantize_row(r, &mut row);
            assert!(row.iter().zip(&want[r * cols..]).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} row {r}");
        }
    }
    // Every dequantizable block type is covered by the fixture.
    for t in ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"] {
        assert!(types_seen.contains(t), "fixture lacks {t}");
    }
}

#[test]
fn fixture_rewritten_reads_back_identically() {
    let g = GgufFile::open(quant_dir().join("blocks.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.add(k.clone(), v.clone()).unwrap();
    }
    for t in g.tensors() {
        w.add_tensor(t.name.clone(), &t.shape, t.ty, g.tensor_bytes(t).unwrap().to_vec()).unwrap();
    }
    let path = scratch("rewrite").join("blocks.gguf");
    w.write(&path).unwrap();
    let h = GgufFile::open(&path).unwrap();
    assert_eq!(h.metadata(), g.metadata());
    for (a, b) in g.tensors().iter().zip(h.tensors()) {
        assert_eq!((&a.name, a.ty, &a.ne), (&b.name, b.ty, &b.ne));
        assert_eq!(g.tensor_bytes(a).unwrap(), h.tensor_bytes(b).unwrap(), "{}", a.name);
    }
    // Same layout rules as gguf-py: our file is byte-identical to the fixture.
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(quant_dir().join("blocks.gguf")).unwrap());
}

// ---- writer -> reader round trips

fn every_value() -> Vec<(&'static str, GgufValue)> {
    use GgufArray as A;
    use GgufValue as V;
    vec![
        ("t.u8", V::U8(200)),
        ("t.i8", V::I8(-100)),
        ("t.u16", V::U16(60000)),
        ("t.i16", V::I16(-30000)),
        ("t.u32", V::U32(4_000_000_000)),
        ("t.i32", V::I32(-2_000_000_000)),
        ("t.f32", V::F32(-1.5e-7)),
        ("t.bool_t", V::Bool(true)),
        ("t.bool_f", V::Bool(false)),
        ("t.string", V::String("héllo, wörld ✓".into())),
        ("t.empty_string", V::String(String::new())),
        ("t.u64", V::U64(u64::MAX)),
        ("t.i64", V::I64(i64::MIN)),
        ("t.f64", V::F64(std::f64::consts::PI)),
        ("a.u8", V::Array(A::U8(vec![0, 1, 255]))),
        ("a.i8", V::Array(A::I8(vec![-128, 0, 127]))),
        ("a.u16", V::Array(A::U16(vec![1, 65535]))),
        ("a.i16", V::Array(A::I16(vec![-32768, 32767]))),
        ("a.u32", V::Array(A::U32(vec![7, u32::MAX]))),
        ("a.i32", V::Array(A::I32(vec![i32::MIN, -1, 3]))),
        ("a.f32", V::Array(A::F32(vec![0.1, -0.0, f32::INFINITY, f32::MIN_POSITIVE]))),
        ("a.bool", V::Array(A::Bool(vec![true, false, true]))),
        ("a.string", V::Array(A::String(vec!["a".into(), String::new(), "<0x0A>".into()]))),
        ("a.u64", V::Array(A::U64(vec![u64::MAX, 0]))),
        ("a.i64", V::Array(A::I64(vec![i64::MIN, i64::MAX]))),
        ("a.f64", V::Array(A::F64(vec![1e300, -1e-300]))),
        ("a.empty", V::Array(A::F32(vec![]))),
        (
            "a.nested",
            V::Array(A::Array(vec![
                A::I32(vec![1, 2]),
                A::String(vec!["x".into()]),
                A::Array(vec![A::U8(vec![9]), A::Bool(vec![])]),
                A::F64(vec![]),
            ])),
        ),
    ]
}

/// (name, row-major shape, type, encoded bytes).
type Tensors = Vec<(&'static str, Vec<usize>, GgmlType, Vec<u8>)>;

fn random_tensors(rng: &mut Rng) -> Tensors {
    let mut out = Vec::new();
    let specs: [(&'static str, &[usize], GgmlType); 9] = [
        ("w.f32", &[3, 7], GgmlType::F32),
        ("w.f16", &[5], GgmlType::F16),
        ("w.bf16", &[2, 3, 5], GgmlType::BF16),
        ("w.q8_0", &[3, 64], GgmlType::Q8_0),
        ("w.q4_0", &[1, 32], GgmlType::Q4_0),
        ("w.q4_k", &[2, 256], GgmlType::Q4_K),
        ("w.q6_k", &[2, 1, 1, 512], GgmlType::Q6_K),
        ("w.q5_1", &[32], GgmlType::Q5_1),
        ("w.empty", &[0, 32], GgmlType::Q8_0),
    ];
    for (name, shape, ty) in specs {
        let n: usize = shape.iter().product();
        let x: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        out.push((name, shape.to_vec(), ty, quantize(ty, &x).unwrap()));
    }
    out
}

fn build(alignment: u32, rng: &mut Rng) -> (GgufWriter, Tensors) {
    let mut w = if alignment == 32 { GgufWriter::new() } else { GgufWriter::with_alignment(alignment).unwrap() };
    for (k, v) in every_value() {
        w.add(k, v).unwrap();
    }
    let tensors = random_tensors(rng);
    for (name, shape, ty, bytes) in &tensors {
        w.add_tensor(*name, shape, *ty, bytes.clone()).unwrap();
    }
    (w, tensors)
}

#[test]
fn writer_reader_round_trip() {
    let mut rng = Rng::new(7);
    for alignment in [32u32, 1, 64, 4096] {
        let (w, tensors) = build(alignment, &mut rng);
        let path = scratch(&format!("round_trip_{alignment}")).join("model.gguf");
        w.write(&path).unwrap();
        assert!(!path.with_extension("gguf.tmp").exists(), "temporary file left behind");
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.alignment(), alignment);
        assert_eq!(g.data_offset() % alignment as u64, 0);
        let want: Vec<(String, GgufValue)> = every_value().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let got: Vec<(String, GgufValue)> =
            g.metadata().iter().filter(|(k, _)| k != "general.alignment").cloned().collect();
        assert_eq!(got, want, "alignment {alignment}");
        assert_eq!(g.tensors().len(), tensors.len());
        for ((name, shape, ty, bytes), info) in tensors.iter().zip(g.tensors()) {
            let TensorInfo { name: n2, ty: t2, shape: s2, ne, offset, .. } = info;
            assert_eq!((n2.as_str(), t2, s2), (*name, ty, shape));
            assert_eq!(ne.iter().rev().map(|&d| d as usize).collect::<Vec<_>>(), *shape);
            assert_eq!(offset % alignment as u64, 0, "{name}");
            assert_eq!(g.tensor_bytes(info).unwrap(), &bytes[..], "{name}");
            let mut want = vec![0.0; info.n_elements()];
            loraforge::quant::ggml::dequantize(*ty, bytes, &mut want).unwrap();
            assert_eq!(g.dequantize_tensor(name).unwrap(), want, "{name}");
        }
        // The in-memory image is the same bytes, and parses the same.
        let img = w.to_bytes().unwrap();
        assert_eq!(img, std::fs::read(&path).unwrap());
        let m = GgufFile::from_bytes("mem", img).unwrap();
        assert_eq!(m.metadata(), g.metadata());
        assert_eq!(m.tensors(), g.tensors());
    }
}

#[test]
fn typed_getters() {
    let (w, _) = build(32, &mut Rng::new(1));
    let g = GgufFile::from_bytes("mem.gguf", w.to_bytes().unwrap()).unwrap();
    assert_eq!(g.get_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(g.get_u32("t.u8").unwrap(), 200, "any integer type that fits");
    assert_eq!(g.get_i64("t.i8").unwrap(), -100);
    assert_eq!(g.get_u64("t.u64").unwrap(), u64::MAX);
    assert_eq!(g.get_f32("t.f32").unwrap(), -1.5e-7);
    assert_eq!(g.get_f64("t.f64").unwrap(), std::f64::consts::PI);
    assert!(g.get_bool("t.bool_t").unwrap());
    assert_eq!(g.get_str("t.string").unwrap(), "héllo, wörld ✓");
    assert_eq!(g.get_str_array("a.string").unwrap(), &["a".to_string(), String::new(), "<0x0A>".into()]);
    assert_eq!(g.get_i32_array("a.i32").unwrap(), &[i32::MIN, -1, 3]);
    assert_eq!(g.get_array("a.nested").unwrap().len(), 4);
    assert!(matches!(g.get_u32("no.such.key"), Err(Error::MissingKey(k)) if k.contains("no.such.key")));
    // Wrong type or out of range: a Format error naming the file, the key and the type.
    for (key, res) in [
        ("t.i8", g.get_u32("t.i8").map(|_| ())),
        ("t.u64", g.get_u32("t.u64").map(|_| ())),
        ("t.string", g.get_f32("t.string").map(|_| ())),
        ("t.u32", g.get_str("t.u32").map(|_| ())),
        ("a.i32", g.get_str_array("a.i32").map(|_| ())),
    ] {
        match res {
            Err(Error::Format { path, msg }) => {
                assert!(path == "mem.gguf" && msg.contains(key), "{msg}")
            }
            other => panic!("{key}: expected a Format error, got {other:?}"),
        }
    }
    assert!(g.tensor("nope").is_err());
    assert!(g.matrix("nope").is_err());
}

#[test]
fn writer_rejects_bad_input() {
    let mut w = GgufWriter::new();
    w.add("k", 1u32).unwrap();
    assert!(w.add("k", 2u32).is_err(), "duplicate key");
    assert!(w.add("", 2u32).is_err(), "empty key");
    assert!(w.add("general.alignment", 64u32).is_err(), "alignment goes through with_alignment");
    let mut deep = GgufArray::U8(vec![1]);
    for _ in 0..7 {
        deep = GgufArray::Array(vec![deep]);
    }
    w.add("deep8", deep.clone()).unwrap(); // 8 levels: the most the reader accepts
    assert!(w.add("deep9", GgufArray::Array(vec![deep])).is_err(), "9 levels");
    assert!(GgufFile::from_bytes("deep", w.to_bytes().unwrap()).is_ok());
    assert!(GgufWriter::with_alignment(48).is_err());
    assert!(GgufWriter::with_alignment(0).is_err());
    assert!(w.add_tensor("t", &[2, 32], GgmlType::Q8_0, vec![0u8; 68]).is_ok());
    assert!(w.add_tensor("t", &[2, 32], GgmlType::Q8_0, vec![0u8; 68]).is_err(), "duplicate tensor");
    assert!(w.add_tensor("u", &[2, 32], GgmlType::Q8_0, vec![0u8; 67]).is_err(), "wrong byte count");
    assert!(w.add_tensor("v", &[2, 33], GgmlType::Q8_0, vec![0u8; 68]).is_err(), "row not whole blocks");
    assert!(w.add_tensor("w", &[1, 1, 1, 1, 32], GgmlType::Q8_0, vec![0u8; 34]).is_err(), "5 dims");
    assert!(w.add_tensor("x".repeat(64), &[32], GgmlType::Q8_0, vec![0u8; 34]).is_err(), "name too long for ggml");
    let err = w.write("/nonexistent-dir/x.gguf").unwrap_err();
    assert!(err.to_string().contains("/nonexistent-dir/x.gguf.tmp"), "{err}");
}

// ---- malformed input: must error, never panic, never allocate absurd memory

/// A minimal hand-built GGUF image for crafting broken files.
struct Raw(Vec<u8>);
impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw(Vec::new());
        r.u32(0x4655_4747).u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Raw {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    /// A tensor info: name, ggml-order dims, type id, offset.
    fn tensor(&mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> &mut Raw {
        self.str(name).u32(ne.len() as u32);
        for &d in ne {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to 32 and appends `n` data bytes.
    fn data(&mut self, n: usize) -> &mut Raw {
        while !self.0.len().is_multiple_of(32) {
            self.0.push(0);
        }
        self.0.resize(self.0.len() + n, 0x11);
        self
    }
    fn parse(&self) -> loraforge::Result<GgufFile> {
        GgufFile::from_bytes("crafted.gguf", self.0.clone())
    }
}

#[track_caller]
fn expect_err(r: &Raw, needle: &str) {
    match r.parse() {
        Ok(_) => panic!("expected an error containing {needle:?}, parsed fine"),
        Err(e) => {
            let s = e.to_string();
            assert!(s.contains(needle), "error {s:?} should contain {needle:?}");
        }
    }
}

#[test]
fn crafted_files_are_rejected() {
    // Sanity: the builder makes a valid file.
    let mut ok = Raw::header(3, 1, 1);
    ok.str("k").u32(4).u32(1).tensor("t", &[32, 2], 8, 0).data(68);
    assert!(ok.parse().is_ok());

    let mut r = Raw::header(3, 0, 0);
    r.0[0] = b'X';
    expect_err(&r, "bad magic");
    expect_err(&Raw::header(1, 0, 0), "v1");
    expect_err(&Raw::header(4, 0, 0), "unsupported GGUF version 4");
    expect_err(&Raw::header(3u32.swap_bytes(), 0, 0), "big-endian");
    expect_err(&Raw::header(3, u64::MAX, 0), "tensor count");
    expect_err(&Raw::header(3, 1 << 19, 0), "tensor count"); // under the cap, but the file is too short
    expect_err(&Raw::header(3, 0, u64::MAX), "metadata count");
    // Strings: huge length, length past the end.
    expect_err(Raw::header(3, 0, 1).u64(u64::MAX).u64(0).u64(0), "limit");
    expect_err(Raw::header(3, 0, 1).u64(1000).u64(0).u64(0), "bytes remain");
    // Values: unknown type, bad bool, huge array, array of unknown type, too deep nesting.
    expect_err(Raw::header(3, 0, 1).str("k").u32(13).u64(0).u64(0), "unknown value type 13");
    let mut b = Raw::header(3, 0, 1);
    b.str("k").u32(7).0.push(2);
    expect_err(&b, "bool byte is 2");
    expect_err(Raw::header(3, 0, 1).str("k").u32(9).u32(4).u64(u64::MAX).u64(0), "limit");
    expect_err(Raw::header(3, 0, 1).str("k").u32(9).u32(4).u64(1 << 20), "bytes remain");
    expect_err(Raw::header(3, 0, 1).str("k").u32(9).u32(8).u64(1 << 20), "bytes remain"); // strings: >= 8 bytes each
    expect_err(Raw::header(3, 0, 1).str("k").u32(9).u32(99).u64(0).u64(0), "unknown value type 99");
    let mut deep = Raw::header(3, 0, 1);
    deep.str("k").u32(9);
    for _ in 0..20 {
        deep.u32(9).u64(1);
    }
    deep.u32(0).u64(0);
    expect_err(&deep, "nested deeper");
    expect_err(Raw::header(3, 0, 2).str("k").u32(4).u32(1).str("k").u32(4).u32(2), "duplicate metadata key k");
    expect_err(Raw::header(3, 0, 1).str("").u32(4).u32(1), "empty key");
    // Alignment must be a u32 power of two.
    expect_err(Raw::header(3, 0, 1).str("general.alignment").u32(4).u32(48), "power of two");
    expect_err(Raw::header(3, 0, 1).str("general.alignment").u32(10).u64(32), "power of two");
    expect_err(Raw::header(3, 0, 1).str("general.alignment").u32(4).u32(0), "power of two");
    // Tensor infos.
    expect_err(Raw::header(3, 1, 0).tensor("t", &[1, 1, 1, 1, 32], 0, 0).data(128), "5 dims");
    expect_err(Raw::header(3, 1, 0).tensor("t", &[u64::MAX, 2], 0, 0).data(0), "overflows");
    expect_err(Raw::header(3, 1, 0).tensor("t", &[1 << 32, 1 << 32], 0, 0).data(0), "overflows");
    expect_err(Raw::header(3, 1, 0).tensor("t", &[33, 2], 8, 0).data(200), "whole number of q8_0 blocks");
    expect_err(Raw::header(3, 1, 0).tensor("t", &[32], 16, 0).data(200), "type IQ2_XXS");
    expect_err(Raw::header(3, 1, 0).tensor("t", &[32], 16, 0).data(200), "which loraforge does not support");
    expect_err(Raw::header(3, 1, 0).tensor("t", &[32], 1000, 0).data(200), "unknown ggml type id 1000");
    expect_err(Raw::header(3, 1, 0).tensor("t", &[32], 8, 8).data(200), "not a multiple of the alignment");
    expect_err(Raw::header(3, 2, 0).tensor("t", &[32], 8, 0).tensor("t", &[32], 8, 64).data(200), "duplicate tensor");
    expect_err(Raw::header(3, 2, 0).tensor("a", &[64], 8, 0).tensor("b", &[32], 8, 32).data(200), "overlap");
    // Data out of range: Truncated names the tensor.
    match Raw::header(3, 1, 0).tensor("big", &[32, 4], 8, 0).data(135).parse() {
        Err(Error::Truncated { name, need, offset, have }) => {
            assert!(name.contains("big") && name.contains("crafted.gguf"));
            assert_eq!(need, 136);
            assert_eq!(offset % 32, 0);
            assert_eq!(offset + need, have + 1, "one byte short");
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    assert!(matches!(
        Raw::header(3, 1, 0).tensor("far", &[32], 8, u64::MAX - 31).data(64).parse(),
        Err(Error::Truncated { .. })
    ));
    assert!(matches!(
        Raw::header(3, 1, 0).tensor("far", &[32], 8, 1 << 40).data(64).parse(),
        Err(Error::Truncated { .. })
    ));
}

#[test]
fn truncated_files_error_at_every_offset() {
    let (w, _) = build(32, &mut Rng::new(3));
    let img = w.to_bytes().unwrap();
    let g = GgufFile::from_bytes("full", img.clone()).unwrap();
    // The file ends with padding after the last tensor: cutting only padding leaves a valid file.
    let data_end = g.tensors().iter().map(|t| g.data_offset() + t.offset + t.n_bytes as u64).max().unwrap() as usize;
    for cut in 0..img.len() {
        let r = GgufFile::from_bytes("cut", img[..cut].to_vec());
        assert_eq!(
            r.is_ok(),
            cut >= data_end,
            "cut at {cut} of {} (data ends at {data_end}): {:?}",
            img.len(),
            r.err()
        );
    }
    // Files on disk: too short for a header, and cut in the middle.
    let dir = scratch("truncated");
    for cut in [0usize, 3, 23, 24, 100, data_end - 1] {
        let p = dir.join(format!("cut{cut}.gguf"));
        std::fs::write(&p, &img[..cut]).unwrap();
        let e = GgufFile::open(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()) || e.contains("(in "), "error should name the file: {e}");
    }
    assert!(GgufFile::open(dir.join("missing.gguf")).unwrap_err().to_string().contains("missing.gguf"));
}

#[test]
fn flipped_header_bytes_never_panic() {
    let (w, _) = build(32, &mut Rng::new(4));
    let img = w.to_bytes().unwrap();
    let g = GgufFile::from_bytes("full", img.clone()).unwrap();
    let header_len = g.data_offset() as usize;
    let mut rng = Rng::new(5);
    let (mut ok, mut err) = (0, 0);
    for pos in 0..header_len {
        for flip in [0xFFu8, 0x80, 0x01, (rng.next_u32() as u8) | 1] {
            let mut bad = img.clone();
            bad[pos] ^= flip;
            // Errors are fine, and so is success (e.g. a flipped string byte); a panic fails the test.
            match GgufFile::from_bytes("flipped", bad) {
                Ok(f) => {
                    ok += 1;
                    for t in f.tensors() {
                        let _ = f.dequantize_tensor(&t.name);
                        let _ = f.matrix(&t.name);
                    }
                }
                Err(_) => err += 1,
            }
        }
    }
    // Multi-byte random damage as well.
    for _ in 0..2000 {
        let mut bad = img.clone();
        for _ in 0..4 {
            let p = rng.below(header_len);
            bad[p] = rng.next_u32() as u8;
        }
        if let Ok(f) = GgufFile::from_bytes("random", bad) {
            for t in f.tensors() {
                let _ = f.dequantize_tensor(&t.name);
            }
        }
    }
    assert!(err > 0 && ok > 0, "ok {ok}, err {err}");
}

// ---- gguf-py cross-check (skipped when python3 or the gguf package is missing)

#[test]
fn gguf_py_reads_our_file() {
    let have = std::process::Command::new("python3").args(["-c", "import gguf, numpy"]).output();
    if !matches!(&have, Ok(o) if o.status.success()) {
        println!("SKIPPED gguf_py_reads_our_file: python3 with the gguf package not found (pip install gguf)");
        return;
    }
    let mut rng = Rng::new(11);
    let (w, tensors) = build(64, &mut rng);
    let dir = scratch("gguf_py");
    let path = dir.join("ours.gguf");
    w.write(&path).unwrap();
    // gguf-py reads the file, checks every metadata value and tensor (name, type, shape, bytes), and
    // dequantizes each tensor so we can compare values too.
    let script = r#"
import sys, json, numpy as np, gguf
from gguf import GGUFReader, GGUFValueType
r = GGUFReader(sys.argv[1])
def val(f):
    t = f.types[0]
    if t == GGUFValueType.ARRAY:
        return {"type": "array", "n": len(f.data), "inner": f.types[1].name if len(f.types) > 1 else None}
    if t == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    v = f.parts[f.data[0]][0]
    return v.item() if t != GGUFValueType.BOOL else bool(v)
out = {"fields": {k: {"type": f.types[0].name, "v": val(f)} for k, f in r.fields.items() if not k.startswith("GGUF.")},
       "tensors": {}}
for t in r.tensors:
    deq = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
    out["tensors"][t.name] = {"type": t.tensor_type.name, "shape": [int(x) for x in t.shape],
                               "bytes": bytes(np.asarray(t.data).tobytes()).hex(), "deq": deq.view(np.uint32).tolist()}
sa = r.fields["a.string"]
out["a_string"] = [bytes(sa.parts[i]).decode() for i in sa.data]
json.dump(out, open(sys.argv[2], "w"))
"#;
    let out_json = dir.join("py.json");
    let o = std::process::Command::new("python3").arg("-c").arg(script).arg(&path).arg(&out_json).output().unwrap();
    assert!(o.status.success(), "gguf-py failed: {}", String::from_utf8_lossy(&o.stderr));
    let py: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();
    let fields = py["fields"].as_object().unwrap();
    assert_eq!(fields["general.alignment"]["v"], 64);
    for (k, v) in every_value() {
        let f = &fields[k];
        let pyv = &f["v"];
        match &v {
            GgufValue::Array(a) => assert_eq!(pyv["n"].as_u64().unwrap() as usize, a.len(), "{k}"),
            GgufValue::String(s) => assert_eq!(pyv.as_str().unwrap(), s, "{k}"),
            GgufValue::Bool(b) => assert_eq!(pyv.as_bool().unwrap(), *b, "{k}"),
            GgufValue::F32(x) => assert_eq!(pyv.as_f64().unwrap() as f32, *x, "{k}"),
            GgufValue::F64(x) => assert_eq!(pyv.as_f64().unwrap(), *x, "{k}"),
            v => assert_eq!(pyv.to_string(), v.as_int().unwrap().to_string(), "{k}"),
        }
        assert_eq!(
            f["type"].as_str().unwrap().replace("UINT", "U").replace("INT", "I").replace("FLOAT", "F").to_lowercase(),
            v.value_type().name(),
            "{k}: type"
        );
    }
    assert_eq!(py["a_string"], serde_json::json!(["a", "", "<0x0A>"]));
    let pt = py["tensors"].as_object().unwrap();
    for (name, shape, ty, bytes) in &tensors {
        let t = &pt[*name];
        assert_eq!(t["type"].as_str().unwrap(), ty.upper_name(), "{name}");
        let ne: Vec<usize> = shape.iter().rev().copied().collect();
        let py_shape: Vec<usize> =
            t["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        assert_eq!(py_shape, ne, "{name}: gguf-py reports ne (innermost first)");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(t["bytes"].as_str().unwrap(), hex, "{name}: tensor bytes");
        let mut want = vec![0.0f32; shape.iter().product()];
        loraforge::quant::ggml::dequantize(*ty, bytes, &mut want).unwrap();
        let py_bits: Vec<u32> = t["deq"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(py_bits, want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{name}: dequantized bits");
    }
}
