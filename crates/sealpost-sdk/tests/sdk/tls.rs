//! TLS: with a certificate configured the server speaks HTTPS only; a certificate it cannot
//! use stops it at start with an error that names the file. The certificates and keys in
//! tests/data are for these tests only (self-signed for localhost, no secret; the second pair
//! plays a renewed certificate). Reloading on SIGHUP is tested through the command
//! (`cli::sighup_reloads_the_tls_certificate_and_a_bad_one_changes_nothing`).

use std::path::PathBuf;

use crate::common::TestServer;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

#[tokio::test]
async fn with_a_certificate_the_server_speaks_https_only() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = TestServer::start_with(|s| {
        s.tls_certificate = data("tls-cert.pem");
        s.tls_key = data("tls-key.pem");
    })
    .await;
    let port = server.addr.port();
    let root =
        reqwest::Certificate::from_pem(&std::fs::read(data("tls-cert.pem")).unwrap()).unwrap();
    let https = reqwest::Client::builder()
        .tls_certs_only([root])
        .build()
        .unwrap();
    let answer = https
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "ok");
    // Plain HTTP gets no answer: nothing travels in the clear.
    let plain = reqwest::Client::new()
        .get(format!("http://localhost:{port}/healthz"))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    // A client that does not trust the certificate does not get through either.
    let untrusting = reqwest::Client::builder()
        .tls_certs_only([])
        .build()
        .unwrap()
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await;
    assert!(untrusting.is_err(), "{untrusting:?}");
}

#[tokio::test]
async fn a_certificate_the_server_cannot_use_stops_it_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let open = |certificate: PathBuf, key: PathBuf| {
        sealpost_server::Server::open(sealpost_server::Settings {
            data: dir.path().join("server"),
            tls_certificate: certificate,
            tls_key: key,
            ..Default::default()
        })
    };
    let missing = dir.path().join("missing.pem");
    let err = open(missing.clone(), data("tls-key.pem"))
        .await
        .err()
        .expect("a missing certificate is refused");
    assert!(err.to_string().contains("missing.pem"), "{err}");
    // The key where the certificate should be, and the other way round.
    let err = open(data("tls-key.pem"), data("tls-key.pem"))
        .await
        .err()
        .expect("a key is not a certificate");
    assert!(err.to_string().contains("certificate"), "{err}");
    // Another certificate's key.
    let err = open(data("tls-cert.pem"), data("tls-key-2.pem"))
        .await
        .err()
        .expect("a key that is not the certificate's is refused");
    assert!(
        err.to_string()
            .contains("is not the key of the certificate"),
        "{err}"
    );
    let err = open(data("tls-cert.pem"), PathBuf::new())
        .await
        .err()
        .expect("a certificate without its key is refused");
    assert!(err.to_string().contains("tls_key"), "{err}");
    assert!(
        !dir.path().join("server").exists(),
        "nothing was created for a server that did not start"
    );
}
