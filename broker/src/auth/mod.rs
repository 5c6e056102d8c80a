//! Who may connect and what they may do: `auth.password_file` ([`passwords`]), the MQTT 5.0
//! AUTH exchange ([`enhanced`]), and topic access from a Mosquitto-style `acl_file` ([`acl`]).

pub mod acl;
pub mod enhanced;
pub mod passwords;
