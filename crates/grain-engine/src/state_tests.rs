use super::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn limits(max_num_seqs: usize, max_num_batched_tokens: usize) -> Limits {
    Limits {
        max_num_seqs,
        max_num_batched_tokens,
        max_context: 1_000_000,
    }
}

fn entry(batch: &StepBatch, id: u64) -> Option<&StepEntry> {
    batch.entries.iter().find(|e| e.seq == SeqId(id))
}

/// Samples token `100 + position` for every entry that wants logits, as the worker would.
fn sample_all(state: &mut State, batch: &StepBatch) -> Vec<(SeqId, Appended)> {
    let mut out = Vec::new();
    for e in batch.entries.iter().filter(|e| e.want_logits) {
        let token = 100 + e.end as u32;
        out.push((e.seq, state.append_token(e.seq, token).unwrap()));
    }
    out
}

#[test]
fn token_budget_chunks_prefill_and_fills_in_order() {
    let mut s = State::new(limits(8, 128), 16, 100);
    for id in 0..3 {
        s.add(SeqId(id), 100, 10).unwrap();
    }
    let b = s.schedule();
    assert_eq!(b.num_tokens(), 128);
    let e0 = entry(&b, 0).unwrap();
    assert_eq!((e0.start, e0.end, e0.want_logits), (0, 100, true));
    let e1 = entry(&b, 1).unwrap();
    assert_eq!((e1.start, e1.end, e1.want_logits), (0, 28, false));
    assert!(entry(&b, 2).is_none(), "budget exhausted");
    // 100 positions → 7 blocks, 28 → 2 blocks: only what was computed is reserved.
    assert_eq!(s.blocks_used(), 9);
    s.check_invariants();

    sample_all(&mut s, &b);
    let b = s.schedule();
    let e0 = entry(&b, 0).unwrap();
    assert_eq!((e0.start, e0.end), (100, 101), "one decode token");
    assert_eq!(
        e0.tokens,
        vec![200],
        "the decode input is the sampled token"
    );
    let e1 = entry(&b, 1).unwrap();
    assert_eq!((e1.start, e1.end, e1.want_logits), (28, 100, true));
    let e2 = entry(&b, 2).unwrap();
    assert_eq!((e2.start, e2.end), (0, 55), "1 + 72 + 55 = 128");
    s.check_invariants();
}

#[test]
fn max_num_seqs_caps_running() {
    let mut s = State::new(limits(2, 1000), 16, 100);
    for id in 0..5 {
        s.add(SeqId(id), 10, 10).unwrap();
    }
    let b = s.schedule();
    assert_eq!(b.entries.len(), 2);
    assert_eq!(s.num_running(), 2);
    assert_eq!(s.num_waiting(), 3);
    sample_all(&mut s, &b);
    s.remove(SeqId(0));
    let b = s.schedule();
    assert!(
        entry(&b, 2).is_some(),
        "a freed slot admits the next waiting one"
    );
    assert!(entry(&b, 3).is_none());
    s.check_invariants();
}

#[test]
fn length_limit_is_reported_at_max_tokens() {
    let mut s = State::new(limits(4, 64), 4, 16);
    assert_eq!(s.add(SeqId(1), 5, 2).unwrap(), 2);
    let b = s.schedule();
    assert_eq!(sample_all(&mut s, &b), vec![(SeqId(1), Appended::Continue)]);
    let b = s.schedule();
    assert_eq!(
        sample_all(&mut s, &b),
        vec![(SeqId(1), Appended::LengthLimit)]
    );
}

#[test]
fn max_tokens_is_clamped_to_the_context_and_cache() {
    let mut s = State::new(
        Limits {
            max_context: 50,
            ..limits(4, 64)
        },
        4,
        100,
    );
    assert_eq!(s.add(SeqId(1), 40, 100).unwrap(), 10);
    // Cache of 8 blocks × 4 = 32 positions is smaller than the context.
    let mut small = State::new(limits(4, 64), 4, 8);
    assert_eq!(small.max_model_len(), 32);
    assert_eq!(small.add(SeqId(1), 30, 100).unwrap(), 2);
}

#[test]
fn prompt_that_can_never_fit_is_rejected() {
    let mut s = State::new(limits(4, 64), 16, 4);
    let err = s.add(SeqId(1), 64, 10).unwrap_err();
    assert_eq!(
        err,
        EngineError::ContextLengthExceeded {
            prompt_tokens: 64,
            max: 64
        }
    );
    assert!(s.is_idle());
    assert!(s.add(SeqId(2), 63, 10).is_ok());
}

#[test]
fn preempts_the_newest_and_recomputes_its_generated_tokens() {
    // 4 blocks of 4 positions. Two sequences of 7 prompt positions take 2 blocks each.
    let mut s = State::new(limits(4, 64), 4, 4);
    s.add(SeqId(1), 7, 100).unwrap();
    s.add(SeqId(2), 7, 100).unwrap();
    let b = s.schedule();
    assert_eq!(b.entries.len(), 2);
    assert_eq!(s.blocks_used(), 4);
    sample_all(&mut s, &b); // both now have 8 positions, 7 computed
    let b = s.schedule(); // position 7 still fits block 2
    assert_eq!(b.entries.len(), 2);
    sample_all(&mut s, &b);
    // Position 8 needs a third block for each: the older one gets it, the newer is preempted.
    let b = s.schedule();
    assert_eq!(b.entries.len(), 1);
    assert_eq!(b.entries[0].seq, SeqId(1));
    assert_eq!(s.preemptions(), 1);
    assert_eq!(s.num_waiting(), 1);
    assert_eq!(s.blocks_used(), 3);
    s.check_invariants();
    sample_all(&mut s, &b);
    s.remove(SeqId(1));
    assert_eq!(s.blocks_used(), 0);

    // Sequence 2 comes back and recomputes prompt + its two generated tokens in one chunk.
    let b = s.schedule();
    let e = entry(&b, 2).unwrap();
    assert_eq!((e.start, e.end, e.want_logits), (0, 9, true));
    assert_eq!(e.prompt_len, 7);
    assert_eq!(e.tokens, vec![107, 108], "generated tokens are kept");
    assert_eq!(s.generated(SeqId(2)).unwrap(), &[107, 108]);
    s.check_invariants();
}

#[test]
fn a_sequence_preempts_itself_when_it_is_the_newest() {
    let mut s = State::new(limits(4, 64), 4, 3);
    s.add(SeqId(1), 5, 100).unwrap(); // 2 blocks
    s.add(SeqId(2), 3, 100).unwrap(); // 1 block
    let b = s.schedule();
    assert_eq!(b.entries.len(), 2);
    sample_all(&mut s, &b);
    let b = s.schedule();
    sample_all(&mut s, &b);
    assert_eq!(s.blocks_used(), 3);
    // Now 1 is at 7 positions (fits 2 blocks), 2 needs position 4 → a second block: none free,
    // and 2 is the newest, so it yields.
    let b = s.schedule();
    assert_eq!(
        b.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [SeqId(1)]
    );
    assert_eq!(s.preemptions(), 1);
    s.check_invariants();
}

#[test]
fn admission_waits_for_blocks_for_the_whole_prompt() {
    let mut s = State::new(limits(4, 8), 4, 5);
    s.add(SeqId(1), 16, 100).unwrap(); // 4 blocks in total
    s.add(SeqId(2), 8, 100).unwrap(); // 2 blocks
    let b = s.schedule();
    assert_eq!(
        b.entries.len(),
        1,
        "budget of 8 tokens: only a chunk of the first prompt"
    );
    assert_eq!(s.blocks_used(), 2);
    let b = s.schedule();
    assert_eq!(b.entries.len(), 1);
    assert_eq!(s.blocks_used(), 4);
    sample_all(&mut s, &b);
    // One block is free but sequence 2 needs two: it is not started just to be preempted.
    let b = s.schedule();
    assert_eq!(
        b.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [SeqId(1)]
    );
    assert_eq!(s.num_waiting(), 1);
    s.check_invariants();
}

#[test]
fn cancellation_frees_blocks_wherever_the_sequence_is() {
    let mut s = State::new(limits(1, 100), 4, 50);
    s.add(SeqId(1), 10, 100).unwrap();
    s.add(SeqId(2), 10, 100).unwrap();
    let b = s.schedule();
    assert_eq!(s.blocks_used(), 3);
    assert!(s.remove(SeqId(1)), "running");
    assert!(s.remove(SeqId(2)), "waiting");
    assert!(!s.remove(SeqId(2)), "already gone");
    assert_eq!(s.blocks_used(), 0);
    assert!(s.is_idle());
    assert!(s.append_token(b.entries[0].seq, 1).is_err());
    assert!(s.schedule().entries.is_empty());
}

#[test]
fn token_before_logits_is_an_error_not_a_panic() {
    let mut s = State::new(limits(1, 4), 4, 50);
    s.add(SeqId(1), 10, 100).unwrap();
    s.schedule(); // computes 4 of 10
    assert!(matches!(
        s.append_token(SeqId(1), 5),
        Err(EngineError::Internal(_))
    ));
}

/// Random arrivals, lengths and cancellations under a tight cache: the books always balance,
/// every sequence finishes with exactly its allowed tokens, and the cache ends empty.
#[test]
fn random_workload_keeps_invariants_and_terminates() {
    for seed in 0..20u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let block_size = rng.random_range(1..=8);
        let num_blocks = rng.random_range(8..=40);
        let mut s = State::new(
            limits(rng.random_range(1..=6), rng.random_range(1..=64)),
            block_size,
            num_blocks,
        );
        let mut expected = HashMap::new();
        let mut next_id = 0u64;
        for _step in 0..100_000 {
            if next_id < 40 && rng.random_bool(0.3) {
                let prompt = rng.random_range(1..=block_size * num_blocks);
                let max_new = rng.random_range(1..=20);
                if let Ok(allowed) = s.add(SeqId(next_id), prompt, max_new) {
                    expected.insert(SeqId(next_id), allowed);
                }
                next_id += 1;
            }
            let b = s.schedule();
            s.check_invariants();
            assert!(b.num_tokens() <= s.limits.max_num_batched_tokens);
            if !s.is_idle() {
                assert!(!b.entries.is_empty(), "seed {seed}: work but no progress");
            }
            for (id, appended) in sample_all(&mut s, &b) {
                if appended == Appended::LengthLimit {
                    assert_eq!(s.generated(id).unwrap().len(), expected[&id]);
                    s.remove(id);
                    expected.remove(&id);
                } else if rng.random_bool(0.02) {
                    s.remove(id);
                    expected.remove(&id);
                }
            }
            if next_id >= 40 && s.is_idle() {
                break;
            }
        }
        assert!(s.is_idle(), "seed {seed}: did not terminate");
        assert!(expected.is_empty());
        assert_eq!(s.blocks_used(), 0);
    }
}

/// Keys for a prompt whose first `shared` blocks are common to every sequence (`0, 1, …`) and
/// whose other blocks are the sequence's own.
fn keys(shared: usize, own: usize, seq: u64) -> Vec<u64> {
    (0..shared as u64)
        .chain((0..own as u64).map(|i| 1000 * (seq + 1) + i))
        .collect()
}

#[test]
fn a_cached_prefix_is_attached_and_only_the_rest_computed() {
    let mut s = State::new(limits(8, 512), 16, 40);
    // 70 positions: blocks 0..4 are full, position 64.. is the partial last block.
    s.add_with_prefix(SeqId(0), 70, 4, keys(3, 1, 0)).unwrap();
    let b = s.schedule();
    assert_eq!((b.entries[0].start, b.entries[0].end), (0, 70));
    assert!(s.take_prefix_hits().is_empty(), "nothing was cached yet");
    s.finish_step(true);
    s.check_invariants();

    // Shares three blocks (48 positions) with sequence 0, which is still running.
    s.add_with_prefix(SeqId(1), 60, 4, keys(3, 0, 1)).unwrap();
    sample_all(&mut s, &b);
    let b = s.schedule();
    let e1 = entry(&b, 1).unwrap();
    assert_eq!(
        (e1.start, e1.end),
        (48, 60),
        "only the uncached tail is computed"
    );
    assert_eq!(e1.block_table[..3], entry(&b, 0).unwrap().block_table[..3]);
    assert_eq!(s.take_prefix_hits(), vec![(SeqId(1), 48)]);
    assert_eq!(s.blocks_used(), 5 + 1, "one new block for positions 48..60");
    s.check_invariants();
    s.finish_step(true);

    s.remove(SeqId(0));
    s.remove(SeqId(1));
    assert_eq!(
        s.blocks_used(),
        0,
        "cached blocks nobody holds count as free"
    );
    assert_eq!(s.blocks_cached(), 4, "sequence 0's four full blocks");
    s.check_invariants();
}

#[test]
fn a_fully_cached_prompt_still_computes_its_last_position() {
    let mut s = State::new(limits(8, 512), 16, 20);
    s.add_with_prefix(SeqId(0), 64, 1, keys(4, 0, 0)).unwrap();
    s.schedule();
    s.finish_step(true);
    s.remove(SeqId(0));
    assert_eq!(
        s.blocks_cached(),
        3,
        "the block holding the last position is not cached"
    );
    s.add_with_prefix(SeqId(1), 64, 1, keys(4, 0, 1)).unwrap();
    let b = s.schedule();
    let e = entry(&b, 1).unwrap();
    assert_eq!((e.start, e.end, e.want_logits), (48, 64, true));
    s.check_invariants();
}

#[test]
fn a_failed_step_caches_nothing_and_eviction_makes_room() {
    let mut s = State::new(limits(8, 512), 16, 6);
    s.add_with_prefix(SeqId(0), 40, 1, keys(2, 0, 0)).unwrap();
    s.schedule();
    s.finish_step(false);
    s.remove(SeqId(0));
    assert_eq!(s.blocks_cached(), 0);

    s.add_with_prefix(SeqId(1), 40, 1, keys(2, 0, 1)).unwrap();
    s.schedule();
    s.finish_step(true);
    s.remove(SeqId(1));
    assert_eq!(s.blocks_cached(), 2);
    // A 90-position prompt needs all six blocks: the idle cached ones are evicted for it.
    s.add_with_prefix(SeqId(2), 90, 1, keys(0, 5, 2)).unwrap();
    let b = s.schedule();
    assert_eq!(entry(&b, 2).unwrap().end, 90);
    assert_eq!((s.blocks_used(), s.blocks_cached()), (6, 0));
    s.check_invariants();
}

#[test]
fn random_prefix_sharing_with_preemption_keeps_the_books() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut s = State::new(limits(6, 96), 8, 24);
    let mut live: Vec<u64> = Vec::new();
    for id in 0..400u64 {
        if rng.random_bool(0.5) {
            let shared = rng.random_range(0..4);
            let own = rng.random_range(0..3);
            let len = (shared + own) * 8 + rng.random_range(1..8);
            if s.add_with_prefix(
                SeqId(id),
                len,
                rng.random_range(1..12),
                keys(shared, own, id),
            )
            .is_ok()
            {
                live.push(id);
            }
        }
        let b = s.schedule();
        s.finish_step(rng.random_bool(0.9));
        s.check_invariants();
        for (seq, appended) in sample_all(&mut s, &b) {
            if appended == Appended::LengthLimit {
                s.remove(seq);
                live.retain(|&l| l != seq.0);
            }
        }
        if !live.is_empty() && rng.random_bool(0.1) {
            let victim = live.swap_remove(rng.random_range(0..live.len()));
            s.remove(SeqId(victim));
        }
        s.check_invariants();
    }
    for id in live {
        s.remove(SeqId(id));
    }
    assert_eq!(s.blocks_used(), 0);
    s.check_invariants();
}

#[test]
fn a_prefix_being_computed_is_waited_for_not_computed_twice() {
    let mut s = State::new(limits(8, 512), 16, 40);
    // Three choices of one request: the same 70-position prompt.
    for id in 0..3 {
        s.add_with_prefix(SeqId(id), 70, 4, keys(4, 0, 0)).unwrap();
    }
    let b = s.schedule();
    assert_eq!(b.entries.len(), 1, "the others wait for its blocks");
    s.finish_step(true);
    sample_all(&mut s, &b);
    let b = s.schedule();
    for id in [1, 2] {
        let e = entry(&b, id).unwrap();
        assert_eq!(
            (e.start, e.end),
            (64, 70),
            "sequence {id} attaches 4 blocks"
        );
    }
    assert_eq!(s.take_prefix_hits().len(), 2);
    s.check_invariants();
    // A failed step registers nothing, so the wait ends anyway: the next schedule admits it.
    s.add_with_prefix(SeqId(7), 40, 4, keys(0, 2, 7)).unwrap();
    s.add_with_prefix(SeqId(8), 40, 4, keys(0, 2, 7)).unwrap();
    let b = s.schedule();
    assert!(entry(&b, 7).is_some() && entry(&b, 8).is_none());
    s.finish_step(false);
    let b = s.schedule();
    assert_eq!(
        entry(&b, 8).map(|e| e.start),
        Some(0),
        "nothing cached: computed in full"
    );
    s.check_invariants();
}

#[test]
fn a_scored_prompt_gets_every_row_in_capped_chunks_and_skips_the_prefix_cache() {
    let mut s = State::new(limits(8, 4096), 16, 200);
    let keys: Vec<u64> = (0..80).collect();
    s.add_with_prefix(SeqId(1), 1200, 4, keys.clone()).unwrap();
    s.score_prompt(SeqId(1));
    s.add_with_prefix(SeqId(2), 40, 4, keys[..2].to_vec())
        .unwrap();
    // The 1200-position prompt: chunks of SCORE_CHUNK with every row, the last one ends at the
    // prompt and also wants the next token's logits.
    let mut spans = Vec::new();
    loop {
        let b = s.schedule();
        s.finish_step(true);
        let Some(e) = entry(&b, 1).cloned() else {
            break;
        };
        assert_eq!(
            e.logits_rows(),
            if e.all_logits { e.end - e.start } else { 1 }
        );
        spans.push((e.start, e.end, e.all_logits, e.want_logits));
        sample_all(&mut s, &b);
        if e.want_logits {
            break;
        }
    }
    assert_eq!(
        spans,
        vec![
            (0, 512, true, false),
            (512, 1024, true, false),
            (1024, 1200, true, true)
        ]
    );
    // Scored: a later recompute (after a preemption) asks for no rows; and nothing it computed
    // went into the prefix cache (a cached position would have no logits).
    s.prompt_scored(SeqId(1));
    assert_eq!(
        s.blocks_cached(),
        2,
        "only the unscored prompt's two full blocks"
    );
    let b = s.schedule();
    let e = entry(&b, 1).unwrap();
    assert!(!e.all_logits && e.logits_rows() == 1, "a decode step");
    s.check_invariants();
}
