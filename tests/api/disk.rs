//! The database's file system fills up: writes answer 503 `database` with
//! `DbDiskFull` (never 500), `/health` turns unhealthy naming the file system, the
//! disk metric and alert see it, and once space is made the service carries on
//! without a restart. A small tmpfs of the test's own holds the SQLite database.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

/// A 3 MiB tmpfs, unmounted when dropped.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts it, or `None` (saying why) when this process may not mount.
    fn mount() -> Option<SmallDisk> {
        let dir = std::env::temp_dir().join(checkout_service::domain::ids::random_id("checkout-disk-"));
        std::fs::create_dir_all(&dir).expect("mount point");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
            .arg(&dir)
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(SmallDisk { dir }),
            Ok(out) => {
                let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI mounts a tmpfs for the full-disk test: {why}"
                );
                eprintln!("cannot mount a tmpfs ({why}): the full-disk test is SKIPPED");
                let _ = std::fs::remove_dir(&dir);
                None
            }
            Err(error) => panic!("mount: {error}"),
        }
    }

    /// Fills what is left of it.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.write_all(&chunk[..512]);
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn new_cart(app: &TestApp) -> (u16, Value) {
    status_and_body(app.post("/api/carts", "usr_disk", json!({})).await).await
}

fn reasons(health: &Value) -> String {
    health["reasons"].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_database_disk_answers_503_is_reported_and_recovers_without_a_restart() {
    let Some(disk) = SmallDisk::mount() else { return };
    let database = disk.dir.join("checkout.db");
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.set("DATABASE_URL", format!("sqlite://{}", database.display()));
        s.set("ALERT_EVAL_INTERVAL_MS", "100");
    })
    .await;
    assert_eq!(new_cart(&app).await.0, 201);
    let filler = disk.fill();

    // Writes go on until SQLite needs a page the disk does not have.
    let mut answers = Vec::new();
    for _ in 0..300 {
        let (status, body) = new_cart(&app).await;
        answers.push(status);
        if status != 201 {
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["dependency"], "database", "{body}");
            let error = app
                .records_at("ERROR")
                .into_iter()
                .find(|r| r["errorId"] == body["errorId"])
                .expect("its ERROR record");
            assert_eq!(error["errorClass"], "DbDiskFull", "{error}");
            assert!(
                error["errorChain"].to_string().contains("database or disk is full"),
                "SQLite's own words: {error}"
            );
            break;
        }
    }
    assert_eq!(answers.last(), Some(&503), "the full disk was hit: {answers:?}");
    assert!(!answers.contains(&500));

    // Readiness is probed every second.
    let unhealthy = eventually(Duration::from_secs(5), || async {
        app.operator_json("/health").await["status"] == "unhealthy"
    })
    .await;
    let health = app.operator_json("/health").await;
    assert!(unhealthy, "{health}");
    let mount = disk.dir.display().to_string();
    assert!(
        reasons(&health).contains(&format!("The filesystem holding {mount} is")),
        "{health}"
    );
    let metrics = metrics_of(&app.base).await;
    let ratio = series(&metrics, &format!("disk_usage_ratio{{path=\"{mount}\"}}"));
    assert!(ratio.is_some_and(|r| r > 0.98), "{ratio:?}");
    let paged = eventually(Duration::from_secs(5), || async {
        app.events("alert")
            .iter()
            .any(|r| r["alertName"] == "DiskFilling" && r["severity"] == "page" && r["state"] == "firing")
    })
    .await;
    assert!(paged, "DiskFilling pages");

    // Space is made: the same process writes again.
    std::fs::remove_file(&filler).expect("remove the filler");
    let recovered = eventually(Duration::from_secs(5), || async { new_cart(&app).await.0 == 201 }).await;
    assert!(recovered, "writes succeed again");
    let healthy = eventually(Duration::from_secs(5), || async {
        app.operator_json("/health").await["status"] == "healthy"
    })
    .await;
    assert!(healthy, "healthy again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_on_a_read_only_filesystem_is_refused_in_sqlites_words() {
    let Some(disk) = SmallDisk::mount() else { return };
    let url = format!("sqlite://{}", disk.dir.join("checkout.db").display());
    let (code, _, stderr) = crate::cli::run(&["migrate"], &[("DATABASE_URL", url.clone())]).await;
    assert_eq!(code, 0, "{stderr}");
    let remounted = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&disk.dir)
        .status()
        .expect("mount runs");
    assert!(remounted.success(), "remount read-only");
    let sandbox = start_sandbox().await;
    let env = process_env(&url, &sandbox, crate::cli::free_port());
    let (code, _, stderr) = crate::cli::run(&["check"], &env).await;
    assert_eq!(code, 1);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("STARTUP_FAILURE: ")).collect();
    assert_eq!(
        lines,
        [format!(
            "STARTUP_FAILURE: Cannot use the database at {url}: unable to open database file (SQLite code 14); \
             {} cannot be written to: Read-only file system (os error 30).",
            disk.dir.display()
        )],
        "{stderr}"
    );
}
