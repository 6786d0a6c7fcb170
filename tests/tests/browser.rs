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

/// Screenshots of the current view at laptop and phone size; at phone size the page
/// must not scroll sideways.
async fn shoot(c: &Client, name: &str) {
    let dir = screenshots();
    for (w, h) in [(1280u32, 800u32), (390, 844)] {
        c.set_window_size(w, h).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let png = c.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(dir.join(format!("{name}-{w}x{h}.png")), png).unwrap();
        if w < 500 {
            let widths = js(
                c,
                "return [document.documentElement.scrollWidth, window.innerWidth, \
                 [...document.querySelectorAll('main *')].filter(e => e.getBoundingClientRect().right > window.innerWidth + 1).slice(0, 5).map(e => e.tagName + '.' + e.className + '#' + e.id)]",
            )
            .await;
            assert!(
                widths[0].as_f64().unwrap() <= widths[1].as_f64().unwrap(),
                "the {name} view scrolls sideways at {w}px (scrollWidth, innerWidth, widest): {widths}"
            );
        }
    }
    c.set_window_size(1280, 800).await.unwrap();
}

/// The browser console's `SEVERE` entries since the last read (ChromeDriver's log
/// endpoint; `goog:loggingPrefs` asks it to keep them): console errors, uncaught
/// exceptions, failed requests.
async fn console_errors(driver: &Driver, c: &Client) -> Vec<Value> {
    let id = c.session_id().await.unwrap().unwrap();
    let http = reqwest::Client::new();
    let mut reply = Value::Null;
    for path in ["se/log", "log"] {
        let response = http
            .post(format!("{}/session/{id}/{path}", driver.url))
            .json(&json!({"type": "browser"}))
            .send()
            .await
            .unwrap();
        if response.status().is_success() {
            reply = response.json().await.unwrap();
            break;
        }
    }
    let entries = reply["value"]
        .as_array()
        .unwrap_or_else(|| panic!("ChromeDriver returned no browser log: {reply}"));
    entries
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .cloned()
        .collect()
}

async fn type_into(c: &Client, css: &str, text: &str) {
    let el = c.find(Locator::Css(css)).await.unwrap();
    el.send_keys(text).await.unwrap();
}

/// Clicks `css` once it is scrolled to the middle of the window (clear of the sticky
/// header and composer).
async fn click(c: &Client, css: &str) {
    c.execute(
        "document.querySelector(arguments[0])?.scrollIntoView({block: 'center'}); return true",
        vec![json!(css)],
    )
    .await
    .unwrap();
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

    // Defaults of another agent: rules keep their fields (a `disable` stays one, `start`
    // survives) when the form saves them with a rule added and a new priority.
    let other = kernel
        .admin
        .ok(
            "agent.update",
            json!({"agentId": kernel.admin.ok("agent.create", json!({"displayName": "second-agent"})).await["agentId"],
                   "defaultSkills": [{"name": "aos-memory", "load": "disable"}, {"name": "aos-cron", "start": "disable"}]}),
        )
        .await["agentId"]
        .as_str()
        .unwrap()
        .to_owned();
    let back = js(&c, "return location.hash").await;
    goto(&c, &base, &format!("#/agent/{other}")).await;
    until(
        &c,
        "the rules",
        "return document.querySelector('#rules tr[data-rule=aos-memory] select.load').value === 'disable'",
    )
    .await;
    type_into(&c, "#new-rule", "aos-a2a").await;
    click(&c, "#add-rule").await;
    js(&c, "const p = document.querySelector('input[aria-label=Priority]'); p.value = '7'; return true").await;
    click(&c, "#save-defaults").await;
    until(
        &c,
        "defaults saved",
        "return document.querySelector('#defaults-status').textContent === 'saved'",
    )
    .await;
    let saved = kernel
        .admin
        .ok("agent.get", json!({"agentId": other}))
        .await;
    assert_eq!(saved["priority"], json!(7), "{saved}");
    assert_eq!(
        saved["defaultSkills"],
        json!([{"name": "aos-memory", "load": "disable"}, {"name": "aos-cron", "start": "disable"}, {"name": "aos-a2a", "load": "enable"}]),
        "{saved}"
    );
    // Archive it (the confirmation answered yes): the list shows it archived.
    js(&c, "window.confirm = () => true; return true").await;
    click(&c, "#archive-agent").await;
    until(
        &c,
        "the archived agent in the list",
        &format!("return location.hash === '#/agents' && document.querySelector('tr[data-agent={other}] .pill')?.textContent === 'archived'"),
    )
    .await;
    assert_eq!(
        kernel
            .admin
            .ok("agent.get", json!({"agentId": other}))
            .await["status"],
        json!("archived")
    );
    goto(&c, &base, back.as_str().unwrap()).await;

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

    // A dispatch started elsewhere (the API, as aos-a2a, aos-cron or the CLI would): the
    // open chat follows it, its message and its streamed answer.
    llm.push([Reply::text("An answer for the outside caller.")]);
    kernel
        .admin
        .ok(
            "session.dispatch",
            json!({"sessionId": session, "message": {"role": "user", "content": "a question from elsewhere"}}),
        )
        .await;
    until(&c, "the outside question", "return [...document.querySelectorAll('.msg.user')].some(e => e.textContent.includes('a question from elsewhere'))").await;
    until(&c, "the outside answer", "return [...document.querySelectorAll('.msg[data-status=done]')].some(e => e.textContent.includes('An answer for the outside caller.'))").await;

    // A result too long for history is folded into content; the chat expands it.
    llm.push([Reply::bash("seq 1 5000"), Reply::text("counted")]);
    type_into(&c, "#message", "count to 5000\u{E007}").await;
    until(
        &c,
        "the folded result",
        "return document.querySelector('.tool .show-all')",
    )
    .await;
    click(&c, ".tool .show-all").await;
    until(&c, "the first lines of the folded result", "return [...document.querySelectorAll('.tool .result[data-expanded] pre')].some(e => e.textContent.includes('1999\\n2000'))").await;
    // 2000 lines a page: two more clicks for the rest.
    for shown in [4000, 5000] {
        click(&c, ".tool .show-all").await;
        until(
            &c,
            "the next page of the folded result",
            &format!("return document.querySelector('.tool .result[data-expanded=\"{shown}\"]')"),
        )
        .await;
    }
    until(&c, "the whole folded result", "return [...document.querySelectorAll('.tool .result pre')].some(e => e.textContent.trimEnd().endsWith('4999\\n5000')) && !document.querySelector('.tool .show-all')").await;
    until(
        &c,
        "the count's answer",
        "return [...document.querySelectorAll('.msg[data-status=done]')].some(e => e.textContent.includes('counted'))",
    )
    .await;

    // A long dispatch; a follow-up sent meanwhile is queued, then runs once the long one
    // is interrupted from the UI.
    llm.push([Reply::bash("sleep 600")]);
    type_into(&c, "#message", "wait a long time\u{E007}").await;
    until(&c, "sleep running", "return [...document.querySelectorAll('.tool .cmd')].some(e => e.textContent.includes('sleep 600')) && !document.querySelector('#interrupt').disabled").await;
    llm.push([Reply::text("The queued follow-up ran.")]);
    type_into(&c, "#message", "and then this\u{E007}").await;
    until(
        &c,
        "the queued follow-up",
        "return document.querySelector('#dispatch-status').textContent.startsWith('queued') && document.querySelector('.msg.assistant[data-queued]')",
    )
    .await;
    click(&c, "#interrupt").await;
    until(
        &c,
        "the interrupted dispatch",
        "return document.querySelector('.msg[data-status=interrupted]')",
    )
    .await;
    until(&c, "the follow-up's answer", "return [...document.querySelectorAll('.msg[data-status=done]')].some(e => e.textContent.includes('The queued follow-up ran.'))").await;

    // An `ask` rule: the command waits until a person approves it in the UI.
    kernel
        .admin
        .ok(
            "session.update",
            json!({"sessionId": session, "metadata": {"aos-guard": {"rules": [
                {"name": "ask-ui", "action": "ask", "pattern": "touch approved-by-ui", "timeoutMs": 60000},
                {"name": "ask-deny", "action": "ask", "pattern": "touch denied-by-ui", "timeoutMs": 60000}
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

    // Deny: the command never runs, the dispatch goes on to its answer.
    llm.push([
        Reply::bash("touch denied-by-ui.txt"),
        Reply::text("it was denied"),
    ]);
    let denied = kernel
        .admin
        .ok(
            "session.dispatch",
            json!({"sessionId": session, "message": {"role": "user", "content": "touch the other file"}}),
        )
        .await["dispatchId"]
        .as_str()
        .unwrap()
        .to_owned();
    until(&c, "the approval to deny", "return [...document.querySelectorAll('.ask')].some(e => e.textContent.includes('touch denied-by-ui.txt'))").await;
    click(&c, ".ask .deny").await;
    eventually(Duration::from_secs(20), "the denied dispatch's end", || {
        let admin = kernel.admin.clone();
        let denied = denied.clone();
        async move {
            let d = admin
                .ok("dispatch.get", json!({"dispatchId": denied}))
                .await;
            (d["status"] == "done").then_some(())
        }
    })
    .await;
    assert!(
        !kernel
            .home
            .join("workspaces")
            .join(&agent)
            .join("denied-by-ui.txt")
            .exists(),
        "a denied command ran"
    );

    // The event list shows every event, whatever its name; the filter narrows it.
    kernel
        .admin
        .ok(
            "event.publish",
            json!({"name": "skill.aos-cron.run", "payload": {"job": "from-the-browser-test"}}),
        )
        .await;
    until(&c, "events outside any fixed list", "const names = [...document.querySelectorAll('#events [data-name]')].map(e => e.dataset.name); return names.includes('skill.aos-cron.run') && names.some(n => n.startsWith('context.'))").await;
    type_into(&c, "#event-filter", "aos-guard").await;
    until(&c, "the filtered events", "const names = [...document.querySelectorAll('#events [data-name]')].map(e => e.dataset.name); return names.length > 0 && names.every(n => n.includes('aos-guard'))").await;
    shoot(&c, "activity-filtered").await;

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
        "the charts",
        "return document.querySelectorAll('svg.chart[data-metric=tokens] rect').length > 0 && document.querySelector('svg.chart[data-metric=cost]')",
    )
    .await;
    until(&c, "cost per agent and session", &format!("return document.querySelector('#usage-agents tr[data-agent={agent}] td.cost') && document.querySelector('#usage-sessions tr[data-session={session}] td.cost')")).await;
    shoot(&c, "usage").await;
    // Live: a dispatch that ends re-renders the view with the session's new total.
    let tokens = format!(
        "return document.querySelector('#usage-sessions tr[data-session={session}] td:nth-child(2)').textContent"
    );
    let before = js(&c, &tokens).await;
    llm.push([Reply::text("one more answer")]);
    kernel
        .admin
        .ok(
            "session.dispatch",
            json!({"sessionId": session, "message": {"role": "user", "content": "one more"}}),
        )
        .await;
    until(
        &c,
        "the usage view updated live",
        &format!("return document.querySelector('#usage-sessions tr[data-session={session}] td:nth-child(2)').textContent !== {before}"),
    )
    .await;

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

    let errors = console_errors(&driver, &c).await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");

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
    // While the kernel was down, requests failed (the banner's reason); nothing else may
    // have gone wrong.
    let errors: Vec<Value> = console_errors(&driver, &c)
        .await
        .into_iter()
        .filter(|e| e["source"] != "network")
        .collect();
    assert!(
        errors.is_empty(),
        "console errors around the restart: {errors:#?}"
    );

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

    // Usage counts the newest dispatches too (more than one page of them now).
    let mut ended = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut params = json!({"limit": 1000});
        if let Some(c) = &cursor {
            params["cursor"] = json!(c);
        }
        let page = kernel.admin.ok("dispatch.list", params).await;
        ended += page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d.get("endedAt").is_some())
            .count();
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert!(ended > 1000, "{ended} dispatches ended");
    goto(&c, &base, "#/usage").await;
    until(
        &c,
        "every dispatch in the chart",
        &format!("return document.querySelector('svg.chart[data-metric=tokens]').dataset.dispatches === '{ended}'"),
    )
    .await;

    // Every view rendered without an uncaught script error or a console error.
    let errors = js(&c, "return window.scriptErrors").await;
    assert_eq!(errors, json!([]), "script errors");
    let errors = console_errors(&driver, &c).await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    c.close().await.unwrap();
}
