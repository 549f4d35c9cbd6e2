//! Subscription-index cost at 100k and 1M subscriptions: matching one topic (exact, `+`,
//! `#` mixes, one topic with every subscriber, shared-subscription groups) and
//! subscribe/unsubscribe churn.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use ringmq::protocol::QoS;
use ringmq::shard::ShardId;
use ringmq::shard::shared::SharedGroups;
use ringmq::topics::SubscriptionTree;

fn tree_with(subscriptions: u32, filter_for: impl Fn(u32) -> String) -> SubscriptionTree<u32, u8> {
    let mut tree = SubscriptionTree::default();
    for key in 0..subscriptions {
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
    for (label, subscriptions) in [("100k", 100_000u32), ("1m", 1_000_000)] {
        let mut group = c.benchmark_group(format!("match_{label}"));
        let sites = subscriptions / 1000;
        let exact = tree_with(subscriptions, |k| format!("site/{}/device/{}/temp", k % sites, k));
        let topic = format!("site/{}/device/{}/temp", 507 % sites, 507);
        assert_eq!(count_matches(&exact, topic.as_bytes()), 1);
        group.bench_function("exact", |b| b.iter(|| black_box(count_matches(&exact, topic.as_bytes()))));

        let plus = tree_with(subscriptions, |k| {
            if k % 2 == 0 { format!("site/+/device/{}/temp", k) } else { format!("site/{}/device/+/temp", k % 1000) }
        });
        group.bench_function("single_level_wildcards", |b| b.iter(|| black_box(count_matches(&plus, b"site/7/device/508/temp"))));
        drop(plus);

        let hash = tree_with(subscriptions, |k| {
            if k % 10 == 0 { format!("site/{}/#", k % 1000) } else { format!("site/{}/device/{}/temp", k % 1000, k) }
        });
        group.bench_function("multi_level_wildcards", |b| b.iter(|| black_box(count_matches(&hash, b"site/7/device/507/temp"))));
        drop(hash);

        let fan_out = tree_with(subscriptions, |_| "news/all".to_string());
        group.bench_function("one_topic_all_subscribers", |b| b.iter(|| black_box(count_matches(&fan_out, b"news/all"))));
        drop(fan_out);

        // Shared subscriptions: members spread over 1,000 groups of 1,000 filters' worth
        // of topics; one publish picks one member in each matching group.
        let mut shared = SharedGroups::default();
        for k in 0..subscriptions {
            let group_name = Bytes::from(format!("g{}", k % 1000));
            let filter = Bytes::from(format!("jobs/{}/+", k % 1000));
            shared.join(group_name, filter, ShardId((k % 8) as usize), Bytes::from(format!("worker-{k}")), QoS::AtLeastOnce);
        }
        assert_eq!(shared.choose(b"jobs/7/x").len(), 1);
        group.bench_function("shared_groups_choose", |b| b.iter(|| black_box(shared.choose(b"jobs/7/x"))));
        drop(shared);

        group.finish();
        let mut churn = exact;
        let mut next = subscriptions;
        c.bench_function(&format!("subscribe_unsubscribe_churn_{label}"), |b| {
            b.iter(|| {
                let filter = format!("site/{}/device/{}/temp", next % sites, next);
                churn.insert(filter.as_bytes(), next, 1);
                black_box(churn.remove(filter.as_bytes(), &next));
                next += 1;
            })
        });
    }
}

criterion_group!(benches, topics);
criterion_main!(benches);
