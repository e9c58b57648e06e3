//! Access logs through real Envoy 1.40 and through `sluice proxy` on the same bootstrap: the
//! default format, a text format with most command operators, a JSON format (typed values,
//! nulls, nested objects) and a filtered log, for an upstream answer, a rewritten path, a POST
//! with a body, a direct response, a request with no route, an upstream that refuses
//! connections, a cluster without a healthy endpoint and an HTTP/2 request. The lines must be the same, apart from the times and the
//! generated request ids, which are checked for their shape. After a log rotation, both reopen
//! their files on `POST /reopen_logs` and on SIGUSR1.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};
use support::*;

const FILE_LOG: &str = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";

const TEXT_FORMAT: &str = "%REQ(:METHOD)% %REQ(:PATH)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% \
%REQ(:AUTHORITY)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% \
%BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %ROUTE_NAME% \
%REQ(USER-AGENT):5% %RESP(CONTENT-TYPE)% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% \
%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %REQ(X-MISSING)% %REQ(X-TAG)% 100%%\n";

fn file_log(path: &Path, extra: Value) -> Value {
    let mut config = json!({"@type": FILE_LOG, "path": path.to_str().unwrap()});
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    json!({"name": "envoy.access_loggers.file", "typed_config": config})
}

fn config(dir: &Path, app: u16, dead: u16) -> String {
    let rc = routes(json!([
        {"name": "rewrite", "match": {"prefix": "/rewrite/"},
         "route": {"cluster": "app", "prefix_rewrite": "/inner/"}},
        {"name": "direct", "match": {"path": "/direct"},
         "direct_response": {"status": 200, "body": {"inline_string": "hi"}}},
        {"name": "dead", "match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
        {"name": "sick", "match": {"prefix": "/sick"}, "route": {"cluster": "sick"}},
        {"name": "app", "match": {"prefix": "/app"}, "route": {"cluster": "app"}},
    ]));
    let mut filtered = file_log(
        &dir.join("errors.log"),
        json!({"log_format": {"text_format_source": {"inline_string": "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)%\n"}}}),
    );
    filtered["filter"] = json!({"or_filter": {"filters": [
        {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 400, "runtime_key": "k"}}}},
        {"header_filter": {"header": {"name": "x-tag", "string_match": {"exact": "log-me"}}}}
    ]}});
    let mut sick = cluster("sick", &[app]);
    sick["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["health_status"] =
        json!("UNHEALTHY");
    // No panic mode: with every endpoint unhealthy the answer is `UH`.
    sick["common_lb_config"] = json!({"healthy_panic_threshold": {"value": 0}});
    bootstrap(
        rc,
        vec![cluster("app", &[app]), cluster("dead", &[dead]), sick],
        json!({"access_log": [
            file_log(&dir.join("default.log"), json!({})),
            file_log(&dir.join("text.log"), json!({"log_format": {"text_format": TEXT_FORMAT}})),
            file_log(&dir.join("json.log"), json!({"log_format": {"json_format": {
                "code": "%RESPONSE_CODE%",
                "method": "%REQ(:METHOD)%",
                "missing": "%REQ(X-MISSING)%",
                "line": "%PROTOCOL% %RESPONSE_FLAGS% %REQ(X-MISSING)%",
                "bytes": "%BYTES_SENT%",
                "n": 7,
                "inner": {"upstream": "%UPSTREAM_HOST%", "cluster": "%UPSTREAM_CLUSTER%"}
            }}})),
            filtered,
        ]}),
    )
}

/// Wait until `path` holds `n` lines; its lines.
async fn lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let got: Vec<String> = text.lines().map(str::to_string).collect();
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Send the test's requests, one after another, to the proxy's listener.
async fn drive(p: &ProxyProcess) {
    let h1 = client_h1();
    let h2 = client_h2();
    let url = |path: &str| p.url("main", path);
    let ua = [("user-agent", "curl/8.5.0")];
    get(&h1, &url("/app/one"), &ua).await;
    get(&h1, &url("/rewrite/two?x=1"), &[("x-tag", "log-me")]).await;
    let post = Request::builder()
        .method("POST")
        .uri(url("/app/post"))
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"hello body")))
        .unwrap();
    send(&h1, post).await;
    get(&h1, &url("/direct"), &[]).await;
    get(&h1, &url("/nowhere"), &ua).await;
    get(&h1, &url("/dead"), &[]).await;
    get(&h1, &url("/sick"), &[]).await;
    get(&h2, &url("/app/h2"), &ua).await;
}

/// A line with its proxy's own values made comparable: the port of the listener, the time of
/// day, the durations and the request id (each checked for its shape first).
fn normalize(line: &str, port: u16) -> String {
    let mut words: Vec<String> = Vec::new();
    for w in line.split(' ') {
        words.push(w.replace(&format!(":{port}"), ":PORT"));
    }
    words.join(" ")
}

/// The default format: `[START]` ... `DURATION UPSTREAM_SERVICE_TIME` ... `"REQUEST_ID"`.
fn normalize_default(line: &str, port: u16) -> String {
    let line = normalize(line, port);
    // [2026-12-02T17:04:02.123Z]
    let (time, rest) = line.split_at(line.find(']').expect("a start time") + 1);
    assert_eq!(time.len(), 26, "start time {time}");
    assert!(time.starts_with("[20") && time.ends_with("Z]"), "{time}");
    let quoted: Vec<&str> = rest.split('"').collect();
    // quoted[2] = " CODE FLAGS RECEIVED SENT DURATION UPSTREAM_TIME "
    let mut nums: Vec<String> = quoted[2].split_whitespace().map(str::to_string).collect();
    assert_eq!(nums.len(), 6, "{line}");
    for n in &mut nums[4..] {
        assert!(n == "-" || n.parse::<u64>().is_ok(), "{line}");
        *n = "T".into();
    }
    let id = quoted[7];
    assert!(id == "-" || id.len() == 36, "request id {id}");
    let mut out: Vec<String> = quoted.iter().map(|s| s.to_string()).collect();
    out[2] = format!(" {} ", nums.join(" "));
    out[7] = if id == "-" { "-".into() } else { "ID".into() };
    out.join("\"")
}

#[tokio::test]
async fn access_logs_are_written_as_envoy_writes_them() {
    let app = upstream("app").await;
    let dead = closed_port();
    let envoy_dir = tempfile::tempdir().unwrap();
    let sluice_dir = tempfile::tempdir().unwrap();
    let e = envoy(&config(envoy_dir.path(), app.port(), dead)).await;
    let s = sluice(&config(sluice_dir.path(), app.port(), dead)).await;
    drive(&e).await;
    drive(&s).await;
    let (ep, sp) = (e.listener("main").port(), s.listener("main").port());

    for (file, n) in [
        ("default.log", 8),
        ("text.log", 8),
        ("json.log", 8),
        ("errors.log", 4),
    ] {
        let want = lines(&envoy_dir.path().join(file), n).await;
        let got = lines(&sluice_dir.path().join(file), n).await;
        assert_eq!(want.len(), n, "Envoy's {file}: {want:#?}");
        assert_eq!(got.len(), n, "Sluice's {file}: {got:#?}");
        for (w, g) in want.iter().zip(&got) {
            let (w, g) = if file == "default.log" {
                (normalize_default(w, ep), normalize_default(g, sp))
            } else {
                (normalize(w, ep), normalize(g, sp))
            };
            assert_eq!(g, w, "{file}");
        }
    }
}

#[tokio::test]
async fn unsupported_access_log_settings_are_refused_by_name() {
    let rc = routes(json!([{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]));
    let refused = |log: Value| {
        let config = bootstrap(rc.clone(), vec![], json!({"access_log": [log]}));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.json");
        std::fs::write(&path, config).unwrap();
        let out = std::process::Command::new(sluice_bin())
            .args(["proxy", "--mode", "validate", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "accepted: {log}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stdout = |format: Value| {
        json!({"name": "envoy.access_loggers.stdout", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": format}})
    };
    let e = refused(stdout(json!({"text_format": "%DYNAMIC_METADATA(a)%\n"})));
    assert!(e.contains("%DYNAMIC_METADATA%"), "{e}");
    let e = refused(stdout(json!({"text_format": "%START_TIME(%Q)%\n"})));
    assert!(e.contains("%Q"), "{e}");
    let mut filtered = stdout(json!({"text_format": "x\n"}));
    filtered["filter"] = json!({"runtime_filter": {"runtime_key": "a"}});
    let e = refused(filtered);
    assert!(e.contains("runtime_filter"), "{e}");
    let e = refused(json!({"name": "otel", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"}}));
    assert!(e.contains("HttpGrpcAccessLogConfig"), "{e}");
}

/// A log rotator renames the file and asks the proxy to reopen it: first with `POST
/// /reopen_logs` (a GET is refused), then with SIGUSR1. Lines logged before go to the renamed
/// file, lines logged after to a new file at the configured path, in Envoy as in Sluice.
#[tokio::test]
async fn access_logs_are_reopened_after_rotation_as_envoy_reopens_them() {
    let app = upstream("app").await;
    for kind in ["envoy", "sluice"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = file_log(
            &path,
            json!({"log_format": {"text_format_source": {"inline_string": "%REQ(:PATH)%\n"}}}),
        );
        let config = bootstrap(
            routes(json!([{"match": {"prefix": "/"}, "route": {"cluster": "app"}}])),
            vec![cluster("app", &[app.port()])],
            json!({"access_log": [log]}),
        );
        // Envoy writes its log files every 10 s unless told otherwise; Sluice every second.
        let p = if kind == "envoy" {
            envoy_with(&config, &["--file-flush-interval-msec", "100"]).await
        } else {
            sluice(&config).await
        };
        let client = client_h1();
        get(&client, &p.url("main", "/one"), &[]).await;
        assert_eq!(lines(&path, 1).await, ["/one"], "{kind}");

        let first = dir.path().join("access.log.1");
        std::fs::rename(&path, &first).unwrap();
        let (status, body) = p.admin_call("GET", "/reopen_logs").await;
        assert_eq!(status, 405, "{kind}: {body}");
        assert!(body.contains("POST required"), "{kind}: {body}");
        assert_eq!(
            p.admin_call("POST", "/reopen_logs").await,
            (200, "OK\n".to_string()),
            "{kind}"
        );
        get(&client, &p.url("main", "/two"), &[]).await;
        assert_eq!(lines(&path, 1).await, ["/two"], "{kind}");
        assert_eq!(lines(&first, 1).await, ["/one"], "{kind}");

        // SIGUSR1 is handled asynchronously: keep logging until a new file appears. The lines
        // logged before it did stay in the renamed file, after "/two".
        let second = dir.path().join("access.log.2");
        std::fs::rename(&path, &second).unwrap();
        let sent = std::process::Command::new("kill")
            .args(["-USR1", &p.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut n = 0;
        while !path.exists() && Instant::now() < deadline {
            n += 1;
            get(&client, &p.url("main", &format!("/three/{n}")), &[]).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(path.exists(), "{kind}: no new file after SIGUSR1");
        get(&client, &p.url("main", "/four"), &[]).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut new = lines(&path, 1).await;
        while new.last().map(String::as_str) != Some("/four") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            new = lines(&path, 1).await;
        }
        assert_eq!(
            new.last().map(String::as_str),
            Some("/four"),
            "{kind}: {new:?}"
        );
        assert!(
            new.iter().all(|l| l.starts_with("/three/") || l == "/four"),
            "{kind}: {new:?}"
        );
        let old = lines(&second, 1).await;
        assert_eq!(
            old.first().map(String::as_str),
            Some("/two"),
            "{kind}: {old:?}"
        );
        assert!(
            old[1..].iter().all(|l| l.starts_with("/three/")),
            "{kind}: {old:?}"
        );
        assert_eq!(old.len() - 1 + new.len() - 1, n, "{kind}: every line once");
    }
}
