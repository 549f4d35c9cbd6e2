//! Where each setting comes from: the embedded defaults, then a TOML file (`-c FILE`),
//! then `RINGMQ_*` environment variables, then the command line; each layer replaces what
//! the layers below said about a setting (a repeatable flag's values too, as a whole).
//!
//! The layers are merged into one argument list that clap parses, so a value from any of
//! them goes through the same parser and checks as its flag. A file or environment value
//! is first parsed on its own, so that a bad one is reported with its key and line (or its
//! variable) rather than as a flag the user never typed.
//!
//! File keys are the long flag names with `_` for `-` (`inflight_max = 256`); repeatable
//! flags take arrays (`deny_subscribe = ["a/#", "b"]`); listeners are `[[listener]]`
//! tables with a `url` (and `proxy = true`). Variables are `RINGMQ_` and the key in upper
//! case (`RINGMQ_INFLIGHT_MAX=64`); a repeatable flag's values are separated by commas.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory};

use super::Config;

/// Flags that only make sense on the command line.
const COMMAND_LINE_ONLY: &[&str] = &["config", "check-config", "hash-password", "help", "version"];
/// Environment variables start with this.
pub const ENV_PREFIX: &str = "RINGMQ_";

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{file}: {message}")]
    Read { file: PathBuf, message: String },
    #[error("{file}:{line}: {message}")]
    File { file: PathBuf, line: usize, message: String },
    #[error("{variable}: {message}")]
    Environment { variable: String, message: String },
    /// The merged settings do not go together (clap's own message names the flags).
    #[error("{0}")]
    Combined(String),
}

/// Where a setting's value came from, for `--check-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File { line: usize },
    Environment(String),
    CommandLine,
}

/// The configuration, and where each setting that was given came from (by long flag name).
#[derive(Debug)]
pub struct Layered {
    pub config: Config,
    pub origins: BTreeMap<String, Origin>,
    /// The merged argument list (for `--check-config`'s listing).
    pub arguments: Vec<OsString>,
}

/// A file key or variable's name for a long flag.
pub fn key_of(long: &str) -> String {
    long.replace('-', "_")
}

/// The first line of a clap error, without its "error: " prefix.
fn clap_message(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let first = rendered.lines().find(|line| !line.trim().is_empty()).unwrap_or("").trim();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

/// One setting's values as arguments: a switch is present or absent, others repeat the flag.
fn push_arguments(arguments: &mut Vec<OsString>, long: &str, action: &ArgAction, values: &[String]) {
    if matches!(action, ArgAction::SetTrue) {
        if values.first().is_some_and(|value| value == "true") {
            arguments.push(format!("--{long}").into());
        }
        return;
    }
    for value in values {
        arguments.push(format!("--{long}").into());
        arguments.push(value.into());
    }
}

/// Checks `values` for `long` on their own: an error says what is wrong with them.
fn check_values(long: &str, action: &ArgAction, values: &[String]) -> Result<(), String> {
    if matches!(action, ArgAction::SetTrue) {
        return match values {
            [value] if value == "true" || value == "false" => Ok(()),
            _ => Err("expects true or false".into()),
        };
    }
    if values.len() > 1 && !matches!(action, ArgAction::Append) {
        return Err("takes one value, not a list".into());
    }
    let mut arguments: Vec<OsString> = vec!["ringmq".into()];
    push_arguments(&mut arguments, long, action, values);
    match Config::command().try_get_matches_from(arguments) {
        Ok(_) => Ok(()),
        Err(error) => match error.kind() {
            // Relations between flags are checked once everything is merged.
            clap::error::ErrorKind::MissingRequiredArgument | clap::error::ErrorKind::ArgumentConflict => Ok(()),
            _ => Err(clap_message(&error)),
        },
    }
}

/// The settings a TOML file gives: long flag name -> (values, line).
fn read_file(path: &Path, command: &clap::Command) -> Result<BTreeMap<String, (Vec<String>, usize)>, LayerError> {
    let text = std::fs::read_to_string(path).map_err(|error| LayerError::Read { file: path.to_path_buf(), message: error.to_string() })?;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let file_error = |offset: usize, message: String| LayerError::File { file: path.to_path_buf(), line: line_of(offset), message };
    let table = toml::de::DeTable::parse(&text).map_err(|error| {
        let offset = error.span().map_or(0, |span| span.start);
        file_error(offset, error.message().to_string())
    })?;
    let mut settings = BTreeMap::new();
    for (key, value) in table.get_ref() {
        let name = key.get_ref().as_ref();
        let at = key.span().start;
        let Some(arg) = command
            .get_arguments()
            .find(|arg| arg.get_long().is_some_and(|long| key_of(long) == name && !COMMAND_LINE_ONLY.contains(&long)))
        else {
            return Err(file_error(at, format!("unknown key `{name}` (keys are the long flag names with `_`, see `ringmq --help`)")));
        };
        let long = arg.get_long().unwrap_or_default().to_string();
        let values = file_values(&long, value.get_ref()).map_err(|message| file_error(at, format!("{name}: {message}")))?;
        check_values(&long, arg.get_action(), &values).map_err(|message| file_error(at, format!("{name}: {message}")))?;
        settings.insert(long, (values, line_of(at)));
    }
    Ok(settings)
}

/// A TOML value as flag values.
fn file_values(long: &str, value: &toml::de::DeValue<'_>) -> Result<Vec<String>, String> {
    use toml::de::DeValue;
    let scalar = |value: &DeValue<'_>| -> Result<String, String> {
        match value {
            DeValue::String(text) => Ok(text.to_string()),
            DeValue::Integer(integer) => i128::from_str_radix(integer.as_str(), integer.radix())
                .map(|number| number.to_string())
                .map_err(|error| format!("bad integer: {error}")),
            DeValue::Float(float) => Ok(float.as_str().to_string()),
            DeValue::Boolean(flag) => Ok(flag.to_string()),
            DeValue::Datetime(_) => Err("a date is not a setting".into()),
            DeValue::Array(_) | DeValue::Table(_) => Err("expects a single value here".into()),
        }
    };
    match value {
        DeValue::Array(items) if long == "listener" => items
            .iter()
            .map(|item| match item.get_ref() {
                DeValue::Table(table) => listener_url(table),
                other => scalar(other),
            })
            .collect(),
        DeValue::Array(items) => items.iter().map(|item| scalar(item.get_ref())).collect(),
        DeValue::Table(_) => Err("expects a value, not a table".into()),
        other => Ok(vec![scalar(other)?]),
    }
}

/// A `[[listener]]` table: `url`, and `proxy = true` for PROXY protocol headers.
fn listener_url(table: &toml::de::DeTable<'_>) -> Result<String, String> {
    use toml::de::DeValue;
    let mut url = None;
    let mut proxy = false;
    for (key, value) in table {
        match (key.get_ref().as_ref(), value.get_ref()) {
            ("url", DeValue::String(text)) => url = Some(text.to_string()),
            ("proxy", DeValue::Boolean(flag)) => proxy = *flag,
            (other, _) => return Err(format!("a [[listener]] takes `url = \"mqtt://HOST:PORT\"` and `proxy = true|false`, not `{other}`")),
        }
    }
    let url = url.ok_or("a [[listener]] needs a url")?;
    Ok(if proxy && !url.contains("proxy=") { format!("{url}{}proxy=true", if url.contains('?') { '&' } else { '?' }) } else { url })
}

/// Merges the layers. `command_line` starts with the program name; `environment` is the
/// process's variables (given, so tests need not change their own).
pub fn load(command_line: Vec<OsString>, environment: &BTreeMap<String, String>) -> Result<Layered, clap::Error> {
    let command = Config::command();
    let matches = command.clone().try_get_matches_from(&command_line)?;
    let file = matches.get_one::<PathBuf>("config").cloned();
    load_matched(&command, &matches, file.as_deref(), environment)
        .map_err(|error| clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{error}\n")))
}

fn load_matched(
    command: &clap::Command,
    matches: &clap::ArgMatches,
    file: Option<&Path>,
    environment: &BTreeMap<String, String>,
) -> Result<Layered, LayerError> {
    let from_file = match file {
        Some(path) => read_file(path, command)?,
        None => BTreeMap::new(),
    };
    let mut arguments: Vec<OsString> = vec!["ringmq".into()];
    let mut origins = BTreeMap::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if COMMAND_LINE_ONLY.contains(&long) {
            continue;
        }
        let id = arg.get_id().as_str();
        let variable = format!("{ENV_PREFIX}{}", key_of(long).to_uppercase());
        let (values, origin) = if matches.value_source(id) == Some(ValueSource::CommandLine) {
            let values = matches.get_raw(id).map(|raw| raw.map(|value| value.to_string_lossy().into_owned()).collect()).unwrap_or_default();
            (values, Origin::CommandLine)
        } else if let Some(value) = environment.get(&variable) {
            let values: Vec<String> = if matches!(arg.get_action(), ArgAction::Append) {
                value.split(',').map(str::trim).filter(|item| !item.is_empty()).map(String::from).collect()
            } else {
                vec![value.trim().to_string()]
            };
            check_values(long, arg.get_action(), &values)
                .map_err(|message| LayerError::Environment { variable: variable.clone(), message })?;
            (values, Origin::Environment(variable))
        } else if let Some((values, line)) = from_file.get(long) {
            (values.clone(), Origin::File { line: *line })
        } else {
            continue;
        };
        push_arguments(&mut arguments, long, arg.get_action(), &values);
        origins.insert(long.to_string(), origin);
    }
    // The command-line-only flags come along as given.
    for long in ["config", "check-config", "hash-password"] {
        if matches.value_source(&long.replace('-', "_")) == Some(ValueSource::CommandLine) {
            let arg = command.get_arguments().find(|arg| arg.get_long() == Some(long)).expect("declared in Config");
            let values: Vec<String> = matches
                .get_raw(arg.get_id().as_str())
                .map(|raw| raw.map(|value| value.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            push_arguments(&mut arguments, long, arg.get_action(), &values);
        }
    }
    let config = <Config as clap::FromArgMatches>::from_arg_matches(
        &command.clone().try_get_matches_from(&arguments).map_err(|error| LayerError::Combined(clap_message(&error)))?,
    )
    .map_err(|error| LayerError::Combined(clap_message(&error)))?;
    Ok(Layered { config, origins, arguments })
}

/// Settings SIGHUP applies to a running broker; a change to any other needs a restart.
pub const RELOADABLE: &[&str] = &[
    "log",
    "password-file",
    "acl-file",
    "retained-messages-max",
    "retained-bytes-max",
    "subscriptions-per-client-max",
    "slow-subscriber-timeout-s",
    "topic-levels-max",
    "topic-bytes-max",
];

/// Every setting's values (defaults included), by long flag name.
pub fn settings(layered: &Layered) -> BTreeMap<String, Vec<String>> {
    let command = Config::command();
    let Ok(matches) = command.clone().try_get_matches_from(&layered.arguments) else {
        return BTreeMap::new();
    };
    command
        .get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let values = matches
                .get_raw(arg.get_id().as_str())
                .map(|raw| raw.map(|value| value.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            (!COMMAND_LINE_ONLY.contains(&long)).then(|| (long.to_string(), values))
        })
        .collect()
}

/// The settings whose values differ between `running` and `fresh` and that SIGHUP
/// cannot apply, as file keys.
pub fn needing_restart(running: &Layered, fresh: &Layered) -> Vec<String> {
    let (before, after) = (settings(running), settings(fresh));
    after
        .iter()
        .filter(|(long, values)| !RELOADABLE.contains(&long.as_str()) && before.get(*long) != Some(values))
        .map(|(long, _)| key_of(long))
        .collect()
}

/// `--check-config`: every setting as a TOML line, with where it came from.
pub fn describe(layered: &Layered) -> String {
    let command = Config::command();
    let Ok(matches) = command.clone().try_get_matches_from(&layered.arguments) else {
        return String::new();
    };
    let mut out = String::from("# ringmq: the effective configuration (file < RINGMQ_* environment < command line)\n");
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if COMMAND_LINE_ONLY.contains(&long) {
            continue;
        }
        let key = key_of(long);
        let origin = match layered.origins.get(long) {
            Some(Origin::File { line }) => format!("file, line {line}"),
            Some(Origin::Environment(variable)) => variable.clone(),
            Some(Origin::CommandLine) => "command line".into(),
            Some(Origin::Default) | None => "default".into(),
        };
        let values: Vec<String> = matches
            .get_raw(arg.get_id().as_str())
            .map(|raw| raw.map(|value| value.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let quoted = |value: &String| if value.parse::<f64>().is_ok() { value.clone() } else { format!("{value:?}") };
        let line = match (arg.get_action(), values.as_slice()) {
            (ArgAction::SetTrue, [value, ..]) => format!("{key} = {value}"),
            (ArgAction::SetTrue, []) => format!("{key} = false"),
            (ArgAction::Append, values) => format!("{key} = [{}]", values.iter().map(quoted).collect::<Vec<_>>().join(", ")),
            (_, [value]) => format!("{key} = {}", quoted(value)),
            (_, _) => format!("# {key} (not set)"),
        };
        out.push_str(&format!("{line:<60} # {origin}\n"));
    }
    out
}

#[cfg(test)]
#[path = "layers_tests.rs"]
mod tests;
