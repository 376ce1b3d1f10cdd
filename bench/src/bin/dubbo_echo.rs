//! `dubbo-echo`: a fast Dubbo2 provider for benchmarks. Answers every two-way Hessian2 request
//! with an OK `RESPONSE_VALUE` (the first string argument, or a fixed string) under the same
//! request id, answers heartbeats, ignores one-way requests. Many connections, pipelining: every
//! whole frame of one read is answered, and the answers go out in one write.

use bench::args::Args;
use bytes::BytesMut;
use codec::dubbo::encode::{self, Arg};
use codec::dubbo::request::RequestRepr;
use codec::dubbo::{self as wire, Decoded, Status};
use codec::hessian2::Scalar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USAGE: &str =
    "dubbo-echo [--listen 127.0.0.1:30880] [--threads 1] [--reply arg|fixed] [--fixed ok]

Answers each two-way request with status 20 and RESPONSE_VALUE: the first string argument
(--reply arg, the default; the fixed string when there is none) or --fixed. Answers heartbeats.
Pin it with taskset; --threads N > 1 uses a multi-thread runtime.";

/// Free space kept in the read buffer before each read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

#[derive(Clone)]
struct Reply {
    echo_arg: bool,
    fixed: String,
}

fn main() {
    let args = Args::parse(USAGE, &[]);
    let listen = args.str_or("listen", "127.0.0.1:30880");
    let threads: usize = args.get("threads", 1);
    let reply = Reply {
        echo_arg: match args.str_or("reply", "arg").as_str() {
            "arg" => true,
            "fixed" => false,
            _ => args.fail("--reply is arg or fixed"),
        },
        fixed: args.str_or("fixed", "ok"),
    };
    let rt = bench::runner::tokio_runtime(threads);
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("dubbo-echo: bind {listen}: {e}");
                std::process::exit(1);
            }
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream, reply.clone()));
        }
    });
}

async fn serve(mut stream: tokio::net::TcpStream, reply: Reply) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut out = BytesMut::with_capacity(READ_CHUNK_BYTES);
    loop {
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let broken = answer_all(&mut buf, &mut out, &reply);
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if broken {
            return;
        }
    }
}

/// Answers every whole frame in `buf` into `out`. Returns true when the stream is broken.
fn answer_all(buf: &mut BytesMut, out: &mut BytesMut, reply: &Reply) -> bool {
    loop {
        let frame = match wire::decode_frame(buf, wire::FRAME_BYTES_MAX_DEFAULT) {
            Ok(Decoded::Frame(f)) => f,
            Ok(Decoded::NeedMore(_)) => return false,
            Err(e) => {
                eprintln!("dubbo-echo: closing a connection: {e}");
                return true;
            }
        };
        let h = frame.header;
        if !h.flags.request || !h.flags.two_way {
            continue;
        }
        if h.flags.event {
            out.extend_from_slice(&encode::heartbeat_response(h.request_id));
            continue;
        }
        let request = match RequestRepr::parse(frame.body()) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("dubbo-echo: bad request: {e}");
                out.extend_from_slice(&encode::response_error(
                    h.request_id,
                    Status::BadRequest,
                    &msg,
                ));
                continue;
            }
        };
        let arg = if reply.echo_arg {
            match request.argument(0) {
                Ok(Some(Scalar::Str(s))) => std::str::from_utf8(s).ok(),
                _ => None,
            }
        } else {
            None
        };
        let value = Arg::Str(arg.unwrap_or(&reply.fixed));
        encode::response_ok_into(out, h.request_id, &value, None);
    }
}
