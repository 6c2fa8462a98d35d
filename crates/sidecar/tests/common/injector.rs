//! `sidecar injector` for tests: a test PKI (rcgen), the webhook started on
//! ports the system picks (read from its log), an HTTPS client that trusts
//! the test CA (rustls) and can keep its connection, a fake Kubernetes API
//! (HTTPS, bearer token checked) serving Namespaces, and Python's
//! `jsonpatch` to apply the webhook's patches independently.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};

use super::{Proc, http_get, peers, wait_until};

/// A CA that signs server certificates.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for localhost and 127.0.0.1: (cert PEM, key PEM, cert DER).
    pub fn leaf(&self) -> (String, String, Vec<u8>) {
        self.leaf_until(None)
    }

    /// The same, valid until `not_after` (rcgen's default when `None`).
    pub fn leaf_until(&self, not_after: Option<time::OffsetDateTime>) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        if let Some(end) = not_after {
            params.not_before = end - time::Duration::days(30);
            params.not_after = end;
        }
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

/// Certificate files laid out as Kubernetes mounts a Secret: `tls.crt` and
/// `tls.key` are symlinks through `..data`, itself a symlink to a
/// timestamped directory that an update replaces in one rename.
pub struct SecretDir {
    pub dir: tempfile::TempDir,
    version: usize,
}

impl SecretDir {
    pub fn new(cert: &str, key: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sidecar-injector-tls-")
            .tempdir()
            .unwrap();
        let mut s = Self { dir, version: 0 };
        s.update(cert, key);
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), s.dir.path().join(f)).unwrap();
        }
        s
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    /// Writes a new version and swaps `..data` to it atomically.
    pub fn update(&mut self, cert: &str, key: &str) {
        self.version += 1;
        let d = self.dir.path();
        let v = format!("..v{}", self.version);
        std::fs::create_dir(d.join(&v)).unwrap();
        std::fs::write(d.join(&v).join("tls.crt"), cert).unwrap();
        std::fs::write(d.join(&v).join("tls.key"), key).unwrap();
        let tmp = d.join("..data_tmp");
        std::os::unix::fs::symlink(&v, &tmp).unwrap();
        std::fs::rename(&tmp, d.join("..data")).unwrap();
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client trusting `ca_pem`, offering `alpn`.
pub fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// One HTTPS connection (HTTP/1.1, kept alive between requests).
pub struct Conn {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, name: &str) -> Self {
        Self::try_open(addr, config, name).unwrap()
    }

    pub fn try_open(
        addr: SocketAddr,
        config: &Arc<rustls::ClientConfig>,
        name: &str,
    ) -> std::io::Result<Self> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let server = ServerName::try_from(name.to_string()).unwrap();
        let conn = rustls::ClientConnection::new(Arc::clone(config), server).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(std::io::Error::other)?;
        }
        Ok(Self { tls })
    }

    /// The DER of the certificate the server presented.
    pub fn peer_cert(&self) -> Vec<u8> {
        self.tls.conn.peer_certificates().unwrap()[0].to_vec()
    }

    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.tls.conn.alpn_protocol().map(<[u8]>::to_vec)
    }

    /// Sends a request and reads one response: (status, headers, body).
    pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.tls.write_all(head.as_bytes()).unwrap();
        self.tls.write_all(body).unwrap();
        self.tls.flush().unwrap();
        let mut reader = BufReader::new(&mut self.tls);
        let mut headers = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                panic!("connection closed before the response ended: {headers}");
            }
            if line == "\r\n" {
                break;
            }
            headers.push_str(&line);
        }
        let status = headers.split_whitespace().nth(1).unwrap().parse().unwrap();
        let len: usize = headers
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .expect("a Content-Length");
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        (status, headers, body)
    }
}

/// A running webhook.
pub struct Injector {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub client: Arc<rustls::ClientConfig>,
}

impl Injector {
    /// Starts with the pair in `tls` (trusted through `ca_pem`) and `extra` flags.
    pub fn start(tls: &SecretDir, ca_pem: &str, extra: &[&str]) -> Self {
        Self::start_env(tls, ca_pem, extra, &[])
    }

    /// Starts with a certificate of `ca`, reading Namespaces from `api`;
    /// the certificate's files live as long as the returned [`SecretDir`].
    pub fn start_with_api(ca: &Ca, api: &FakeApi) -> (Self, SecretDir) {
        let (cert, key, _) = ca.leaf();
        let tls = SecretDir::new(&cert, &key);
        let flags = api.flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        (Self::start(&tls, &ca.pem, &flags), tls)
    }

    /// Starts with `env` set (KUBERNETES_SERVICE_* are removed unless given).
    pub fn start_env(tls: &SecretDir, ca_pem: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let (cert, key) = (tls.cert(), tls.key());
        let mut args = vec![
            "injector",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--image",
            "sidecar:test",
        ];
        args.extend_from_slice(extra);
        let mut cmd = Command::new(super::BIN);
        cmd.args(&args)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .envs(env.iter().copied());
        let proc = Proc::start_with(&mut cmd);
        let admin = proc.admin_addr();
        let addr = proc.logged_addr("webhook on https://");
        wait_until("injector ready", Duration::from_secs(10), || {
            http_get(admin, "/ready").0 == 200
        });
        Self {
            proc,
            addr,
            admin,
            client: client_config(ca_pem, &[b"http/1.1"]),
        }
    }

    pub fn conn(&self) -> Conn {
        Conn::open(self.addr, &self.client, "localhost")
    }

    /// POSTs `body` to /mutate on a new connection; the AdmissionReview answered.
    pub fn post(&self, body: &[u8]) -> Value {
        let (status, headers, body) = self.conn().request("POST", "/mutate", body);
        assert_eq!(status, 200, "{headers}{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// Reviews `object` (CREATE in `namespace`); returns the response part.
    pub fn review(&self, object: &Value, namespace: &str, dry_run: bool) -> Value {
        let answer = self.post(review(object, namespace, dry_run).to_string().as_bytes());
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
        assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
        let r = answer["response"].clone();
        assert_eq!(r["uid"], uid_of(object), "{answer}");
        assert_eq!(r["allowed"], true, "{answer}");
        r
    }

    /// The value of a metric line starting with `name` (labels included), or 0.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, _, text) = http_get(self.admin, "/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn outcome(&self, outcome: &str) -> f64 {
        self.metric(&format!(
            "sidecar_injector_reviews_total{{outcome=\"{outcome}\"}}"
        ))
    }
}

/// A uid derived from the object, so each review's echo can be checked.
pub fn uid_of(object: &Value) -> String {
    format!("uid-{:x}", object.to_string().len())
}

/// An AdmissionReview v1 request for CREATE of `object`.
pub fn review(object: &Value, namespace: &str, dry_run: bool) -> Value {
    let kind = object["kind"].as_str().unwrap_or("Pod");
    let (group, version) = match kind {
        "Pod" => ("", "v1"),
        "Job" | "CronJob" => ("batch", "v1"),
        _ => ("apps", "v1"),
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid_of(object),
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": format!("{}s", kind.to_lowercase())},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "test"},
            "object": object,
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// The JSONPatch of a response, decoded (None when there is no patch).
pub fn patch_of(response: &Value) -> Option<Value> {
    let p = response.get("patch")?.as_str()?;
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    Some(serde_json::from_slice(&B64.decode(p).unwrap()).unwrap())
}

pub fn warnings_of(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .map(|w| w.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Applies each (object, patch) with Python's `jsonpatch`.
pub fn apply_patches(cases: &[(Value, Value)]) -> Vec<Value> {
    let input: Vec<Value> = cases
        .iter()
        .map(|(o, p)| json!({"object": o, "patch": p}))
        .collect();
    let out = super::run_with_input(
        Command::new(peers::python()).arg(peers::script("apply_patch.py")),
        Value::from(input).to_string().as_bytes(),
        "python (SIDECAR_TEST_PYTHON) with jsonpatch; run ./scripts/test once",
    );
    assert!(
        out.status.success(),
        "apply_patch.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    for r in &results {
        assert!(r.get("error").is_none(), "jsonpatch refused a patch: {r}");
    }
    results
}

/// `sidecar inject --image sidecar:test` on `object` alone, parsed back.
pub fn inject_cli(object: &Value) -> Value {
    try_inject_cli(object).unwrap_or_else(|e| panic!("sidecar inject: {e}"))
}

/// `sidecar inject` on `object` alone: the object parsed back, or its stderr.
pub fn try_inject_cli(object: &Value) -> Result<Value, String> {
    let out = super::run_with_input(
        Command::new(super::BIN).args(["inject", "--image", "sidecar:test"]),
        object.to_string().as_bytes(),
        "cannot start it",
    );
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_norway::from_slice(&out.stdout).unwrap())
}

/// A fake Kubernetes API: `GET /api/v1/namespaces/NAME` over HTTPS, with
/// the bearer token checked; other namespaces are 404.
pub struct FakeApi {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub namespaces: Arc<Mutex<HashMap<String, Value>>>,
    /// The service account directory (token, ca.crt) for the injector.
    pub sa_dir: tempfile::TempDir,
    /// The token the API accepts.
    pub token: Arc<Mutex<String>>,
    /// How long the API waits before it answers.
    pub delay: Arc<Mutex<Duration>>,
}

impl FakeApi {
    pub fn start(ca: &Ca, token: &str) -> Self {
        let (cert, key, _) = ca.leaf();
        let sa_dir = tempfile::tempdir().unwrap();
        std::fs::write(sa_dir.path().join("token"), format!("{token}\n")).unwrap();
        std::fs::write(sa_dir.path().join("ca.crt"), &ca.pem).unwrap();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let namespaces = Arc::new(Mutex::new(HashMap::new()));
        let token = Arc::new(Mutex::new(token.to_string()));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let (count, nss, accepted, wait) = (
            Arc::clone(&requests),
            Arc::clone(&namespaces),
            Arc::clone(&token),
            Arc::clone(&delay),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let (config, count, nss, accepted) = (
                    Arc::clone(&config),
                    Arc::clone(&count),
                    Arc::clone(&nss),
                    Arc::clone(&accepted),
                );
                let wait = *wait.lock().unwrap();
                std::thread::spawn(move || {
                    let _ = serve_one(stream, config, &count, &nss, &accepted, wait);
                });
            }
        });
        Self {
            addr,
            requests,
            namespaces,
            sa_dir,
            token,
            delay,
        }
    }

    pub fn set(&self, name: &str, annotations: Value) {
        self.namespaces.lock().unwrap().insert(
            name.to_string(),
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": name, "annotations": annotations}}),
        );
    }

    /// Lookups of `name` get a 503.
    pub fn fail(&self, name: &str) {
        self.namespaces
            .lock()
            .unwrap()
            .insert(name.to_string(), json!("503"));
    }

    /// The injector's flags for this API.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--kube-api".into(),
            format!("https://127.0.0.1:{}", self.addr.port()),
            "--service-account-dir".into(),
            self.sa_dir.path().display().to_string(),
        ]
    }
}

fn serve_one(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    count: &AtomicUsize,
    nss: &Mutex<HashMap<String, Value>>,
    accepted: &Mutex<String>,
    delay: Duration,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut reader = BufReader::new(&mut tls);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_string());
    }
    count.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(delay);
    let path = head
        .first()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("")
        .to_string();
    let token = accepted.lock().unwrap().clone();
    let authorized = head
        .iter()
        .any(|h| h.eq_ignore_ascii_case(&format!("authorization: Bearer {token}")));
    let (status, body) = if !authorized {
        (401, json!({"kind": "Status", "message": "Unauthorized"}))
    } else {
        match path
            .strip_prefix("/api/v1/namespaces/")
            .and_then(|n| nss.lock().unwrap().get(n).cloned())
        {
            Some(Value::String(_)) => (503, json!({"kind": "Status", "message": "unavailable"})),
            Some(ns) => (200, ns),
            None => (404, json!({"kind": "Status", "message": "not found"})),
        }
    };
    let body = body.to_string();
    let resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    drop(reader);
    tls.write_all(resp.as_bytes())?;
    tls.flush()?;
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(())
}
