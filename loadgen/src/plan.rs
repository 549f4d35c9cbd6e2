//! Scenarios turned into a plan: which connections publish to which topic, which
//! subscribe to which filter, and so which subscriber must hear which publisher.

use ringmq::topics::filter_matches;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// P publishers, S subscribers, all on one topic (or a wildcard with --wildcard).
    Fanout,
    /// P publishers on their own topics, S subscribers on a wildcard over all of them.
    Fanin,
    /// N pairs, each publisher with its own subscriber on its own topic.
    P2p,
    /// Open connections as fast as possible, then hold them idle.
    ConnStorm,
    /// One client subscribes to --filters filters in --packets pipelined SUBSCRIBEs while a
    /// probe client measures its round trip (see `subscribe_storm`).
    SubscribeStorm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Topic of publisher `i`.
    pub publishers: Vec<String>,
    /// Filter of subscriber `i`.
    pub subscribers: Vec<String>,
}

impl Plan {
    /// With `shared_group`, every subscriber joins `$share/GROUP/<filter>`: together they
    /// must receive each message once.
    pub fn new(
        scenario: Scenario,
        publishers: usize,
        subscribers: usize,
        prefix: &str,
        wildcard: bool,
        shared_group: Option<&str>,
    ) -> Plan {
        let mut plan = Self::unshared(scenario, publishers, subscribers, prefix, wildcard);
        if let Some(group) = shared_group {
            for filter in &mut plan.subscribers {
                *filter = format!("$share/{group}/{filter}");
            }
        }
        plan
    }

    fn unshared(scenario: Scenario, publishers: usize, subscribers: usize, prefix: &str, wildcard: bool) -> Plan {
        match scenario {
            Scenario::Fanout => Plan {
                publishers: vec![format!("{prefix}/fanout"); publishers],
                subscribers: vec![if wildcard { format!("{prefix}/#") } else { format!("{prefix}/fanout") }; subscribers],
            },
            Scenario::Fanin => Plan {
                publishers: (0..publishers).map(|p| format!("{prefix}/fanin/{p}")).collect(),
                subscribers: vec![format!("{prefix}/fanin/+"); subscribers],
            },
            Scenario::P2p => Plan {
                publishers: (0..publishers).map(|p| format!("{prefix}/p2p/{p}")).collect(),
                subscribers: (0..publishers).map(|p| format!("{prefix}/p2p/{p}")).collect(),
            },
            Scenario::ConnStorm | Scenario::SubscribeStorm => Plan { publishers: Vec::new(), subscribers: Vec::new() },
        }
    }

    /// The publishers subscriber `subscriber` must hear.
    pub fn publishers_heard_by(&self, subscriber: usize) -> Vec<u32> {
        let filter = self.subscribers[subscriber].as_bytes();
        // `$share/GROUP/filter` matches what `filter` matches.
        let filter = match filter.strip_prefix(b"$share/") {
            Some(rest) => rest.splitn(2, |&b| b == b'/').nth(1).unwrap_or_default(),
            None => filter,
        };
        (0..self.publishers.len() as u32).filter(|&p| filter_matches(filter, self.publishers[p as usize].as_bytes())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_hears_whom() {
        let fanout = Plan::new(Scenario::Fanout, 2, 3, "b", true, None);
        assert_eq!(fanout.subscribers, vec!["b/#"; 3]);
        assert_eq!(fanout.publishers_heard_by(2), vec![0, 1]);
        let fanin = Plan::new(Scenario::Fanin, 3, 1, "b", false, None);
        assert_eq!(fanin.publishers_heard_by(0), vec![0, 1, 2]);
        let p2p = Plan::new(Scenario::P2p, 3, 0, "b", false, None);
        assert_eq!(p2p.subscribers.len(), 3);
        assert_eq!(p2p.publishers_heard_by(1), vec![1]);
        let shared = Plan::new(Scenario::Fanin, 2, 2, "b", false, Some("g"));
        assert_eq!(shared.subscribers, vec!["$share/g/b/fanin/+"; 2]);
        assert_eq!(shared.publishers_heard_by(1), vec![0, 1]);
    }
}
