//! TLS: the controller serves HTTPS with a given certificate and key; an agent given the CA
//! verifies it and delivers; a client that does not trust the CA is refused.

use std::time::Duration;

use crate::harness::{Backend, Env, InProcess, Process, enroll, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_delivers_over_https_to_a_controller_it_verifies() {
    let env = Env::new(Backend::Embedded).await;
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert_path = env.dir.path().join("cert.pem");
    let key_path = env.dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let key = enroll(&env, "tls1");

    let mut config = env.controller_config();
    config.tls_cert = Some(cert_path.clone());
    config.tls_key = Some(key_path);
    let ctl = InProcess::start(config).await;
    assert!(ctl.url.starts_with("https://"), "{}", ctl.url);

    // A client without the CA is refused at the TLS handshake.
    assert!(reqwest::get(format!("{}/healthz", ctl.url)).await.is_err());

    let agent_dir = env.dir.path().join("agent");
    let mut agent = Process::spawn(
        &[
            "agent",
            "--controller",
            &ctl.url,
            "--node",
            "tls1",
            "--key",
            &key,
            "--interval",
            "200ms",
            "--ca-cert",
            &cert_path.display().to_string(),
            "--data-dir",
            &agent_dir.display().to_string(),
        ]
        .map(String::from),
        &env.dir.path().join("agent.log"),
    );
    let store = ctl.store.clone();
    eventually(Duration::from_secs(15), "batches over HTTPS", || async {
        (store.ledger("tls1").await.unwrap().len() >= 2).then_some(())
    })
    .await;
    assert!(agent.terminate(), "{}", agent.log_text());
    ctl.stop().await;
}
