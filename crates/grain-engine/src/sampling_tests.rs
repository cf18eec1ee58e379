use super::*;

fn params(temperature: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        top_p: 1.0,
        top_k: 0,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        repetition_penalty: 1.0,
        prompt_tokens: Vec::new(),
        min_p: 0.0,
        logprobs: None,
        logit_bias: Vec::new(),
        ignore_eos: false,
        min_tokens: 0,
        stop_token_ids: Vec::new(),
        response_format: ResponseFormat::Text,
    }
}

/// Logits whose softmax is exactly `probs`.
fn logits_of(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| p.ln() as f32).collect()
}

/// Empirical distribution of `draws` samples with a fresh sampler per draw (no penalties carry).
fn frequencies(p: &SamplingParams, logits: &[f32], draws: usize) -> Vec<f64> {
    let mut s = ChoiceSampler::new(7, 0);
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..draws {
        s.counts.clear();
        let t = s.sample(p, &mut logits.to_vec()).unwrap().token;
        counts[t as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / draws as f64).collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < tol, "got {got:?}, want {want:?}");
    }
}

#[test]
fn greedy_takes_the_argmax_and_the_lowest_id_on_ties() {
    let mut s = ChoiceSampler::new(0, 0);
    let t = s.sample(&params(0.0), &mut [0.1, 3.0, -1.0, 3.0]);
    assert_eq!(t.unwrap().token, 1);
    let t = s.sample(&params(0.0), &mut [f32::NAN, 0.0, f32::NEG_INFINITY]);
    assert_eq!(t.unwrap().token, 1, "NaN is never chosen");
}

#[test]
fn all_masked_is_an_error() {
    let mut s = ChoiceSampler::new(0, 0);
    let mut row = vec![f32::NEG_INFINITY, f32::NAN];
    assert!(matches!(
        s.sample(&params(1.0), &mut row),
        Err(EngineError::Internal(_))
    ));
    assert!(s.sample(&params(0.0), &mut []).is_err());
}

#[test]
fn temperature_one_samples_the_softmax() {
    let f = frequencies(&params(1.0), &logits_of(&[0.1, 0.2, 0.7]), 20_000);
    assert_close(&f, &[0.1, 0.2, 0.7], 0.015);
}

#[test]
fn temperature_half_squares_the_probabilities() {
    // p^(1/T) renormalized: [1, 4, 49] / 54.
    let f = frequencies(&params(0.5), &logits_of(&[0.1, 0.2, 0.7]), 20_000);
    assert_close(&f, &[1.0 / 54.0, 4.0 / 54.0, 49.0 / 54.0], 0.015);
}

#[test]
fn top_k_keeps_the_k_most_likely() {
    let p = SamplingParams {
        top_k: 2,
        ..params(1.0)
    };
    let f = frequencies(&p, &logits_of(&[0.1, 0.2, 0.7]), 20_000);
    assert_close(&f, &[0.0, 2.0 / 9.0, 7.0 / 9.0], 0.015);
    assert_eq!(f[0], 0.0);
}

#[test]
fn top_p_keeps_the_smallest_prefix_reaching_p() {
    let probs = logits_of(&[0.1, 0.2, 0.7]);
    let p = SamplingParams {
        top_p: 0.75,
        ..params(1.0)
    };
    let f = frequencies(&p, &probs, 20_000);
    assert_eq!(f[0], 0.0, "0.7 + 0.2 already reaches 0.75");
    assert_close(&f, &[0.0, 2.0 / 9.0, 7.0 / 9.0], 0.015);
    let p = SamplingParams {
        top_p: 0.6,
        ..params(1.0)
    };
    assert_eq!(frequencies(&p, &probs, 1000), vec![0.0, 0.0, 1.0]);
}

#[test]
fn penalties_follow_openai_formula() {
    // logit -= count * frequency + presence (if count > 0).
    let p = SamplingParams {
        frequency_penalty: 0.5,
        presence_penalty: 0.25,
        logprobs: Some(0),
        ..params(0.0)
    };
    let mut s = ChoiceSampler::new(0, 0);
    s.counts.insert(0, 2);
    s.counts.insert(2, 1);
    let mut row = vec![2.0, 0.0, 1.0];
    let got = s.sample(&p, &mut row).unwrap();
    assert_eq!(row, vec![2.0 - 1.0 - 0.25, 0.0, 1.0 - 0.5 - 0.25]);
    assert_eq!(got.token, 0);
    assert_eq!(s.counts[&0], 3, "the sampled token is counted");
}

#[test]
fn logprobs_are_log_softmax_of_processed_logits() {
    let p = SamplingParams {
        logprobs: Some(2),
        ..params(0.0)
    };
    let mut s = ChoiceSampler::new(0, 0);
    let got = s.sample(&p, &mut logits_of(&[0.1, 0.2, 0.7])).unwrap();
    assert_eq!(got.token, 2);
    assert!((got.logprob.unwrap() - 0.7f32.ln()).abs() < 1e-5);
    assert_eq!(got.top.iter().map(|t| t.0).collect::<Vec<_>>(), [2, 1]);
    assert!((got.top[1].1 - 0.2f32.ln()).abs() < 1e-5);

    // With temperature 0.5 the reported distribution is the tempered one: [1, 4, 49] / 54.
    let p = SamplingParams {
        temperature: 0.5,
        logprobs: Some(3),
        ..params(0.0)
    };
    let got = s.sample(&p, &mut logits_of(&[0.1, 0.2, 0.7])).unwrap();
    let lp = |t: u32| got.top.iter().find(|x| x.0 == t).unwrap().1;
    assert!((lp(0) - (1.0f32 / 54.0).ln()).abs() < 1e-4);
    assert!((lp(2) - (49.0f32 / 54.0).ln()).abs() < 1e-4);
}

#[test]
fn same_seed_same_stream_and_choices_differ() {
    let row = logits_of(&[0.25; 4]);
    let run = |seed, index| {
        let mut s = ChoiceSampler::new(seed, index);
        (0..64)
            .map(|_| s.sample(&params(1.0), &mut row.clone()).unwrap().token)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(42, 0), run(42, 0));
    assert_eq!(run(42, 1), run(42, 1));
    assert_ne!(run(42, 0), run(42, 1), "each choice has its own stream");
    assert_ne!(run(42, 0), run(43, 0));
}

#[test]
fn logit_bias_shifts_the_distribution_as_exp_of_the_bias() {
    // p ∝ exp(logit + bias): a bias of ln 3 on token 0 of [0.25, 0.75] makes it 0.5 / 0.5.
    let p = SamplingParams {
        logit_bias: vec![(0, 3f32.ln()), (99, 50.0)],
        ..params(1.0)
    };
    let f = frequencies(&p, &logits_of(&[0.25, 0.75]), 20_000);
    assert_close(&f, &[0.5, 0.5], 0.015);
    // -100 bans the greedy choice; +100 forces an unlikely one.
    let ban = SamplingParams {
        logit_bias: vec![(1, -100.0)],
        ..params(0.0)
    };
    let mut row = logits_of(&[0.25, 0.75]);
    assert_eq!(
        ChoiceSampler::new(1, 0)
            .sample(&ban, &mut row)
            .unwrap()
            .token,
        0
    );
    let force = SamplingParams {
        logit_bias: vec![(0, 100.0)],
        ..params(1.0)
    };
    assert_eq!(
        frequencies(&force, &logits_of(&[0.001, 0.999]), 1000),
        vec![1.0, 0.0]
    );
}

/// Transformers' `RepetitionPenaltyLogitsProcessor` and `MinPLogitsWarper` on 24 random rows
/// (`tests/parity/make_sampling_reference.py`): the penalised logits to 1e-6, and the ids min-p
/// leaves to be drawn, exactly.
#[test]
fn repetition_penalty_and_min_p_match_transformers() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/sampling/processors.json"
    );
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    for (i, case) in fixture["cases"].as_array().unwrap().iter().enumerate() {
        let mut p = params(case["temperature"].as_f64().unwrap() as f32);
        p.repetition_penalty = case["repetition_penalty"].as_f64().unwrap() as f32;
        p.min_p = case["min_p"].as_f64().unwrap() as f32;
        p.set_prompt(&ids(&case["prompt"]));
        let mut counts = HashMap::new();
        for t in ids(&case["generated"]) {
            *counts.entry(t).or_insert(0) += 1;
        }
        // The penalty alone (temperature 1).
        let mut penalised = floats(&case["logits"]);
        let untempered = SamplingParams {
            temperature: 1.0,
            ..p.clone()
        };
        process(&untempered, &counts, &mut penalised);
        for (k, (got, want)) in penalised.iter().zip(floats(&case["penalised"])).enumerate() {
            assert!(
                (got - want).abs() <= 1e-6,
                "case {i}, token {k}: {got} vs {want}"
            );
        }
        // Then temperature and min-p: the ids a draw may return.
        let mut logits = floats(&case["logits"]);
        process(&p, &counts, &mut logits);
        let floor = min_p_floor(p.min_p, &logits);
        let kept: Vec<u32> = (0..logits.len() as u32)
            .filter(|&t| logits[t as usize] >= floor)
            .collect();
        assert_eq!(kept, ids(&case["kept"]), "case {i}");
        // And draws stay among them.
        let mut rng = ChaCha20Rng::seed_from_u64(i as u64);
        for _ in 0..50 {
            let t = draw(&p, &logits, &mut rng).unwrap();
            assert!(kept.contains(&t), "case {i}: drew {t}");
        }
    }
}
