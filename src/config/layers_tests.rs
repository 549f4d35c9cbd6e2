use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use super::*;

fn file_with(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringmq-layers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn args(extra: &[&str]) -> Vec<OsString> {
    std::iter::once("ringmq").chain(extra.iter().copied()).map(OsString::from).collect()
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn error_text(result: Result<Layered, clap::Error>) -> String {
    let error = result.expect_err("an error");
    error.render().to_string()
}

#[test]
fn defaults_then_file_then_environment_then_command_line() {
    let file = file_with("precedence.toml", "inflight_max = 10\nsys_interval_s = 3\n");
    let path = file.to_str().unwrap();
    let inflight = |extra: &[&str], environment: &[(&str, &str)]| load(args(extra), &env(environment)).unwrap().config.inflight_max;
    assert_eq!(inflight(&[], &[]), 256, "the default");
    assert_eq!(inflight(&["-c", path], &[]), 10, "the file over the default");
    assert_eq!(inflight(&["-c", path], &[("RINGMQ_INFLIGHT_MAX", "20")]), 20, "the environment over the file");
    assert_eq!(inflight(&["--config", path, "--inflight-max", "30"], &[("RINGMQ_INFLIGHT_MAX", "20")]), 30, "the command line over all");
    let layered = load(args(&["-c", path, "--inflight-max", "30"]), &env(&[])).unwrap();
    assert_eq!(layered.config.sys_interval_s, 3, "the file still sets what nothing above it does");
    assert_eq!(layered.origins["sys-interval-s"], Origin::File { line: 2 });
    assert_eq!(layered.origins["inflight-max"], Origin::CommandLine);
    let described = describe(&layered);
    assert!(described.contains("inflight_max = 30") && described.contains("# command line"), "{described}");
    assert!(described.contains("sys_interval_s = 3") && described.contains("# file, line 2"), "{described}");
}

#[test]
fn listeners_switches_and_lists_from_the_file() {
    let file = file_with(
        "lists.toml",
        "allow_anonymous = true\ndeny_subscribe = [\"a/#\", \"b\"]\n\n[[listener]]\nurl = \"mqtt://127.0.0.1:1884\"\n\n[[listener]]\nurl = \"ws://127.0.0.1:8080/mqtt\"\nproxy = true\n",
    );
    let path = file.to_str().unwrap();
    let config = load(args(&["-c", path]), &env(&[])).unwrap().config;
    assert!(config.allow_anonymous);
    assert_eq!(config.deny_subscribe, vec!["a/#", "b"]);
    let urls: Vec<String> = config.listeners.iter().map(|spec| spec.url()).collect();
    assert_eq!(urls.len(), 2);
    assert!(config.listeners[1].proxy_protocol, "{urls:?}");
    // A repeatable flag on the command line replaces the file's list, not adds to it.
    let config = load(args(&["-c", path, "--listener", "mqtt://127.0.0.1:1999"]), &env(&[])).unwrap().config;
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(config.listeners[0].addr.port(), 1999);
    // The environment's list is comma-separated.
    let config = load(args(&[]), &env(&[("RINGMQ_DENY_SUBSCRIBE", "x/#, y")])).unwrap().config;
    assert_eq!(config.deny_subscribe, vec!["x/#", "y"]);
    let config = load(args(&[]), &env(&[("RINGMQ_ALLOW_ANONYMOUS", "true")])).unwrap().config;
    assert!(config.allow_anonymous);
}

#[test]
fn errors_name_the_key_and_the_line_or_the_variable() {
    let unknown = file_with("unknown.toml", "# a comment\ninflight_max = 8\ninflght_max = 9\n");
    let text = error_text(load(args(&["-c", unknown.to_str().unwrap()]), &env(&[])));
    assert!(text.contains("unknown.toml:3") && text.contains("unknown key `inflght_max`"), "{text}");

    let bad = file_with("bad.toml", "\ninflight_max = \"lots\"\n");
    let text = error_text(load(args(&["-c", bad.to_str().unwrap()]), &env(&[])));
    assert!(text.contains("bad.toml:2") && text.contains("inflight_max") && text.contains("lots"), "{text}");

    let switch = file_with("switch.toml", "allow_anonymous = 3\n");
    let text = error_text(load(args(&["-c", switch.to_str().unwrap()]), &env(&[])));
    assert!(text.contains("switch.toml:1") && text.contains("expects true or false"), "{text}");

    let list = file_with("list.toml", "inflight_max = [1, 2]\n");
    let text = error_text(load(args(&["-c", list.to_str().unwrap()]), &env(&[])));
    assert!(text.contains("list.toml:1") && text.contains("one value"), "{text}");

    let syntax = file_with("syntax.toml", "inflight_max = 8\nthis is not toml\n");
    let text = error_text(load(args(&["-c", syntax.to_str().unwrap()]), &env(&[])));
    assert!(text.contains("syntax.toml:2"), "{text}");

    let command_line_only = file_with("only.toml", "hash_password = \"u\"\n");
    let text = error_text(load(args(&["-c", command_line_only.to_str().unwrap()]), &env(&[])));
    assert!(text.contains("unknown key `hash_password`"), "{text}");

    let text = error_text(load(args(&[]), &env(&[("RINGMQ_INFLIGHT_MAX", "-1")])));
    assert!(text.contains("RINGMQ_INFLIGHT_MAX") && text.contains("-1"), "{text}");

    let text = error_text(load(args(&["-c", "/nonexistent/ringmq.toml"]), &env(&[])));
    assert!(text.contains("/nonexistent/ringmq.toml"), "{text}");
}

/// The example file in tuning/ names every setting `--help` lists, and the value shown
/// for each is one the flag accepts: it cannot fall behind the flags.
#[test]
fn the_example_file_covers_every_flag_with_a_valid_value() {
    let example_path = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/ringmq.toml");
    let example = std::fs::read_to_string(example_path).expect("tuning/ringmq.toml");
    // As shipped (everything commented out but what it means to set) it loads.
    load(args(&["-c", example_path]), &env(&[])).expect("the example file loads as it is");
    let command = Config::command();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if COMMAND_LINE_ONLY.contains(&long) {
            continue;
        }
        let key = key_of(long);
        let shown = if long == "listener" { "[[listener]]".to_string() } else { format!("{key} = ") };
        let line = example
            .lines()
            .map(|line| line.trim_start_matches('#').trim())
            .find(|line| line.starts_with(&shown))
            .unwrap_or_else(|| panic!("tuning/ringmq.toml has no `{shown}` line for --{long}"));
        if long == "listener" {
            continue;
        }
        let single = file_with("example-line.toml", &format!("{line}\n"));
        if let Err(error) = load(args(&["-c", single.to_str().unwrap()]), &env(&[])) {
            panic!("tuning/ringmq.toml: `{line}` is refused: {}", error.render());
        }
    }
}

#[test]
fn a_changed_file_names_the_settings_a_restart_needs() {
    let file = file_with("reload.toml", "inflight_max = 10\nlog = \"info\"\n");
    let running = load(args(&["-c", file.to_str().unwrap()]), &env(&[])).unwrap();
    std::fs::write(&file, "inflight_max = 20\nlog = \"debug\"\npassword_file = \"/p\"\nmax_qos = 1\n").unwrap();
    let fresh = load(args(&["-c", file.to_str().unwrap()]), &env(&[])).unwrap();
    assert_eq!(needing_restart(&running, &fresh), vec!["inflight_max", "max_qos"], "log and password_file apply live");
    assert!(needing_restart(&running, &running).is_empty());
}
