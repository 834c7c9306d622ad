//! The `zhijian` binary: exit codes and messages a person sees.

use crate::support::{fixtures, tempdir};
use std::io::Write;
use std::process::{Command, Stdio};

fn zhijian() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zhijian"))
}

#[test]
fn scan_reports_bad_lines_and_exits_zero() {
    let mut child = zhijian()
        .args(["scan", "--lexicons"])
        .arg(fixtures().join("lexicon"))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let input = "{\"conversation_id\":\"c\",\"seq\":0,\"speaker\":\"agent\",\"text\":\"急什么\"}\nnot json\n\u{1}{}\n";
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2: invalid_json:"), "{stderr}");
    assert!(stderr.contains("line 3: invalid_json:"), "{stderr}");
    assert!(
        stderr.contains("3 lines, 2 bad, 1 segments judged"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().count(),
        4,
        "forbidden, missing greeting, missing closing, summary:\n{stdout}"
    );
}

#[test]
fn bad_lexicon_exits_2_naming_file_and_line() {
    let dir = tempdir("badlex");
    std::fs::write(
        dir.join("a.toml"),
        "[lexicon]\nname = \"x\"\nversion = \"1\"\n[[section]]\nid = \"s\"\nname = \"s\"\nmax_deduct = 1\n[[category]]\nid = \"forbidden\"\nname = \"服务忌语\"\n[[rule]]\nid = \"r\"\ncategory = \"forbidden\"\nseverity = \"low\"\ndeduct = 1\nsection = \"s\"\nphrases = [\"。。\"]\n",
    )
    .expect("write");
    for args in [vec!["lexicon", "check"], vec!["scan", "--lexicons"]] {
        let out = zhijian().args(&args).arg(&dir).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("a.toml:17: rule \"r\": phrase \"。。\" is empty after normalisation"),
            "{stderr}"
        );
    }
    let out = zhijian()
        .args(["lexicon", "check"])
        .arg(dir.join("missing"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn lexicon_check_and_test_explain_the_default_lexicon() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = zhijian()
        .current_dir(root)
        .args(["lexicon", "check"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("forbidden") && stdout.contains("version 2026."),
        "{stdout}"
    );

    let out = zhijian()
        .current_dir(root)
        .args([
            "lexicon",
            "test",
            "好的啊，喂养宝宝，暂时不知道您的问题我是否为您解决完毕",
        ])
        .output()
        .expect("run");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "normalised: 好的啊喂养宝宝暂时不知道您的问题我是否为您解决完毕",
        "RULE  greeting.standard            required   open: not said yet",
        "\"啊\": not at the start of a clause",
        "\"喂\": inside a longer word (jieba)",
        "\"不知道\": inside exception \"暂时不知道您的问题\"",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }

    // A conversation: every kind explains its decision, and a satisfied
    // greeting is called satisfied, not a hit.
    let out = zhijian()
        .current_dir(root)
        .args([
            "lexicon",
            "test",
            "--channel",
            "call",
            "customer:我要投诉",
            "agent:您好，请稍等",
            "agent:您的号码是138 1234 5678吗？不要告诉我您的密码",
            "customer:嗯",
            "agent:感谢您的耐心等待，再见",
        ])
        .output()
        .expect("run");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "RULE  complaint.apology            response   triggered: now waiting for the response",
        "RULE  greeting.standard            required   satisfied: said in segment 1 of the scope",
        "RULE  hold.thanks                  response   satisfied: the trigger at segment 1 is answered here",
        "RULE  pii.full_number              pattern    \"13812345678\" is a mainland mobile number",
        "RULE  pii.asks_secret              pattern    dropped \"告诉我您的密码\": inside \"不要告诉我您的密码\"",
        "VIOLATION complaint.apology complaint_no_apology (投诉未致歉) high deduct 1 at seq 0",
        "VIOLATION escalation.complaint_threat escalation (客户投诉升级) critical deduct 0 at seq 0",
        "RULE  closing.standard             required   satisfied: said in the last 3 segment(s)",
        "SUMMARY score 99 greeted Some(true) closed Some(true)",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("HIT"), "{stdout}");
}

#[test]
fn the_documented_config_example_is_valid_and_complete() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/zhijian.toml");
    let text = std::fs::read_to_string(&path).expect("deploy/zhijian.toml");
    let raw = zhijian::config::RawConfig::parse(&text).expect("parses");
    assert_eq!(
        raw,
        zhijian::config::RawConfig::default(),
        "the example must show the defaults"
    );
    // Every key of every section is mentioned (commented-out secrets too).
    for key in [
        "url",
        "name",
        "user",
        "password",
        "token",
        "credentials_file",
        "tls_ca_file",
        "tls_client_cert",
        "tls_client_key",
        "tls_required",
        "connect_timeout_ms",
        "create",
        "input_stream",
        "input_prefix",
        "consumer",
        "output_stream",
        "violations_prefix",
        "summaries_prefix",
        "deadletter_subject",
        "deadletter_stream",
        "state_bucket",
        "duplicate_window_s",
        "ack_wait_s",
        "lexicons",
        "idle_timeout_s",
        "tombstone_ttl_s",
        "reload_poll_ms",
        "reload_requires_tests",
        "prefix",
        "stream",
        "shutdown_grace_s",
        "addr",
        "max_tenants",
        "enabled",
        "mask_digits",
        "history",
        "format",
        "level",
        "partitions",
        "instance",
        "bucket",
        "replicas",
        "lease_ms",
        "heartbeat_ms",
        "checkpoint_ms",
        "max_deltas",
    ] {
        assert!(
            text.contains(&format!("{key} =")),
            "deploy/zhijian.toml does not document {key}"
        );
    }
}

/// Peak resident memory of a running process, in KiB (Linux).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"))
}

/// A line far over the limit (50 MB, with and without a final newline) is
/// refused naming its line number and the limit, counted as a bad line,
/// never held in memory (the peak RSS, read while the scan waits for more
/// input, does not grow by the line's size), and later lines are judged.
#[test]
#[cfg(target_os = "linux")]
fn scan_refuses_a_too_long_line_without_holding_it() {
    use std::io::{BufRead, BufReader, Read};
    const LONG: usize = 50 * 1024 * 1024;
    let mut child = crate::support::KillOnDrop(
        zhijian()
            .args(["scan", "--lexicons"])
            .arg(fixtures().join("lexicon"))
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    let pid = child.0.id();
    let mut stdin = child.0.stdin.take().expect("stdin");
    let mut stderr = BufReader::new(child.0.stderr.take().expect("stderr"));
    let mut next_error = || {
        let mut line = String::new();
        stderr.read_line(&mut line).expect("read stderr");
        line
    };
    let write_long = |stdin: &mut std::process::ChildStdin| {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..LONG / chunk.len() {
            stdin.write_all(&chunk).expect("write");
        }
    };

    // Line 1 is bad on purpose: its error line says the scanner has
    // started and read it, so the peak RSS from here on is the baseline.
    stdin.write_all(b"not json\n").expect("write");
    assert!(next_error().starts_with("line 1: invalid_json:"));
    let baseline = peak_rss_kib(pid);

    write_long(&mut stdin);
    stdin.write_all(b"\n").expect("write");
    let error = next_error();
    assert_eq!(
        error.trim_end(),
        format!(
            "line 2: line_too_long: {LONG} bytes, over the limit of 1048576 bytes (--max-line-bytes); skipped"
        )
    );
    // The scanner now waits for line 3: its peak so far includes reading
    // the whole long line.
    let grown = peak_rss_kib(pid).saturating_sub(baseline);
    assert!(
        grown < 16 * 1024,
        "peak RSS grew by {grown} KiB while reading a {LONG}-byte line"
    );

    stdin
        .write_all(
            "{\"conversation_id\":\"c\",\"seq\":0,\"speaker\":\"agent\",\"text\":\"急什么\"}\n"
                .as_bytes(),
        )
        .expect("write");
    // A last line that never ends: no newline before the end of input.
    write_long(&mut stdin);
    drop(stdin);
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).expect("read stderr");
    let mut stdout = String::new();
    child
        .0
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    let status = child.0.wait().expect("wait");
    assert!(status.success(), "{status:?}\n{rest}");
    assert!(
        rest.starts_with(&format!(
            "line 4: line_too_long: {LONG} bytes, over the limit of 1048576 bytes"
        )),
        "{rest}"
    );
    assert!(rest.contains("4 lines, 3 bad, 1 segments judged"), "{rest}");
    assert_eq!(
        stdout.lines().count(),
        4,
        "line 3 is judged: forbidden, missing greeting, missing closing, summary:\n{stdout}"
    );
}

#[test]
fn scan_max_line_bytes_sets_the_limit() {
    let dir = tempdir("maxline");
    let file = dir.join("in.jsonl");
    let good = "{\"conversation_id\":\"c\",\"seq\":0,\"speaker\":\"agent\",\"text\":\"急什么\"}";
    std::fs::write(
        &file,
        format!("{good}\n{{\"conversation_id\":\"c\",\"type\":\"end\"}}\n"),
    )
    .expect("write");
    let limit = good.len() - 1;
    let out = zhijian()
        .args(["scan", "--lexicons"])
        .arg(fixtures().join("lexicon"))
        .args(["--max-line-bytes", &limit.to_string()])
        .arg(&file)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.expect("run");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "line 1: line_too_long: {} bytes, over the limit of {limit} bytes",
            good.len()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("2 lines, 1 bad, 0 segments judged"),
        "{stderr}"
    );
}

/// Errors a newcomer meets first name the path and the way out.
#[test]
fn path_errors_name_the_path() {
    let bin = env!("CARGO_BIN_EXE_zhijian");
    let dir = tempdir("cli-paths");
    let out = std::process::Command::new(bin)
        .args(["scan", "--lexicons"])
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lexicons"))
        .arg(&dir)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{} is a directory", dir.display())),
        "{stderr}"
    );
    let out = std::process::Command::new(bin)
        .args(["run", "--nats-url", "nats://127.0.0.1:1"])
        .current_dir(&dir)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no lexicon directory at lexicons")
            && stderr.contains(&dir.display().to_string())
            && stderr.contains("--lexicons"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lexicon_eval_reports_precision_recall_agreement_and_every_disagreement() {
    let dir = tempdir("eval");
    let line = |c: &str, seq: u64, speaker: &str, text: &str| {
        serde_json::json!({"conversation_id": c, "seq": seq, "speaker": speaker,
            "text": text, "channel": "call"})
        .to_string()
    };
    let input = [
        line("a", 0, "agent", "您好"),
        line("a", 1, "agent", "不知道，你自己查"),
        line("a", 2, "agent", "那就是不可以的"),
        line("a", 3, "agent", "已经超过价保周期了，不清楚能不能申请"),
        line("a", 4, "agent", "再见"),
        serde_json::json!({"conversation_id": "a", "type": "end"}).to_string(),
        line("b", 0, "agent", "请讲"),
        line("b", 1, "agent", "好的"),
        serde_json::json!({"conversation_id": "b", "type": "end"}).to_string(),
    ];
    // The reviewer: seq 1 and 2 are refusals (不可以的 is not in the default
    // lexicon: a miss), seq 3 a policy explanation (a false alarm);
    // conversation b began mid-way (not judgeable: the missing greeting
    // zhijian reports disagrees).
    let labels = [
        r#"{"conversation_id":"a","greeting":true,"closing":true}"#,
        r#"{"conversation_id":"a","seq":1,"categories":["forbidden"]}"#,
        r#"{"conversation_id":"a","seq":2,"categories":["forbidden"]}"#,
        r#"{"conversation_id":"a","seq":3,"categories":[]}"#,
        r#"{"conversation_id":"b","greeting":null,"closing":false}"#,
    ];
    std::fs::write(dir.join("in.jsonl"), input.join("\n")).expect("write");
    std::fs::write(dir.join("labels.jsonl"), labels.join("\n")).expect("write");
    let out = zhijian()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["lexicon", "eval", "--labels"])
        .arg(dir.join("labels.jsonl"))
        .arg(dir.join("in.jsonl"))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for want in [
        "3 labelled segments, 2 labelled conversations",
        "| forbidden | 2 | 1 | 1 | 1 | 50.0% | 50.0% |",
        "| forbidden.ignorance | 1 | 1 | 50.0% |",
        "| greeting | 2 | 1 | 50.0% |",
        "|   reviewer not judged, zhijian no | 1 | | |",
        "| closing | 2 | 2 | 100.0% |",
        "miss        forbidden         a seq 2: agent: 那就是不可以的",
        "false alarm forbidden         a seq 3 (forbidden.ignorance): agent: 已经超过价保周期了",
        "false alarm missing_greeting  b: reviewer: not judged, zhijian: no",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}

#[test]
fn the_default_lexicon_passes_its_test_suite_and_a_failure_shows_a_diff() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = zhijian()
        .current_dir(root)
        .args(["lexicon", "test", "--suite", "lexicons/tests"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(" cases, 0 failed"), "{stdout}");
    // Every enabled rule of the default lexicon is exercised by a case.
    let suite: String = std::fs::read_dir(std::path::Path::new(root).join("lexicons/tests"))
        .expect("suite")
        .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("read"))
        .collect();
    let lex = zhijian::lexicon::load_dir(&std::path::Path::new(root).join("lexicons"))
        .expect("default lexicon");
    for r in &lex.rules {
        assert!(
            suite.contains(&format!("rule = \"{}\"", r.id)),
            "no case expects {}",
            r.id
        );
    }

    let dir = tempdir("suite");
    std::fs::write(
        dir.join("bad.toml"),
        "[[case]]\nname = \"wrong on purpose\"\ntext = \"这个不归我管\"\nexpect = [{ rule = \"forbidden.ignorance\" }]\n",
    )
    .expect("write");
    let out = zhijian()
        .current_dir(root)
        .args(["lexicon", "test", "--suite"])
        .arg(&*dir)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for want in [
        "wrong on purpose",
        "  - forbidden.ignorance\n",
        "  + forbidden.shirking at seq 0 matching \"不归我管\"",
        "1 cases, 1 failed",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}

#[test]
fn diff_reports_what_a_lexicon_change_adds_and_removes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempdir("diff");
    let (old, new) = (dir.join("old"), dir.join("new"));
    for d in [&old, &new] {
        std::fs::create_dir(d).expect("mkdir");
        std::fs::copy(
            root.join("tests/fixtures/lexicon/lexicon.toml"),
            d.join("lexicon.toml"),
        )
        .expect("copy");
    }
    // The candidate: one phrase added, one phrase removed.
    let text = std::fs::read_to_string(new.join("lexicon.toml")).expect("read");
    std::fs::write(
        new.join("lexicon.toml"),
        text.replace("\"急什么\", ", "")
            .replace("\"不关我的事\"", "\"不关我的事\", \"没办法\""),
    )
    .expect("write");
    let line = |c: &str, seq: u64, t: &str| {
        serde_json::json!({"conversation_id": c, "seq": seq, "speaker": "agent", "text": t})
            .to_string()
    };
    let input = [
        line("a", 0, "您好"),
        line("a", 1, "这个没办法<script>"),
        line("a", 2, "急什么，再见"),
        line("b", 0, "您好，138 1234 5678 没办法"),
        line("b", 1, "再见"),
    ];
    std::fs::write(dir.join("in.jsonl"), input.join("\n")).expect("write");
    let run = |format: &str| {
        let out = zhijian()
            .args(["diff", "--old"])
            .arg(&old)
            .arg("--new")
            .arg(&new)
            .args(["--format", format])
            .arg(dir.join("in.jsonl"))
            .output()
            .expect("run");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = run("text");
    for want in [
        "2 conversations (5 lines, 0 bad)",
        "violations 1 → 2;",
        "forbidden.core (forbidden): +2 added, -1 removed",
        "  + a seq 1: 【没办法】 这个没办法<script>",
        // Digits masked as in the console.
        "  + b seq 0: 【没办法】 您好，*** **** 5678 没办法",
        "  - a seq 2: 【急什么】 急什么，再见",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let html = run("html");
    assert!(html.contains("这个没办法&lt;script&gt;"), "{html}");
    assert!(!html.contains("<script"), "{html}");
    let json: serde_json::Value = serde_json::from_str(&run("json")).expect("JSON");
    assert_eq!(json["rules"]["forbidden.core"]["added"], 2);
    assert_eq!(json["rules"]["forbidden.core"]["removed"], 1);
}

#[test]
fn lexicon_audit_lists_kept_and_dropped_hits_and_suggests_exceptions() {
    let dir = tempdir("audit");
    let line = |c: &str, seq: u64, t: &str| {
        serde_json::json!({"conversation_id": c, "seq": seq, "speaker": "agent", "text": t})
            .to_string()
    };
    let input = [
        line("a", 0, "我也不知道"),
        line("a", 1, "规则我不知道吗"),
        line("b", 0, "规则我不知道吗"),
        line("b", 1, "暂时不知道您的问题我是否为您解决完毕"),
    ];
    // The reviewer: only a:0 is a refusal; the rhetorical 我不知道吗 twice not.
    let labels = [
        r#"{"conversation_id":"a","seq":0,"categories":["forbidden"]}"#,
        r#"{"conversation_id":"a","seq":1,"categories":[]}"#,
        r#"{"conversation_id":"b","seq":0,"categories":[]}"#,
    ];
    std::fs::write(dir.join("in.jsonl"), input.join("\n")).expect("write");
    std::fs::write(dir.join("labels.jsonl"), labels.join("\n")).expect("write");
    let out = zhijian()
        .args(["lexicon", "audit", "--lexicons"])
        .arg(fixtures().join("lexicon"))
        .arg("--labels")
        .arg(dir.join("labels.jsonl"))
        .arg(dir.join("in.jsonl"))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for want in [
        "4 segments",
        "      3  forbidden.core               不知道 [labelled: 1 confirmed, 2 false alarms]",
        "      1  forbidden.core               不知道 (exception)",
        "forbidden.core: 不知道 — 2 false alarms, 1 confirmed; exceptions to consider: \"我不知道吗\" (2)",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}

/// A mistyped command names the one that was meant.
#[test]
fn a_mistyped_command_suggests_the_right_one() {
    let out = zhijian().arg("lexcon").output().expect("run zhijian");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a similar subcommand exists: 'lexicon'"),
        "{err}"
    );
}

/// One agent segment with a high-severity forbidden phrase, as a file in
/// `dir`.
fn impatient_agent(dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("in.jsonl");
    std::fs::write(
        &file,
        r#"{"conversation_id":"f","seq":0,"speaker":"agent","text":"您好，急什么"}"#,
    )
    .expect("write");
    file
}

/// `scan --fail-on SEVERITY` exits 1 when a violation of that severity or
/// above was found, 0 otherwise; the events are written either way.
#[test]
fn scan_fail_on_exits_1_at_or_above_the_severity() {
    let dir = tempdir("fail-on");
    let file = impatient_agent(&dir);
    let run = |severity: &str| {
        zhijian()
            .args(["scan", "--fail-on", severity])
            .arg(&file)
            .output()
            .expect("run zhijian scan")
    };
    let high = run("high");
    assert_eq!(high.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&high.stdout).contains("\"severity\":\"high\""));
    assert!(String::from_utf8_lossy(&high.stderr).contains("severity high or above"));
    assert_eq!(run("critical").status.code(), Some(0));
}

/// `scan --format text` prints what `zhijian tail` prints: one readable
/// line an event, the match in 【】.
#[test]
fn scan_format_text_prints_what_tail_prints() {
    let dir = tempdir("format-text");
    let file = impatient_agent(&dir);
    let out = zhijian()
        .args(["scan", "--format", "text"])
        .arg(&file)
        .output()
        .expect("run zhijian scan");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("VIOLATION high") && lines[0].ends_with("您好，【急什么】"),
        "{text}"
    );
    assert!(lines[2].starts_with("SUMMARY"), "{text}");
}
