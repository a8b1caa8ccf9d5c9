//! do_predict text-similarity metrics as LLaMA-Factory's `ComputeSimilarity` (train/sft/metric.py):
//! BLEU-4 on characters and ROUGE-1/2/L F1 on words, each ×100, per sample rounded to 4 decimals, then averaged.
//! Spec: this file   Test: tests/runout.rs (bleu4_*, rouge_*, similarity_*; references from nltk 3.10.4 and
//! rouge-chinese 1.0.3, the Python snippets are in the test comments)
//!
//! BLEU-4 = nltk `sentence_bleu([list(ref)], list(pred), smoothing_function=SmoothingFunction().method3)`:
//!   p_n = clipped n-gram matches / max(1, hypothesis n-grams), n = 1..4   (modified precision, Papineni et al. 2002)
//!   no unigram match (or empty hypothesis) -> 0
//!   method3 (NIST geometric smoothing, Chen & Cherry 2014): the k-th p_n whose numerator is 0 becomes
//!     1 / (2^k * denominator), k = 1, 2, ...
//!   BP = 1 if |hyp| > |ref| else exp(1 - |ref| / |hyp|);   BLEU = BP * exp(sum_n 0.25 * ln p_n)
//! ROUGE-N / ROUGE-L = rouge-chinese `Rouge().get_scores(hyp, ref)` (pltrdy/rouge fork):
//!   ROUGE-N counts DISTINCT n-grams (sets, `exclusive=True`): P = |H∩R| / |H|, R = |H∩R| / |R|
//!   ROUGE-L on the flattened word lists: P = LCS / |hyp|, R = LCS / |ref|
//!   F = 2 P R / (P + R + 1e-8)  (the 1e-8 is rouge-chinese's; identical texts give 99.9999995 -> 100.0 after rounding)
//!   either side without words -> all three 0 (LLaMA-Factory's special case)
//!
//! Difference from LLaMA-Factory, on purpose: it cuts words with jieba (a Chinese dictionary segmenter); we have no
//! dictionary, so `words()` makes each CJK ideograph / kana one token, each run of other letters/digits one token,
//! each punctuation or symbol character one token (jieba also emits punctuation as tokens), and drops whitespace.
//! For space-separated languages this matches jieba except inside tokens like "3.14" or "don't" (jieba may keep
//! them whole); for Chinese our ROUGE is character-level, jieba's is word-level, so scores differ.
//! BLEU-4 is on characters in both, so it matches LLaMA-Factory exactly.

use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};

/// The n-gram orders of BLEU-4 and their uniform weight.
const BLEU_N: usize = 4;
const BLEU_WEIGHT: f64 = 0.25;
/// rouge-chinese adds this to P + R in the F denominator (avoids 0/0; it is why identical texts score 99.9999995).
const ROUGE_F_EPS: f64 = 1e-8;

/// Counts of every n-gram of `s`.
fn ngram_counts<T: std::hash::Hash + Eq>(s: &[T], n: usize) -> HashMap<&[T], usize> {
    let mut m = HashMap::new();
    if s.len() >= n {
        for w in s.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

/// Sentence BLEU-4 with method3 smoothing on any token sequence, in [0, 1] (see the header for the formula).
pub fn bleu4_tokens<T: std::hash::Hash + Eq>(hyp: &[T], reference: &[T]) -> f64 {
    let mut num = [0usize; BLEU_N];
    let mut den = [0usize; BLEU_N];
    for n in 1..=BLEU_N {
        let h = ngram_counts(hyp, n);
        let r = ngram_counts(reference, n);
        num[n - 1] = h.iter().map(|(g, &c)| c.min(r.get(g).copied().unwrap_or(0))).sum();
        den[n - 1] = h.values().sum::<usize>().max(1);
    }
    if num[0] == 0 {
        return 0.0;
    }
    let mut k = 0;
    let mut log_sum = 0.0;
    for n in 0..BLEU_N {
        let p = if num[n] == 0 {
            k += 1;
            1.0 / (2f64.powi(k) * den[n] as f64)
        } else {
            num[n] as f64 / den[n] as f64
        };
        log_sum += BLEU_WEIGHT * p.ln();
    }
    let (h, r) = (hyp.len() as f64, reference.len() as f64);
    let bp = if h > r { 1.0 } else { (1.0 - r / h).exp() };
    bp * log_sum.exp()
}

/// BLEU-4 ×100 on characters (Unicode scalar values, Python's `list(str)`), as LLaMA-Factory.
pub fn bleu4(prediction: &str, reference: &str) -> f64 {
    let h: Vec<char> = prediction.chars().collect();
    let r: Vec<char> = reference.chars().collect();
    bleu4_tokens(&h, &r) * 100.0
}

/// CJK ideographs and kana: one token per character (the languages written without spaces).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // hiragana, katakana
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0x20000..=0x2FFFF) // CJK extensions B..F, compatibility supplement
}

/// Word tokens for ROUGE (see the header): CJK chars single, letter/digit runs, punctuation chars single.
pub fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in s.chars() {
        if c.is_alphanumeric() && !is_cjk(c) || c == '_' {
            cur.push(c);
            continue;
        }
        if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        if !c.is_whitespace() && !c.is_control() {
            out.push(c.to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn f_score(overlap: usize, n_hyp: usize, n_ref: usize) -> f64 {
    let p = if n_hyp == 0 { 0.0 } else { overlap as f64 / n_hyp as f64 };
    let r = if n_ref == 0 { 0.0 } else { overlap as f64 / n_ref as f64 };
    2.0 * ((p * r) / (p + r + ROUGE_F_EPS))
}

fn ngram_set<T: std::hash::Hash + Eq>(s: &[T], n: usize) -> HashSet<&[T]> {
    if s.len() >= n {
        s.windows(n).collect()
    } else {
        HashSet::new()
    }
}

/// ROUGE-N F on distinct n-grams, in [0, 1].
fn rouge_n<T: std::hash::Hash + Eq>(hyp: &[T], reference: &[T], n: usize) -> f64 {
    let (h, r) = (ngram_set(hyp, n), ngram_set(reference, n));
    f_score(h.intersection(&r).count(), h.len(), r.len())
}

/// Length of the longest common subsequence (two-row DP, O(|a| |b|) time, O(|b|) memory).
pub fn lcs_len<T: Eq>(a: &[T], b: &[T]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { prev[j + 1].max(cur[j]) };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// (ROUGE-1, ROUGE-2, ROUGE-L) F scores ×100 on `words()` tokens.
pub fn rouge(prediction: &str, reference: &str) -> (f64, f64, f64) {
    let h = words(prediction);
    let r = words(reference);
    if h.is_empty() || r.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let l = f_score(lcs_len(&r, &h), h.len(), r.len());
    (rouge_n(&h, &r, 1) * 100.0, rouge_n(&h, &r, 2) * 100.0, l * 100.0)
}

/// LLaMA-Factory's metric dict: {"rouge-1", "rouge-2", "rouge-l", "bleu-4"}, each the mean over the set of the
/// per-sample score ×100 rounded to 4 decimals (`round(v * 100, 4)` then `np.mean`). HF's `predict` then prefixes
/// the keys ("predict_bleu-4", see `prefixed`). An empty set gives an empty map (a mean of nothing is NaN,
/// which JSON cannot hold). Panics if the lengths differ (a caller bug).
#[track_caller]
pub fn similarity(preds: &[String], refs: &[String]) -> Map<String, Value> {
    assert_eq!(preds.len(), refs.len(), "similarity: {} predictions for {} references", preds.len(), refs.len());
    let mut out = Map::new();
    if preds.is_empty() {
        return out;
    }
    let round4 = |x: f64| crate::train::log::round_to(x, 4);
    let mut sums = [0.0f64; 4];
    for (p, r) in preds.iter().zip(refs) {
        let (r1, r2, rl) = rouge(p, r);
        let b = bleu4(p, r);
        for (s, v) in sums.iter_mut().zip([r1, r2, rl, b]) {
            *s += round4(v);
        }
    }
    for (k, s) in ["rouge-1", "rouge-2", "rouge-l", "bleu-4"].into_iter().zip(sums) {
        out.insert(k.to_string(), Value::from(s / preds.len() as f64));
    }
    out
}

/// Keys prefixed as HF's `metric_key_prefix` does: "bleu-4" -> "predict_bleu-4" (already prefixed keys are kept).
pub fn prefixed(prefix: &str, metrics: &Map<String, Value>) -> Map<String, Value> {
    let p = format!("{prefix}_");
    metrics.iter().map(|(k, v)| (if k.starts_with(&p) { k.clone() } else { format!("{p}{k}") }, v.clone())).collect()
}
