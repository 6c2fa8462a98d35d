//! PostgreSQL with `ssl = on` for the exporter's TLS tests: certificates
//! made by the test (rcgen), a pg_hba.conf that refuses plain connections
//! to every role but the superuser, and client-certificate login.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::pg::{self, PgServer};

/// A monitoring role that logs in with a password, over TLS only.
pub const MONITOR: &str = "tls_monitor";
pub const MONITOR_PASSWORD: &str = "tls-monitor-pw";
/// A role that logs in with a client certificate (`hostssl ... cert`).
pub const CERT_USER: &str = "certuser";

/// The files of a test PKI, in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    /// The CA that signed the server's and the client's certificates.
    pub ca: PathBuf,
    /// A CA that signed nothing the server has.
    pub other_ca: PathBuf,
    /// The server's certificate (localhost, 127.0.0.1) and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate for CERT_USER, its key as PKCS#8 and as SEC1.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub client_key_sec1: PathBuf,
    /// A client certificate for CERT_USER signed by the other CA.
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
    /// pg_hba.conf for the server.
    pub hba: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    (cert, Issuer::new(params, key))
}

fn leaf(
    names: &[&str],
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    (params.signed_by(&key, issuer).unwrap(), key)
}

/// The SEC1 ("EC PRIVATE KEY") form of a PKCS#8 EC key: the OCTET STRING
/// inside `SEQUENCE { version, algorithm, OCTET STRING }`.
fn sec1_pem(pkcs8: &[u8]) -> String {
    fn element(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = input[0];
        let (len, header) = if input[1] < 0x80 {
            (usize::from(input[1]), 2)
        } else {
            let n = usize::from(input[1] & 0x7f);
            let len = input[2..2 + n]
                .iter()
                .fold(0usize, |a, b| (a << 8) | usize::from(*b));
            (len, 2 + n)
        };
        (tag, &input[header..header + len], &input[header + len..])
    }
    let (_, body, _) = element(pkcs8);
    let (_, _, rest) = element(body); // version
    let (_, _, rest) = element(rest); // algorithm
    let (tag, sec1, _) = element(rest);
    assert_eq!(tag, 0x04, "PKCS#8 private key is an OCTET STRING");
    let b64 = base64::engine::general_purpose::STANDARD.encode(sec1);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Makes `path` the server's (it runs as `postgres` when we are root).
fn give_to_server(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if is_root() {
        let user = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("a postgres user");
        nix::unistd::chown(path, Some(user.uid), Some(user.gid)).unwrap();
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sidecar-tls-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let (ca_cert, issuer) = ca("sidecar test CA");
        let (other_cert, other_issuer) = ca("sidecar other CA");
        let (server_cert, server_key) = leaf(
            &["localhost", "127.0.0.1"],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
            &issuer,
        );
        let (client_cert, client_key) =
            leaf(&[], CERT_USER, ExtendedKeyUsagePurpose::ClientAuth, &issuer);
        let (rogue_cert, rogue_key) = leaf(
            &[],
            CERT_USER,
            ExtendedKeyUsagePurpose::ClientAuth,
            &other_issuer,
        );
        let write = |name: &str, text: &str| {
            let path = d.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let hba = format!(
            "local all all trust\n\
             hostssl all {CERT_USER} 127.0.0.1/32 cert\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n\
             host all {su} 127.0.0.1/32 scram-sha-256\n\
             host all all 127.0.0.1/32 reject\n",
            su = pg::SUPERUSER
        );
        let pki = Pki {
            ca: write("ca.pem", &ca_cert.pem()),
            other_ca: write("other-ca.pem", &other_cert.pem()),
            server_cert: write("server.pem", &server_cert.pem()),
            server_key: write("server.key", &server_key.serialize_pem()),
            client_cert: write("client.pem", &client_cert.pem()),
            client_key: write("client.key", &client_key.serialize_pem()),
            client_key_sec1: write("client-sec1.key", &sec1_pem(&client_key.serialize_der())),
            rogue_cert: write("rogue.pem", &rogue_cert.pem()),
            rogue_key: write("rogue.key", &rogue_key.serialize_pem()),
            hba: write("pg_hba.conf", &hba),
            dir,
        };
        give_to_server(pki.dir.path(), 0o755);
        for f in [&pki.ca, &pki.server_cert, &pki.hba] {
            give_to_server(f, 0o644);
        }
        give_to_server(&pki.server_key, 0o600);
        pki
    }
}

/// Whether the server binaries in `bin` were built with TLS support
/// (`pg_config --configure` names OpenSSL; without pg_config: assume so,
/// and let the start fail).
pub fn has_ssl(bin: &Path) -> bool {
    match Command::new(bin.join("pg_config"))
        .arg("--configure")
        .output()
    {
        Ok(out) if out.status.success() => {
            let configure = String::from_utf8_lossy(&out.stdout);
            configure.contains("--with-openssl") || configure.contains("--with-ssl=openssl")
        }
        _ => true,
    }
}

/// A server with `ssl = on`, the PKI's certificates and pg_hba.conf, and
/// the roles MONITOR and CERT_USER.
pub fn start(bin: &Path, pki: &Pki) -> PgServer {
    let ssl = [
        "ssl=on".to_string(),
        format!("ssl_cert_file={}", pki.server_cert.display()),
        format!("ssl_key_file={}", pki.server_key.display()),
        format!("ssl_ca_file={}", pki.ca.display()),
        format!("hba_file={}", pki.hba.display()),
    ];
    let settings: Vec<&str> = ssl.iter().map(String::as_str).collect();
    let server = PgServer::start(bin, &settings).unwrap();
    let mut c = pg::client(&server, "postgres");
    c.batch_execute(&format!(
        "CREATE ROLE {MONITOR} LOGIN PASSWORD '{MONITOR_PASSWORD}' IN ROLE pg_monitor;
         CREATE ROLE {CERT_USER} LOGIN IN ROLE pg_monitor;"
    ))
    .unwrap();
    server
}
