//! How one client receives one message: the merged result of its matching subscriptions
//! (`Delivery`) and the per-recipient copy a session queues or keeps in flight (`CopyFor`).
//!
//! `CopyFor` is 16 bytes. Every queued or in-flight message holds one per recipient, so a
//! QoS 1 fan-out with full windows walks through them all: at 64 bytes (identifiers and the
//! shared route inline) the windows of 1,000 subscribers at 64 messages each took 4 MiB,
//! and publishing into them cost twice what it did into empty ones. Identifiers (5.0) and
//! a shared route are rare and live together behind one box.

use bytes::Bytes;

use super::{Message, Subscription};
use crate::protocol::QoS;

/// How one client receives a message, given every subscription of its that matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The highest QoS granted by a matching subscription (deliver at min(this, published)).
    pub granted: QoS,
    /// Some matching subscription asked for the RETAIN flag as published.
    pub retain_as_published: bool,
    /// Identifiers of every matching subscription that has one (empty: no allocation).
    pub subscription_ids: Vec<u32>,
}

/// One copy per client at the highest granted QoS, carrying every matching subscription
/// identifier (MQTT 3.1.1 3.3.5, 5.0 3.3.4). When the client published the message itself
/// (`own_message`), no-local subscriptions do not count.
#[inline]
pub fn merge_matching<'a>(matching: impl IntoIterator<Item = &'a Subscription>, own_message: bool) -> Option<Delivery> {
    let mut counted = matching.into_iter().filter(|subscription| !(own_message && subscription.options.no_local));
    let first = counted.next()?;
    // Built in locals and returned whole: the common copy has one matching subscription
    // and no identifier, and is then never written field by field into the caller's slot.
    let mut granted = first.options.qos;
    let mut retain_as_published = first.options.retain_as_published;
    let mut subscription_ids = Vec::new();
    subscription_ids.extend(first.identifier);
    for subscription in counted {
        granted = granted.max(subscription.options.qos);
        retain_as_published |= subscription.options.retain_as_published;
        subscription_ids.extend(subscription.identifier);
    }
    Some(Delivery { granted, retain_as_published, subscription_ids })
}

impl Delivery {
    /// The copy of `message` this delivery makes: at the lower of the published and the
    /// granted QoS, with RETAIN as published only where a subscription asked for it.
    pub fn copy_of(self, message: &Message) -> CopyFor {
        let retain = self.retain_as_published && message.retain;
        CopyFor::new(self.granted.min(message.qos), retain, self.subscription_ids)
    }
}

/// The shared subscription (`$share/group/filter`) a copy was delivered through: if the
/// session ends before the client acknowledges it, another member gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedRoute {
    pub group: Bytes,
    pub filter: Bytes,
}

/// How one client gets its copy of a message.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyFor {
    /// The delivery QoS: the lower of the published and the granted one.
    pub qos: QoS,
    pub retain: bool,
    /// None for most copies: no identifiers, not through a shared subscription.
    extra: Option<Box<CopyExtra>>,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct CopyExtra {
    /// Identifiers of the recipient's matching subscriptions (5.0).
    subscription_ids: Vec<u32>,
    shared: Option<SharedRoute>,
}

impl CopyFor {
    pub fn at(qos: QoS) -> CopyFor {
        CopyFor { qos, retain: false, extra: None }
    }

    /// A copy carrying `subscription_ids` (boxed only when there are some).
    pub fn new(qos: QoS, retain: bool, subscription_ids: Vec<u32>) -> CopyFor {
        let extra = (!subscription_ids.is_empty()).then(|| Box::new(CopyExtra { subscription_ids, shared: None }));
        CopyFor { qos, retain, extra }
    }

    /// A copy delivered through the shared subscription `route`.
    pub fn through(qos: QoS, route: SharedRoute) -> CopyFor {
        CopyFor { qos, retain: false, extra: Some(Box::new(CopyExtra { subscription_ids: Vec::new(), shared: Some(route) })) }
    }

    /// Identifiers of the recipient's matching subscriptions (5.0; empty for most).
    pub fn subscription_ids(&self) -> &[u32] {
        self.extra.as_ref().map_or(&[], |extra| &extra.subscription_ids)
    }

    /// The identifiers, moved out.
    pub fn into_subscription_ids(self) -> Vec<u32> {
        self.extra.map(|extra| extra.subscription_ids).unwrap_or_default()
    }

    pub fn shared(&self) -> Option<&SharedRoute> {
        self.extra.as_ref().and_then(|extra| extra.shared.as_ref())
    }

    /// The shared route, moved out.
    pub fn into_shared(self) -> Option<SharedRoute> {
        self.extra.and_then(|extra| extra.shared)
    }

    pub fn set_subscription_ids(&mut self, subscription_ids: Vec<u32>) {
        if subscription_ids.is_empty() && self.shared().is_none() {
            self.extra = None;
        } else {
            self.extra.get_or_insert_default().subscription_ids = subscription_ids;
        }
    }

    pub fn set_shared(&mut self, route: SharedRoute) {
        self.extra.get_or_insert_default().shared = Some(route);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_two_words_and_boxes_only_what_is_rare() {
        assert_eq!(std::mem::size_of::<CopyFor>(), 16);
        let plain = CopyFor::new(QoS::AtLeastOnce, true, Vec::new());
        assert!(plain.extra.is_none() && plain.subscription_ids().is_empty() && plain.shared().is_none());
        let mut copy = CopyFor::new(QoS::AtLeastOnce, false, vec![7, 9]);
        assert_eq!(copy.subscription_ids(), &[7, 9]);
        let route = SharedRoute { group: Bytes::from_static(b"g"), filter: Bytes::from_static(b"t/+") };
        copy.set_shared(route.clone());
        assert_eq!((copy.subscription_ids(), copy.shared()), (&[7, 9][..], Some(&route)));
        copy.set_subscription_ids(Vec::new());
        assert_eq!(copy.shared(), Some(&route), "the route stays when the identifiers go");
        assert_eq!(copy.clone().into_shared(), Some(route));
        assert!(copy.into_subscription_ids().is_empty());
        let through = CopyFor::through(QoS::ExactlyOnce, SharedRoute { group: Bytes::new(), filter: Bytes::new() });
        assert!(through.shared().is_some() && through.subscription_ids().is_empty() && !through.retain);
    }
}
