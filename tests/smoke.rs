//! The smallest end-to-end check: mosquitto_pub → realtime-web → mosquitto_sub, both versions.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn mosquitto_clients_cross_versions() {
    let s = Server::start();
    for (sub_v, pub_v) in [("mqttv311", "mqttv5"), ("mqttv5", "mqttv311")] {
        let sub = spawn(Command::new("mosquitto_sub").args([
            "-p",
            &s.mqtt.to_string(),
            "-t",
            "smoke/#",
            "-v",
            "-C",
            "1",
            "-W",
            "10",
            "-V",
            sub_v,
        ]));
        std::thread::sleep(Duration::from_millis(300));
        let (code, _, err) = run(
            Command::new("mosquitto_pub").args([
                "-p",
                &s.mqtt.to_string(),
                "-t",
                "smoke/x",
                "-m",
                pub_v,
                "-q",
                "1",
                "-V",
                pub_v,
            ]),
            Duration::from_secs(10),
        );
        assert_eq!(code, Some(0), "mosquitto_pub failed: {err}");
        let out = collect(sub, Duration::from_secs(10));
        assert_eq!(out.trim(), format!("smoke/x {pub_v}"));
    }
}

#[test]
fn sigterm_exits_zero() {
    let mut s = Server::start();
    assert_eq!(s.stop(), Some(0));
}
