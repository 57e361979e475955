//! The inbound edges, tried as an attacker or a careless operator would, against the
//! real binary: whatever a client, a log reader or a flood does, legitimate requests
//! are still answered promptly, nothing is left behind, and the server recovers
//! without a restart.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::json;

use crate::cli::{checkout, free_port, run, stocked_database, wait_until_serving};
use crate::helpers::*;
use crate::on_both_backends;

/// A migrated database with the demo catalog, and the environment of a `serve`
/// process on it, listening on the returned port.
pub async fn served_database(
    backend: Backend,
    sandbox: &checkout_service::sandbox::Sandbox,
) -> (TestDb, Vec<(&'static str, String)>, u16) {
    let db = stocked_database(backend).await;
    let port = free_port();
    let env = process_env(&db.url, sandbox, port);
    (db, env, port)
}

/// A whole purchase by a legitimate user: cart, item, checkout. Returns how long
/// the slowest of its requests took, and the checkout's status.
pub async fn purchase(client: &reqwest::Client, base: &str, user: &str) -> (Duration, u16) {
    let token = process_token(user);
    let mut slowest = Duration::ZERO;
    let mut timed = |started: Instant| slowest = slowest.max(started.elapsed());
    let started = Instant::now();
    let cart = json_answer(client.post(format!("{base}/api/carts")).bearer_auth(&token)).await;
    timed(started);
    let cart_id = cart["cartId"].as_str().expect("a cart").to_string();
    let started = Instant::now();
    let added = client
        .post(format!("{base}/api/carts/{cart_id}/items"))
        .bearer_auth(&token)
        .json(&json!({"sku": "SKU-MUG", "quantity": 1}))
        .send()
        .await
        .expect("an answer");
    timed(started);
    assert_eq!(added.status(), 200);
    let started = Instant::now();
    let checkout = checkout_request(client, base, &token, &cart_id, user)
        .header("Idempotency-Key", checkout_service::domain::ids::random_id("key_"))
        .send()
        .await
        .expect("an answer");
    timed(started);
    (slowest, checkout.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_nobody_reads_costs_log_records_never_answers() {
    let sandbox = start_sandbox().await;
    let (_db, env, port) = served_database(Backend::Sqlite, &sandbox).await;
    let mut command = checkout(&["serve"], &env);
    command.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut server = command.spawn().expect("spawn checkout");
    // Kept open and never read: once the pipe's buffer is full, every write to
    // stdout would wait forever.
    let _unread = server.stdout.take();
    let base = format!("http://127.0.0.1:{port}");
    let client = http_client();
    wait_until_serving(&client, &format!("{base}/health/live")).await;

    // More access records than the pipe and the log queue hold together.
    let flood = futures_util::stream::iter(0..24_000)
        .map(|_| client.get(format!("{base}/health/live")).send())
        .buffer_unordered(32)
        .filter(|answer| std::future::ready(answer.as_ref().is_ok_and(|r| r.status() == 200)))
        .count();
    let answered = tokio::time::timeout(Duration::from_secs(120), flood)
        .await
        .expect("the flood is answered");
    assert_eq!(answered, 24_000);

    let started = Instant::now();
    let live = client
        .get(format!("{base}/health/live"))
        .send()
        .await
        .expect("liveness");
    assert_eq!(live.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    let (slowest, status) = purchase(&client, &base, "usr_pipe").await;
    assert_eq!(status, 201);
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");

    let metrics = metrics_of(&base).await;
    let dropped = series(&metrics, "log_records_dropped_total{level=\"info\"}").expect("the series exists");
    assert!(dropped > 0.0, "{dropped}");
    report(
        "stdout-unread",
        &format!(
            "stdout unread: 24000 requests answered, {dropped} INFO records dropped, a purchase's slowest request {slowest:?}"
        ),
    );

    // Stopping does not wait on the pipe either.
    // SAFETY: sending a signal to a child this test spawned and still owns.
    assert_eq!(
        unsafe { libc::kill(server.id().expect("running") as i32, libc::SIGTERM) },
        0
    );
    let exited = tokio::time::timeout(Duration::from_secs(15), server.wait()).await;
    assert!(matches!(exited, Ok(Ok(status)) if status.success()), "{exited:?}");
}

/// A `checkout serve` process on a fresh database, with `extra` settings; its
/// stdout is collected.
async fn serve_with(
    extra: &[(&'static str, &str)],
) -> (crate::cli::Process, String, TestDb, checkout_service::sandbox::Sandbox) {
    let sandbox = start_sandbox().await;
    let (db, mut env, port) = served_database(Backend::Sqlite, &sandbox).await;
    env.extend(extra.iter().map(|(key, value)| (*key, value.to_string())));
    let server = crate::cli::Process::spawn(checkout(&["serve"], &env));
    let base = format!("http://127.0.0.1:{port}");
    wait_until_serving(&http_client(), &format!("{base}/health/live")).await;
    (server, base, db, sandbox)
}

/// Legitimate traffic while an attack runs: `rounds` purchases one after another,
/// each request timed. Returns (answered as expected, total, slowest).
async fn legitimate(base: &str, rounds: usize) -> (usize, usize, Duration) {
    let client = http_client();
    let (mut good, mut slowest) = (0, Duration::ZERO);
    for n in 0..rounds {
        let (slow, status) = purchase(&client, base, &format!("usr_legit_{n}")).await;
        slowest = slowest.max(slow);
        if status == 201 {
            good += 1;
        }
    }
    (good, rounds, slowest)
}

/// Opens a connection and sends a request head one line at a time, every
/// `every`, forever; returns how long the server kept the connection open
/// (bounded by `limit`).
async fn slow_head(address: &str, every: Duration, limit: Duration) -> Duration {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let started = Instant::now();
    let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else {
        return Duration::ZERO;
    };
    let _ = stream.write_all(b"GET /api/products HTTP/1.1\r\nHost: shop\r\n").await;
    let mut buffer = [0u8; 256];
    while started.elapsed() < limit {
        tokio::select! {
            read = stream.read(&mut buffer) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return started.elapsed();
                }
            }
            () = tokio::time::sleep(every) => {
                if stream.write_all(b"X-Slow: a\r\n").await.is_err() {
                    return started.elapsed();
                }
            }
        }
    }
    limit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_at_their_bound_while_buyers_are_served() {
    let (mut server, base, _db, _sandbox) = serve_with(&[("HEADER_READ_TIMEOUT_MS", "1000")]).await;
    let address = base.trim_start_matches("http://").to_string();
    let attack: Vec<_> = (0..200)
        .map(|_| {
            let address = address.clone();
            tokio::spawn(async move { slow_head(&address, Duration::from_millis(200), Duration::from_secs(10)).await })
        })
        .collect();
    let (good, total, slowest) = legitimate(&base, 30).await;
    let mut held = Vec::new();
    for attacker in attack {
        held.push(attacker.await.expect("join"));
    }
    let longest = held.iter().max().copied().unwrap_or_default();
    assert!(longest < Duration::from_secs(3), "a slow head was held for {longest:?}");
    assert_eq!(good, total, "every purchase succeeded during the attack");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    report(
        "slow-headers",
        &format!(
            "slow headers: 200 trickling heads cut off after at most {longest:?}; {good}/{total} purchases, slowest request {slowest:?}"
        ),
    );
    // New trickling heads do not hold a stop up either.
    let address_again = address.clone();
    let lingering: Vec<_> = (0..50)
        .map(|_| {
            let address = address_again.clone();
            tokio::spawn(async move { slow_head(&address, Duration::from_millis(200), Duration::from_secs(10)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    server.signal(libc::SIGTERM);
    assert_eq!(server.exit_code(Duration::from_secs(20)).await, 0);
    // SHUTDOWN_DRAIN_DELAY_MS (5 s by default) and nothing more.
    assert!(stopping.elapsed() < Duration::from_secs(7), "{:?}", stopping.elapsed());
    for attacker in lingering {
        attacker.await.expect("join");
    }
}

/// Sends a request head with one header of `padding` bytes, whole or (with
/// `finished` false) never ended, and reads until the server closes or `limit`
/// passes; returns the status answered, or 0 if none was.
async fn long_head(address: &str, padding: usize, finished: bool, limit: Duration) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else {
        return 0;
    };
    let mut head = format!(
        "GET /health/live HTTP/1.1\r\nHost: shop\r\nConnection: close\r\nX-Padding: {}",
        "a".repeat(padding)
    )
    .into_bytes();
    if finished {
        head.extend_from_slice(b"\r\n\r\n");
    }
    // A server that has refused the head may close before all of it is written.
    let _ = stream.write_all(&head).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or(0)
}

/// The most memory the process has held, and what it holds now, in bytes.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process's status");
    let kilobytes = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{field} in {status}"))
            * 1024
    };
    (kilobytes("VmHWM:"), kilobytes("VmRSS:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_its_bound_is_431_and_holds_no_more_memory_than_the_bound() {
    let bound = checkout_service::server::MAX_HEAD_BYTES;
    // Heads that never end are held for as long as this allows.
    let (server, base, _db, _sandbox) = serve_with(&[("HEADER_READ_TIMEOUT_MS", "30000")]).await;
    let address = base.trim_start_matches("http://").to_string();
    let limit = Duration::from_secs(10);
    assert_eq!(
        long_head(&address, bound / 2, true, limit).await,
        200,
        "half the bound is served"
    );
    assert_eq!(long_head(&address, bound + 4096, true, limit).await, 431);

    let (_, before) = memory_of(server.pid());
    // Each attacker sends 16 times the bound and never ends its head.
    let attackers = 400;
    let attack: Vec<_> = (0..attackers)
        .map(|_| {
            let address = address.clone();
            tokio::spawn(async move { long_head(&address, 16 * bound, false, Duration::from_secs(5)).await })
        })
        .collect();
    for attacker in attack {
        let status = attacker.await.expect("join");
        assert!(matches!(status, 431 | 0), "an endless head got {status}");
    }
    let (peak, _) = memory_of(server.pid());
    let grown = peak.saturating_sub(before);
    // Without the bound each would hold its 256 KiB, 100 MiB in all.
    assert!(
        grown < 32 * 1024 * 1024,
        "{attackers} endless heads grew the server by {} KiB",
        grown / 1024
    );
    let (slowest, status) = purchase(&http_client(), &base, "usr_after_heads").await;
    assert_eq!(status, 201, "a buyer is served after the attack ({slowest:?})");
    report(
        "long-heads",
        &format!(
            "long heads: {attackers} heads of {} KiB never ended; the server's peak memory grew by {} KiB",
            16 * bound / 1024,
            grown / 1024
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_take_their_answers_are_closed_at_the_keep_alive_bound() {
    use tokio::io::AsyncWriteExt as _;
    let (_server, base, _db, _sandbox) = serve_with(&[("KEEPALIVE_IDLE_TIMEOUT_MS", "2000")]).await;
    let address: std::net::SocketAddr = base.trim_start_matches("http://").parse().expect("an address");
    let openapi = http_client()
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .expect("the document")
        .bytes()
        .await
        .expect("its body");
    // Far more answer than the sockets' buffers hold, asked for at once and never read.
    let pipelined = b"GET /openapi.json HTTP/1.1\r\nHost: shop\r\n\r\n".repeat(200);
    let mut readers = Vec::new();
    for _ in 0..20 {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_recv_buffer_size(1024).expect("a small receive buffer");
        let mut stream = socket.connect(address).await.expect("connect");
        stream.write_all(&pipelined).await.expect("the requests");
        readers.push(stream);
    }
    assert!(openapi.len() * 200 > 1024 * 1024, "{} bytes an answer", openapi.len());
    let open = || async { series(&metrics_of(&base).await, "http_connections").unwrap_or_default() };
    assert!(open().await >= 20.0, "the readers are connected");
    // Their answers stop moving at once; 2 s later each connection is closed.
    let closed = eventually(Duration::from_secs(15), || async { open().await <= 1.0 }).await;
    assert!(closed, "{} connections still open", open().await);
    drop(readers);
    let (slowest, status) = purchase(&http_client(), &base, "usr_after_readers").await;
    assert_eq!(status, 201, "a buyer is served after them ({slowest:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_max_connections_is_closed_at_once_with_a_503() {
    use tokio::io::AsyncReadExt as _;
    let (_server, base, _db, _sandbox) =
        serve_with(&[("MAX_CONNECTIONS", "20"), ("HEADER_READ_TIMEOUT_MS", "60000")]).await;
    let address = base.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(tokio::net::TcpStream::connect(&address).await.expect("connect"));
    }
    // The server counts them once it has accepted them.
    let all_open = eventually(Duration::from_secs(5), || async {
        let mut probe = tokio::net::TcpStream::connect(&address).await.expect("connect");
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(1), probe.read_to_end(&mut answer)).await;
        matches!(read, Ok(Ok(_))) && String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 503")
    })
    .await;
    assert!(
        all_open,
        "a connection over the limit is answered 503 and closed, never left hanging"
    );
    drop(idle);
    let metrics = eventually(Duration::from_secs(5), || async {
        let text = http_client().get(format!("{base}/metrics")).send().await;
        matches!(text, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(metrics, "served again once the idle connections are gone");
    let text = metrics_of(&base).await;
    assert!(
        series(&text, "http_connections_rejected_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
}

/// Sends a request head declaring `length` body bytes, then one byte every
/// `every`; returns the status the server answered with, or 0 if it closed
/// without one (bounded by `limit`).
async fn slow_body(address: &str, token: &str, length: usize, every: Duration, limit: Duration) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else {
        return 0;
    };
    let head = format!(
        "POST /api/carts HTTP/1.1\r\nHost: shop\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return 0;
    }
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while started.elapsed() < limit {
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buffer[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            },
            () = tokio::time::sleep(every) => {
                let _ = stream.write_all(b" ").await;
            }
        }
    }
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_get_408_and_never_hold_the_slots_buyers_need() {
    let (mut server, base, _db, _sandbox) =
        serve_with(&[("MAX_IN_FLIGHT", "8"), ("BODY_READ_TIMEOUT_MS", "1000")]).await;
    let address = base.trim_start_matches("http://").to_string();
    let token = process_token("usr_slow");
    let attack: Vec<_> = (0..100)
        .map(|_| {
            let (address, token) = (address.clone(), token.clone());
            tokio::spawn(async move {
                slow_body(
                    &address,
                    &token,
                    500,
                    Duration::from_millis(100),
                    Duration::from_secs(10),
                )
                .await
            })
        })
        .collect();
    let (good, total, slowest) = legitimate(&base, 30).await;
    let mut statuses = Vec::new();
    for attacker in attack {
        statuses.push(attacker.await.expect("join"));
    }
    assert!(statuses.iter().all(|s| *s == 408), "{statuses:?}");
    assert_eq!(good, total, "every purchase succeeded during the attack");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    let metrics = metrics_of(&base).await;
    assert!(
        series(
            &metrics,
            r#"http_requests_total{method="POST",route="/api/carts",status="408"}"#
        )
        .is_some_and(|n| n >= 100.0),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"status="5"#), "no 5xx was answered");
    report(
        "slow-bodies",
        &format!(
            "slow bodies: 100 trickling uploads answered 408; {good}/{total} purchases, slowest request {slowest:?}"
        ),
    );
    server.signal(libc::SIGTERM);
    assert_eq!(server.exit_code(Duration::from_secs(20)).await, 0);
    let records: Vec<serde_json::Value> = server
        .stdout()
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert!(
        !records.iter().any(|r| r["level"] == "ERROR"),
        "a slow client is not an error of ours"
    );
    let timed_out = records.iter().filter(|r| r["error"] == "REQUEST_TIMEOUT").count();
    assert_eq!(timed_out, 100, "each is in the access log as a 408");
}

on_both_backends!(
    async fn invented_methods_share_one_label_and_the_metrics_stay_small(backend) {
        let app = spawn_app(backend).await;
        let before = metrics_of(&app.base).await;
        for n in 0..500 {
            let method = reqwest::Method::from_bytes(format!("Z{n}Q").as_bytes()).expect("a token");
            let answer = app.client.request(method, app.url("/api/products")).send().await.expect("answer");
            assert_eq!(answer.status(), 405);
        }
        let after = metrics_of(&app.base).await;
        assert!(!after.contains("Z1Q") && !after.contains("Z499Q"), "no label carries an invented method");
        assert!(
            series(&after, r#"http_requests_total{method="OTHER",route="/api/products",status="405"}"#) == Some(500.0),
            "{after}"
        );
        assert!(after.len() < before.len() + 4096, "{} bytes, then {}", before.len(), after.len());
        let records = app.events("access");
        assert!(records.iter().all(|r| !r["endpoint"].as_str().unwrap_or_default().contains("Z1Q")));
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_is_survived_reported_and_recovered_from() {
    use std::os::unix::process::CommandExt as _;
    let sandbox = start_sandbox().await;
    let (_db, mut env, port) = served_database(Backend::Sqlite, &sandbox).await;
    env.extend([
        ("HEADER_READ_TIMEOUT_MS", "4000".to_string()),
        ("RESOURCES_INTERVAL_MS", "500".to_string()),
        ("ALERT_EVAL_INTERVAL_MS", "200".to_string()),
    ]);
    let mut command = checkout(&["serve"], &env);
    // SAFETY: between fork and exec the child only calls setrlimit, which is
    // async-signal-safe, on its own limits.
    unsafe {
        command.as_std_mut().pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 256,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = crate::cli::Process::spawn(command);
    let base = format!("http://127.0.0.1:{port}");
    // One client with one kept-alive connection, made before the descriptors run out.
    checkout_service::client::install_crypto_provider();
    let buyer = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    wait_until_serving(&buyer, &format!("{base}/health/live")).await;
    assert_eq!(
        buyer
            .get(format!("{base}/api/products"))
            .send()
            .await
            .expect("warm")
            .status(),
        200
    );

    // Far more idle connections than the process may have descriptors.
    let address = format!("127.0.0.1:{port}");
    let mut flood = Vec::new();
    for _ in 0..400 {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(&address)).await
        {
            flood.push(stream);
        }
    }
    let exhausted = eventually(Duration::from_secs(5), || async {
        let health = buyer.get(format!("{base}/health")).send().await;
        matches!(health, Ok(r) if r.status() == 503)
    })
    .await;
    assert!(exhausted, "/health turns 503 with the descriptors nearly all open");
    // A request that needs a descriptor of its own (a new database connection)
    // cannot have one: it may get an honest 503, never a 500.
    let (mut good, total, mut statuses) = (0, 50, Vec::new());
    for _ in 0..total {
        let status = buyer
            .get(format!("{base}/api/products"))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16());
        good += usize::from(status == 200);
        statuses.push(status);
    }
    assert!(
        statuses.iter().all(|s| matches!(s, 200 | 503)) && good * 10 >= total * 9,
        "requests on a kept connection were answered {statuses:?}"
    );
    // On the kept connection: a new one would not be accepted now.
    let metrics = metrics_through(&buyer, &base).await;
    assert!(
        series(&metrics, "http_accept_errors_total").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );

    // The flood ends: the server recovers without a restart.
    drop(flood);
    let recovered = eventually(Duration::from_secs(15), || async {
        http_client()
            .get(format!("{base}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(recovered, "healthy again, on a new connection");
    server.signal(libc::SIGTERM);
    assert_eq!(server.exit_code(Duration::from_secs(20)).await, 0);

    let records: Vec<serde_json::Value> = server
        .stdout()
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let failures: Vec<_> = records.iter().filter(|r| r["event"] == "accept_failed").collect();
    assert!(!failures.is_empty(), "the failure is logged");
    let first = failures
        .first()
        .and_then(|r| r["timestamp"].as_str())
        .and_then(checkout_service::clock::parse_rfc3339_ms);
    let last = failures
        .last()
        .and_then(|r| r["timestamp"].as_str())
        .and_then(checkout_service::clock::parse_rfc3339_ms);
    if let (Some(first), Some(last)) = (first, last) {
        let seconds = (last - first) / 1000 + 1;
        assert!(
            failures.len() as i64 <= seconds + 1,
            "{} records in {seconds} s",
            failures.len()
        );
    }
    let resources = records
        .iter()
        .filter(|r| r["event"] == "resources")
        .filter_map(|r| r["fds"]["open"].as_u64())
        .max()
        .expect("resources records carry the descriptors as numbers");
    assert!(resources >= 240, "{resources}");
    let paged: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "alert" && r["alertName"] == "FileDescriptorsExhausted" && r["severity"] == "page")
        .map(|r| r["state"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        paged,
        ["firing", "resolved"],
        "the page fires while they run out and resolves after"
    );
}

#[tokio::test]
async fn a_misspelt_variable_stops_the_start_and_names_the_right_one() {
    let port = free_port();
    let (code, _, stderr) = run(
        &["check"],
        &[("PORT", port.to_string()), ("PAYMNET_TIMEOUT_MS", "2000".into())],
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        stderr.lines().any(|line| line
            == "STARTUP_FAILURE: Environment variable 'PAYMNET_TIMEOUT_MS' is not one this service reads; \
                did you mean 'PAYMENT_TIMEOUT_MS'? (checkout serve --help lists them all)"),
        "{stderr}"
    );
    let (code, help, _) = run(&["serve", "--help"], &[]).await;
    assert_eq!(code, 0);
    for variable in checkout_service::config::VARIABLES {
        let line = help
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{} ", variable.name)))
            .unwrap_or_else(|| panic!("serve --help lists {}: {help}", variable.name));
        assert!(line.contains(&format!("[default: {}]", variable.default)), "{line}");
    }
}

on_both_backends!(
    async fn every_401_says_how_to_authenticate_and_forged_lifetimes_are_refused(backend) {
        let app = spawn_app(backend).await;
        let missing = app.client.post(app.url("/api/carts")).send().await.expect("answer");
        assert_eq!(missing.status(), 401);
        assert_eq!(missing.headers()["www-authenticate"], r#"Bearer realm="checkout-service""#);
        let now = checkout_service::clock::Clock::system().now_secs();
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
            )
            .expect("sign")
        };
        for (claims, why) in [
            (json!({"sub": "usr_1", "exp": now + 600, "nbf": now + 600}), "nbf in the future"),
            (json!({"sub": "usr_1", "exp": 253_402_300_799_u64}), "exp in the year 9999"),
            (json!({"sub": "usr_1", "exp": now - 1}), "expired"),
        ] {
            let answer = app
                .client
                .post(app.url("/api/carts"))
                .bearer_auth(sign(claims))
                .send()
                .await
                .expect("answer");
            assert_eq!(answer.status(), 401, "{why}");
            assert_eq!(
                answer.headers()["www-authenticate"],
                r#"Bearer realm="checkout-service", error="invalid_token""#,
                "{why}"
            );
        }
        let from_idp = sign(json!({"sub": "usr_1", "exp": now + 600, "aud": "shop", "iss": "https://idp.example"}));
        let answer = app.client.post(app.url("/api/carts")).bearer_auth(from_idp).send().await.expect("answer");
        assert_eq!(answer.status(), 201, "an identity provider's aud and iss are accepted when not configured");
    }
);
