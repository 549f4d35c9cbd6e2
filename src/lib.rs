//! ringmq: a thread-per-core MQTT 3.1.1 / 5.0 broker.
pub mod protocol;
pub mod session;
pub mod topics;
