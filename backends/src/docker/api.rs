//! Docker Engine API shapes shared by the server and the client: JSON documents, status codes,
//! query strings, `ps` summaries and filters, and the multiplexed stream header.

use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The API version the server advertises and the client speaks.
pub const API_VERSION: &str = "1.41";
/// The oldest API version the server accepts in a path.
pub const MIN_API_VERSION: &str = "1.12";

/// The HTTP status a backend's error text stands for.
///
/// Errors travel as `Error(text)` with the daemon's text verbatim (the CLI derives `run`'s
/// exit codes 126/127 from it), so the status is read back from the text: see `docs/docker.md`.
pub fn status_for(text: &str) -> u16 {
    let lower = text.to_ascii_lowercase();
    let has = |needle: &str| lower.contains(needle);
    if has("no such ") {
        404
    } else if has("not implemented") {
        501
    } else if has("is not paused") {
        500
    } else if has("already in use")
        || has("conflict")
        || has("is not running")
        || has("is paused")
        || has("is already paused")
        || has("cannot remove")
        || has("is restarting")
    {
        409
    } else if has("invalid") || has("bad parameter") || has("oci runtime") {
        400
    } else {
        500
    }
}

/// The body of an error answer: `{"message": TEXT}`.
pub fn error_body(text: &str) -> String {
    json!({ "message": text }).to_string()
}

/// The text of an error body from a daemon: its `message`, else the body as text.
pub fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|value| value.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned())
}

/// Checks the fields of a create config that dockerd decodes as a list of strings (`Cmd`,
/// `Entrypoint`: a string, a list of strings, or null), so a config it would refuse is not
/// handed to a backend that reads it more loosely.
///
/// # Errors
/// dockerd's text for the first field of another shape (its `StrSlice` reports the attempt to
/// read the value as one string): `json: cannot unmarshal object into Go struct field
/// ContainerConfigWrapper.Cmd of type string`.
pub fn check_create_config(config: &Value) -> Result<(), String> {
    for field in ["Cmd", "Entrypoint"] {
        let kind = match config.get(field) {
            None | Some(Value::Null | Value::String(_)) => continue,
            Some(Value::Array(words)) if words.iter().all(Value::is_string) => continue,
            Some(Value::Array(_)) => "array",
            Some(Value::Object(_)) => "object",
            Some(Value::Number(_)) => "number",
            Some(Value::Bool(_)) => "bool",
        };
        return Err(format!(
            "json: cannot unmarshal {kind} into Go struct field ContainerConfigWrapper.{field} of type string"
        ));
    }
    Ok(())
}

/// The key/value pairs of a query string, percent-decoded (`+` is a space).
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

/// A query string from key/value pairs, percent-encoded.
pub fn encode_query<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .into_iter()
        .map(|(key, value)| format!("{}={}", percent_encode(key), percent_encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Whether a query flag is set the way Docker reads booleans (`1`, `true`, `True`).
pub fn is_true(value: &str) -> bool {
    matches!(value, "1" | "true" | "True" | "TRUE")
}

/// `GET /version` for the server.
pub fn version() -> Value {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    json!({
        "Platform": {"Name": "swarm-node dockerserver"},
        "Version": env!("CARGO_PKG_VERSION"),
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "rust",
        "Os": std::env::consts::OS,
        "Arch": arch,
        "Experimental": false,
        "BuildTime": "",
    })
}

/// `GET /info`: what the backend said, with the fields the CLI needs filled in.
pub fn info(from_backend: Value, containers: Option<usize>) -> Value {
    let mut info = match from_backend {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let defaults = json!({
        "ID": "",
        "Name": "swarm-node",
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "Containers": containers.unwrap_or_default(),
        "ContainersRunning": 0,
        "ContainersPaused": 0,
        "ContainersStopped": 0,
        "Images": 0,
        "Driver": "swarm",
        "DriverStatus": [],
        "Plugins": {"Volume": [], "Network": [], "Log": []},
        "LoggingDriver": "",
        "CgroupDriver": "",
        "CgroupVersion": "",
        "Swarm": {"LocalNodeState": "inactive", "NodeID": "", "NodeAddr": ""},
        "Runtimes": {},
        "DefaultRuntime": "",
        "KernelVersion": "",
        "OperatingSystem": "swarm-node",
        "OSType": std::env::consts::OS,
        "Architecture": std::env::consts::ARCH,
        "NCPU": 0,
        "MemTotal": 0,
        "DockerRootDir": "",
        "SecurityOptions": [],
        "Warnings": null,
    });
    if let Value::Object(defaults) = defaults {
        for (key, value) in defaults {
            info.entry(key).or_insert(value);
        }
    }
    Value::Object(info)
}

/// One entry of `GET /containers/json`, made from a container's inspect document.
pub fn summary(inspect: &Value, now: OffsetDateTime) -> Value {
    let state = &inspect["State"];
    let config = &inspect["Config"];
    // As the daemon writes it: arguments with a space in single quotes.
    let command: Vec<String> =
        std::iter::once(inspect["Path"].as_str().unwrap_or_default().to_owned())
            .chain(
                inspect["Args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(|arg| if arg.contains(' ') { format!("'{arg}'") } else { arg.to_owned() }),
            )
            .collect();
    let created = inspect["Created"].as_str().and_then(parse_time);
    let network_mode = inspect["HostConfig"]["NetworkMode"].as_str().unwrap_or("default");
    json!({
        "Id": inspect["Id"],
        "Names": [inspect["Name"].as_str().map(slashed).unwrap_or_default()],
        "Image": config["Image"],
        "ImageID": inspect["Image"],
        "Command": command.join(" ").trim(),
        "Created": created.map_or(0, OffsetDateTime::unix_timestamp),
        "Ports": [],
        "Labels": if config["Labels"].is_object() { config["Labels"].clone() } else { json!({}) },
        "State": state["Status"],
        "Status": status_text(state, now),
        "HostConfig": {"NetworkMode": network_mode},
        "NetworkSettings": {"Networks": inspect["NetworkSettings"]["Networks"]},
        "Mounts": [],
    })
}

/// The `Status` column of `docker ps`, as the daemon composes it from the state.
pub fn status_text(state: &Value, now: OffsetDateTime) -> String {
    let since = |key: &str| {
        let at = state[key].as_str().and_then(parse_time)?;
        (at.year() > 1).then(|| human_duration((now - at).as_seconds_f64()))
    };
    let flag = |key: &str| state[key].as_bool().unwrap_or_default();
    if flag("Running") {
        let up = since("StartedAt").unwrap_or_else(|| "Less than a second".to_owned());
        if flag("Paused") {
            return format!("Up {up} (Paused)");
        }
        if flag("Restarting") {
            return format!("Restarting ({}) {up} ago", state["ExitCode"]);
        }
        return format!("Up {up}");
    }
    if state["Status"] == "removing" {
        return "Removal In Progress".to_owned();
    }
    if flag("Dead") {
        return "Dead".to_owned();
    }
    if since("StartedAt").is_none() {
        return "Created".to_owned();
    }
    match since("FinishedAt") {
        Some(ago) => format!("Exited ({}) {ago} ago", state["ExitCode"].as_i64().unwrap_or(0)),
        None => String::new(),
    }
}

/// A duration as go-units' `HumanDuration` writes it ("Less than a second", "2 minutes").
pub fn human_duration(seconds: f64) -> String {
    // Truncating casts, as Go's int(d.Seconds()) and int(d.Minutes()) do.
    let seconds = seconds.max(0.0);
    let whole = seconds as u64;
    let minutes = whole / 60;
    let hours = (seconds / 3600.0).round() as u64;
    match () {
        () if whole < 1 => "Less than a second".to_owned(),
        () if whole == 1 => "1 second".to_owned(),
        () if whole < 60 => format!("{whole} seconds"),
        () if minutes == 1 => "About a minute".to_owned(),
        () if minutes < 60 => format!("{minutes} minutes"),
        () if hours == 1 => "About an hour".to_owned(),
        () if hours < 48 => format!("{hours} hours"),
        () if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        () if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        () if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        () => format!("{} years", whole / 3600 / 24 / 365),
    }
}

/// An RFC 3339 time as inspect documents carry them.
pub fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// The `filters` of `GET /containers/json`, in either of Docker's JSON forms
/// (`{"name":{"x":true}}` or `{"name":["x"]}`).
#[derive(Debug, Default)]
pub struct Filters {
    terms: Vec<(String, Vec<String>)>,
}

impl Filters {
    /// Parses the `filters` query value.
    ///
    /// # Errors
    /// The text of a 400 answer: bad JSON or an unsupported filter.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(Self::default());
        }
        let value: Value =
            serde_json::from_str(text).map_err(|error| format!("invalid filter: {error}"))?;
        let object = value.as_object().ok_or("invalid filter: not a JSON object")?;
        let mut terms = Vec::with_capacity(object.len());
        for (key, values) in object {
            if !FILTERS.contains(&key.as_str()) {
                return Err(format!("invalid filter '{key}'"));
            }
            let values: Vec<String> = match values {
                Value::Object(map) => map.keys().cloned().collect(),
                Value::Array(list) => {
                    list.iter().filter_map(Value::as_str).map(Into::into).collect()
                }
                _ => return Err(format!("invalid filter '{key}'")),
            };
            terms.push((key.clone(), values));
        }
        Ok(Self { terms })
    }

    /// Whether a status filter asks for containers of any state.
    pub fn has_status(&self) -> bool {
        self.terms.iter().any(|(key, _)| key == "status" || key == "exited")
    }

    /// Whether a container, by its inspect document, passes every filter (any value of each).
    pub fn matches(&self, inspect: &Value) -> bool {
        self.terms.iter().all(|(key, values)| {
            values.is_empty() || values.iter().any(|value| matches_one(key, value, inspect))
        })
    }
}

fn matches_one(key: &str, value: &str, inspect: &Value) -> bool {
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    match key {
        "name" => pattern_matches(value, &slashed(&text(&inspect["Name"]))),
        "id" => text(&inspect["Id"]).starts_with(value),
        "status" => text(&inspect["State"]["Status"]) == value,
        "exited" => {
            inspect["State"]["Status"] == "exited"
                && inspect["State"]["ExitCode"].as_i64().map(|code| code.to_string())
                    == Some(value.to_owned())
        }
        "ancestor" => {
            text(&inspect["Config"]["Image"]) == value || text(&inspect["Image"]) == value
        }
        "label" => {
            let labels = &inspect["Config"]["Labels"];
            match value.split_once('=') {
                Some((name, wanted)) => labels[name].as_str() == Some(wanted),
                None => labels.get(value).is_some(),
            }
        }
        _ => false,
    }
}

/// Docker matches names as regular expressions; this supports what people write: a substring,
/// optionally anchored with `^` and `$`.
fn pattern_matches(pattern: &str, name: &str) -> bool {
    let (start, rest) = match pattern.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    let (end, core) = match rest.strip_suffix('$') {
        Some(core) => (true, core),
        None => (false, rest),
    };
    match (start, end) {
        (true, true) => name == core || name.strip_prefix('/') == Some(core),
        (true, false) => {
            name.starts_with(core) || name.strip_prefix('/').is_some_and(|n| n.starts_with(core))
        }
        (false, true) => name.ends_with(core),
        (false, false) => name.contains(core),
    }
}

/// A name with the leading `/` that Docker's `Names` and `Name` carry.
pub fn slashed(name: &str) -> String {
    if name.starts_with('/') {
        name.to_owned()
    } else {
        format!("/{name}")
    }
}

/// Percent-decodes a path segment or query value (`+` is a space).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                // Two hex digits exactly: `from_str_radix` alone would also take "+5" as 5.
                let hex = &bytes[index + 1..index + 3];
                let byte = std::str::from_utf8(hex)
                    .ok()
                    .filter(|_| hex.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match byte {
                    Some(byte) => {
                        out.push(byte);
                        index += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A path segment or query value, percent-encoded.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

const FILTERS: [&str; 6] = ["ancestor", "exited", "id", "label", "name", "status"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_from_error_texts() {
        assert_eq!(status_for("No such container: c1"), 404);
        assert_eq!(status_for("no such object: c1"), 404);
        assert_eq!(status_for("Conflict. The container name \"/c8\" is already in use"), 409);
        assert_eq!(status_for("Container abc is not running"), 409);
        assert_eq!(status_for("Container abc is not paused"), 500);
        assert_eq!(status_for("not implemented: Set"), 501);
        assert_eq!(status_for("failed to create shim task: OCI runtime create failed"), 400);
        assert_eq!(status_for("something broke"), 500);
    }

    #[test]
    fn queries_round_trip() {
        let pairs = query_pairs("all=1&filters=%7B%22name%22%3A%7B%22x%22%3Atrue%7D%7D&a+b=c%");
        assert_eq!(pairs[0], ("all".into(), "1".into()));
        assert_eq!(pairs[1], ("filters".into(), r#"{"name":{"x":true}}"#.into()));
        assert_eq!(pairs[2], ("a b".into(), "c%".into()));
        let encoded = encode_query([("name", "a/b c"), ("t", "1")]);
        assert_eq!(encoded, "name=a%2Fb%20c&t=1");
        assert_eq!(query_pairs(&encoded)[0].1, "a/b c");
    }

    #[test]
    fn percent_escapes_take_two_hex_digits() {
        assert_eq!(percent_decode("%41%2f%2F"), "A//");
        // A sign is no hex digit: these stay as they are, as in Go's url.QueryUnescape.
        assert_eq!(percent_decode("%+5%-1"), "% 5%-1");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn durations_as_docker_writes_them() {
        let cases = [
            (0.4, "Less than a second"),
            (1.5, "1 second"),
            (59.0, "59 seconds"),
            (61.0, "About a minute"),
            (150.0, "2 minutes"),
            (3600.0, "About an hour"),
            (7200.0, "2 hours"),
            (3.0 * 86400.0, "3 days"),
            (21.0 * 86400.0, "3 weeks"),
            (90.0 * 86400.0, "3 months"),
            (800.0 * 86400.0, "2 years"),
        ];
        for (seconds, text) in cases {
            assert_eq!(human_duration(seconds), text, "{seconds}");
        }
    }

    #[test]
    fn status_column() {
        let now = parse_time("2026-01-01T00:10:00Z").unwrap();
        let state = |json: Value| status_text(&json, now);
        assert_eq!(
            state(json!({"Running": false, "StartedAt": "0001-01-01T00:00:00Z"})),
            "Created"
        );
        assert_eq!(
            state(json!({"Running": true, "StartedAt": "2026-01-01T00:08:00.5Z"})),
            "Up About a minute"
        );
        assert_eq!(
            state(json!({"Running": true, "Paused": true, "StartedAt": "2026-01-01T00:09:58Z"})),
            "Up 2 seconds (Paused)"
        );
        assert_eq!(
            state(json!({"Running": false, "ExitCode": 7, "StartedAt": "2026-01-01T00:00:00Z",
                         "FinishedAt": "2026-01-01T00:09:57Z"})),
            "Exited (7) 3 seconds ago"
        );
    }

    #[test]
    fn filters() {
        let inspect = json!({"Id": "abcdef", "Name": "/web-1", "State": {"Status": "exited",
            "ExitCode": 3}, "Config": {"Image": "bb", "Labels": {"tier": "front"}}});
        let passes = |filters: &str| Filters::parse(filters).unwrap().matches(&inspect);
        assert!(passes(r#"{"name":{"web":true}}"#));
        assert!(passes(r#"{"name":["^/web-1$"]}"#));
        assert!(passes(r#"{"name":{"^web":true}}"#));
        assert!(!passes(r#"{"name":{"db":true}}"#));
        assert!(passes(r#"{"name":{"db":true,"web":true},"status":{"exited":true}}"#));
        assert!(!passes(r#"{"status":{"running":true}}"#));
        assert!(passes(r#"{"id":{"abc":true},"exited":{"3":true},"ancestor":{"bb":true}}"#));
        assert!(passes(r#"{"label":{"tier=front":true}}"#) && passes(r#"{"label":["tier"]}"#));
        assert!(!passes(r#"{"label":{"tier=back":true}}"#));
        assert_eq!(
            Filters::parse(r#"{"volume":{"x":true}}"#).unwrap_err(),
            "invalid filter 'volume'"
        );
        assert!(Filters::parse("[").is_err());
    }
}
