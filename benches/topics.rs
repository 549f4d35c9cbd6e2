//! Subscription-trie cost: matching one topic against 100k subscriptions (exact, `+`,
//! `#` mixes), and subscribe/unsubscribe churn.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ringmq::topics::SubscriptionTree;

const SUBSCRIPTIONS: u32 = 100_000;

fn tree_with(filter_for: impl Fn(u32) -> String) -> SubscriptionTree<u32, u8> {
    let mut tree = SubscriptionTree::default();
    for key in 0..SUBSCRIPTIONS {
        tree.insert(filter_for(key).as_bytes(), key, 0);
    }
    tree
}

fn count_matches(tree: &SubscriptionTree<u32, u8>, topic: &[u8]) -> usize {
    let mut count = 0;
    tree.for_each_match(topic, |key, _| {
        black_box(key);
        count += 1;
    });
    count
}

fn topics(c: &mut Criterion) {
    let mut group = c.benchmark_group("match_100k");
    let exact = tree_with(|k| format!("site/{}/device/{}/temp", k % 100, k));
    assert_eq!(count_matches(&exact, b"site/7/device/507/temp"), 1);
    group.bench_function("exact", |b| b.iter(|| black_box(count_matches(&exact, b"site/7/device/507/temp"))));

    let plus = tree_with(|k| if k % 2 == 0 { format!("site/+/device/{}/temp", k) } else { format!("site/{}/device/+/temp", k % 1000) });
    group.bench_function("single_level_wildcards", |b| b.iter(|| black_box(count_matches(&plus, b"site/7/device/508/temp"))));

    let hash = tree_with(|k| if k % 10 == 0 { format!("site/{}/#", k % 1000) } else { format!("site/{}/device/{}/temp", k % 1000, k) });
    group.bench_function("multi_level_wildcards", |b| b.iter(|| black_box(count_matches(&hash, b"site/7/device/507/temp"))));

    let fan_out = tree_with(|_| "news/all".to_string());
    group.bench_function("one_topic_100k_subscribers", |b| b.iter(|| black_box(count_matches(&fan_out, b"news/all"))));
    group.finish();

    let mut churn = exact;
    let mut next = SUBSCRIPTIONS;
    c.bench_function("subscribe_unsubscribe_churn_100k", |b| {
        b.iter(|| {
            let filter = format!("site/{}/device/{}/temp", next % 100, next);
            churn.insert(filter.as_bytes(), next, 1);
            black_box(churn.remove(filter.as_bytes(), &next));
            next += 1;
        })
    });
}

criterion_group!(benches, topics);
criterion_main!(benches);
