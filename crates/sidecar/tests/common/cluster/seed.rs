//! What the third-party images of the walk-through listen on and call.

/// How an image reads the address of a peer.
#[derive(Clone, Copy)]
pub enum Form {
    /// `host:port`.
    HostPort,
    /// `http://host[:port]/path`.
    Url,
    /// An Npgsql connection string, `server=host;port=...`.
    Npgsql,
}

pub struct Peer {
    /// The environment variable (`:` and `__` are the same to .NET).
    pub var: &'static str,
    /// The image's own value, used when the manifests set none.
    pub default: &'static str,
    pub form: Form,
}

pub struct SeedImage {
    /// Image reference prefix.
    pub image: &'static str,
    /// The ports the image listens on: a declared port must be one of them.
    pub listens: &'static [u16],
    pub peers: &'static [Peer],
    /// Where the values come from.
    pub source: &'static str,
}

/// The third-party images the walk-through runs, what they listen on and whom
/// they call. An image not listed here fails the check: add it.
pub const SEED_IMAGES: &[SeedImage] = &[
    SeedImage {
        image: "widgetario/web:",
        listens: &[80],
        peers: &[
            Peer {
                var: "ProductsApi:Url",
                default: "http://products-api/products",
                form: Form::Url,
            },
            Peer {
                var: "StockApi:Url",
                default: "http://stock-api/stock",
                form: Form::Url,
            },
        ],
        source: "github.com/sixeyed/widgetario src/web/dotnet/Dockerfile (ENV); ASP.NET listens on :80",
    },
    SeedImage {
        image: "widgetario/products-api:",
        listens: &[80],
        peers: &[Peer {
            var: "ConnectionStrings:ProductsDb",
            default: "server=products-db;database=postgres;user id=postgres;password=widgetario",
            form: Form::Npgsql,
        }],
        source: "github.com/sixeyed/widgetario src/products-api/dotnet/Dockerfile (ENV)",
    },
    SeedImage {
        image: "widgetario/stock-api:",
        listens: &[80],
        peers: &[Peer {
            var: "ConnectionStrings:StockDb",
            default: "server=products-db;database=postgres;user id=postgres;password=widgetario",
            form: Form::Npgsql,
        }],
        source: "github.com/sixeyed/widgetario src/stock-api/dotnet/Dockerfile (ENV)",
    },
    SeedImage {
        image: "widgetario/products-db:",
        listens: &[5432],
        peers: &[],
        source: "the official postgres image; user postgres, password widgetario (POSTGRES_PASSWORD)",
    },
    SeedImage {
        image: "sixeyed/envoy-demo:service1",
        listens: &[8080],
        peers: &[Peer {
            var: "TARGET_HOST",
            default: "service2:8080",
            form: Form::HostPort,
        }],
        source: "the seed's demo3/envoy-demo/src/service1/service.py calls http://$TARGET_HOST/svc/2; \
                 the image defaults it to service2:8080; the seed sets service2:8000 (before) and \
                 localhost:9000 (after, the proxy's outbound listener)",
    },
    SeedImage {
        image: "sixeyed/envoy-demo:service2",
        listens: &[8080],
        peers: &[],
        source: "the seed's demo3/envoy-demo/src/service2/service.py",
    },
    SeedImage {
        image: "docker.elastic.co/elasticsearch/elasticsearch:",
        listens: &[9200, 9300],
        peers: &[],
        source: "Elasticsearch's HTTP and transport ports",
    },
    SeedImage {
        image: "docker.elastic.co/kibana/kibana:",
        listens: &[5601],
        peers: &[Peer {
            var: "ELASTICSEARCH_HOSTS",
            default: "http://elasticsearch:9200",
            form: Form::Url,
        }],
        source: "Kibana's Docker image (elasticsearch.hosts defaults to http://elasticsearch:9200)",
    },
    SeedImage {
        image: "cr.fluentbit.io/fluent/fluent-bit:",
        listens: &[2020],
        peers: &[],
        source: "HTTP_Port in its config; its outputs are checked from the config",
    },
    SeedImage {
        image: "quay.io/prometheus/prometheus:",
        listens: &[9090],
        peers: &[],
        source: "Prometheus' web port",
    },
    SeedImage {
        image: "cr.jaegertracing.io/jaegertracing/jaeger:",
        listens: &[16686, 9411, 4317, 4318, 13133],
        peers: &[],
        source: "Jaeger v2 all-in-one: UI, Zipkin, OTLP gRPC and HTTP, health check",
    },
];

/// A host and port a program will connect to.
pub(super) fn address(value: &str, form: Form) -> Result<(String, u16), String> {
    match form {
        Form::HostPort => {
            let (h, p) = value
                .rsplit_once(':')
                .ok_or_else(|| format!("`{value}` has no port"))?;
            Ok((
                h.to_string(),
                p.parse().map_err(|_| format!("`{value}`: bad port"))?,
            ))
        }
        Form::Url => {
            let (scheme, rest) = value
                .split_once("://")
                .ok_or_else(|| format!("`{value}` is not a URL"))?;
            let authority = rest.split('/').next().unwrap_or_default();
            let default = if scheme == "https" { 443 } else { 80 };
            match authority.rsplit_once(':') {
                Some((h, p)) => Ok((
                    h.to_string(),
                    p.parse().map_err(|_| format!("`{value}`: bad port"))?,
                )),
                None => Ok((authority.to_string(), default)),
            }
        }
        Form::Npgsql => {
            let mut host = None;
            let mut port = 5432;
            for part in value.split(';') {
                if let Some((k, v)) = part.split_once('=') {
                    match k.trim().to_ascii_lowercase().as_str() {
                        "server" | "host" => host = Some(v.trim().to_string()),
                        "port" => {
                            port = v
                                .trim()
                                .parse()
                                .map_err(|_| format!("`{value}`: bad port"))?
                        }
                        _ => {}
                    }
                }
            }
            Ok((
                host.ok_or_else(|| format!("`{value}` names no server"))?,
                port,
            ))
        }
    }
}

pub(super) fn dotnet_name(var: &str) -> String {
    var.replace("__", ":")
}
