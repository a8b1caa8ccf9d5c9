//! LR schedules against values computed by hand from HF transformers' `optimization.py` formulas.
//! Spec: src/train/schedule.rs. Each expected value has its arithmetic in a comment; the cosine constants were
//! re-evaluated with Python's `math` (cos(pi/4) = 0.7071067811865476, cos(0.98 pi) = -0.9980267284282716).
//! Tolerance: 1e-12 absolute on lambda. The formulas are a few f64 ops each (error ~1e-16), so 1e-12 catches
//! any formula slip while leaving room for cos/sqrt rounding differences between libm builds.

use loraforge::train::args::SchedulerType;
use loraforge::train::schedule::LrSchedule;
use serde_json::{json, Map, Value};

const TOL: f64 = 1e-12;

fn kw(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn sched(kind: SchedulerType, warmup: usize, total: usize, kwargs: Value) -> LrSchedule {
    LrSchedule::new(kind, 1.0, warmup, total, &kw(kwargs)).unwrap()
}

/// Checks `lr_at(step)` (base_lr 1.0, so lr = lambda) at each (step, want) pair.
fn check(s: &LrSchedule, table: &[(usize, f64)], what: &str) {
    for &(step, want) in table {
        let got = s.lr_at(step);
        assert!((got - want).abs() <= TOL, "{what}: step {step}: got {got}, want {want}");
    }
}

#[test]
fn linear_warmup_then_decay_to_zero() {
    // w = 10, N = 100. Warmup s/10; decay (100 - s) / 90.
    let s = sched(SchedulerType::Linear, 10, 100, json!({}));
    check(
        &s,
        &[
            (0, 0.0),  // 0/10: HF's first optimizer step runs at lr 0 when there is warmup
            (5, 0.5),  // 5/10
            (9, 0.9),  // 9/10
            (10, 1.0), // (100-10)/90
            (55, 0.5), // (100-55)/90 = 45/90
            (100, 0.0),
            (150, 0.0), // max(0, -50/90)
        ],
        "linear",
    );
}

#[test]
fn linear_scales_with_base_lr_and_no_warmup_starts_at_peak() {
    // w = 0: lambda(0) = (N - 0)/max(1, N) = 1. base 2e-4 -> lr 2e-4; at s = 25 of 100: 2e-4 * 75/100 = 1.5e-4.
    let s = LrSchedule::new(SchedulerType::Linear, 2e-4, 0, 100, &Map::new()).unwrap();
    assert!((s.lr_at(0) - 2e-4).abs() < 1e-18);
    assert!((s.lr_at(25) - 1.5e-4).abs() < 1e-18);
}

#[test]
fn cosine_half_wave_default() {
    // w = 10, N = 110: p = (s - 10)/100; lambda = 0.5 (1 + cos(pi * 0.5 * 2 * p)) = 0.5 (1 + cos(pi p)).
    let s = sched(SchedulerType::Cosine, 10, 110, json!({}));
    check(
        &s,
        &[
            (0, 0.0),
            (4, 0.4),                 // warmup 4/10
            (10, 1.0),                // p = 0: 0.5 (1 + 1)
            (35, 0.8535533905932737), // p = 0.25: 0.5 (1 + cos(pi/4)) = 0.5 (1 + 0.70710678)
            (60, 0.5),                // p = 0.5: 0.5 (1 + cos(pi/2))
            (110, 0.0),               // p = 1: 0.5 (1 + cos(pi))
        ],
        "cosine",
    );
}

#[test]
fn cosine_num_cycles_kwarg() {
    // num_cycles = 1: a full wave, w = 0, N = 100: s = 50 -> 0.5 (1 + cos(pi)) = 0; s = 100 -> 0.5 (1 + cos(2 pi)) = 1.
    let s = sched(SchedulerType::Cosine, 0, 100, json!({"num_cycles": 1}));
    check(&s, &[(0, 1.0), (50, 0.0), (100, 1.0)], "cosine num_cycles=1");
}

#[test]
fn cosine_with_hard_restarts() {
    // w = 0, N = 100, num_cycles = 2: lambda = 0.5 (1 + cos(pi * ((2 p) % 1))), 0 once p >= 1.
    let s = sched(SchedulerType::CosineWithRestarts, 0, 100, json!({"num_cycles": 2}));
    check(
        &s,
        &[
            (0, 1.0),                    // (0) % 1 = 0
            (25, 0.5),                   // 0.5 % 1 = 0.5: 0.5 (1 + cos(pi/2))
            (49, 0.0009866357858642205), // 0.98: 0.5 (1 + cos(0.98 pi)) = 0.5 (1 - 0.99802673)
            (50, 1.0),                   // 1.0 % 1 = 0: the hard restart
            (75, 0.5),                   // 1.5 % 1 = 0.5
            (100, 0.0),                  // p = 1: explicitly 0
            (130, 0.0),                  // p > 1: 0
        ],
        "cosine_with_restarts",
    );
    // Default num_cycles = 1: a single half-cosine, s = 50 -> 0.5 % 1 = 0.5 -> 0.5.
    let d = sched(SchedulerType::CosineWithRestarts, 0, 100, json!({}));
    check(&d, &[(50, 0.5), (99, 0.5 * (1.0 + (std::f64::consts::PI * 0.99).cos()))], "restarts default");
}

#[test]
fn polynomial_is_relative_to_base_lr() {
    // w = 10, N = 110, lr_end = 0.1, power = 2, base 1: lambda = ((1 - 0.1) pct^2 + 0.1) / 1, pct = 1 - (s-10)/100.
    let s = sched(SchedulerType::Polynomial, 10, 110, json!({"lr_end": 0.1, "power": 2}));
    check(
        &s,
        &[
            (5, 0.5),    // warmup 5/10
            (10, 1.0),   // pct 1: 0.9 + 0.1
            (60, 0.325), // pct 0.5: 0.9 * 0.25 + 0.1
            (110, 0.1),  // pct 0: lr_end
            (200, 0.1),  // s > N: lr_end / lr_init
        ],
        "polynomial",
    );
    // base 2, lr_end 0.1, power 1, w 0, N 100, s 50: lambda = ((2 - 0.1) * 0.5 + 0.1) / 2 = 1.05 / 2 = 0.525,
    // so lr = 1.05: lr_end is an ABSOLUTE learning rate, not a ratio.
    let p = LrSchedule::new(SchedulerType::Polynomial, 2.0, 0, 100, &kw(json!({"lr_end": 0.1}))).unwrap();
    assert!((p.lambda(50) - 0.525).abs() < TOL);
    assert!((p.lr_at(50) - 1.05).abs() < TOL);
    // Default lr_end = 1e-7: the last step lands exactly there.
    let d = LrSchedule::new(SchedulerType::Polynomial, 1e-3, 0, 100, &Map::new()).unwrap();
    assert!((d.lr_at(100) - 1e-7).abs() < 1e-18, "{}", d.lr_at(100));
    // HF raises unless lr_init > lr_end.
    let e = LrSchedule::new(SchedulerType::Polynomial, 1e-7, 0, 100, &Map::new()).unwrap_err().to_string();
    assert!(e.contains("lr_end"), "{e}");
}

#[test]
fn constant_ignores_warmup_and_constant_with_warmup_ramps() {
    let c = sched(SchedulerType::Constant, 10, 100, json!({}));
    check(&c, &[(0, 1.0), (5, 1.0), (1000, 1.0)], "constant");
    // w = 4: 0, 1/4, 3/4, then 1 forever.
    let cw = sched(SchedulerType::ConstantWithWarmup, 4, 100, json!({}));
    check(&cw, &[(0, 0.0), (1, 0.25), (3, 0.75), (4, 1.0), (1000, 1.0)], "constant_with_warmup");
}

#[test]
fn inverse_sqrt_timescale_defaults() {
    // w = 4, timescale = w = 4, shift = 0: lambda = 1/sqrt(s/4). s=4 -> 1, s=16 -> 1/2, s=64 -> 1/4.
    let s = sched(SchedulerType::InverseSqrt, 4, 1000, json!({}));
    check(&s, &[(2, 0.5), (4, 1.0), (16, 0.5), (64, 0.25)], "inverse_sqrt w=4");
    // w = 0: timescale = 10_000, shift = 10_000: s=0 -> 1/sqrt(1) = 1; s=30_000 -> 1/sqrt(4) = 0.5.
    let z = sched(SchedulerType::InverseSqrt, 0, 1000, json!({}));
    check(&z, &[(0, 1.0), (30_000, 0.5)], "inverse_sqrt w=0");
    // timescale = 10, w = 10: s = 40 -> 1/sqrt((40 + 0)/10) = 0.5.
    let t = sched(SchedulerType::InverseSqrt, 10, 1000, json!({"timescale": 10}));
    check(&t, &[(10, 1.0), (40, 0.5)], "inverse_sqrt timescale");
}

#[test]
fn cosine_with_min_lr_floor() {
    // w = 0, N = 100, r = 0.1: lambda = c (1 - 0.1) + 0.1, c = 0.5 (1 + cos(pi p)).
    let s = sched(SchedulerType::CosineWithMinLr, 0, 100, json!({"min_lr_rate": 0.1}));
    check(
        &s,
        &[
            (0, 1.0),   // c = 1
            (50, 0.55), // c = 0.5: 0.45 + 0.1
            (100, 0.1), // c = 0
        ],
        "cosine_with_min_lr",
    );
    // min_lr = 1e-5 with base 1e-4 is min_lr_rate 0.1: the last lr is 1e-5.
    let m = LrSchedule::new(SchedulerType::CosineWithMinLr, 1e-4, 0, 100, &kw(json!({"min_lr": 1e-5}))).unwrap();
    assert!((m.lr_at(100) - 1e-5).abs() < 1e-18, "{}", m.lr_at(100));
    let both =
        LrSchedule::new(SchedulerType::CosineWithMinLr, 1e-4, 0, 100, &kw(json!({"min_lr": 1e-5, "min_lr_rate": 0.1})));
    assert!(both.unwrap_err().to_string().contains("only one"));
    let none = LrSchedule::new(SchedulerType::CosineWithMinLr, 1e-4, 0, 100, &Map::new());
    assert!(none.unwrap_err().to_string().contains("min_lr_rate"));
}

#[test]
fn warmup_stable_decay_phases() {
    // w = 10, N = 100, decay 20 -> stable = 100 - 10 - 20 = 70: [0,10) warmup, [10,80) stable, [80,100) decay.
    let s = sched(SchedulerType::WarmupStableDecay, 10, 100, json!({"num_decay_steps": 20}));
    check(
        &s,
        &[
            (5, 0.5),                 // linear warmup 5/10
            (10, 1.0),                // stable
            (79, 1.0),                // last stable step
            (80, 1.0),                // decay p = 0: cosine 0.5 (1 + 1)
            (85, 0.8535533905932737), // p = 0.25: 0.5 (1 + cos(pi/4))
            (90, 0.5),                // p = 0.5
            (100, 0.0),               // after decay: min_lr_ratio = 0
        ],
        "wsd cosine",
    );
    // linear decay, min_lr_ratio 0.2: f (1 - 0.2) + 0.2. Warmup s=5: 0.5*0.8+0.2 = 0.6; decay s=90: 0.5*0.8+0.2 = 0.6.
    let l = sched(
        SchedulerType::WarmupStableDecay,
        10,
        100,
        json!({"num_decay_steps": 20, "decay_type": "linear", "min_lr_ratio": 0.2}),
    );
    check(&l, &[(0, 0.2), (5, 0.6), (90, 0.6), (100, 0.2), (500, 0.2)], "wsd linear");
    // 1-sqrt warmup: s=5 -> 1 - sqrt(1 - 0.5) = 0.2928932188134524. cosine warmup: 0.5 (1 - cos(pi/2)) = 0.5.
    let q = sched(
        SchedulerType::WarmupStableDecay,
        10,
        100,
        json!({"num_decay_steps": 20, "warmup_type": "1-sqrt", "decay_type": "1-sqrt"}),
    );
    // decay s=85: p = 0.25 -> 1 - sqrt(0.25) = 0.5.
    check(&q, &[(5, 0.2928932188134524), (85, 0.5)], "wsd 1-sqrt");
    let c = sched(SchedulerType::WarmupStableDecay, 10, 100, json!({"num_decay_steps": 20, "warmup_type": "cosine"}));
    check(&c, &[(5, 0.5)], "wsd cosine warmup");
    // num_stable_steps wins over N: w 10 + stable 30 -> decay over [40, 60); s=50 -> 0.5; s=60 -> 0.
    let st = sched(SchedulerType::WarmupStableDecay, 10, 100, json!({"num_decay_steps": 20, "num_stable_steps": 30}));
    check(&st, &[(39, 1.0), (50, 0.5), (60, 0.0), (99, 0.0)], "wsd stable");
    let missing = LrSchedule::new(SchedulerType::WarmupStableDecay, 1e-4, 0, 100, &Map::new());
    assert!(missing.unwrap_err().to_string().contains("num_decay_steps"));
    let bad = LrSchedule::new(
        SchedulerType::WarmupStableDecay,
        1e-4,
        0,
        100,
        &kw(json!({"num_decay_steps": 5, "decay_type": "exp"})),
    );
    assert!(bad.unwrap_err().to_string().contains("decay_type"));
}

#[test]
fn unknown_kwarg_names_the_scheduler() {
    let e = LrSchedule::new(SchedulerType::Cosine, 1e-4, 0, 100, &kw(json!({"power": 2})));
    let msg = e.unwrap_err().to_string();
    assert!(msg.contains("`power`") && msg.contains("cosine") && msg.contains("num_cycles"), "{msg}");
    let e = LrSchedule::new(SchedulerType::Linear, 1e-4, 0, 100, &kw(json!({"num_cycles": "two"})));
    assert!(e.is_err());
    let e = LrSchedule::new(SchedulerType::Cosine, 1e-4, 0, 100, &kw(json!({"num_cycles": "two"})));
    assert!(e.unwrap_err().to_string().contains("expected a number"));
}

/// Every scheduler with warmup: it ramps up from exactly 0 and reaches base_lr at step w; decaying ones never increase after
/// that (up to N), never go negative; all values finite.
#[test]
fn warmup_and_monotone_decay_properties() {
    let (w, n) = (7usize, 53usize); // primes: no step lands on a round fraction by accident
    let cases: Vec<(SchedulerType, Value)> = vec![
        (SchedulerType::Linear, json!({})),
        (SchedulerType::Cosine, json!({})),
        (SchedulerType::CosineWithRestarts, json!({})), // one cycle: monotone
        (SchedulerType::Polynomial, json!({"power": 3})),
        (SchedulerType::ConstantWithWarmup, json!({})),
        (SchedulerType::InverseSqrt, json!({})),
        (SchedulerType::CosineWithMinLr, json!({"min_lr_rate": 0.05})),
        (SchedulerType::WarmupStableDecay, json!({"num_decay_steps": 11})),
    ];
    let base = 3e-4;
    for (kind, kwargs) in cases {
        let s = LrSchedule::new(kind, base, w, n, &kw(kwargs)).unwrap();
        assert_eq!(s.lr_at(0), 0.0, "{kind}: first step is lr 0 under warmup");
        for step in 1..w {
            assert!(s.lr_at(step) > s.lr_at(step - 1), "{kind}: warmup must increase at {step}");
        }
        assert!((s.lr_at(w) - base).abs() < 1e-15, "{kind}: peak at step w: {}", s.lr_at(w));
        for step in w + 1..=n {
            let (a, b) = (s.lr_at(step - 1), s.lr_at(step));
            assert!(b.is_finite() && b >= 0.0, "{kind}: step {step}: {b}");
            assert!(b <= a + 1e-18, "{kind}: increased at step {step}: {a} -> {b}");
        }
    }
}
