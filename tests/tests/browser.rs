//! The web UI (aos-frontend) in a real browser: Debian's Chromium, headless, driven by
//! ChromeDriver over WebDriver, against a real kernel and the scripted LLM server.
//! Screenshots of the main views land in `target/ui-screenshots/`.
//!
//! Without `/usr/bin/chromedriver` the test says so loudly and passes only when
//! `AOS_REQUIRE_BROWSER` is unset; `.ci/run` installs the browser and sets it.

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aos_tests::dispatching::configure;
use aos_tests::llm::{Reply, ScriptedLlm};
use aos_tests::{Setup, TestKernel, eventually, repo_root};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// ChromeDriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start() -> Option<Self> {
        if !Path::new(CHROMEDRIVER).is_file() || !Path::new(CHROMIUM).is_file() {
            let required = std::env::var_os("AOS_REQUIRE_BROWSER").is_some();
            eprintln!(
                "\n!!!!!!!! BROWSER TEST NOT RUN: {CHROMEDRIVER} or {CHROMIUM} is missing. \
                 Install Debian's `chromium` and `chromium-driver` (.ci/run does). !!!!!!!!\n"
            );
            assert!(
                !required,
                "AOS_REQUIRE_BROWSER is set but the browser is missing"
            );
            return None;
        }
        let port = free_port();
        // The test owns the driver process; it is killed on drop.
        #[allow(clippy::disallowed_methods)]
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Self { child, url })
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,800", "--enable-precise-memory-info"],
                "w3c": true,
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap()
    }
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

/// Waits until `script` returns something truthy; returns it.
async fn until(c: &Client, what: &str, script: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = js(c, script).await;
        if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} ({script})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens `hash` and waits until its view has rendered.
async fn goto(c: &Client, base: &str, hash: &str) {
    c.goto(&format!("{base}/{hash}")).await.unwrap();
    let view = hash
        .trim_start_matches("#/")
        .split('/')
        .next()
        .unwrap_or("agents")
        .to_owned();
    until(
        c,
        "the view",
        &format!("return window.aosReady === true && document.body.dataset.view === '{view}'"),
    )
    .await;
}

fn screenshots() -> PathBuf {
    let dir = repo_root().join("target/ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shoot(c: &Client, name: &str) {
    let dir = screenshots();
    for (w, h) in [(1280u32, 800u32), (390, 844)] {
        c.set_window_size(w, h).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let png = c.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(dir.join(format!("{name}-{w}x{h}.png")), png).unwrap();
    }
    c.set_window_size(1280, 800).await.unwrap();
}

async fn type_into(c: &Client, css: &str, text: &str) {
    let el = c.find(Locator::Css(css)).await.unwrap();
    el.send_keys(text).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_web_ui_runs_a_team_of_agents_in_a_real_browser() {
    let Some(driver) = Driver::start() else {
        return;
    };
    let setup = Setup::new();
    // A fixed port, so the UI comes back at the same address after a kernel restart.
    let port = free_port();
    std::fs::write(
        setup.skills().join("aos-frontend/config.json"),
        format!(r#"{{"bind": "127.0.0.1:{port}"}}"#),
    )
    .unwrap();
    let kernel = TestKernel::start_with(setup);
    let llm = ScriptedLlm::start();
    configure(&kernel, &llm, "native").await;
    let base = kernel.admin.ok("aos-frontend.info", json!({})).await["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(base, format!("http://127.0.0.1:{port}"));
    let c = driver.browser().await;

    // Agents: create one, then a session; the chat view opens.
    goto(&c, &base, "#/agents").await;
    shoot(&c, "agents-empty").await;
    type_into(&c, "#new-agent-name", "browser-agent").await;
    click(&c, "#create-agent").await;
    until(
        &c,
        "the agent view",
        "return location.hash.startsWith('#/agent/') && document.querySelector('#create-session')",
    )
    .await;
    click(&c, "#create-session").await;
    let hash = until(&c, "the chat view", "return location.hash.startsWith('#/session/') && document.querySelector('#message') && location.hash").await;
    let session = hash
        .as_str()
        .unwrap()
        .trim_start_matches("#/session/")
        .to_owned();
    let agent = kernel
        .admin
        .ok("session.get", json!({"sessionId": session}))
        .await["agentId"]
        .as_str()
        .unwrap()
        .to_owned();

    // A message: the answer streams in, the bash call and its result show.
    llm.push([
        Reply::Bash {
            command: "echo hello-from-bash".into(),
            text: "Checking.".into(),
        },
        Reply::text("All done: the command printed hello-from-bash."),
    ]);
    type_into(&c, "#message", "say hello\u{E007}").await;
    until(&c, "the bash call", "return [...document.querySelectorAll('.tool .cmd')].some(e => e.textContent.includes('echo hello-from-bash'))").await;
    until(&c, "its result", "return [...document.querySelectorAll('.tool .result pre')].some(e => e.textContent.includes('hello-from-bash'))").await;
    let answer = until(
        &c,
        "the answer",
        "const m = document.querySelector('.msg[data-status=done]'); return m && m.textContent",
    )
    .await;
    assert!(answer.as_str().unwrap().contains("All done"), "{answer}");
    let deltas = js(
        &c,
        "return Number(document.querySelector('.msg[data-status=done]').dataset.deltas)",
    )
    .await;
    assert!(
        deltas.as_u64().unwrap() >= 2,
        "the text did not stream: {deltas} deltas"
    );
    shoot(&c, "chat").await;

    // A long dispatch, interrupted from the UI.
    llm.push([Reply::bash("sleep 600")]);
    type_into(&c, "#message", "wait a long time\u{E007}").await;
    until(&c, "sleep running", "return [...document.querySelectorAll('.tool .cmd')].some(e => e.textContent.includes('sleep 600')) && !document.querySelector('#interrupt').disabled").await;
    click(&c, "#interrupt").await;
    until(
        &c,
        "the interrupted dispatch",
        "return document.querySelector('.msg[data-status=interrupted]')",
    )
    .await;

    // An `ask` rule: the command waits until a person approves it in the UI.
    kernel
        .admin
        .ok(
            "session.update",
            json!({"sessionId": session, "metadata": {"aos-guard": {"rules": [
                {"name": "ask-ui", "action": "ask", "pattern": "touch approved-by-ui", "timeoutMs": 60000}
            ]}}}),
        )
        .await;
    llm.push([
        Reply::bash("touch approved-by-ui.txt"),
        Reply::text("touched"),
    ]);
    type_into(&c, "#message", "touch the file\u{E007}").await;
    until(
        &c,
        "the pending badge",
        "const b = document.querySelector('#asks'); return !b.hidden && b.textContent === '1'",
    )
    .await;
    goto(&c, &base, "#/activity").await;
    until(&c, "the approval", "return [...document.querySelectorAll('.ask')].some(e => e.textContent.includes('touch approved-by-ui.txt'))").await;
    shoot(&c, "activity").await;
    click(&c, ".ask .approve").await;
    let file = kernel
        .home
        .join("workspaces")
        .join(&agent)
        .join("approved-by-ui.txt");
    eventually(Duration::from_secs(20), "the approved command ran", || {
        let file = file.clone();
        async move { file.is_file().then_some(()) }
    })
    .await;
    until(
        &c,
        "no approvals left",
        "return document.querySelector('#asks').hidden",
    )
    .await;

    // History and usage render.
    goto(&c, &base, &format!("#/history/{session}")).await;
    until(
        &c,
        "history rows",
        "return document.querySelectorAll('#history tr.hist').length > 5",
    )
    .await;
    let marked = js(
        &c,
        "return document.querySelectorAll('#history tr.skill-load').length",
    )
    .await;
    assert!(
        marked.as_u64().unwrap() >= 2,
        "skill loads are marked: {marked}"
    );
    shoot(&c, "history").await;
    goto(&c, &base, "#/usage").await;
    until(
        &c,
        "the chart",
        "return document.querySelectorAll('svg.chart rect').length > 0",
    )
    .await;
    shoot(&c, "usage").await;

    // A SKILL.md edited on disk shows up without reloading the page.
    goto(&c, &base, "#/skills").await;
    until(
        &c,
        "the skills",
        "return document.querySelector('[data-skill=aos] .description')",
    )
    .await;
    js(&c, "window.notReloaded = true; return true").await;
    let manual = kernel.skills.join("aos/SKILL.md");
    let text = std::fs::read_to_string(&manual).unwrap();
    let edited = text.replacen(
        "description: How to use",
        "description: Edited on disk. How to use",
        1,
    );
    assert_ne!(text, edited);
    std::fs::write(&manual, edited).unwrap();
    until(&c, "the edited description", "return document.querySelector('[data-skill=aos] .description').textContent.startsWith('Edited on disk.') && window.notReloaded").await;
    until(
        &c,
        "services with their hooks",
        "return document.querySelector('#services').textContent.includes('context.assemble')",
    )
    .await;
    shoot(&c, "skills").await;

    // The kernel restarts: a banner while it is down, the event stream back after.
    goto(&c, &base, "#/agents").await;
    let setup = kernel.stop();
    until(
        &c,
        "the banner",
        "return !document.getElementById('banner').hidden",
    )
    .await;
    shoot(&c, "kernel-down").await;
    let kernel = TestKernel::start_with(setup);
    until(
        &c,
        "the banner gone",
        "return document.getElementById('banner').hidden",
    )
    .await;
    kernel
        .admin
        .ok("agent.create", json!({"displayName": "made-after-restart"}))
        .await;
    until(
        &c,
        "a live update after the restart",
        "return document.querySelector('main').textContent.includes('made-after-restart')",
    )
    .await;

    // Figures: first byte to interactive on the chat view, and memory after 1 000
    // streamed messages (answers of 1 000 dispatches, all followed by the page).
    goto(&c, &base, &format!("#/session/{session}")).await;
    let timing = js(&c, "const n = performance.getEntriesByType('navigation')[0]; return {ttfb: n.responseStart, interactive: n.domInteractive, ready: n.domContentLoadedEventEnd}").await;
    let first_byte_to_interactive =
        timing["interactive"].as_f64().unwrap() - timing["ttfb"].as_f64().unwrap();
    llm.rule(|_| Reply::text("streamed answer").into());
    c.update_timeouts(fantoccini::wd::TimeoutConfiguration::new(
        Some(Duration::from_secs(600)),
        Some(Duration::from_secs(60)),
        None,
    ))
    .await
    .unwrap();
    let started = Instant::now();
    let before = js(
        &c,
        "return performance.memory ? performance.memory.usedJSHeapSize : null",
    )
    .await;
    let sent = c
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               const input = document.querySelector('#message');
               let left = 1000;
               const next = () => {
                 if (left === 0) { done(document.querySelectorAll('.msg[data-status=done]').length); return; }
                 left -= 1;
                 const before = document.querySelectorAll('.msg[data-status]').length;
                 input.value = 'message ' + left;
                 input.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true}));
                 const wait = () => document.querySelectorAll('.msg[data-status]').length > before ? next() : setTimeout(wait, 2);
                 wait();
               };
               next();"#,
            vec![],
        )
        .await;
    let streamed_for = started.elapsed();
    let after = js(
        &c,
        "return performance.memory ? performance.memory.usedJSHeapSize : null",
    )
    .await;
    let figures = json!({
        "firstByteToInteractiveMs": first_byte_to_interactive,
        "domContentLoadedMs": timing["ready"],
        "heapBeforeBytes": before,
        "heapAfter1000MessagesBytes": after,
        "messagesShown": sent.as_ref().ok(),
        "secondsFor1000": streamed_for.as_secs_f64(),
    });
    eprintln!("web UI figures: {figures}");
    std::fs::write(screenshots().join("figures.json"), figures.to_string()).unwrap();
    assert!(sent.is_ok(), "{sent:?}");
    assert!(first_byte_to_interactive > 0.0);

    // Every view rendered without an uncaught script error.
    let errors = js(&c, "return window.scriptErrors").await;
    assert_eq!(errors, json!([]), "script errors");
    c.close().await.unwrap();
}
