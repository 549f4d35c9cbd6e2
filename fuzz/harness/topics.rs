//! topics: random subscribe/unsubscribe/retain/clear sequences on `SubscriptionTree` and
//! `RetainedTree` (levels a, b, "", +, #, $s; now and then 50,000 deep) always agree with
//! `filter_matches` over a plain model, including insert/remove results and `len`.
//! Run by libFuzzer (`fuzz/fuzz_targets/topics.rs`) and, bounded, by `tests/fuzz_bounded.rs`.

use ringmq::topics::{RetainedTree, SubscriptionTree, filter_matches, validate_topic_filter, validate_topic_name};

const LEVELS: [&[u8]; 6] = [b"a", b"b", b"", b"+", b"#", b"$s"];
const DEEP_MAX: usize = 50_000;
/// Deep strings per input, so one run stays fast.
const DEEP_PER_INPUT: usize = 4;
const PROBES_KEPT: usize = 8;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }
    fn level(&mut self) -> Option<&'static [u8]> {
        Some(LEVELS[usize::from(self.byte()? % 6)])
    }
}

/// A topic or filter: 1-6 levels from the alphabet, or (head 0xFF) one level repeated up to
/// `DEEP_MAX` times with an optional tail level. Returns the string and whether it is deep.
fn string(input: &mut Input, deep_left: &mut usize) -> Option<(Vec<u8>, bool)> {
    let head = input.byte()?;
    let (level, count, tail, deep) = if head == 0xFF && *deep_left > 0 {
        *deep_left -= 1;
        let level = input.level()?;
        // (1..=256) << (0..=8), capped: mostly hundreds to thousands, sometimes DEEP_MAX.
        let (low, shift) = (usize::from(input.byte()?) + 1, input.byte()? % 9);
        let count = (low << shift).min(DEEP_MAX);
        let tail = LEVELS.get(usize::from(input.byte()? % 8)).copied();
        (Some(level), count, tail, true)
    } else {
        (None, usize::from(head % 6) + 1, None, false)
    };
    let mut out = Vec::with_capacity(count * 3);
    for index in 0..count {
        if index > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(match level {
            Some(level) => level,
            None => input.level()?,
        });
    }
    if let Some(tail) = tail {
        out.push(b'/');
        out.extend_from_slice(tail);
    }
    Some((out, deep))
}

fn show(s: &[u8]) -> String {
    format!("{:?} ({} bytes)", String::from_utf8_lossy(&s[..s.len().min(64)]), s.len())
}

struct Model {
    subs: SubscriptionTree<u32, ()>,
    retained: RetainedTree<u32>,
    /// Live (filter, key) entries.
    sub_entries: Vec<(Vec<u8>, u32)>,
    /// Live (topic, message) entries.
    retained_entries: Vec<(Vec<u8>, u32)>,
}

impl Model {
    fn check(&self, probe: &[u8]) {
        assert_eq!(self.subs.len(), self.sub_entries.len(), "SubscriptionTree::len");
        assert_eq!(self.retained.len(), self.retained_entries.len(), "RetainedTree::len");
        if validate_topic_name(probe).is_ok() {
            let mut got = Vec::new();
            self.subs.for_each_match(probe, |key, ()| got.push(*key));
            got.sort_unstable();
            let mut want: Vec<u32> = self.sub_entries.iter().filter(|(f, _)| filter_matches(f, probe)).map(|(_, k)| *k).collect();
            want.sort_unstable();
            assert_eq!(got, want, "subscriptions matching topic {}", show(probe));
        }
        if validate_topic_filter(probe).is_ok() {
            let mut got = Vec::new();
            self.retained.for_each_match(probe, |message| got.push(*message));
            got.sort_unstable();
            let mut want: Vec<u32> = self.retained_entries.iter().filter(|(t, _)| filter_matches(probe, t)).map(|(_, m)| *m).collect();
            want.sort_unstable();
            assert_eq!(got, want, "retained messages matching filter {}", show(probe));
        }
    }
}

pub fn run(data: &[u8]) {
    let mut input = Input(data);
    let mut model = Model {
        subs: SubscriptionTree::default(),
        retained: RetainedTree::default(),
        sub_entries: Vec::new(),
        retained_entries: Vec::new(),
    };
    let mut probes: Vec<Vec<u8>> = Vec::new();
    let mut deep_left = DEEP_PER_INPUT;
    let mut serial = 0u32;
    while let Some(op) = input.byte() {
        let Some((s, deep)) = string(&mut input, &mut deep_left) else { break };
        let key = u32::from(op / 5 % 4);
        let valid_filter = validate_topic_filter(&s).is_ok();
        let valid_name = validate_topic_name(&s).is_ok();
        match op % 5 {
            // Subscribe: validated first, as the broker does; the same key replaces.
            0 if valid_filter => {
                let had = model.sub_entries.iter().any(|(f, k)| *f == s && *k == key);
                assert_eq!(model.subs.insert(&s, key, ()).is_some(), had, "insert {} key {key}", show(&s));
                if !had {
                    model.sub_entries.push((s.clone(), key));
                }
            }
            1 if valid_filter => {
                let at = model.sub_entries.iter().position(|(f, k)| *f == s && *k == key);
                assert_eq!(model.subs.remove(&s, &key).is_some(), at.is_some(), "remove {} key {key}", show(&s));
                if let Some(at) = at {
                    model.sub_entries.swap_remove(at);
                }
            }
            // Retain: one message per topic, replaced.
            2 if valid_name => {
                serial += 1;
                let entry = model.retained_entries.iter_mut().find(|(t, _)| *t == s);
                let old = entry.as_ref().map(|(_, m)| *m);
                assert_eq!(model.retained.insert(&s, serial), old, "retain {}", show(&s));
                match entry {
                    Some(entry) => entry.1 = serial,
                    None => model.retained_entries.push((s.clone(), serial)),
                }
            }
            3 if valid_name => {
                let at = model.retained_entries.iter().position(|(t, _)| *t == s);
                let old = at.map(|at| model.retained_entries.swap_remove(at).1);
                assert_eq!(model.retained.remove(&s), old, "clear retained {}", show(&s));
            }
            // Probe: remembered (shallow ones only) and re-checked after every later operation.
            4 if !deep => {
                if probes.len() == PROBES_KEPT {
                    probes.remove(0);
                }
                probes.push(s.clone());
            }
            _ => {}
        }
        model.check(&s);
        for probe in &probes {
            model.check(probe);
        }
    }
}
