//! MQTT for polymq (codec being written).
