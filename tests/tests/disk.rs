//! The database's disk fills up under a running kernel (a small tmpfs): writes fail with
//! a clear `storage.unavailable` error, reads go on, nothing acknowledged is lost or
//! corrupted, and writing resumes by itself once there is space again.
//!
//! Mounting a tmpfs needs root. CI runs as root and sets `AOS_REQUIRE_MOUNT=1`, so there
//! the test runs or fails; elsewhere, without root, it says loudly that it skipped.

// Test code: an unwrap that fails is a test failure, reported with its location.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aos_sdk::protocol::ErrorCode;
use aos_tests::{Api, SpawnedKernel, aos_command_at, eventually, postgres_backend, workdir};
use serde_json::{Value, json};

/// A tmpfs of `size` mounted on a new directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = aos_command_at(Path::new("mount"))
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs failed: {status}");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = aos_command_at(Path::new("umount"))
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Whether this test can mount; without it, a loud skip unless CI requires it.
fn can_mount(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert_ne!(
        std::env::var("AOS_REQUIRE_MOUNT").as_deref(),
        Ok("1"),
        "{test} needs root to mount a tmpfs, and AOS_REQUIRE_MOUNT=1 says it must run"
    );
    eprintln!("\n*** SKIPPED {test}: mounting a tmpfs needs root (CI runs it as root). ***\n");
    false
}

/// Writes into `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut written = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    let _ = file.flush();
    written
}

fn append_params(session: &str, i: usize) -> Value {
    // Large enough that a few of them need new pages of the database.
    json!({"sessionId": session, "message": {"role": "user", "parts": [
        {"type": "text", "text": format!("message {i}: {}", "x".repeat(8 * 1024))}
    ]}})
}

async fn seqs(api: &Api, session: &str) -> Vec<u64> {
    let page = api
        .ok(
            "session.history.list",
            json!({"sessionId": session, "limit": 1000}),
        )
        .await;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_full_database_disk_fails_writes_clearly_keeps_reads_and_recovers_when_space_returns() {
    let test =
        "a_full_database_disk_fails_writes_clearly_keeps_reads_and_recovers_when_space_returns";
    if postgres_backend() {
        eprintln!("{test}: the SQLite store's disk; the SQLite pass of the suite runs it");
        return;
    }
    if !can_mount(test) {
        return;
    }
    let dir = workdir();
    // Only the database is on the small disk; services keep their own data elsewhere.
    let disk = Tmpfs::mount("16m");
    let db: PathBuf = disk.path().join("aos.db");
    let url = format!("sqlite:{}", db.display());
    let mut kernel =
        SpawnedKernel::start_with_env(dir.path(), &[], &[("AOS_DATABASE_URL", url.as_str())]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let filler = disk.path().join("filler");
    let (session, stored) = rt.block_on(async {
        let api = kernel.admin.clone();
        let (_, session) = api.agent_and_session().await;
        eventually(Duration::from_secs(30), "the session is ready", || async {
            let s = api.ok("session.get", json!({"sessionId": session})).await;
            (s["status"] == "ready").then_some(())
        })
        .await;
        let mut acknowledged: Vec<u64> = Vec::new();
        for i in 0..5 {
            let appended = api.ok("session.append", append_params(&session, i)).await;
            acknowledged.push(appended["seq"].as_u64().unwrap());
        }
        assert!(fill(&filler) > 0, "the tmpfs had no room to fill");
        // Writes fail, clearly. SQLite may still fit a few rows in pages it holds.
        let mut refused = None;
        for i in 5..200 {
            let reply = api.call("session.append", append_params(&session, i)).await;
            if reply.ok {
                acknowledged.push(reply.data.unwrap()["seq"].as_u64().unwrap());
                continue;
            }
            refused = Some(reply.error.unwrap());
            break;
        }
        let refused = refused.expect("appends kept succeeding on a full disk");
        assert_eq!(refused.code, ErrorCode::StorageUnavailable, "{refused:?}");
        assert!(
            refused.message.contains("full") && refused.message.contains("cannot be written"),
            "the error should say the disk is full: {}",
            refused.message
        );
        // Reads go on, and the kernel still answers everything else.
        let stored = seqs(&api, &session).await;
        assert_eq!(
            stored[stored.len() - acknowledged.len()..],
            acknowledged[..],
            "an acknowledged append is missing, or a refused one was stored"
        );
        api.ok("session.get", json!({"sessionId": session})).await;
        api.ok("agent.list", json!({})).await;
        // Space returns: writing resumes without a restart.
        std::fs::remove_file(&filler).unwrap();
        let appended = eventually(Duration::from_secs(10), "appends work again", || {
            let api = api.clone();
            let session = session.clone();
            async move {
                let reply = api
                    .call("session.append", append_params(&session, 999))
                    .await;
                reply
                    .ok
                    .then(|| reply.data.unwrap()["seq"].as_u64().unwrap())
            }
        })
        .await;
        acknowledged.push(appended);
        // No gaps, nothing acknowledged lost, nothing refused half-written.
        let stored = seqs(&api, &session).await;
        assert_eq!(
            stored,
            (1..=stored.len() as u64).collect::<Vec<_>>(),
            "history has a gap"
        );
        assert_eq!(
            stored[stored.len() - acknowledged.len()..],
            acknowledged[..]
        );
        (session, stored.len() as i64)
    });
    kernel.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        kernel.wait_exit(Duration::from_secs(30)).is_some(),
        "the kernel did not stop"
    );
    // The file is sound after all that.
    rt.block_on(async {
        use sqlx::Connection;
        let mut connection = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let check: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&mut connection)
            .await
            .unwrap();
        assert_eq!(check, "ok");
        let (rows, last): (i64, i64) =
            sqlx::query_as("SELECT count(*), max(seq) FROM history WHERE session_id = ?1")
                .bind(&session)
                .fetch_one(&mut connection)
                .await
                .unwrap();
        assert_eq!(
            (rows, last),
            (stored, stored),
            "the session's rows in the file"
        );
    });
}
