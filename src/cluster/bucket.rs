//! Opening the cluster's JetStream key-value buckets, shared by the retained store and the
//! client-id owners. A bucket is opened, or made if missing, retrying until JetStream
//! answers (its servers elect a leader for some seconds after they start).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt;

/// Between attempts to open a bucket.
const RETRY: Duration = Duration::from_secs(1);
/// Longest key: `$KV.<bucket>.<key>` must fit NATS's 4 KiB protocol line.
pub const KEY_BYTES_MAX: usize = 3_000;

/// The bucket key for arbitrary bytes (a topic, a client id): URL-safe base64, which KV
/// keys accept whatever the bytes are. `None` past `KEY_BYTES_MAX`.
pub fn key_of(bytes: &[u8]) -> Option<String> {
    let key = URL_SAFE_NO_PAD.encode(bytes);
    (key.len() <= KEY_BYTES_MAX).then_some(key)
}

/// The start of every key a process (`origin`) keeps under its own name: its origin in
/// hex and a dot (wills, session records).
pub fn origin_prefix(origin: u64) -> String {
    format!("{origin:016x}.")
}

/// `client_id`'s key among those `origin` keeps.
pub fn origin_key(origin: u64, client_id: &[u8]) -> Option<String> {
    Some(format!("{}{}", origin_prefix(origin), key_of(client_id)?))
}

/// Removes every entry `origin` left in `bucket` under `origin_prefix`, delete markers
/// included.
pub async fn purge_origin(client: &async_nats::Client, bucket: &str, origin: u64) {
    let jetstream = async_nats::jetstream::new(client.clone());
    if let Ok(stream) = jetstream.get_stream(format!("KV_{bucket}")).await {
        let _ = stream.purge().filter(format!("$KV.{bucket}.{}>", origin_prefix(origin))).await;
    }
}

/// Removes `key` from `bucket`'s stream, its history and delete markers included: for keys
/// nobody writes again (a process gone for good). True if the purge was acknowledged.
pub async fn purge_key(client: &async_nats::Client, bucket: &str, key: &str) -> bool {
    let jetstream = async_nats::jetstream::new(client.clone());
    let Ok(stream) = jetstream.get_stream(format!("KV_{bucket}")).await else { return false };
    stream.purge().filter(format!("$KV.{bucket}.{key}")).await.is_ok()
}

/// Opens `bucket` (made with `replicas` copies and one revision per key if missing;
/// entries older than `max_age` vanish, when given).
pub async fn open(
    client: &async_nats::Client,
    bucket: &str,
    replicas: usize,
    description: &str,
    max_age: Option<Duration>,
) -> async_nats::jetstream::kv::Store {
    let jetstream = async_nats::jetstream::new(client.clone());
    // The bucket's stream, made as a KV bucket's is: async-nats's own `create_key_value`
    // first reads account fields that nats-server before 2.10 does not send.
    let stream = async_nats::jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        max_age: max_age.unwrap_or_default(),
        ..Default::default()
    };
    let mut warned = false;
    loop {
        let opened = match jetstream.get_key_value(bucket).await {
            Ok(store) => Ok(store),
            Err(_) => match jetstream.create_stream(stream.clone()).await {
                Ok(_) => jetstream.get_key_value(bucket).await.map_err(|error| error.to_string()),
                Err(error) => Err(error.to_string()),
            },
        };
        match opened {
            Ok(store) => {
                tracing::info!(bucket, "cluster: JetStream bucket open");
                return store;
            }
            Err(error) => {
                if !warned {
                    tracing::warn!(%error, bucket, replicas, "cluster: JetStream bucket not available yet, retrying");
                    warned = true;
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Every change to `store`, starting from the last value of each key, for as long as the
/// stream is polled. A watch that cannot start, or that ends (NATS went away), is started
/// again after `RETRY`; what it gives again from history (revisions already seen) is
/// skipped, so each revision comes once.
pub fn watch_forever(store: async_nats::jetstream::kv::Store) -> impl futures_util::Stream<Item = async_nats::jetstream::kv::Entry> {
    struct Watching {
        store: async_nats::jetstream::kv::Store,
        watch: Option<async_nats::jetstream::kv::Watch>,
        /// The highest revision given so far.
        seen: u64,
        warned: bool,
    }
    let start = Watching { store, watch: None, seen: 0, warned: false };
    futures_util::stream::unfold(start, |mut watching| async move {
        loop {
            let Some(watch) = &mut watching.watch else {
                match watching.store.watch_with_history(">").await {
                    Ok(watch) => watching.watch = Some(watch),
                    Err(error) => {
                        if !watching.warned {
                            tracing::warn!(%error, bucket = watching.store.name, "cluster: cannot watch a JetStream bucket yet, retrying");
                            watching.warned = true;
                        }
                        tokio::time::sleep(RETRY).await;
                    }
                }
                continue;
            };
            match watch.next().await {
                Some(Ok(entry)) if entry.revision > watching.seen => {
                    watching.seen = entry.revision;
                    return Some((entry, watching));
                }
                // Given again by a new watch, or a consumer hiccup it recovers from.
                Some(_) => {}
                None => {
                    watching.watch = None;
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_kv_keys_and_bounded() {
        let key = key_of(b"a/b c/\xc3\xbc/.").expect("short");
        assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{key}");
        assert_eq!(URL_SAFE_NO_PAD.decode(&key).expect("decodes"), b"a/b c/\xc3\xbc/.");
        assert!(key_of(&[b'x'; 2_250]).is_some());
        assert!(key_of(&[b'x'; 2_251]).is_none(), "past the protocol line");
    }
}
