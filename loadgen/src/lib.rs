//! loadgen: drives any MQTT broker with fan-out, fan-in, point-to-point and connection
//! storm loads, and says honestly what happened.
//!
//! Pure parts: `plan` (who publishes where, who must hear whom), `stamp` (what every
//! payload carries), `tracker` (loss, duplication and order per publisher and
//! subscriber), `schedule` (open-loop due times), `report` (numbers and outputs).
//! IO: `conn` (one client connection on glommio) over `wire` (its TLS and WebSocket
//! layers), and `run` (executors, phases);
//! `subscribe_storm` (one client's many subscriptions against a probe's round trip).

pub mod conn;
pub mod plan;
pub mod report;
pub mod run;
pub mod schedule;
pub mod stamp;
pub mod subscribe_storm;
pub mod tracker;
pub mod wire;
