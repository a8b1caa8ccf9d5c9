//! safetensors reading (single file, sharded dir, dtype conversion) and atomic writing; bad files
//! give errors, never panics. Spec: src/io/safetensors.rs

#[path = "common/mod.rs"]
mod common;

use loraforge::io::safetensors::{write_safetensors, SafetensorsDir, SafetensorsFile};
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::PathBuf;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("loraforge_st_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

#[allow(clippy::type_complexity)]
fn sample() -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let f32s = [1.0f32, -2.5, 3.25, 1e-3, 0.0, -0.0];
    let f16s: Vec<half::f16> = f32s.iter().map(|&v| half::f16::from_f32(v)).collect();
    let bf16s: Vec<half::bf16> = f32s.iter().map(|&v| half::bf16::from_f32(v)).collect();
    vec![
        ("a.f32".into(), Dtype::F32, vec![2, 3], le(&f32s, f32::to_le_bytes)),
        ("b.f16".into(), Dtype::F16, vec![6], le(&f16s, half::f16::to_le_bytes)),
        ("c.bf16".into(), Dtype::BF16, vec![3, 2], le(&bf16s, half::bf16::to_le_bytes)),
        ("d.u8".into(), Dtype::U8, vec![5, 1], vec![1, 2, 3, 4, 255]),
        ("e.i64".into(), Dtype::I64, vec![1], 7i64.to_le_bytes().to_vec()),
    ]
}

#[test]
fn write_then_read_round_trip() {
    let d = tmpdir("rt");
    let p = d.join("model.safetensors");
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&p, &sample(), Some(meta)).unwrap();
    // no temporary left behind
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    let f = SafetensorsFile::open(&p).unwrap();
    assert_eq!(f.names(), vec!["a.f32", "b.f16", "c.bf16", "d.u8", "e.i64"]);
    assert_eq!(f.metadata().get("format").map(|s| s.as_str()), Some("pt"));
    let want = [1.0f32, -2.5, 3.25, 1e-3, 0.0, -0.0];
    assert_eq!(f.tensor_f32("a.f32").unwrap(), want);
    let f16: Vec<f32> = want.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    assert_eq!(f.tensor_f32("b.f16").unwrap(), f16);
    let bf: Vec<f32> = want.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
    assert_eq!(f.tensor_f32("c.bf16").unwrap(), bf);
    let (dt, shape, bytes) = f.raw("d.u8").unwrap();
    assert_eq!((dt, shape, bytes), (Dtype::U8, vec![5, 1], &[1u8, 2, 3, 4, 255][..]));
    let e = f.tensor_f32("e.i64").unwrap_err().to_string();
    assert!(e.contains("I64"), "{e}");
    assert!(f.tensor_f32("nope").is_err());
    // the directory opener finds model.safetensors
    let dir = SafetensorsDir::open(&d).unwrap();
    assert_eq!(dir.list().len(), 5);
    assert_eq!(dir.tensor_f32("a.f32").unwrap(), want);
    // overwrite is atomic replace
    write_safetensors(&p, &sample()[..1], None).unwrap();
    assert_eq!(SafetensorsFile::open(&p).unwrap().names(), vec!["a.f32"]);
}

#[test]
fn sharded_directory() {
    let d = tmpdir("shard");
    let s = sample();
    write_safetensors(d.join("model-00001-of-00002.safetensors"), &s[..2], None).unwrap();
    write_safetensors(d.join("model-00002-of-00002.safetensors"), &s[2..], None).unwrap();
    let mut map = serde_json::Map::new();
    for (i, t) in s.iter().enumerate() {
        let shard = if i < 2 { "model-00001-of-00002.safetensors" } else { "model-00002-of-00002.safetensors" };
        map.insert(t.0.clone(), shard.into());
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let dir = SafetensorsDir::open(&d).unwrap();
    assert_eq!(dir.files().len(), 2);
    assert_eq!(dir.names(), vec!["a.f32", "b.f16", "c.bf16", "d.u8", "e.i64"]);
    assert_eq!(dir.raw("d.u8").unwrap().2, &[1u8, 2, 3, 4, 255]);
    assert_eq!(dir.tensor_f32("c.bf16").unwrap()[1], -2.5);

    // a missing shard is a clear error
    std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap();
    let e = SafetensorsDir::open(&d).err().expect("missing shard accepted").to_string();
    assert!(e.contains("missing"), "{e}");
    // a bad index is an error
    std::fs::write(d.join("model.safetensors.index.json"), "{\"weight_map\": 3}").unwrap();
    assert!(SafetensorsDir::open(&d).is_err());
    // an empty directory is an error
    assert!(SafetensorsDir::open(tmpdir("empty")).is_err());
}

#[test]
fn malformed_files_are_errors() {
    let d = tmpdir("bad");
    let p = d.join("good.safetensors");
    write_safetensors(&p, &sample(), None).unwrap();
    let good = std::fs::read(&p).unwrap();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("short length", vec![1, 2, 3]),
        ("huge header length", u64::MAX.to_le_bytes().to_vec()),
        ("truncated data", good[..good.len() - 3].to_vec()),
        ("truncated header", good[..20].to_vec()),
        ("trailing bytes", [good.as_slice(), &[0u8; 8]].concat()),
    ];
    let mut bad_json = good.clone();
    bad_json[8] = b'[';
    cases.push(("bad json", bad_json));
    let hdr = br#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#; // 8 bytes for 4 f32
    cases.push(("size mismatch", [(hdr.len() as u64).to_le_bytes().as_slice(), hdr, &[0u8; 8]].concat()));
    for (what, bytes) in cases {
        let q = d.join(format!("{}.safetensors", what.replace(' ', "_")));
        std::fs::write(&q, bytes).unwrap();
        assert!(SafetensorsFile::open(&q).is_err(), "{what} accepted");
    }
    assert!(SafetensorsFile::open(d.join("does_not_exist.safetensors")).is_err());
    // the writer refuses inconsistent sizes and duplicate names
    let bad = [("x", Dtype::F32, vec![3], vec![0u8; 8])];
    assert!(write_safetensors(d.join("w.safetensors"), &bad, None).is_err());
    let dup = [("x", Dtype::U8, vec![1], vec![0u8]), ("x", Dtype::U8, vec![1], vec![0u8])];
    assert!(write_safetensors(d.join("w.safetensors"), &dup, None).is_err());
    assert!(!d.join("w.safetensors").exists());
}

/// The bitsandbytes fixture opens and lists with the expected dtypes.
#[test]
fn reads_nf4_fixture() {
    let p = common::fixtures_dir().join("quant").join("nf4.safetensors");
    let f = SafetensorsFile::open(&p).unwrap();
    assert_eq!(f.names().len(), 30);
    let e = f.entry("double_64.weight").unwrap();
    assert_eq!((e.dtype, e.shape.clone()), (Dtype::U8, vec![4096, 1]));
    assert_eq!(f.tensor_f32("plain_64.input").unwrap().len(), 8 * 256);
}
