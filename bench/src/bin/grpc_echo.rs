//! `grpc-echo`: a fast gRPC upstream for benchmarks, over prior-knowledge h2c (the `h2` crate on
//! tokio). Every stream, whatever its path, is answered with `:status 200`,
//! `content-type: application/grpc`, the request body echoed back unchanged as the reply message
//! (the bench's HelloRequest{name, payload} reads as a HelloReply{message, payload}), and
//! `grpc-status: 0` trailers. Request trailers are ignored. The one exception is OTLP's
//! `TraceService/Export` (the `dubbo-16x16-observed` bench sends ringside's spans here): it is
//! answered with an empty `ExportTraceServiceResponse`, as a collector does, not an echo.

use bench::args::Args;
use bytes::BytesMut;
use http::{HeaderMap, HeaderValue, Request, Response};

const USAGE: &str = "grpc-echo [--listen 127.0.0.1:30870] [--threads 1] [--max-streams 1024]

Echoes each request body as the response message with grpc-status 0 trailers (h2c, prior
knowledge). Pin it with taskset; --threads N > 1 uses a multi-thread runtime.
OpenTelemetry's TraceService/Export gets an empty reply (a span sink).";

/// OTLP/gRPC span export: read and discarded.
const OTLP_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Flow-control windows large enough that a benchmark never waits on WINDOW_UPDATEs.
const STREAM_WINDOW: u32 = 1 << 20;
const CONN_WINDOW: u32 = 16 << 20;

fn main() {
    let args = Args::parse(USAGE, &[]);
    let listen = args.str_or("listen", "127.0.0.1:30870");
    let threads: usize = args.get("threads", 1);
    let max_streams: u32 = args.get("max-streams", 1024);
    let rt = bench::runner::tokio_runtime(threads);
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("grpc-echo: bind {listen}: {e}");
                std::process::exit(1);
            }
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream, max_streams));
        }
    });
}

async fn serve(stream: tokio::net::TcpStream, max_streams: u32) {
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(max_streams)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .handshake::<_, bytes::Bytes>(stream);
    let mut conn = match handshake.await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("grpc-echo: handshake: {e}");
            return;
        }
    };
    while let Some(next) = conn.accept().await {
        match next {
            Ok((req, respond)) => {
                tokio::spawn(echo(req, respond));
            }
            Err(e) => {
                if !e.is_go_away() && !e.is_io() {
                    eprintln!("grpc-echo: connection: {e}");
                }
                return;
            }
        }
    }
}

async fn echo(req: Request<h2::RecvStream>, mut respond: h2::server::SendResponse<bytes::Bytes>) {
    let sink = req.uri().path() == OTLP_EXPORT_PATH;
    let mut body = req.into_body();
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else {
            return;
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        if !sink {
            buf.extend_from_slice(&chunk);
        }
    }
    if sink {
        // One gRPC message of length 0: an empty ExportTraceServiceResponse.
        buf.extend_from_slice(&[0; 5]);
    }
    let mut head = Response::new(());
    head.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    let Ok(mut send) = respond.send_response(head, false) else {
        return;
    };
    // h2 queues what the peer's window does not admit yet and sends it as WINDOW_UPDATEs come.
    if !buf.is_empty() && send.send_data(buf.freeze(), false).is_err() {
        return;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let _ = send.send_trailers(trailers);
}
