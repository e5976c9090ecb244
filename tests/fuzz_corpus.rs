//! Replays the fuzz corpora (`fuzz/corpus/<target>/*`: the seeds and every crash input found
//! since) through the functions the cargo-fuzz targets in `fuzz/` run, as an ordinary test: a
//! fixed crash stays fixed without nightly tooling. `bench/fuzz.sh` does the fuzzing itself.

use std::path::Path;

#[allow(dead_code)]
#[path = "../src/settings.rs"]
mod settings;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "{} holds only {} inputs",
        dir.display(),
        files.len()
    );
    for f in &files {
        let data = std::fs::read(f).expect("read corpus file");
        let name = f.display().to_string();
        let r = std::panic::catch_unwind(|| run(&data));
        assert!(r.is_ok(), "{target}: {name} panicked");
    }
    eprintln!("{target}: {} inputs replayed", files.len());
}

/// One test a fuzz target: `#[test] name: "target" => function;` replays `fuzz/corpus/target`
/// through `function`.
macro_rules! corpus_tests {
    ($(#[$attr:meta] $name:ident: $target:literal => $run:path;)*) => {
        $(
            #[$attr]
            fn $name() {
                replay($target, $run);
            }
        )*
    };
}

corpus_tests! {
    #[test] mqtt_decode_corpus: "mqtt_decode" => broker::fuzzing::mqtt_decode;
    #[test] mqtt_translate_corpus: "mqtt_translate" => broker::fuzzing::mqtt_translate;
    #[test] http_topic_corpus: "http_topic" => bridge::fuzzing::http_topic;
    #[test] jwt_corpus: "jwt" => broker::fuzzing::jwt;
    #[test] config_corpus: "config" => settings::fuzz_config;
}

/// The corpora exist for exactly the targets `fuzz/Cargo.toml` declares.
#[test]
fn every_target_has_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let targets: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "realtime-web-fuzz")
        .collect();
    assert_eq!(targets.len(), 5, "{targets:?}");
    for t in targets {
        assert!(root.join("corpus").join(t).is_dir(), "no corpus for {t}");
    }
}
