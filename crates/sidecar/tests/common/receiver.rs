//! A span receiver for tests: accepts HTTP/1.1 POSTs (keep-alive), stores
//! each body with its path and content type, answers 202 like Jaeger.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Post {
    pub path: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub posts: Arc<Mutex<Vec<Post>>>,
}

impl Receiver {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&posts);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let store = Arc::clone(&store);
                std::thread::spawn(move || serve(conn, store));
            }
        });
        Self { addr, posts }
    }

    pub fn zipkin_url(&self) -> String {
        format!("http://{}/api/v2/spans", self.addr)
    }

    pub fn otlp_url(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// Every Zipkin span received so far (flattened from the JSON arrays).
    pub fn zipkin_spans(&self) -> Vec<serde_json::Value> {
        self.posts
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.path == "/api/v2/spans")
            .flat_map(|p| {
                let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
                v.as_array().unwrap().clone()
            })
            .collect()
    }

    pub fn bodies(&self, path: &str) -> Vec<Post> {
        self.posts
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.path == path)
            .cloned()
            .collect()
    }
}

fn serve(conn: TcpStream, store: Arc<Mutex<Vec<Post>>>) {
    conn.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut length = 0usize;
        let mut content_type = String::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "content-type" => content_type = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        store.lock().unwrap().push(Post {
            path,
            content_type,
            body,
        });
        if writer
            .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}
