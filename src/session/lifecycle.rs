//! When a session and its will end: the Session Expiry Interval, the Will Delay Interval and
//! what a takeover does to both (MQTT 5.0 3.1.2.5, 3.1.3.2.2; 3.1.1's clean session maps
//! onto the same rules). Pure: every decision takes `now`, so the rules are unit-tested at
//! `now + n` instead of by sleeping.

use std::time::{Duration, Instant};

use crate::protocol::{Connect, Will};

/// How long a session outlives its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionExpiry {
    /// Clean session (3.1.1) or Session Expiry Interval 0 (5.0).
    WithConnection,
    After(Duration),
    /// Clean session 0 (3.1.1) or 0xFFFFFFFF (5.0).
    Never,
}

impl SessionExpiry {
    pub fn from_connect(connect: &Connect) -> SessionExpiry {
        if !connect.version.is_v5() {
            return if connect.clean_start { SessionExpiry::WithConnection } else { SessionExpiry::Never };
        }
        Self::from_interval(connect.properties.session_expiry_interval.unwrap_or(0))
    }

    /// Seconds after its connection is lost that a will with Will Delay `delay_s` is due:
    /// at its delay, or when the session ends if that is sooner (3.1.3.2.2).
    pub fn will_due_after_s(self, delay_s: u32) -> u32 {
        match self {
            SessionExpiry::WithConnection => 0,
            SessionExpiry::After(expiry) => delay_s.min(u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX)),
            SessionExpiry::Never => delay_s,
        }
    }

    pub fn from_interval(seconds: u32) -> SessionExpiry {
        match seconds {
            0 => SessionExpiry::WithConnection,
            u32::MAX => SessionExpiry::Never,
            seconds => SessionExpiry::After(Duration::from_secs(u64::from(seconds))),
        }
    }
}

/// The Will Delay Interval (5.0); zero for 3.1.1 wills.
pub fn will_delay(will: &Will) -> Duration {
    Duration::from_secs(u64::from(will.properties.will_delay_interval.unwrap_or(0)))
}

/// A DISCONNECT gave a session that ends with its connection a non-zero expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryRaisedFromZero;

/// What the clock has made due for an offline session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The session ends (sending a will still waiting for its delay).
    SessionExpired,
    /// The will's delay is over: send it, the session goes on.
    WillDelayOver,
}

/// What a lost connection sets in motion.
#[derive(Debug, Default, PartialEq)]
pub struct ConnectionLost {
    /// A will to send now.
    pub will_now: Option<Box<Will>>,
    /// The session ends with its connection.
    pub session_ends: bool,
}

/// What a new connection taking the client id over does to the old one.
#[derive(Debug, Default, PartialEq)]
pub struct TakenOver {
    /// The session goes on with the new connection (otherwise it ends here).
    pub continued: bool,
    /// Wills to send now, in order.
    pub wills_now: Vec<Box<Will>>,
}

/// The session-end and will timing of one client (see the module comment).
#[derive(Debug)]
pub struct Lifecycle {
    expiry: SessionExpiry,
    /// The live connection's will: sent when it ends other than by DISCONNECT 0x00.
    /// Boxed: a will carries a whole property set, and most clients have none.
    will: Option<Box<Will>>,
    /// While offline: a will waiting for its delay, and when it is due.
    pending_will: Option<(Instant, Box<Will>)>,
    /// While offline with `SessionExpiry::After`: when the session ends.
    ends_at: Option<Instant>,
}

impl Lifecycle {
    pub fn new(expiry: SessionExpiry, will: Option<Box<Will>>) -> Lifecycle {
        Lifecycle { expiry, will, pending_will: None, ends_at: None }
    }

    pub fn expiry(&self) -> SessionExpiry {
        self.expiry
    }

    /// The live connection's will (sent if it ends other than by DISCONNECT 0x00).
    pub fn live_will(&self) -> Option<&Will> {
        self.will.as_deref()
    }

    /// While offline: the will waiting for its delay, and when it is due.
    pub fn pending_will(&self) -> Option<(Instant, &Will)> {
        self.pending_will.as_ref().map(|(at, will)| (*at, &**will))
    }

    /// While offline with an expiry: when the session ends.
    pub fn ends_at(&self) -> Option<Instant> {
        self.ends_at
    }

    /// A session read back from the session log at start-up. One that had a live
    /// connection when the broker stopped lost it then, unannounced: its will counts, and
    /// its expiry and will delay run from `now` (the moment of the crash is unknown, and
    /// counting from now never ends a session early). Deadlines already past are due at
    /// the first tick, which ends the session and sends the will as usual.
    pub fn restored(
        expiry: SessionExpiry,
        online: bool,
        live_will: Option<Box<Will>>,
        pending_will: Option<(Instant, Box<Will>)>,
        ends_at: Option<Instant>,
        now: Instant,
    ) -> Lifecycle {
        let mut lifecycle = Lifecycle { expiry, will: live_will, pending_will, ends_at };
        if online {
            let lost = lifecycle.connection_lost(true, now);
            if let Some(will) = lost.will_now {
                lifecycle.pending_will = Some((now, will));
            }
        }
        lifecycle
    }

    /// DISCONNECT (5.0) may change the Session Expiry Interval, but not from 0 to more
    /// (3.14.2.2.2): that is a protocol error.
    pub fn set_expiry_on_disconnect(&mut self, seconds: u32) -> Result<(), ExpiryRaisedFromZero> {
        if self.expiry == SessionExpiry::WithConnection && seconds != 0 {
            return Err(ExpiryRaisedFromZero);
        }
        self.expiry = SessionExpiry::from_interval(seconds);
        Ok(())
    }

    /// A normal DISCONNECT: the will is not sent.
    pub fn discard_will(&mut self) {
        self.will = None;
    }

    /// The connection is gone. The will goes out after its delay or when the session ends,
    /// whichever is first; `publish_wills` false (the broker is shutting down) drops it.
    pub fn connection_lost(&mut self, publish_wills: bool, now: Instant) -> ConnectionLost {
        if let SessionExpiry::After(after) = self.expiry {
            self.ends_at = Some(now + after);
        }
        let mut lost = ConnectionLost { will_now: None, session_ends: self.expiry == SessionExpiry::WithConnection };
        let Some(will) = self.will.take().filter(|_| publish_wills) else { return lost };
        let delay = will_delay(&will);
        let due = match self.expiry {
            SessionExpiry::WithConnection => now,
            SessionExpiry::After(after) => now + delay.min(after),
            SessionExpiry::Never => now + delay,
        };
        if due <= now {
            lost.will_now = Some(will);
        } else {
            self.pending_will = Some((due, will));
        }
        lost
    }

    /// What is due at `now` for an offline session, if anything.
    pub fn due(&self, now: Instant) -> Option<Due> {
        if self.ends_at.is_some_and(|at| now >= at) {
            return Some(Due::SessionExpired);
        }
        self.pending_will.as_ref().is_some_and(|(at, _)| now >= *at).then_some(Due::WillDelayOver)
    }

    /// The will that waited for its delay (or for the session's end).
    pub fn take_pending_will(&mut self) -> Option<Box<Will>> {
        self.pending_will.take().map(|(_, will)| will)
    }

    /// A new connection claims the client id. `was_live`: the old connection was still
    /// open (it closes without DISCONNECT, so its will counts). A session that goes on
    /// cancels a will still waiting for its delay and keeps a delayed live will unsent;
    /// a session that ends sends both (5.0 3.1.3.2.2). A session that goes on no longer
    /// expires: the client came back in time, even if moving it to the new connection's
    /// shard takes until after the expiry.
    pub fn taken_over(&mut self, clean_start: bool, was_live: bool) -> TakenOver {
        let continued = !clean_start && self.expiry != SessionExpiry::WithConnection;
        if continued {
            self.ends_at = None;
        }
        let mut wills_now = Vec::new();
        if let Some(will) = self.will.take()
            && was_live
            && (will_delay(&will).is_zero() || !continued)
        {
            wills_now.push(will);
        }
        if let Some(will) = self.take_pending_will()
            && !continued
        {
            wills_now.push(will);
        }
        TakenOver { continued, wills_now }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::{Properties, QoS};

    fn will(topic: &'static str, delay_s: Option<u32>) -> Option<Box<Will>> {
        let properties = Properties { will_delay_interval: delay_s, ..Properties::default() };
        Some(Box::new(Will {
            topic: Bytes::from_static(topic.as_bytes()),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties,
        }))
    }

    fn topics(wills: &[Box<Will>]) -> Vec<&[u8]> {
        wills.iter().map(|will| &will.topic[..]).collect()
    }

    const fn s(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    #[test]
    fn a_will_is_due_at_its_delay_or_at_the_end_of_its_session_if_sooner() {
        assert_eq!(SessionExpiry::WithConnection.will_due_after_s(60), 0);
        assert_eq!(SessionExpiry::from_interval(30).will_due_after_s(60), 30);
        assert_eq!(SessionExpiry::from_interval(90).will_due_after_s(60), 60);
        assert_eq!(SessionExpiry::Never.will_due_after_s(60), 60);
        assert_eq!(SessionExpiry::from_interval(30).will_due_after_s(0), 0);
    }

    #[test]
    fn a_session_that_ends_with_its_connection_sends_the_will_at_once_whatever_its_delay() {
        let t0 = Instant::now();
        let mut lifecycle = Lifecycle::new(SessionExpiry::WithConnection, will("w", Some(60)));
        let lost = lifecycle.connection_lost(true, t0);
        assert!(lost.session_ends);
        assert_eq!(lost.will_now.map(|will| will.topic), Some(Bytes::from_static(b"w")));
        assert_eq!(lifecycle.due(t0 + s(1_000)), None);
    }

    #[test]
    fn a_delayed_will_is_due_after_its_delay_and_the_session_at_its_expiry() {
        let t0 = Instant::now();
        let mut lifecycle = Lifecycle::new(SessionExpiry::After(s(100)), will("w", Some(10)));
        let lost = lifecycle.connection_lost(true, t0);
        assert_eq!(lost, ConnectionLost { will_now: None, session_ends: false });
        assert_eq!(lifecycle.due(t0 + s(9)), None);
        assert_eq!(lifecycle.due(t0 + s(10)), Some(Due::WillDelayOver));
        assert_eq!(lifecycle.take_pending_will().map(|will| will.topic), Some(Bytes::from_static(b"w")));
        assert_eq!(lifecycle.due(t0 + s(99)), None);
        assert_eq!(lifecycle.due(t0 + s(100)), Some(Due::SessionExpired));
    }

    #[test]
    fn a_will_delay_longer_than_the_session_is_cut_to_the_session_end() {
        let t0 = Instant::now();
        let mut lifecycle = Lifecycle::new(SessionExpiry::After(s(5)), will("w", Some(60)));
        lifecycle.connection_lost(true, t0);
        assert_eq!(lifecycle.due(t0 + s(4)), None);
        // Expiry wins the tie: ending the session sends the pending will.
        assert_eq!(lifecycle.due(t0 + s(5)), Some(Due::SessionExpired));
        assert!(lifecycle.take_pending_will().is_some());
    }

    #[test]
    fn a_session_that_never_expires_sends_the_will_after_its_delay_only() {
        let t0 = Instant::now();
        let mut lifecycle = Lifecycle::new(SessionExpiry::Never, will("w", None));
        assert!(lifecycle.connection_lost(true, t0).will_now.is_some(), "no delay: at once");
        let mut delayed = Lifecycle::new(SessionExpiry::Never, will("w", Some(30)));
        assert!(delayed.connection_lost(true, t0).will_now.is_none());
        assert_eq!(delayed.due(t0 + s(30)), Some(Due::WillDelayOver));
        assert_eq!(delayed.due(t0 + s(1_000_000)), Some(Due::WillDelayOver), "and the session never ends");
    }

    #[test]
    fn a_normal_disconnect_or_a_shutdown_sends_no_will() {
        let t0 = Instant::now();
        let mut disconnected = Lifecycle::new(SessionExpiry::Never, will("w", None));
        disconnected.discard_will();
        assert_eq!(disconnected.connection_lost(true, t0).will_now, None);
        let mut shutting_down = Lifecycle::new(SessionExpiry::Never, will("w", None));
        assert_eq!(shutting_down.connection_lost(false, t0).will_now, None);
        assert_eq!(shutting_down.due(t0 + s(1)), None);
    }

    #[test]
    fn disconnect_may_shorten_or_lengthen_the_expiry_but_not_revive_a_clean_session() {
        let mut clean = Lifecycle::new(SessionExpiry::WithConnection, None);
        assert_eq!(clean.set_expiry_on_disconnect(10), Err(ExpiryRaisedFromZero));
        assert_eq!(clean.set_expiry_on_disconnect(0), Ok(()));
        let mut kept = Lifecycle::new(SessionExpiry::After(s(10)), None);
        assert_eq!(kept.set_expiry_on_disconnect(0), Ok(()));
        assert_eq!(kept.expiry(), SessionExpiry::WithConnection);
        assert!(kept.connection_lost(true, Instant::now()).session_ends);
    }

    #[test]
    fn a_takeover_that_continues_the_session_keeps_a_delayed_will_unsent() {
        let mut live = Lifecycle::new(SessionExpiry::Never, will("delayed", Some(5)));
        let taken = live.taken_over(false, true);
        assert!(taken.continued);
        assert!(taken.wills_now.is_empty());
        let mut undelayed = Lifecycle::new(SessionExpiry::Never, will("now", None));
        assert_eq!(topics(&undelayed.taken_over(false, true).wills_now), [b"now"]);
    }

    #[test]
    fn a_takeover_with_clean_start_ends_the_session_and_sends_every_will() {
        let t0 = Instant::now();
        let mut offline = Lifecycle::new(SessionExpiry::Never, will("pending", Some(60)));
        offline.connection_lost(true, t0);
        let taken = offline.taken_over(true, false);
        assert!(!taken.continued);
        assert_eq!(topics(&taken.wills_now), [b"pending"]);
        let mut live = Lifecycle::new(SessionExpiry::Never, will("live", Some(60)));
        assert_eq!(topics(&live.taken_over(true, true).wills_now), [b"live"]);
    }

    #[test]
    fn a_continued_takeover_cancels_a_will_waiting_for_its_delay() {
        let t0 = Instant::now();
        let mut offline = Lifecycle::new(SessionExpiry::Never, will("pending", Some(60)));
        offline.connection_lost(true, t0);
        let taken = offline.taken_over(false, false);
        assert!(taken.continued && taken.wills_now.is_empty());
        assert_eq!(offline.due(t0 + s(120)), None);
    }

    #[test]
    fn a_continued_takeover_stops_the_expiry_clock() {
        let t0 = Instant::now();
        let mut offline = Lifecycle::new(SessionExpiry::After(s(3)), None);
        offline.connection_lost(true, t0);
        assert!(offline.taken_over(false, false).continued);
        assert_eq!(offline.due(t0 + s(10)), None, "the new connection owns the session now");
        let mut cleaned = Lifecycle::new(SessionExpiry::After(s(3)), None);
        cleaned.connection_lost(true, t0);
        assert!(!cleaned.taken_over(true, false).continued);
    }

    #[test]
    fn the_expiry_comes_from_the_connect() {
        let v311 = |clean_start| Connect { clean_start, ..Connect::v311(Bytes::from_static(b"c")) };
        assert_eq!(SessionExpiry::from_connect(&v311(true)), SessionExpiry::WithConnection);
        assert_eq!(SessionExpiry::from_connect(&v311(false)), SessionExpiry::Never);
        assert_eq!(SessionExpiry::from_interval(0), SessionExpiry::WithConnection);
        assert_eq!(SessionExpiry::from_interval(7), SessionExpiry::After(s(7)));
        assert_eq!(SessionExpiry::from_interval(u32::MAX), SessionExpiry::Never);
    }
}
