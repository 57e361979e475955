//! The payment gateway behind HTTPS, with the real binary: a certificate the platform
//! trusts carries checkouts; one it does not is a connection never made, so the
//! checkout is undone without a charge and the operator is told why.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

use crate::cli::{Process, checkout, free_port, stocked_database, wait_until_serving};
use crate::helpers::*;

/// A certificate authority, and a certificate it signed for `localhost`.
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn other_ca(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (Debian package openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Two unrelated CAs; the first signs a certificate for `localhost` and 127.0.0.1.
fn make_certificates() -> Certificates {
    let dir = std::env::temp_dir().join(format!("checkout-tls-{}", checkout_service::domain::ids::random_id("")));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    for (name, subject) in [("ca", "/CN=checkout test CA"), ("other-ca", "/CN=another CA")] {
        let (key, cert) = (format!("{name}.key"), format!("{name}.pem"));
        let mut args = vec![
            "req", "-x509", "-days", "2", "-subj", subject, "-keyout", &key, "-out", &cert,
        ];
        args.extend(ec);
        args.extend([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        openssl(&dir, &args);
    }
    let mut args = vec![
        "req",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ];
    args.extend(ec);
    openssl(&dir, &args);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("extensions");
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    Certificates { dir }
}

/// Terminates TLS with the `localhost` certificate and passes the bytes to `target`.
struct TlsFront {
    port: u16,
    /// Handshakes completed.
    handshakes: Arc<AtomicUsize>,
    /// Handshakes the client broke off.
    refused: Arc<AtomicUsize>,
}

async fn tls_front(certificates: &Certificates, target: SocketAddr) -> TlsFront {
    let chain = CertificateDer::pem_file_iter(certificates.dir.join("server.pem"))
        .expect("certificate file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(certificates.dir.join("server.key")).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (handshakes, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (done, broken) = (handshakes.clone(), refused.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, done, broken) = (acceptor.clone(), done.clone(), broken.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    broken.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                done.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut upstream) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                }
            });
        }
    });
    TlsFront {
        port,
        handshakes,
        refused,
    }
}

/// A cart of one mug for `usr_1`, checked out; the status and body of the answer.
async fn check_out_a_mug(client: &reqwest::Client, base: &str, token: &str) -> (String, u16, Value) {
    let cart_id = cart_with_a_mug(client, base, token).await;
    let answer = checkout_request(client, base, token, &cart_id, "usr_1")
        .send()
        .await
        .expect("checkout answers");
    let (status, body) = status_and_body(answer).await;
    (cart_id, status, body)
}

#[tokio::test]
async fn checkouts_reach_an_https_gateway_whose_certificate_is_trusted_and_nothing_is_charged_when_it_is_not() {
    let certificates = make_certificates();
    let sandbox = start_sandbox().await;
    let front = tls_front(&certificates, sandbox.payment_addr).await;
    let db = stocked_database(Backend::Sqlite).await;
    let auth = checkout_service::auth::Auth::new(&secrecy::SecretString::from(JWT_SECRET.to_string()));
    let token = auth
        .issue(
            &checkout_service::domain::UserId::parse("usr_1").expect("user"),
            Duration::from_secs(600),
        )
        .expect("token");
    let client = http_client();
    let gateway = format!("https://localhost:{}", front.port);
    let serve = |trusted: &Path| {
        let port = free_port();
        let mut env = process_env(&db.url, &sandbox, port);
        env.retain(|(key, _)| *key != "PAYMENT_GATEWAY_URL");
        env.push(("PAYMENT_GATEWAY_URL", gateway.clone()));
        env.push(("SSL_CERT_FILE", trusted.display().to_string()));
        (
            Process::spawn(checkout(&["serve"], &env)),
            format!("http://127.0.0.1:{port}"),
        )
    };

    // The platform's roots include the CA that signed the gateway's certificate.
    let (server, base) = serve(&certificates.ca());
    wait_until_serving(&client, &format!("{base}/health/ready")).await;
    let (_, status, body) = check_out_a_mug(&client, &base, &token).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "CONFIRMED");
    assert!(front.handshakes.load(Ordering::SeqCst) >= 1, "the charge went over TLS");
    drop(server);

    // They do not: the handshake fails, so the charge was never sent.
    let (server, base) = serve(&certificates.other_ca());
    wait_until_serving(&client, &format!("{base}/health/ready")).await;
    let (cart, status, body) = check_out_a_mug(&client, &base, &token).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["dependency"], "paymentGateway");
    assert!(
        front.refused.load(Ordering::SeqCst) >= 1,
        "the client broke the handshake off"
    );
    let ledger = json_answer(client.get(format!("{}/_control/ledger", sandbox.payment_url()))).await;
    let charges = ledger["charges"].as_array().expect("charges").len();
    assert_eq!(charges, 1, "only the first checkout charged");
    let reopened = json_answer(client.get(format!("{base}/api/carts/{cart}")).bearer_auth(&token)).await;
    assert_eq!(reopened["status"], "OPEN", "a charge never sent is undone at once");
    let logged = eventually(Duration::from_secs(5), || async {
        server.stdout().iter().any(|line| {
            let record: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            record["level"] == "ERROR"
                && record["errorId"] == body["errorId"]
                && record["errorClass"] == "UpstreamConnectFailed"
                && record["errorChain"].to_string().contains("certificate")
        })
    })
    .await;
    assert!(logged, "the ERROR record names the certificate: {:#?}", server.stdout());
}
